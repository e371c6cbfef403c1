"""The store's operations without an event loop (:class:`StoreFile`), as the client's
offline submit runs them: the same results as the async store, the same checks on
opening, and the same waits for another process's write lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlite_helpers import T0, new_message, raw

from spoolbox.model import MessageInfo, RecipientState
from spoolbox.store.base import StoreError
from spoolbox.store.sqlite import SQLiteStore, StoreFile, transactions
from spoolbox.store.sqlite.connection import Stats


def _submit(db: StoreFile, i: int) -> MessageInfo:
    return db.run(
        "submit", lambda conn: transactions.submit(conn, new_message(i), now=T0, lifetime=3600)
    )


async def test_an_offline_submit_is_what_the_store_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with StoreFile.open(path) as db:
        info = _submit(db, 1)
        assert _submit(db, 1) == info  # a resubmission is recognised
        with pytest.raises(StoreError, match="already used by a different message"):
            db.run(
                "submit",
                lambda conn: transactions.submit(
                    conn, new_message(1, "X:carol"), now=T0, lifetime=3600
                ),
            )
        assert db.stats.commits == 2 and db.stats.rollbacks == 1
    async with SQLiteStore(path) as store:
        assert await store.get_message("m0001") == info
        assert [r.state for r in await store.recipients("m0001")] == [RecipientState.QUEUED]
        assert (await store.submit(new_message(1), now=T0 + 5, lifetime=60)) == info


def test_an_offline_read_runs_in_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with StoreFile.open(path) as db:
        _submit(db, 1)
        counts = db.run("counts", transactions.counts)
        assert db.stats.reads == 1 and db.stats.commits == 1
    assert counts[RecipientState.QUEUED] == 1


def test_opening_refuses_what_the_store_refuses(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="holds no spoolbox store"):
        StoreFile.open(path)
    assert path.read_bytes() == b""
    with pytest.raises(ValueError, match="progress_synchronous"):
        StoreFile.open(tmp_path / "other.db", progress_synchronous="SOMETIMES")


def test_an_offline_submit_waits_for_another_process_lock(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    stats = Stats()
    opened, go = threading.Event(), threading.Event()
    outcome: list[object] = []

    def offline_submit() -> None:  # a connection belongs to the thread that opened it
        with StoreFile.open(path, stats=stats) as db:
            opened.set()
            go.wait(10)
            outcome.append(_submit(db, 1))

    worker = threading.Thread(target=offline_submit)
    worker.start()
    assert opened.wait(10)
    with raw(path) as other:
        other.execute("BEGIN IMMEDIATE")  # a daemon's transaction, say
        go.set()
        deadline = time.monotonic() + 10
        while stats.lock_waits == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # until the submit has found the lock taken
        assert stats.lock_waits == 1 and outcome == []
        other.execute("COMMIT")
    worker.join(10)
    assert [getattr(x, "id", x) for x in outcome] == ["m0001"]
    assert stats.commits == 1


def test_a_lock_held_too_long_fails_naming_the_file_and_the_operation(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with StoreFile.open(path, busy_timeout=0.05) as db, raw(path) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=rf"{path}: submit failed: database is locked"):
            _submit(db, 1)
        other.execute("ROLLBACK")
        assert _submit(db, 2).id == "m0002"  # the file is usable again
