"""The kernel's queue for the store's write lock (:mod:`spoolbox.store.sqlite.writelock`):
writers of one store wait for each other in ``flock`` on its ``-lock`` file, a wait
is bounded by the busy timeout even behind a stopped process, the lock is let go
after every commit and rollback, and a store whose side file cannot be opened works
on SQLite's lock alone."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlite_helpers import T0, new_message, raw

from spoolbox.model import MessageInfo
from spoolbox.store.base import StoreError
from spoolbox.store.sqlite import StoreFile, transactions, writelock
from spoolbox.store.sqlite.connection import Stats
from spoolbox.store.sqlite.writelock import WriteLock, lock_path

#: A writer in another process: opens the store, begins a write transaction (taking
#: the side file's lock and SQLite's), says "held", and on a line from stdin submits a
#: message in it and commits.
_HOLDER = """
import sys
from spoolbox.store.sqlite import StoreFile, transactions
sys.path.insert(0, sys.argv[2])
from sqlite_helpers import T0, new_message
with StoreFile.open(sys.argv[1]) as db:
    db.set_sync(True)
    assert not db.begin_immediate()
    print("held", flush=True)
    sys.stdin.readline()
    db.commit_started(
        lambda conn: transactions.submit(conn, new_message(99), now=T0, lifetime=3600), True
    )
    print("committed", flush=True)
    sys.stdin.readline()
"""


def _submit(db: StoreFile, i: int) -> MessageInfo:
    return db.run(
        "submit", lambda conn: transactions.submit(conn, new_message(i), now=T0, lifetime=3600)
    )


@pytest.fixture
def start_holder(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Starts another process that holds the write lock of ``tmp_path / "spool.db"``
    (open the test's own store first: opening one waits for the lock)."""
    procs: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(tmp_path / "spool.db"), str(Path(__file__).parent)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()


def _helper_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "spoolbox-store-lock"}


def _commit(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("commit\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == "committed\n"


def _writer_waiting(
    path: Path, start_holder: Callable[[], subprocess.Popen[str]], stats: Stats
) -> tuple[threading.Thread, subprocess.Popen[str], list[object]]:
    """A thread that opened the store and submits while another process (returned)
    holds the write lock; returned once the thread waits for it in flock."""
    opened, go = threading.Event(), threading.Event()
    outcome: list[object] = []
    before = _helper_threads()

    def submit() -> None:  # a connection belongs to the thread that opened it
        with StoreFile.open(path, stats=stats) as db:
            opened.set()
            go.wait(10)
            outcome.append(_submit(db, 1).id)

    writer = threading.Thread(target=submit)
    writer.start()
    assert opened.wait(10)
    holder = start_holder()
    go.set()
    deadline = time.monotonic() + 10
    while not _helper_threads() - before and time.monotonic() < deadline:
        time.sleep(0.001)  # until the submit waits in flock (its helper thread)
    assert _helper_threads() - before and outcome == []
    return writer, holder, outcome


def test_a_writer_waits_in_the_kernel_for_another_process_and_goes_on_when_it_commits(
    tmp_path: Path, start_holder: Callable[[], subprocess.Popen[str]]
) -> None:
    path = tmp_path / "spool.db"
    stats = Stats()
    writer, holder, outcome = _writer_waiting(path, start_holder, stats)
    _commit(holder)
    writer.join(10)
    assert outcome == ["m0001"]
    assert stats.lock_waits == 1 and stats.commits == 1
    with raw(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM messages ORDER BY id")]
    assert ids == ["m0001", "m0099"]


def test_a_killed_holder_frees_the_lock_with_its_files(
    tmp_path: Path, start_holder: Callable[[], subprocess.Popen[str]]
) -> None:
    path = tmp_path / "spool.db"
    writer, holder, outcome = _writer_waiting(path, start_holder, Stats())
    holder.kill()
    holder.wait(10)
    writer.join(10)
    assert outcome == ["m0001"]
    with raw(path) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM messages")]
    assert ids == ["m0001"]  # the killed writer's transaction left nothing


def test_a_wait_behind_a_stopped_process_ends_at_the_busy_timeout_naming_the_lock(
    tmp_path: Path, start_holder: Callable[[], subprocess.Popen[str]]
) -> None:
    path = tmp_path / "spool.db"
    with StoreFile.open(path, busy_timeout=0.3) as db:
        holder = start_holder()
        os.kill(holder.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(StoreError) as err:
            _submit(db, 1)
        assert time.monotonic() - started < 10  # it did not wait for the process
        assert str(err.value) == (
            f"{path}: submit failed: database is locked: another process held the "
            f"store's write lock ({lock_path(str(path))}) for over 0.3 s"
        )
        assert db.write_lock is not None and not db.write_lock.held
        # The stopped process goes on and commits: the helper still blocked for the
        # wait that gave up takes the lock then, and hands it to the next writer.
        os.kill(holder.pid, signal.SIGCONT)
        _commit(holder)
        assert _submit(db, 2).id == "m0002"
        assert _submit(db, 3).id == "m0003"


def test_the_lock_is_let_go_after_a_commit_and_after_a_failed_write(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with StoreFile.open(path) as db, StoreFile.open(path, busy_timeout=0.05) as other:
        assert db.write_lock is not None and other.write_lock is not None
        _submit(db, 1)
        assert not db.write_lock.held
        assert other.write_lock.try_acquire()
        other.write_lock.release()
        with pytest.raises(StoreError, match="already used by a different message"):
            db.run(
                "submit",
                lambda conn: transactions.submit(
                    conn, new_message(1, "X:carol"), now=T0, lifetime=3600
                ),
            )
        assert not db.write_lock.held
        assert _submit(other, 2).id == "m0002"  # no wait: the lock is free
        assert other.stats.lock_waits == 0


def test_a_store_whose_side_file_cannot_be_opened_works_on_sqlite_lock_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    Path(lock_path(str(path))).mkdir()  # not a file this store can open
    with StoreFile.open(path, busy_timeout=0.05) as db, raw(path) as other:
        assert db.write_lock is None
        assert _submit(db, 1).id == "m0001"
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=rf"{path}: submit failed: database is locked"):
            _submit(db, 2)
        other.execute("ROLLBACK")
        assert _submit(db, 2).id == "m0002"
        assert db.stats.lock_waits == 1


def test_a_file_system_without_flock_leaves_the_store_on_sqlite_lock_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(writelock.fcntl, "flock", no_flock)
    path = tmp_path / "spool.db"
    with StoreFile.open(path) as db:
        assert db.write_lock is None
        assert _submit(db, 1).id == "m0001"


# -- the lock itself ---------------------------------------------------------------------


@pytest.fixture
def locks(tmp_path: Path) -> Iterator[tuple[WriteLock, WriteLock]]:
    """Two locks of one store (two open files, as two processes have), closed after."""
    db = str(tmp_path / "spool.db")
    Path(db).touch(mode=0o600)
    first, second = WriteLock.open(db), WriteLock.open(db)
    assert first is not None and second is not None
    yield first, second
    first.close()
    second.close()


def test_a_lock_taken_is_refused_to_another_open_file_until_released(
    locks: tuple[WriteLock, WriteLock],
) -> None:
    first, second = locks
    assert first.try_acquire() and first.held
    assert not second.try_acquire()
    assert not second.acquire(0.05) and not second.held
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(second.acquire(10)))
    waiter.start()
    first.release()
    waiter.join(10)
    assert got == [True] and second.held
    assert not first.try_acquire()
    second.release()
    assert first.try_acquire()
    first.release()


def test_a_wait_given_up_lets_the_lock_go_once_the_helper_gets_it(
    locks: tuple[WriteLock, WriteLock],
) -> None:
    first, second = locks
    assert first.try_acquire()
    assert not second.acquire(0.05)  # its helper stays blocked in flock
    first.release()  # the helper takes it, nobody waits for it any more: let go
    deadline = time.monotonic() + 10
    while not first.try_acquire():
        assert time.monotonic() < deadline, "the helper kept the lock"
        time.sleep(0.001)
    first.release()


def test_closing_while_the_helper_waits_ends_it_and_lets_the_lock_go(
    locks: tuple[WriteLock, WriteLock],
) -> None:
    first, second = locks
    assert first.try_acquire()
    assert not second.acquire(0.05)
    helper = second._helper
    assert helper is not None and helper.is_alive()
    second.close()  # the helper is blocked in flock: it closes the file itself
    second.close()  # once: closing again does nothing
    first.release()
    helper.join(10)
    assert not helper.is_alive()
    assert first.try_acquire()
    first.release()


def test_the_side_file_has_the_store_mode_and_is_shared_by_paths_to_one_store(
    tmp_path: Path,
) -> None:
    db = tmp_path / "spool.db"
    db.touch(mode=0o640)
    db.chmod(0o640)
    link = tmp_path / "link.db"
    link.symlink_to(db)
    assert lock_path(str(link)) == lock_path(str(db)) == f"{db}-lock"
    lock = WriteLock.open(str(link))
    assert lock is not None
    lock.close()
    assert Path(f"{db}-lock").stat().st_mode & 0o777 == 0o640
    # Read access is enough to queue (flock needs no more): the side file is opened
    # read-only, so a user of the store's group, who may read but not write it
    # (0640), takes it as well.
    first, second = WriteLock.open(str(db)), WriteLock.open(str(db))
    assert first is not None and second is not None
    try:
        assert fcntl.fcntl(first._fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert first.try_acquire() and not second.try_acquire()
        first.release()
        assert second.try_acquire()
        second.release()
    finally:
        first.close()
        second.close()
