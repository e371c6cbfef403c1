"""RFC 3461's RET kept with each message (SQLite schema version 7, PostgreSQL 7): a
store of version 6 with a queued message opens, is upgraded in place, and the old
message reads back with ``return_content`` None (the report kind's default), is still
recognised when it is submitted again (its fingerprint did not change), and is sent
as before; new messages keep their RET.

The older store is made from a current one by undoing the change (dropping the column
the migration adds and setting the version back)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from sqlite_helpers import T0, new_message, raw

from spoolbox.model import NewMessage, RecipientState
from spoolbox.store import rules
from spoolbox.store.base import RecipientUpdate, Store, StoreError
from spoolbox.store.postgres import SCHEMA_VERSION as PG_VERSION
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.sqlite import SQLiteStore, schema


def _version_6_fingerprint(message: NewMessage) -> bytes:
    """A submission's digest as version 6's spoolbox worked it out (no RET)."""
    envelope = json.dumps(
        [
            message.id,
            None if message.sender is None else str(message.sender),
            [str(a) for a in message.recipients],
            int(message.priority),
            None if message.send_at is None else float(message.send_at),
            int(message.notify),
            None if message.lifetime is None else float(message.lifetime),
            bool(message.is_report),
            message.envelope_id,
        ]
    )
    return hashlib.sha256(envelope.encode() + b"\n" + message.content).digest()


def test_a_message_without_ret_keeps_the_fingerprint_it_had() -> None:
    old = new_message(1)
    assert rules.fingerprint(old) == _version_6_fingerprint(old)
    digests = {rules.fingerprint(replace(old, return_content=ret)) for ret in (None, True, False)}
    assert len(digests) == 3  # a RET given is part of the submission


async def _fill(store: Store) -> None:
    """m0001 queued, routed to x, by the spoolbox of version 6 (no RET)."""
    await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])


async def _upgraded(store: Store) -> None:
    """What a store upgraded from version 6 holds and does."""
    old = await store.get_message("m0001")
    assert old.return_content is None
    # The same submission again is the stored message, not a different one.
    assert await store.submit(new_message(1), now=T0 + 5, lifetime=3600) == old
    with pytest.raises(StoreError, match="already used by a different message"):
        await store.submit(replace(new_message(1), return_content=False), now=T0, lifetime=3600)
    for i, ret in ((2, True), (3, False)):
        message = replace(new_message(i), return_content=ret)
        info = await store.submit(message, now=T0, lifetime=3600, routes=["x"])
        assert info.return_content is ret
    jobs = await store.claim("x", owner="new", now=T0 + 1, lease=60, limit=3)
    assert {job.message.id: job.message.return_content for job in jobs} == {
        "m0001": None,
        "m0002": True,
        "m0003": False,
    }
    for job in jobs:
        done = [RecipientUpdate(0, RecipientState.DELIVERED)]
        info = await store.settle(job.message.id, done, owner="new", now=T0 + 2, claim=job.claim)
        assert info.return_content is job.message.return_content


async def test_a_sqlite_store_of_version_6_is_upgraded_in_place(tmp_path: Path) -> None:
    assert schema.SCHEMA_VERSION >= 7
    path = tmp_path / "old.db"
    async with SQLiteStore(path) as store:
        await _fill(store)
    with raw(path) as conn:  # version 6 as it was: no return_content
        conn.execute("ALTER TABLE messages DROP COLUMN return_content")
        conn.execute("DROP TABLE rate_sends")  # version 8 added it
        conn.execute("ALTER TABLE recipients DROP COLUMN original")  # version 9 added it
        conn.execute("PRAGMA user_version = 6")
    async with SQLiteStore(path) as store:
        assert store.statistics()["pragmas"]["user_version"] == schema.SCHEMA_VERSION  # type: ignore[index]
        await _upgraded(store)
    with raw(path) as conn:
        rows = conn.execute("SELECT id, return_content FROM messages ORDER BY id").fetchall()
        assert rows == [("m0001", None), ("m0002", 1), ("m0003", 0)]
        columns = {row[1]: (row[2], row[3]) for row in conn.execute("PRAGMA table_info(messages)")}
        assert columns["return_content"] == ("INTEGER", 0)  # (type, NOT NULL): NULL allowed


async def test_a_postgres_database_of_version_6_is_upgraded_in_place(pg_dsn: str) -> None:
    assert PG_VERSION >= 7
    async with PostgresStore(pg_dsn) as store:
        await _fill(store)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE messages DROP COLUMN return_content")
        conn.execute("UPDATE spoolbox_schema SET version = 6")
    async with PostgresStore(pg_dsn) as store:
        assert store.statistics()["migrated"] == list(range(7, PG_VERSION + 1))
        await _upgraded(store)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id, return_content FROM messages ORDER BY id").fetchall()
        assert rows == [("m0001", None), ("m0002", True), ("m0003", False)]
        column = conn.execute(
            "SELECT data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'messages' AND column_name = 'return_content'"
        ).fetchall()
        assert column == [("boolean", "YES")]
