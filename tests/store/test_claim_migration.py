"""The claim token's schema change: a store of the version before it (SQLite 4,
PostgreSQL 2) opens, is upgraded in place with its messages, and fences from then on.

The older store is made from a current one by undoing the change (dropping what the
migration adds and setting the version back), with a recipient left ACTIVE by the
older spoolbox in it."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlite_helpers import T0, new_message, raw

from spoolbox.model import RecipientState
from spoolbox.store.base import LeaseLost, RecipientUpdate, Store
from spoolbox.store.postgres import SCHEMA_VERSION as PG_VERSION
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.sqlite import SQLiteStore, schema

_R = RecipientState


async def _fill(store: Store) -> None:
    """m0001 queued, m0002 ACTIVE (claimed by "old")."""
    await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    await store.submit(new_message(2), now=T0 + 1, lifetime=3600, routes=["y"])
    await store.claim("y", owner="old", now=T0 + 1, lease=60)


async def _fences_after_the_upgrade(store: Store) -> None:
    assert [r.state for r in await store.recipients("m0001")] == [_R.QUEUED]
    # What the older spoolbox left ACTIVE goes back as before, and is claimed anew.
    assert await store.release_owner("old") == 1
    [job] = await store.claim("y", owner="new", now=T0 + 2, lease=60)
    with pytest.raises(LeaseLost):  # a token of no claim since the upgrade
        await store.settle(
            "m0002", [RecipientUpdate(0, _R.DELIVERED)], owner="new", now=T0 + 3, claim=0
        )
    await store.settle(
        "m0002", [RecipientUpdate(0, _R.DELIVERED)], owner="new", now=T0 + 3, claim=job.claim
    )
    assert [r.state for r in await store.recipients("m0002")] == [_R.DELIVERED]


async def test_a_sqlite_store_of_version_4_is_upgraded_in_place(tmp_path: Path) -> None:
    assert schema.SCHEMA_VERSION >= 5
    path = tmp_path / "old.db"
    async with SQLiteStore(path) as store:
        await _fill(store)
    with raw(path) as conn:
        conn.execute("ALTER TABLE recipients DROP COLUMN claim")
        # Version 6 dropped it: a store of version 4 has it.
        conn.execute("CREATE INDEX recipients_owner ON recipients (owner) WHERE state = 'active'")
        conn.execute("ALTER TABLE messages DROP COLUMN return_content")  # version 7 added it
        conn.execute("DROP TABLE rate_sends")  # version 8 added it
        conn.execute("ALTER TABLE recipients DROP COLUMN original")  # version 9 added it
        conn.execute("PRAGMA user_version = 4")
    async with SQLiteStore(path) as store:
        assert store.statistics()["pragmas"]["user_version"] == schema.SCHEMA_VERSION  # type: ignore[index]
        await _fences_after_the_upgrade(store)
    with raw(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(recipients)")]
        assert "claim" in columns


async def test_a_postgres_database_of_version_2_is_upgraded_in_place(pg_dsn: str) -> None:
    assert PG_VERSION >= 3
    async with PostgresStore(pg_dsn) as store:
        await _fill(store)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE recipients DROP COLUMN claim")
        conn.execute("DROP SEQUENCE recipient_claims")
        conn.execute("UPDATE spoolbox_schema SET version = 2")
    async with PostgresStore(pg_dsn) as store:
        assert store.statistics()["migrated"] == list(range(3, PG_VERSION + 1))
        await _fences_after_the_upgrade(store)
