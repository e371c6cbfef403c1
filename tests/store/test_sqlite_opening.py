"""The SQLite store's file: careful opening (files that are not ours, or not for us,
are refused untouched; new files are private), the schema, its migrations, and the
query plans of the hot queries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest
from sqlite_helpers import T0, new_message, raw, snapshot_dir

from spoolbox.store.base import StoreError
from spoolbox.store.sqlite import SQLiteStore, queries, schema

# -- opening files that are not ours, or not for us --------------------------------------


async def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
    newer = schema.SCHEMA_VERSION + 5
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    before = snapshot_dir(tmp_path)
    store = SQLiteStore(path)
    with pytest.raises(StoreError) as info:
        await store.open()
    message = str(info.value)
    assert str(path) in message
    assert f"version {newer}" in message
    assert f"up to {schema.SCHEMA_VERSION}" in message
    assert snapshot_dir(tmp_path) == before
    await store.close()  # nothing to close: a no-op


async def test_random_bytes_are_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(random.Random(1).randbytes(3 * 4096))
    before = snapshot_dir(tmp_path)
    with pytest.raises(StoreError, match="not a SQLite database") as info:
        await SQLiteStore(path).open()
    assert str(path) in str(info.value)
    assert snapshot_dir(tmp_path) == before


async def test_a_corrupt_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
    data = bytearray(path.read_bytes())
    data[100:4096] = random.Random(2).randbytes(4096 - 100)  # the schema page, after the header
    path.write_bytes(bytes(data))
    before = snapshot_dir(tmp_path)
    with pytest.raises(StoreError) as info:
        await SQLiteStore(path).open()
    assert str(path) in str(info.value)
    assert snapshot_dir(tmp_path) == before


async def test_another_programs_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    before = snapshot_dir(tmp_path)
    with pytest.raises(StoreError, match="not a spoolbox store") as info:
        await SQLiteStore(path).open()
    assert str(path) in str(info.value)
    assert snapshot_dir(tmp_path) == before


@pytest.mark.parametrize("kind", ["zero bytes", "empty database"])
async def test_a_file_without_the_spoolbox_schema_is_refused_untouched(
    tmp_path: Path, kind: str
) -> None:
    """Only a store spoolbox made is opened: a file someone else left at the path,
    even an empty one, could be the wrong path or a trap, not a new store."""
    path = tmp_path / "spool.db"
    if kind == "zero bytes":
        path.write_bytes(b"")
    else:
        with raw(path) as conn:
            conn.execute("VACUUM")  # a valid, empty SQLite database (its header page)
        assert path.stat().st_size > 0
    before = snapshot_dir(tmp_path)
    with pytest.raises(StoreError, match="holds no spoolbox store") as info:
        await SQLiteStore(path).open()
    assert str(path) in str(info.value)
    assert ("an empty file" in str(info.value)) == (kind == "zero bytes")
    assert snapshot_dir(tmp_path) == before


#: A store's files, each 0600.
_PRIVATE: Final = {
    name: 0o600 for name in ("spool.db", "spool.db-wal", "spool.db-shm", "spool.db-lock")
}


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}


async def test_a_new_store_and_its_wal_shm_and_lock_files_are_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.db"
    old = os.umask(0o022)  # the usual umask: files would be 0644
    try:
        async with SQLiteStore(path) as store:
            await store.submit(new_message(1), now=T0, lifetime=3600)
            modes = _modes(tmp_path)
    finally:
        os.umask(old)
    assert modes == _PRIVATE
    assert "0600" not in caplog.text  # created so, not tightened afterwards


async def test_an_existing_store_readable_by_others_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
    path.chmod(0o644)  # as an older spoolbox left it
    async with SQLiteStore(path) as store:
        assert len(await store.list_messages(now=T0)) == 1
        modes = _modes(tmp_path)
    assert modes == _PRIVATE
    assert f"{path} was mode 0644" in caplog.text


async def test_a_store_reached_through_a_symlink_is_made_private_where_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The -wal, -shm and -lock files are beside the file the path resolves to, and
    are tightened there: an older spoolbox's, readable by others."""
    real_dir, link_dir = tmp_path / "real", tmp_path / "link"
    real_dir.mkdir()
    link_dir.mkdir()
    real = real_dir / "spool.db"
    async with SQLiteStore(real) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
    (link_dir / "spool.db").symlink_to(real)
    for name in ("spool.db", "spool.db-lock"):
        (real_dir / name).chmod(0o644)
    async with SQLiteStore(link_dir / "spool.db") as store:
        assert len(await store.list_messages(now=T0)) == 1
        modes = _modes(real_dir)
    assert modes == _PRIVATE
    assert f"{real_dir / 'spool.db-lock'} was mode 0644" in caplog.text
    assert sorted(p.name for p in link_dir.iterdir()) == ["spool.db"]


async def test_two_stores_creating_one_file_at_once_both_open_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    for _ in range(5):
        stores = [SQLiteStore(path), SQLiteStore(path)]
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].submit(new_message(1), now=T0, lifetime=3600)
        assert len(await stores[1].list_messages(now=T0)) == 1
        for s in stores:
            await s.close()
        # No temp files left; the write lock's side file stays (see .writelock).
        assert sorted(_modes(tmp_path)) == ["spool.db", "spool.db-lock"]
        path.unlink()


def _leave_a_removed_store_with_its_log(path: Path) -> None:
    """What a daemon killed after its store file was removed leaves: a store with
    three messages, its file unlinked while open, the process gone without closing
    (a close would checkpoint the log and delete it)."""
    script = f"""
import asyncio, os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from sqlite_helpers import T0, new_message
from spoolbox.store.sqlite import SQLiteStore

async def main():
    store = SQLiteStore({str(path)!r})
    await store.open()
    for i in range(3):
        await store.submit(new_message(i), now=T0, lifetime=3600)
    os.unlink({str(path)!r})
    os._exit(0)

asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


async def test_a_removed_store_whose_log_is_left_is_not_created_anew(tmp_path: Path) -> None:
    """SQLite would replay the left log into a new, empty file: part of the removed
    store back, possibly corrupt.  Refused, naming both files and both ways out;
    nothing is created."""
    path = tmp_path / "spool.db"
    _leave_a_removed_store_with_its_log(path)
    wal = tmp_path / "spool.db-wal"
    assert not path.exists() and wal.stat().st_size > 32
    before = snapshot_dir(tmp_path)
    with pytest.raises(StoreError) as info:
        await SQLiteStore(path).open()
    message = str(info.value)
    assert f"the store {path} is missing" in message
    assert f"write-ahead log {wal} ({wal.stat().st_size} bytes)" in message
    assert f"Put the store file back at {path}" in message
    assert f"move {wal} and {path}-shm out of the way" in message
    assert snapshot_dir(tmp_path) == before
    # Moved aside as the message says: a new, empty store.
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("spool.db-wal", "spool.db-shm"):
        (tmp_path / name).rename(aside / name)
    async with SQLiteStore(path) as store:
        assert await store.list_messages(now=T0) == []


async def test_a_log_with_no_changes_left_without_its_store_is_no_obstacle(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    (tmp_path / "spool.db-wal").write_bytes(b"")
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
        assert len(await store.list_messages(now=T0)) == 1


# -- schema, migrations, indexes --------------------------------------------------------


def test_every_migration_splits_into_complete_statements() -> None:
    assert len(schema.MIGRATIONS) == schema.SCHEMA_VERSION
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        for script in schema.MIGRATIONS:
            statements = schema.split_statements(script)
            assert statements
            for statement in statements:
                assert sqlite3.complete_statement(statement)
                conn.execute(statement)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"messages", "recipients", "blobs", "blob_chunks", "inbox", "profile"} <= tables
    with pytest.raises(ValueError, match="incomplete"):
        schema.split_statements("CREATE TABLE t (x);\nCREATE TABLE u (y)\n")


async def test_pending_migrations_run_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600)
    extra = "CREATE TABLE extra (x INTEGER);\nINSERT INTO extra (x) VALUES (7);\n"
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, extra))
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    async with SQLiteStore(path) as store:
        assert (await store.get_message("m0001")).id == "m0001"
        assert store.statistics()["pragmas"]["user_version"] == schema.SCHEMA_VERSION  # type: ignore[index]
    with raw(path) as conn:
        assert conn.execute("SELECT x FROM extra").fetchall() == [(7,)]


#: A plan step reading a whole table, no index.
_TABLE_SCAN = re.compile(r"SCAN (recipients|messages)$")


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    params = (None,) * sql.count("?")
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]


@pytest.mark.parametrize(
    "query",
    [
        "CLAIM_READY",
        "CLAIM_FLUSH",
        "COUNT_READY",
        "COUNT_FLUSH",
        "NEXT_READY",
        "SELECT_RETRYING",
        "SELECT_UNROUTED",
        "SELECT_LEASE_EXPIRED",
        "SELECT_LEASED_BY",
        "SELECT_EXPIRED",
        "SELECT_PARKED",
        "CLAIMABLE_OF_MESSAGE",
        "CLAIMABLE_OF_MESSAGE_FLUSH",
        "SELECT_RECIPIENTS",
    ],
)
async def test_hot_queries_do_not_scan_the_queue(tmp_path: Path, query: str) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path):
        pass
    with raw(path) as conn:
        plan = _plan(conn, getattr(queries, query))
    assert plan
    assert all("USING" in step for step in plan if "recipients" in step), plan
    assert not any(_TABLE_SCAN.match(step) for step in plan), plan
    # Rows come in index order: no sort of the ready rows before the first is taken.
    assert not any("TEMP B-TREE FOR ORDER BY" in step for step in plan), plan


@pytest.mark.parametrize("ready", ["ready_at", "send_at"])
@pytest.mark.parametrize("order", ["", "DESC"])
@pytest.mark.parametrize(
    "destinations",
    [["slow.example", "Root"], [f"d{i}.example" for i in range(queries.LIKE_MOST + 1)]],
    ids=["like", "in"],
)
async def test_a_claim_passing_over_destinations_reads_the_queue_in_order(
    tmp_path: Path, ready: str, order: str, destinations: list[str]
) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path):
        pass
    condition, _ = queries.skipped(destinations, 1000)
    sql = queries.CLAIM_PASSING.format(ready=ready, order=order, skipped=condition)
    with raw(path) as conn:
        plan = _plan(conn, sql)
    assert any("USING INDEX recipients_ready" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
    # The window is a co-routine (not flattened): the filter stays above its LIMIT.
    assert any("CO-ROUTINE" in step for step in plan), plan


async def test_counts_read_the_counters_not_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    async with SQLiteStore(path):
        pass
    with raw(path) as conn:
        plan = _plan(conn, queries.SELECT_COUNTS)
    assert plan
    assert not any("recipients " in step for step in plan), plan


async def test_content_is_stored_once_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    message = new_message(1, size=3 * schema.CHUNK_SIZE + 10)
    async with SQLiteStore(path) as store:
        await store.submit(message, now=T0, lifetime=3600)
        await store.submit(message, now=T0, lifetime=3600)
        chunks = [c async for c in store.iter_content(message.id, chunk_size=100_000)]
    assert b"".join(chunks) == message.content
    with raw(path) as conn:
        assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 1
        rows = conn.execute("SELECT length(data) FROM blob_chunks ORDER BY seq").fetchall()
    assert [n for (n,) in rows] == [schema.CHUNK_SIZE] * 3 + [
        len(message.content) - 3 * schema.CHUNK_SIZE
    ]
