"""One open store file on one thread: its commit levels, its read and write
transactions, the waits for another process's write lock, and their counters.

The store's thread (:mod:`.worker`) builds its group commits on these steps; a
process without an event loop runs an operation of :mod:`.transactions` through
:meth:`StoreFile.run`, with the same checks on opening, the same commit levels and
the same lock waits as the store's own commits::

    with StoreFile.open(path) as db:
        info = db.run("submit", lambda conn: transactions.submit(conn, message, ...))
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, TypeVar

from ..base import StoreError, StoreFull
from ..operations import OPERATIONS, Kind
from . import schema
from .walsync import WalSync
from .writelock import WriteLock

__all__ = ["BUSY_TIMEOUT", "Stats", "StoreFile", "disk_full", "sync_level"]

_T = TypeVar("_T")

SYNCHRONOUS_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
BUSY_TIMEOUT: Final = 30.0  # seconds a writer waits for another process's transaction
#: Waiting for another process's write lock: first pause, then doubled up to the last.
#: SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms, far longer than our commits take.
_LOCK_POLL_FIRST: Final = 50e-6
_LOCK_POLL_MAX: Final = 1e-3


def sync_level(name: str, value: str) -> str:
    """``value`` as a ``PRAGMA synchronous`` level; ValueError naming ``name`` if it is none."""
    level = value.upper()
    if level not in SYNCHRONOUS_MODES:
        raise ValueError(f"{name} must be one of {', '.join(SYNCHRONOUS_MODES)}, not {value!r}")
    return level


def commit_levels(synchronous: str, progress_synchronous: str) -> tuple[str, str]:
    """The levels of durable and of progress commits, checked; progress is never
    committed more strongly than acceptance."""
    mode = sync_level("synchronous", synchronous)
    progress = sync_level("progress_synchronous", progress_synchronous)
    return mode, min(progress, mode, key=SYNCHRONOUS_MODES.index)


@dataclass(slots=True)
class Stats:
    commits: int = 0
    grouped_writes: int = 0  # writes that shared a transaction with others
    rollbacks: int = 0
    reads: int = 0
    submits: int = 0
    submit_batches: int = 0
    largest_batch: int = 0
    lock_waits: int = 0  # transactions that found another process holding the lock
    lock_wait_seconds: float = 0.0
    write_seconds: float = 0.0  # holding the write lock (statements and COMMIT)
    progress_commits: int = 0  # commits made at progress_synchronous (no fsync by default)
    wal_syncs: int = 0  # WAL syncs after a FULL commit, outside the write lock
    wal_sync_seconds: float = 0.0
    pragmas: dict[str, object] = field(default_factory=dict)


class StoreFile:
    """An open store file: ``StoreFile.open(path, ...)``, then :meth:`run` (or the
    steps the store's thread uses), then :meth:`close`.  ``synchronous`` and
    ``progress_synchronous`` are those of :class:`~.store.SQLiteStore`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        *,
        levels: tuple[str, str],
        busy_timeout: float,
        stats: Stats,
        fsync: Callable[[int], None] = os.fdatasync,
        sync_after_unlock: bool = False,
    ) -> None:
        self.conn = conn
        self.path = path
        self.stats = stats
        self._synchronous, self._progress_sync = levels
        self._conn_sync = self._synchronous  # the level the connection is at now
        self._busy_timeout = busy_timeout
        # With sync_after_unlock, FULL is SQLite's NORMAL and then the WAL synced by
        # us, after the write lock is released (see .walsync): a durable commit no
        # longer makes the other processes' writers wait for the disk.
        self.wal = WalSync(path, fsync=fsync)
        # The kernel's queue for the write lock (.writelock); None: SQLite's alone.
        self.write_lock = WriteLock.open(path)
        late = {
            durable: sync_after_unlock and level == "FULL"
            for durable, level in ((True, self._synchronous), (False, self._progress_sync))
        }
        self._sync_after = late
        self._level = {
            True: "NORMAL" if late[True] else self._synchronous,
            False: "NORMAL" if late[False] else self._progress_sync,
        }

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        progress_synchronous: str = "NORMAL",
        busy_timeout: float = BUSY_TIMEOUT,
        stats: Stats | None = None,
        fsync: Callable[[int], None] = os.fdatasync,
        sync_after_unlock: bool = False,
    ) -> StoreFile:
        """Open (create, check, migrate) the store at ``path``; raises StoreError.

        ``sync_after_unlock``: a commit at ``FULL`` is made at SQLite's ``NORMAL`` and
        the WAL then synced with ``fsync`` after the write lock is released
        (:mod:`.walsync`), for a file other processes write too; without it ``FULL``
        is SQLite's own, a little faster for a file one process writes."""
        levels = commit_levels(synchronous, progress_synchronous)
        path = os.fspath(path)
        conn = schema.connect(path, synchronous=levels[0], busy_timeout=busy_timeout)
        stats = Stats() if stats is None else stats
        try:
            found = schema.pragmas(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot prepare the store {path}: {exc}") from exc
        stats.pragmas = {
            "journal_mode": found["journal_mode"],
            "synchronous": found["synchronous"],
            "progress_synchronous": SYNCHRONOUS_MODES.index(levels[1]),
            "foreign_keys": found["foreign_keys"],
            "user_version": found["user_version"],
        }
        return cls(
            conn,
            path,
            levels=levels,
            busy_timeout=float(busy_timeout),
            stats=stats,
            fsync=fsync,
            sync_after_unlock=sync_after_unlock,
        )

    def close(self) -> None:
        self.conn.close()
        self.wal.close()
        if self.write_lock is not None:
            self.write_lock.close()

    def __enter__(self) -> StoreFile:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    # -- whole operations --------------------------------------------------------------
    def run(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn`` in the transaction the operation ``what`` needs (a snapshot, a
        durable commit or a progress commit); sqlite's errors as StoreError."""
        kind = OPERATIONS[what]
        try:
            if kind is Kind.READ:
                return self.read(fn)
            durable = kind is Kind.WRITE
            self.set_sync(durable)
            self.begin_immediate()
            return self.commit_started(fn, durable)
        except sqlite3.Error as exc:
            raise self.error(what, exc) from exc

    # -- the steps ---------------------------------------------------------------------
    def set_sync(self, durable: bool) -> None:
        """Put the connection at the level the next commit needs (outside a transaction).

        One WAL file takes both kinds of commit in order, and a commit's fsync covers
        every frame before it: a progress commit lost to a power cut takes with it
        only later commits that were not synced either, never an acceptance."""
        level = self._level[durable]
        if level != self._conn_sync:
            self.conn.execute(f"PRAGMA synchronous = {level}")
            self._conn_sync = level

    def try_begin(self) -> bool:
        """``BEGIN IMMEDIATE`` if the write lock is free (True), else nothing (False)."""
        lock = self.write_lock
        if lock is not None and not lock.try_acquire():
            return False
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self._release()
            if not _is_busy(exc):
                raise
            return False
        except BaseException:
            self._release()
            raise
        return True

    def begin_immediate(self) -> bool:
        """``BEGIN IMMEDIATE``, waiting for another process's write lock for up to
        ``busy_timeout``: in the kernel's queue of the side file (.writelock), then,
        should a program that does not use it hold SQLite's lock, in short pauses
        (the connection's own busy timeout is 0).  True if it had to wait."""
        if self.try_begin():
            return False
        start = time.monotonic()
        lock = self.write_lock
        if lock is None:
            self._lock_wait(lambda: self.conn.execute("BEGIN IMMEDIATE"), start)
            return True
        if not lock.acquire(self._busy_timeout):
            raise sqlite3.OperationalError(
                f"database is locked: another process held the store's write lock "
                f"({lock.path}) for over {self._busy_timeout:g} s"
            )
        try:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self._lock_wait(lambda: self.conn.execute("BEGIN IMMEDIATE"), start)
                return True
        except BaseException:
            self._release()
            raise
        self.stats.lock_waits += 1
        self.stats.lock_wait_seconds += time.monotonic() - start
        return True

    def commit(self) -> None:
        """COMMIT the write transaction begun, and let the next writer in."""
        self.conn.execute("COMMIT")
        self._release()

    def _release(self) -> None:
        if self.write_lock is not None:
            self.write_lock.release()

    def commit_started(self, fn: Callable[[sqlite3.Connection], _T], durable: bool) -> _T:
        """``fn`` in the write transaction begun, then COMMIT (counted); on an error
        the transaction is rolled back and the error raised."""
        began = time.monotonic()
        try:
            result = fn(self.conn)
            self.commit()
        except BaseException:
            self.rollback()
            self.stats.rollbacks += 1
            raise
        self.stats.write_seconds += time.monotonic() - began
        self.stats.commits += 1
        if not durable:
            self.stats.progress_commits += 1
        self.after_commit(durable)
        return result

    def after_commit(self, durable: bool) -> None:
        """Right after a COMMIT (the write lock released): the WAL synced if the
        commit's level is FULL, before anyone hears of the commit; OSError if the disk
        refuses (the commit may stand: the caller reports a temporary error)."""
        if self._sync_after[durable]:
            began = time.monotonic()
            try:
                self.wal.sync()
            except OSError as exc:
                raise StoreError(
                    f"{self.path}: the commit was written but syncing {self.wal.wal_path} "
                    f"failed: {exc}; it may not survive a power cut"
                ) from exc
            self.stats.wal_syncs += 1
            self.stats.wal_sync_seconds += time.monotonic() - began

    def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn`` in a read transaction; again after a pause if the database was busy
        (in WAL mode only while another process recovers or closes the file)."""

        def attempt() -> _T:
            self.conn.execute("BEGIN")
            try:
                result = fn(self.conn)
                self.conn.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise
            return result

        try:
            result = attempt()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            result = self._lock_wait(attempt, time.monotonic())
        self.stats.reads += 1
        return result

    def rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self._release()

    def error(self, what: str, exc: BaseException) -> StoreError:
        """A StoreError for a failed ``what`` on this file, caused by ``exc``: a
        :class:`~spoolbox.store.StoreFull` when the disk is full."""
        kind = StoreFull if disk_full(exc) else StoreError
        err = kind(f"{self.path}: {what} failed: {exc}")
        err.__cause__ = exc
        return err

    def _lock_wait(self, attempt: Callable[[], _T], start: float) -> _T:
        """``attempt`` again after short pauses while SQLite says busy, until
        ``busy_timeout`` from ``start``."""
        self.stats.lock_waits += 1
        delay = _LOCK_POLL_FIRST
        while True:
            time.sleep(delay)
            try:
                result = attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() - start > self._busy_timeout:
                    raise
                delay = min(delay * 2, _LOCK_POLL_MAX)
            else:
                self.stats.lock_wait_seconds += time.monotonic() - start
                return result


#: What a full disk or a spent quota looks like to the operating system.
_FULL_ERRNOS: Final = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) says the disk is full: SQLite's
    SQLITE_FULL ("database or disk is full"), or ENOSPC or EDQUOT from the system."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL:
            return True
        e = e.__cause__ or e.__context__
    return False


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (with any extended code): another connection has it."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # pragma: no cover - Python < 3.11 has no error codes
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
