"""Fewer bytes written per message by the SQLite store: schema version 6 (a store of
version 5 opens, is upgraded in place with its messages, the index of ACTIVE
recipients by owner dropped, and a node's start still returns what it left ACTIVE; a
store of a newer version is refused untouched), and 1 KiB pages in a new store (an
older store keeps its own)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlite_helpers import T0, new_message, raw, snapshot_dir

from spoolbox.model import RecipientState
from spoolbox.store.base import StoreError
from spoolbox.store.sqlite import SQLiteStore, schema

_R = RecipientState


def _indexes(path: Path) -> set[str]:
    with raw(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        return {str(r[0]) for r in rows}


async def test_a_store_of_version_5_is_upgraded_in_place(tmp_path: Path) -> None:
    assert schema.SCHEMA_VERSION >= 6
    path = tmp_path / "old.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
        await store.submit(new_message(2), now=T0, lifetime=3600, routes=["x"])
        await store.claim("x", owner="old", now=T0 + 1, lease=60, limit=2)
    with raw(path) as conn:  # version 5 as it was: with the owner index
        conn.execute("CREATE INDEX recipients_owner ON recipients (owner) WHERE state = 'active'")
        conn.execute("ALTER TABLE messages DROP COLUMN return_content")  # version 7 added it
        conn.execute("DROP TABLE rate_sends")  # version 8 added it
        conn.execute("ALTER TABLE recipients DROP COLUMN original")  # version 9 added it
        conn.execute("PRAGMA user_version = 5")
    assert "recipients_owner" in _indexes(path)
    async with SQLiteStore(path) as store:
        assert store.statistics()["pragmas"]["user_version"] == schema.SCHEMA_VERSION  # type: ignore[index]
        assert await store.release_owner("someone else") == 0
        assert await store.release_owner("old") == 2
        assert [r.state for r in await store.recipients("m0001")] == [_R.QUEUED]
        [job] = await store.claim("x", owner="new", now=T0 + 2, lease=60)
        assert await store.release_owner("new") == 1
        assert job.message.id == "m0001"
    assert "recipients_owner" not in _indexes(path)


async def test_a_store_of_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
    with raw(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    before = snapshot_dir(tmp_path)
    newer, supported = schema.SCHEMA_VERSION + 1, schema.SCHEMA_VERSION
    with pytest.raises(StoreError, match=rf"version {newer}.*up to {supported}\b"):
        await SQLiteStore(path).open()
    assert snapshot_dir(tmp_path) == before


async def test_a_new_store_has_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    assert schema.PAGE_SIZE == 1024
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    async with SQLiteStore(new) as store:
        await store.submit(new_message(1, size=5000), now=T0, lifetime=3600)
    with raw(old) as conn:  # a store made before: SQLite's default page size
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = WAL")
        schema._migrate(conn)
    async with SQLiteStore(old) as store:
        await store.submit(new_message(1, size=5000), now=T0, lifetime=3600)
        assert await store.read_content("m0001") == new_message(1, size=5000).content
    sizes = {}
    for path in (new, old):
        with raw(path) as conn:
            sizes[path.name] = conn.execute("PRAGMA page_size").fetchone()[0]
    assert sizes == {"new.db": 1024, "old.db": 4096}
    # Either checkpoints its WAL at the same size: 4,000 KiB of pages.
    for path, pages in ((new, 4000), (old, 1000)):
        conn = schema.connect(str(path), synchronous="FULL", busy_timeout=1.0)
        try:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == pages
        finally:
            conn.close()


def _size(path: str) -> int:
    return os.path.getsize(path)


async def test_a_wal_grown_behind_a_long_reader_is_cut_back(tmp_path: Path) -> None:
    # A reader holding an old snapshot (a long listing, a large message read in
    # chunks) during a burst keeps checkpoints from starting the log over, and the
    # WAL grows; once it lets go, the WAL goes back to WAL_SIZE_LIMIT instead of
    # keeping its largest size for as long as the store is open.
    path = tmp_path / "s.db"
    wal = f"{path}-wal"
    submitted = 0

    async def submit(size: int = 0) -> None:
        nonlocal submitted
        message = new_message(submitted, size=size)
        await store.submit(message, now=T0, lifetime=3600.0, routes=["t"])
        submitted += 1

    async with SQLiteStore(path) as store:
        await submit()
        with raw(path) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM messages").fetchone()
            while _size(wal) <= schema.WAL_SIZE_LIMIT + 4 * 2**20:
                await submit(60_000)
            reader.execute("ROLLBACK")
        grown = _size(wal)
        for _ in range(50):
            await submit()
            if _size(wal) <= schema.WAL_SIZE_LIMIT:
                break
        assert _size(wal) <= schema.WAL_SIZE_LIMIT < grown, grown
        listed = await store.list_messages(limit=submitted + 1, now=T0)
        assert len(listed) == submitted  # nothing lost on the way
