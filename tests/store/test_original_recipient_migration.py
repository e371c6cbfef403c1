"""RFC 3461's ORCPT kept with each recipient (SQLite schema version 9, PostgreSQL 9):
a store of version 8 with a queued message opens, is upgraded in place; the old
recipient reads back with no original, the old message is still recognised when it
is submitted again (its fingerprint did not change) and is sent as before; new
recipients keep their originals.

The older store is made from a current one by undoing the change (dropping the column
the migration adds and setting the version back)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from sqlite_helpers import T0, new_message, raw

from spoolbox.model import Address, RecipientState
from spoolbox.store import rules
from spoolbox.store.base import RecipientUpdate, Store, StoreError
from spoolbox.store.postgres import SCHEMA_VERSION as PG_VERSION
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.sqlite import SQLiteStore, schema

BOB = Address.parse("X:bob")
ORIGINAL = "rfc822;bob@old.example"


def test_a_message_without_originals_keeps_the_fingerprint_it_had() -> None:
    old = new_message(1)
    given = replace(old, original_recipients=((BOB, ORIGINAL),))
    other = replace(old, original_recipients=((BOB, "rfc822;robert@old.example"),))
    assert rules.fingerprint(old) == rules.fingerprint(replace(old, original_recipients=()))
    assert len({rules.fingerprint(m) for m in (old, given, other)}) == 3


async def _upgraded(store: Store) -> None:
    """What a store upgraded from version 8 holds and does."""
    [old] = await store.recipients("m0001")
    assert old.original is None
    info = await store.get_message("m0001")
    assert await store.submit(new_message(1), now=T0 + 5, lifetime=3600) == info
    with pytest.raises(StoreError, match="already used by a different message"):
        await store.submit(
            replace(new_message(1), original_recipients=((BOB, ORIGINAL),)), now=T0, lifetime=3600
        )
    new = replace(new_message(2), original_recipients=((BOB, ORIGINAL),))
    await store.submit(new, now=T0, lifetime=3600, routes=["x"])
    jobs = await store.claim("x", owner="new", now=T0 + 1, lease=60, limit=2)
    assert {job.message.id: job.recipients[0].original for job in jobs} == {
        "m0001": None,
        "m0002": ORIGINAL,
    }
    for job in jobs:
        done = [RecipientUpdate(0, RecipientState.DELIVERED)]
        await store.settle(job.message.id, done, owner="new", now=T0 + 2, claim=job.claim)
    assert [r.original for r in await store.recipients("m0002")] == [ORIGINAL]


async def test_a_sqlite_store_of_version_8_is_upgraded_in_place(tmp_path: Path) -> None:
    assert schema.SCHEMA_VERSION >= 9
    path = tmp_path / "old.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    with raw(path) as conn:  # version 8 as it was: no recipients.original
        conn.execute("ALTER TABLE recipients DROP COLUMN original")
        conn.execute("PRAGMA user_version = 8")
    async with SQLiteStore(path) as store:
        assert store.statistics()["pragmas"]["user_version"] == schema.SCHEMA_VERSION  # type: ignore[index]
        await _upgraded(store)
    with raw(path) as conn:
        columns = {
            row[1]: (row[2], row[3]) for row in conn.execute("PRAGMA table_info(recipients)")
        }
        assert columns["original"] == ("TEXT", 0)  # (type, NOT NULL): NULL allowed


async def test_a_postgres_database_of_version_8_is_upgraded_in_place(pg_dsn: str) -> None:
    assert PG_VERSION >= 9
    async with PostgresStore(pg_dsn) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE recipients DROP COLUMN original")
        conn.execute("UPDATE spoolbox_schema SET version = 8")
    async with PostgresStore(pg_dsn) as store:
        assert store.statistics()["migrated"] == list(range(9, PG_VERSION + 1))
        await _upgraded(store)
    with psycopg.connect(pg_dsn) as conn:
        column = conn.execute(
            "SELECT data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'recipients' AND column_name = 'original'"
        ).fetchall()
        assert column == [("text", "YES")]
