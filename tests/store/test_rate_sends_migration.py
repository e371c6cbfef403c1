"""The sends of ``max_rate`` windows kept in the store (SQLite schema version 8,
PostgreSQL 8): a store of version 7 is upgraded in place, its mail untouched, and
its windows start empty."""

from __future__ import annotations

from pathlib import Path

import psycopg
from sqlite_helpers import T0, new_message, raw

from spoolbox.store.postgres import SCHEMA_VERSION as PG_VERSION
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.sqlite import SQLiteStore, schema


async def test_a_sqlite_store_of_version_7_is_upgraded_in_place(tmp_path: Path) -> None:
    assert schema.SCHEMA_VERSION >= 8
    path = tmp_path / "old.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    with raw(path) as conn:  # version 7 as it was: no rate_sends
        conn.execute("DROP TABLE rate_sends")
        conn.execute("ALTER TABLE recipients DROP COLUMN original")  # version 9 added it
        conn.execute("PRAGMA user_version = 7")
    async with SQLiteStore(path) as store:
        assert store.statistics()["pragmas"]["user_version"] == schema.SCHEMA_VERSION  # type: ignore[index]
        assert await store.sends_in_window("transport:x", period=60.0, now=T0) == 0
        grant = await store.take_sends("transport:x", count=2, period=60.0, now=T0, want=3)
        assert (grant.granted, grant.used, grant.next_at) == (2, 2, T0 + 60.0)
        [job] = await store.claim("x", owner="n1", now=T0 + 1, lease=60)
        assert job.message.id == "m0001"


async def test_a_postgres_database_of_version_7_is_upgraded_in_place(pg_dsn: str) -> None:
    assert PG_VERSION >= 8
    async with PostgresStore(pg_dsn) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE rate_sends")
        conn.execute("UPDATE spoolbox_schema SET version = 7")
    async with PostgresStore(pg_dsn) as store:
        assert store.statistics()["migrated"] == list(range(8, PG_VERSION + 1))
        grant = await store.take_sends("transport:x", count=2, period=60.0, now=T0, want=3)
        assert (grant.granted, grant.used, grant.next_at) == (2, 2, T0 + 60.0)
        [job] = await store.claim("x", owner="n1", now=T0 + 1, lease=60)
        assert job.message.id == "m0001"
