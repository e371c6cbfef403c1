"""A durable commit's fsync is made after the write lock is released (``.walsync``).

At ``FULL`` the store commits at SQLite's ``NORMAL`` and syncs the WAL itself: the
sync must come after COMMIT (another connection can take the write lock while it
runs), before the caller hears of the commit, and be of the WAL file; progress
commits are not synced; other levels are SQLite's own; a failed sync is a
StoreError that says the commit was written.  The kernel's view (which steps
fsync at all) is in test_sqlite_fsync.py.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
from pathlib import Path

import pytest

from spoolbox.daemon.store_backend import shares_store, store_from_settings
from spoolbox.model import Address, NewMessage
from spoolbox.profile import load_profile
from spoolbox.profile.default import default_profile_text
from spoolbox.store.base import StoreError
from spoolbox.store.sqlite import SQLiteStore, StoreFile
from spoolbox.store.sqlite import transactions as tx
from spoolbox.store.sqlite.walsync import WalSync


def _message(n: int) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:a@example.org"),
        recipients=(Address.parse("X:b"),),
        content=b"Subject: x\r\n\r\nbody\r\n",
        id=f"m{n}",
    )


def _submit(db: StoreFile, n: int) -> None:
    db.run("submit", lambda c: tx.submit(c, _message(n), now=1000.0, lifetime=3600.0, routes=["t"]))


class SyncProbe:
    """The fsync of a StoreFile: at each call, what the rest of the world sees."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls: list[tuple[str, bool, int]] = []  # (file synced, lock free, messages)
        self.fail: OSError | None = None

    def __call__(self, fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        other = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                lock_free = True
            except sqlite3.OperationalError:
                lock_free = False
            seen = other.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            other.close()
        self.calls.append((target, lock_free, seen))
        if self.fail is not None:
            raise self.fail
        os.fdatasync(fd)


def _open(path: Path, probe: SyncProbe, **levels: str) -> StoreFile:
    return StoreFile.open(path, fsync=probe, sync_after_unlock=True, **levels)


def test_a_full_commit_syncs_the_wal_after_the_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    probe = SyncProbe(path)
    with _open(path, probe) as db:
        _submit(db, 1)
        _submit(db, 2)
        stats = db.stats
    wal = os.path.realpath(path) + "-wal"
    # The first sync of a new WAL file syncs its directory too (the file's name).
    files = [target for target, _, _ in probe.calls]
    assert files == [str(tmp_path.resolve()), wal, wal], files
    for _, lock_free, _ in probe.calls:
        assert lock_free  # another writer could go on while the disk worked
    # The commit is made (visible) before the sync, and synced before run() returns.
    assert [seen for *_, seen in probe.calls] == [1, 1, 2]
    assert stats.wal_syncs == 2 and stats.commits == 2


def test_progress_commits_are_not_synced_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    probe = SyncProbe(path)
    with _open(path, probe) as db:
        _submit(db, 1)
        before = len(probe.calls)
        db.run("claim", lambda c: tx.claim(c, "t", owner="o", now=1000.0, lease=60.0))
        assert len(probe.calls) == before
        assert db.stats.progress_commits == 1
    probe = SyncProbe(tmp_path / "f.db")
    with _open(tmp_path / "f.db", probe, progress_synchronous="FULL") as db:
        _submit(db, 1)
        before = len(probe.calls)
        db.run("claim", lambda c: tx.claim(c, "t", owner="o", now=1000.0, lease=60.0))
        assert len(probe.calls) == before + 1
        assert probe.calls[-1][1]  # after the lock, as an acceptance's


@pytest.mark.parametrize("level", ["NORMAL", "EXTRA", "OFF"])
def test_other_levels_are_sqlites_own(tmp_path: Path, level: str) -> None:
    path = tmp_path / "s.db"
    probe = SyncProbe(path)
    with _open(path, probe, synchronous=level, progress_synchronous=level) as db:
        _submit(db, 1)
        assert probe.calls == [] and db.stats.wal_syncs == 0
        assert db.conn.execute("PRAGMA synchronous").fetchone()[0] == (
            ["OFF", "NORMAL", "FULL", "EXTRA"].index(level)
        )


def test_a_failed_sync_says_the_commit_was_written(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    probe = SyncProbe(path)
    with _open(path, probe) as db:
        _submit(db, 1)
        probe.fail = OSError(errno.EIO, "Input/output error")
        with pytest.raises(StoreError) as caught:
            _submit(db, 2)
        text = str(caught.value)
        assert "the commit was written but syncing" in text and "-wal" in text, text
        assert "Input/output error" in text and "power cut" in text, text
        probe.fail = None
        _submit(db, 3)  # the store goes on
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 3


def test_without_it_full_is_sqlites_own(tmp_path: Path) -> None:
    # One process alone on its file: SQLite syncs inside COMMIT (a little faster).
    path = tmp_path / "s.db"
    probe = SyncProbe(path)
    with StoreFile.open(path, fsync=probe) as db:
        _submit(db, 1)
        assert probe.calls == [] and db.stats.wal_syncs == 0
        assert db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_the_store_thread_syncs_each_durable_group_once(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db", sync_after_unlock=True) as store:
        for n in range(5):
            await store.submit(_message(n), now=1000.0, lifetime=3600.0, routes=["t"])
        await store.claim("t", owner="o", now=1000.0, lease=60.0)
        stats = store.statistics()
    assert stats["wal_syncs"] == stats["durable_commits"] >= 1
    assert stats["progress_commits"] == 1
    assert stats["pragmas"]["synchronous"] == 2  # type: ignore[index]  # as configured
    assert stats["sync_after_unlock"] is True
    async with SQLiteStore(tmp_path / "alone.db") as store:
        await store.submit(_message(1), now=1000.0, lifetime=3600.0, routes=["t"])
        stats = store.statistics()
    assert stats["sync_after_unlock"] is False and stats["wal_syncs"] == 0


# -- WalSync on its own ---------------------------------------------------------------
def test_walsync_opens_the_wal_once_and_falls_back_to_the_database(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    db.write_bytes(b"db")
    wal = tmp_path / "s.db-wal"
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    sync = WalSync(str(db), fsync=fsync)
    try:
        # No WAL yet: what was committed is in the database file, synced instead.
        sync.sync()
        assert synced == [str(db)] and sync.opened == 0
        wal.write_bytes(b"frames")
        synced.clear()
        sync.sync()
        sync.sync()
        # Opened once, its directory synced then (the new file's name), kept open.
        assert synced == [str(tmp_path), str(wal), str(wal)]
        assert sync.opened == 1
    finally:
        sync.close()


def test_walsync_resolves_a_symlinked_database(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "s.db").write_bytes(b"db")
    (real / "s.db-wal").write_bytes(b"wal")
    (tmp_path / "link.db").symlink_to(real / "s.db")
    synced: list[str] = []
    sync = WalSync(
        str(tmp_path / "link.db"),
        fsync=lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")),
    )
    try:
        sync.sync()
    finally:
        sync.close()
    assert synced == [str(real), str(real / "s.db-wal")]


# -- who asks for it -------------------------------------------------------------------
def test_the_daemon_asks_for_it_when_other_processes_write_its_file(tmp_path: Path) -> None:
    text = re.sub(r"^processes = \d+", "processes = 0", default_profile_text(tmp_path), flags=re.M)
    (tmp_path / "spoolbox.toml").write_text(text)
    alone = load_profile(tmp_path / "spoolbox.toml")
    assert not shares_store(alone, workers=0)
    assert shares_store(alone, workers=2)  # delivery workers
    (tmp_path / "spoolbox.toml").write_text(text.replace("processes = 0", "processes = 1"))
    with_processes = load_profile(tmp_path / "spoolbox.toml")
    assert shares_store(with_processes, workers=0)  # listener processes
    for shared in (False, True):
        store = store_from_settings(alone.store, shared=shared)
        assert isinstance(store, SQLiteStore) and store.sync_after_unlock is shared
