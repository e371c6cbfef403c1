"""The SQLite store: the embedded default backend of :class:`~spoolbox.store.base.Store`.

Same semantics as :class:`~spoolbox.store.memory.MemoryStore` (both pass
:func:`spoolbox.testing.store_conformance.check_store`), on a file that survives
crashes.  How it is built:

* **Off the event loop.**  One dedicated thread owns the only connection (sqlite
  connections are bound to their thread).  Every operation is a job on that thread's
  queue; the caller awaits a future.  Reads run on the same thread, each in its own
  read transaction, so they see a consistent snapshot.  Outcomes go back to the
  event loop through one outbox: the outcomes that arrive before the loop gets
  round to them (a group commit's, say) wake it once, not once each.
* **Durable and atomic.**  WAL journal, ``synchronous=FULL`` by default, foreign keys
  on.  Every write is one ``BEGIN IMMEDIATE`` transaction, so a claim is atomic across
  processes: two spoolers on one file never claim the same recipient.  ``settle``
  (with its reports) and ``deliver_inbound`` (with the provider's profile updates)
  are one transaction each.  The spooler's progress (claims, lease renewals and
  releases, settles) commits at ``progress_synchronous``, ``NORMAL`` by default:
  not fsynced, yet ordered in the WAL before every later fsynced commit, and never
  lost by a process crash.  A power cut can undo only such progress, never an
  acceptance; the work is then done again (delivered twice at worst).
* **Group commit.**  ``submit`` calls are collected: all submits made in one turn of
  the event loop, and all those that arrive while the thread is busy committing, go
  into the next transaction together, one fsync for the batch.  Each submitter
  resumes only after its batch committed.  A transaction that has to wait for
  another process's write lock takes in what arrives meanwhile.  ``statistics()``
  counts commits and submits.
* **No queue scans.**  Recipient rows carry their route, state, priority and ready
  time (``max(send_at, retry_at)``); picking the next job is a range scan of a partial
  index per priority.  Recipients per state live in a counters table kept by triggers.
  See :mod:`._sqlite_schema` for the schema, its migrations and every query.
* **Careful opening.**  Before it writes anything, ``open`` checks that the file is a
  SQLite database, a spoolbox store and not from a newer schema; if not it raises
  :class:`~spoolbox.store.base.StoreError` naming the file and leaves it as it was.
  A file that exists but holds no spoolbox schema (an empty file, an empty database)
  is refused too: a new store is made whole under a temporary name, schema included,
  and linked into place, so a store file without its schema was never made by
  spoolbox.  Then it switches to WAL and runs the pending migrations, each in one
  transaction.
* **Private.**  A new store file is created mode 0600, and SQLite gives its ``-wal``
  and ``-shm`` files the mode of the database; an existing store that other users
  could read is made 0600 (the three files) when it is opened, with a warning.

Content is stored once, in chunks, and streamed chunk by chunk by ``iter_content``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import functools
import hashlib
import io
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from ...model import (
    TERMINAL,
    Address,
    MessageInfo,
    MessageState,
    MessageSummary,
    NewMessage,
    Notify,
    Priority,
    RecipientRecord,
    RecipientState,
    check_transition,
    message_state,
    subject_of,
)
from ..base import (
    ClaimedJob,
    InboundMessage,
    InboxEntry,
    JSONValue,
    LeaseLost,
    RecipientUpdate,
    StoreError,
    UnknownMessage,
    new_inbox_entry,
    submission_plan,
)
from . import schema as _sql

__all__ = ["SQLiteStore"]

log = logging.getLogger("spoolbox.store")

_R = RecipientState
_T = TypeVar("_T")

_SYNCHRONOUS_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
_BUSY_TIMEOUT: Final = 30.0  # seconds a writer waits for another process's transaction
#: Waiting for another process's write lock: first pause, then doubled up to the last.
#: SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms, far longer than our commits take.
_LOCK_POLL_FIRST: Final = 50e-6
_LOCK_POLL_MAX: Final = 1e-3
_WRITE_BATCH: Final = 64  # writes sharing one transaction at most (group commit)
#: Messages up to this size are read in the claim's transaction (ClaimedJob.content).
PREFETCH_LIMIT: Final = 256 * 1024
_PRIORITIES: Final = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_PAGE: Final = 200  # messages read per query while filtering a listing by state


class _Mode(enum.Enum):
    READ = "read"  # one read transaction (a consistent snapshot)
    WRITE = "write"  # one BEGIN IMMEDIATE transaction, committed


class _Completion(Protocol):
    """What the store's thread needs of a job's future (``concurrent.futures.Future``
    has it; so has :class:`_Reply`)."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException | None, /) -> None: ...


class _Outbox:
    """Outcomes from the store's thread to one event loop.

    ``call_soon_threadsafe`` wakes the loop (a write to its self-pipe) each time it
    is called, and ``asyncio.wrap_future`` calls it once per future.  Here only the
    first outcome of a batch calls it; the outcomes that arrive before the loop runs
    that callback (those of one group commit, say) are set in the same turn.
    """

    __slots__ = ("_items", "_lock", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []

    def put(self, fut: asyncio.Future[Any], exc: BaseException | None, value: Any) -> None:
        with self._lock:
            self._items.append((fut, exc, value))
            if len(self._items) > 1:
                return  # a delivery is already on its way
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for fut, exc, value in items:
            if fut.done():  # the caller was cancelled meanwhile
                continue
            if exc is None:
                fut.set_result(value)
            else:
                fut.set_exception(exc)


class _Reply:
    """A job's future as the store's thread sees it: the outcome goes to the
    caller's asyncio future through its loop's outbox."""

    __slots__ = ("fut", "outbox")

    def __init__(self, fut: asyncio.Future[Any], outbox: _Outbox) -> None:
        self.fut = fut
        self.outbox = outbox

    def set_running_or_notify_cancel(self) -> bool:
        # A caller that gave up before the job started: the job is skipped.  (Once it
        # runs, a cancelled caller no longer stops it, as with concurrent futures.)
        return not self.fut.cancelled()

    def set_result(self, result: Any, /) -> None:
        self.outbox.put(self.fut, None, result)

    def set_exception(self, exception: BaseException | None, /) -> None:
        self.outbox.put(self.fut, exception, None)


@dataclass(slots=True)
class _Job:
    what: str
    fn: Callable[[sqlite3.Connection], Any]
    future: _Completion
    mode: _Mode
    stop: bool = False
    #: False for progress (claims, renewals, settles, lease releases): committed at
    #: ``progress_synchronous``; True for everything that takes on or changes a message.
    durable: bool = True


#: ``more(limit, progress_only)``: write jobs waiting in the store's queue, started.
_MoreWrites = Callable[[int, bool], list[_Job]]


@dataclass(slots=True)
class _Submission:
    message: NewMessage
    now: float
    lifetime: float
    future: _Completion
    routes: Sequence[str | None] | None = None


def _stop_job(done: _Completion | None = None) -> _Job:
    future = concurrent.futures.Future[None]() if done is None else done
    return _Job("close", lambda conn: None, future, _Mode.READ, stop=True)


class _Signal(enum.Enum):
    SUBMIT_BATCH = "submit-batch"  # commit the submissions collected so far


@dataclass(slots=True)
class _Stats:
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
    pragmas: dict[str, object] = field(default_factory=dict)


class SQLiteStore:
    """A :class:`~spoolbox.store.base.Store` in one SQLite file.

    ``SQLiteStore(path, synchronous="FULL")``; then ``await store.open()`` (or
    ``async with store:``) and ``await store.close()``.  ``synchronous`` is the
    ``PRAGMA synchronous`` level of every commit that takes on or changes a message
    (a submit, an inbound message, a hold, a cancel ...): ``FULL`` (the default) makes
    it durable against power loss; ``NORMAL`` may lose the last commits on power loss
    (never on a process crash) and is for tests.  ``progress_synchronous`` (default
    ``NORMAL``, never stronger than ``synchronous``) is the level of the spooler's
    progress: claims, lease renewals and releases, settles.  Losing one of those in
    a power cut only makes work be done again (a delivery made twice, at least once
    as always); a process crash loses nothing at either level.  ``FULL`` fsyncs
    them too, for fewer duplicates after a power cut.  One store object serves one
    event loop; several store objects (several processes) may share one file: a
    write that finds another one's transaction waits for it in short pauses, up to
    ``busy_timeout`` seconds (30), then fails with
    :class:`~spoolbox.store.base.StoreError`.  ``statistics()`` counts these waits
    (``lock_waits``, ``lock_wait_seconds``), the time this store held the write lock
    (``write_seconds``) and the ``progress_commits``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        progress_synchronous: str = "NORMAL",
        busy_timeout: float = _BUSY_TIMEOUT,
    ) -> None:
        mode = _sync_level("synchronous", synchronous)
        progress = _sync_level("progress_synchronous", progress_synchronous)
        self._path = os.fspath(path)
        self._synchronous = mode
        # Progress is never committed more strongly than acceptance.
        self._progress_sync = min(progress, mode, key=_SYNCHRONOUS_MODES.index)
        self._conn_sync = mode  # the level the connection is at now
        self._busy_timeout = float(busy_timeout)
        self._jobs: queue.SimpleQueue[_Job | _Signal] = queue.SimpleQueue()
        self._pending: list[_Submission] = []
        self._pending_lock = threading.Lock()
        self._kick_scheduled = False
        self._outbox: _Outbox | None = None
        self._thread: threading.Thread | None = None
        self._open = False
        self._stats = _Stats()

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<SQLiteStore {self._path!r} {state}>"

    @property
    def path(self) -> str:
        return self._path

    def statistics(self) -> dict[str, object]:
        """Counters since ``open``: commits (write transactions), submits, batches, ..."""
        s = self._stats
        return {
            "path": self._path,
            "open": self._open,
            "schema_version": _sql.SCHEMA_VERSION,
            "commits": s.commits,
            "grouped_writes": s.grouped_writes,
            "rollbacks": s.rollbacks,
            "reads": s.reads,
            "submits": s.submits,
            "submit_batches": s.submit_batches,
            "largest_batch": s.largest_batch,
            "lock_waits": s.lock_waits,
            "lock_wait_seconds": s.lock_wait_seconds,
            "write_seconds": s.write_seconds,
            "progress_commits": s.progress_commits,
            "pending_jobs": self._jobs.qsize(),
            "pragmas": dict(s.pragmas),
        }

    # -- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        """Start the store's thread, check the file, migrate it; raises StoreError."""
        if self._thread is not None:
            raise StoreError(f"{self!r} is already open")
        # A fresh queue per opening: jobs left from an earlier one can never leak in.
        self._jobs = queue.SimpleQueue()
        self._stats = _Stats()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run,
            args=(self._jobs, ready),
            name=f"spoolbox-sqlite {self._path}",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            # After a failed connect the thread has ended by itself; after a cancelled
            # open it finds this stop job once it has connected, and closes.
            self._jobs.put(_stop_job())
            self._thread = None
            raise
        self._open = True

    async def close(self) -> None:
        """Finish the queued work, commit what was submitted, close the file."""
        thread = self._thread
        if thread is None:
            return
        self._open = False
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._jobs.put(_stop_job(done))
        await asyncio.shield(asyncio.wrap_future(done))
        # The thread's last step was to resolve ``stop``: this join returns at once.
        thread.join()
        self._thread = None

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the store's thread ----------------------------------------------------------
    def _run(
        self, jobs: queue.SimpleQueue[_Job | _Signal], ready: concurrent.futures.Future[None]
    ) -> None:
        if not ready.set_running_or_notify_cancel():
            return
        try:
            conn = self._connect()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        stop: _Job | None = None
        backlog: collections.deque[_Job | _Signal] = collections.deque()

        def more_writes(limit: int, progress_only: bool) -> list[_Job]:
            """Write jobs waiting in the queue, started, up to ``limit`` (the rest of
            the queue keeps its order in ``backlog``)."""
            out: list[_Job] = []
            while len(out) < limit:
                try:
                    nxt = jobs.get_nowait()
                except queue.Empty:
                    break
                if (
                    isinstance(nxt, _Job)
                    and nxt.mode is _Mode.WRITE
                    and not nxt.stop
                    and not (progress_only and nxt.durable)
                ):
                    if nxt.future.set_running_or_notify_cancel():
                        out.append(nxt)
                else:
                    backlog.append(nxt)
            return out

        try:
            while stop is None:
                item = backlog.popleft() if backlog else jobs.get()
                if item is not _Signal.SUBMIT_BATCH and item.stop:
                    stop = item
                elif item is _Signal.SUBMIT_BATCH or item.mode is _Mode.WRITE:
                    # Group commit: every write already waiting, and every submission
                    # collected so far, join this transaction (one fsync for all).
                    batch: list[_Job] = []
                    if item is not _Signal.SUBMIT_BATCH:
                        if not item.future.set_running_or_notify_cancel():
                            continue  # the caller gave up before the job started
                        batch.append(item)
                    batch += more_writes(_WRITE_BATCH - len(batch), progress_only=False)
                    if len(batch) == 1 and not self._pending:
                        self._execute(conn, batch[0], more_writes)
                    else:
                        self._commit_group(conn, batch, more_writes)
                else:
                    if item.future.set_running_or_notify_cancel():
                        self._execute(conn, item, more_writes)
            # Whatever was submitted before close is committed, not dropped.
            self._commit_group(conn, [], more_writes)
        finally:
            conn.close()
            if stop is not None and stop.future.set_running_or_notify_cancel():
                stop.future.set_result(None)

    def _connect(self) -> sqlite3.Connection:
        read_only = _read_only_reason(Path(self._path))
        if read_only is not None:
            raise StoreError(f"cannot open the store {self._path} for writing: {read_only}")
        self._create_if_missing(Path(self._path))
        try:
            # mode=rw: never fall back silently to a read-only connection, which
            # would refuse every write for the life of the store; and never create
            # the file (_create_if_missing made it, schema included).
            uri = "file:" + urllib.parse.quote(os.fspath(self._path)) + "?mode=rw"
            conn = sqlite3.connect(
                uri,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=True,
                uri=True,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {self._path}: {exc}") from exc
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_if_missing(self, path: Path) -> None:
        """A new store at ``path``, if there is none: built whole under a temporary
        name (mode 0600, every migration run) and linked into place, so that no
        process ever sees a store file of ours without its schema.  If another
        process links its own first, that one is used."""
        if os.path.lexists(path):
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            try:
                conn = sqlite3.connect(os.fspath(tmp), isolation_level=None)
                try:
                    # WAL from the start (it is kept in the file): switching a linked
                    # store to WAL would need a lock that a second process opening
                    # it at the same moment can refuse at once ("database is locked").
                    conn.execute("PRAGMA journal_mode = WAL")
                    self._migrate(conn)
                finally:
                    conn.close()
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return  # another process created it meanwhile: open theirs
                _fsync_directory(path.parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot create the store {path}: {exc}") from exc

    def _prepare(self, conn: sqlite3.Connection) -> None:
        path = self._path
        # 1. Read-only checks: nothing is written to a file we would refuse.
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            objects = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path} is not a SQLite database or is corrupt ({exc}); it was left untouched"
            ) from exc
        if version > _sql.SCHEMA_VERSION:
            raise StoreError(
                f"{path} has store schema version {version}, but this spoolbox supports "
                f"versions up to {_sql.SCHEMA_VERSION}: it was written by a newer spoolbox; "
                "upgrade spoolbox to open it (the file was left untouched)"
            )
        if (version == 0 and objects > 0) or (version > 0 and app_id != _sql.APPLICATION_ID):
            raise StoreError(
                f"{path} is a SQLite database but not a spoolbox store "
                f"(application id {app_id:#x}, user version {version}); "
                "it was left untouched"
            )
        if version == 0:
            what = "an empty file" if os.path.getsize(path) == 0 else "an empty SQLite database"
            raise StoreError(
                f"{path} exists but holds no spoolbox store ({what}, not made by spoolbox); "
                "it was left untouched: remove it, or set [store] path to another file, "
                "for spoolbox to create a new store"
            )
        _make_private(Path(path))
        # 2. Settings, then migrations (each one transaction).
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._conn_sync = self._synchronous
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            # From here on, waits for another process's lock are ours (_lock_wait).
            conn.execute("PRAGMA busy_timeout = 0")
            conn.row_factory = sqlite3.Row
            self._stats.pragmas = {
                "journal_mode": str(mode),
                "synchronous": int(conn.execute("PRAGMA synchronous").fetchone()[0]),
                "progress_synchronous": _SYNCHRONOUS_MODES.index(self._progress_sync),
                "foreign_keys": int(conn.execute("PRAGMA foreign_keys").fetchone()[0]),
                "user_version": int(conn.execute("PRAGMA user_version").fetchone()[0]),
            }
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prepare the store {path}: {exc}") from exc

    def _migrate(self, conn: sqlite3.Connection) -> None:
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another process may have migrated.
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version >= _sql.SCHEMA_VERSION:
                    conn.execute("COMMIT")
                    return
                for statement in _sql.split_statements(_sql.MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def _execute(self, conn: sqlite3.Connection, job: _Job, more: _MoreWrites) -> None:
        """One started job in a transaction of its own (unless it must wait for the
        write lock: then it waits as a group, see ``_commit_group``)."""
        try:
            if job.mode is _Mode.WRITE:
                self._set_sync(conn, job.durable)
                if not self._try_begin(conn):
                    self._commit_group(conn, [job], more)
                    return
                began = time.monotonic()
                try:
                    result = job.fn(conn)
                    conn.execute("COMMIT")
                    self._stats.write_seconds += time.monotonic() - began
                except BaseException:
                    _rollback(conn)
                    self._stats.rollbacks += 1
                    raise
            else:
                result = self._read_retrying(conn, job.fn)
        except sqlite3.Error as exc:
            job.future.set_exception(self._database_error(job.what, exc))
        except BaseException as exc:
            job.future.set_exception(exc)
        else:
            if job.mode is _Mode.WRITE:
                self._stats.commits += 1
                if not job.durable:
                    self._stats.progress_commits += 1
            else:
                self._stats.reads += 1
            job.future.set_result(result)

    def _take_pending(self) -> list[_Submission]:
        with self._pending_lock:
            subs, self._pending = self._pending, []
        return [sub for sub in subs if sub.future.set_running_or_notify_cancel()]

    def _commit_group(
        self, conn: sqlite3.Connection, started: list[_Job], more: _MoreWrites
    ) -> None:
        """The submissions collected so far and the ``started`` writes in one
        transaction (one fsync), each write in its own savepoint so one that fails is
        undone alone; results are given out only after COMMIT.

        When another process holds the write lock, everything that arrives while this
        group waits for it joins the group: under contention, transactions grow
        instead of queueing up one behind the other (a progress group takes only
        progress writes: it is not fsynced)."""
        subs = self._take_pending()
        if not subs and not started:
            return
        sub_outcomes: list[MessageInfo | StoreError] = []
        outcomes: list[tuple[bool, Any]] = []
        durable = bool(subs) or any(job.durable for job in started)
        try:
            self._set_sync(conn, durable)
            if self._begin_immediate(conn):
                if durable:
                    subs += self._take_pending()
                started += more(_WRITE_BATCH - len(started), not durable)
            began = time.monotonic()
            try:
                for sub in subs:
                    # No savepoint: _insert_message refuses (StoreError) before it
                    # writes anything, and any other error undoes the whole group.
                    try:
                        info = self._insert_message(
                            conn,
                            sub.message,
                            now=sub.now,
                            lifetime=sub.lifetime,
                            routes=sub.routes,
                        )
                    except StoreError as exc:
                        # This submission is refused; the rest of the group goes on.
                        sub_outcomes.append(exc)
                    else:
                        sub_outcomes.append(info)
                for job in started:
                    conn.execute("SAVEPOINT write")
                    try:
                        result = job.fn(conn)
                    except BaseException as exc:
                        conn.execute("ROLLBACK TO write")
                        conn.execute("RELEASE write")
                        err: BaseException = exc
                        if isinstance(exc, sqlite3.Error):
                            err = self._database_error(job.what, exc)
                        outcomes.append((False, err))
                    else:
                        conn.execute("RELEASE write")
                        outcomes.append((True, result))
                conn.execute("COMMIT")
                self._stats.write_seconds += time.monotonic() - began
            except BaseException:
                _rollback(conn)
                self._stats.rollbacks += 1
                raise
        except BaseException as exc:
            for sub in subs:
                serr = (
                    self._database_error("submit", exc)
                    if isinstance(exc, sqlite3.Error)
                    else StoreError(f"{self._path}: submit failed: {exc!r}")
                )
                serr.__cause__ = exc
                sub.future.set_exception(serr)
            for job in started:
                job.future.set_exception(
                    self._database_error(job.what, exc) if isinstance(exc, sqlite3.Error) else exc
                )
            return
        stats = self._stats
        stats.commits += 1
        if not durable:
            stats.progress_commits += 1
        if started:
            stats.grouped_writes += len(started)
        if subs:
            stats.submit_batches += 1
            stats.submits += len(subs)
            stats.largest_batch = max(stats.largest_batch, len(subs))
        for sub, outcome in zip(subs, sub_outcomes, strict=True):
            if isinstance(outcome, StoreError):
                sub.future.set_exception(outcome)
            else:
                sub.future.set_result(outcome)
        for job, (ok, value) in zip(started, outcomes, strict=True):
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _set_sync(self, conn: sqlite3.Connection, durable: bool) -> None:
        """Put the connection at the level the next commit needs (outside a transaction).

        One WAL file takes both kinds of commit in order, and a commit's fsync covers
        every frame before it: a progress commit lost to a power cut takes with it
        only later commits that were not synced either, never an acceptance."""
        level = self._synchronous if durable else self._progress_sync
        if level != self._conn_sync:
            conn.execute(f"PRAGMA synchronous = {level}")
            self._conn_sync = level

    def _try_begin(self, conn: sqlite3.Connection) -> bool:
        """``BEGIN IMMEDIATE`` if the write lock is free (True), else nothing (False)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return False
        return True

    def _begin_immediate(self, conn: sqlite3.Connection) -> bool:
        """``BEGIN IMMEDIATE``, waiting for another process's write lock in short
        pauses (the connection's own busy timeout is 0), for up to ``busy_timeout``;
        True if it had to wait."""
        if self._try_begin(conn):
            return False
        self._lock_wait(lambda: conn.execute("BEGIN IMMEDIATE"))
        return True

    def _read_retrying(
        self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        """``fn`` in a read transaction; again after a pause if the database was busy
        (in WAL mode only while another process recovers or closes the file)."""

        def attempt() -> _T:
            conn.execute("BEGIN")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return result

        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        return self._lock_wait(attempt)

    def _lock_wait(self, attempt: Callable[[], _T]) -> _T:
        self._stats.lock_waits += 1
        start = time.monotonic()
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
                self._stats.lock_wait_seconds += time.monotonic() - start
                return result

    def _database_error(self, what: str, exc: BaseException) -> StoreError:
        err = StoreError(f"{self._path}: {what} failed: {exc}")
        err.__cause__ = exc
        return err

    # -- calling the thread ----------------------------------------------------------
    def _check_open(self) -> None:
        if not self._open:
            raise StoreError(f"{self!r} is not open: call open() first")

    async def _call(
        self,
        what: str,
        fn: Callable[[sqlite3.Connection], _T],
        mode: _Mode,
        *,
        durable: bool = True,
    ) -> _T:
        self._check_open()
        reply = self._reply()
        self._jobs.put(_Job(what, fn, reply, mode, durable=durable))
        result: _T = await reply.fut
        return result

    def _reply(self) -> _Reply:
        """A future on the running loop, answered through that loop's outbox."""
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        if outbox is None or outbox.loop is not loop:
            outbox = self._outbox = _Outbox(loop)
        return _Reply(loop.create_future(), outbox)

    async def _read(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._call(what, fn, _Mode.READ)

    async def _write(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._call(what, fn, _Mode.WRITE)

    async def _progress(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """A write whose loss in a power cut only makes work be done again (a claim, a
        settle): committed at ``progress_synchronous``."""
        return await self._call(what, fn, _Mode.WRITE, durable=False)

    def _kick(self) -> None:
        self._kick_scheduled = False
        self._jobs.put(_Signal.SUBMIT_BATCH)

    # -- submission ----------------------------------------------------------------
    async def submit(
        self,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
    ) -> MessageInfo:
        self._check_open()
        if routes is not None and len(routes) != len(message.recipients):
            raise StoreError(
                f"{len(routes)} routes for {len(message.recipients)} recipients of {message.id}"
            )
        reply = self._reply()
        with self._pending_lock:
            self._pending.append(_Submission(message, float(now), float(lifetime), reply, routes))
        if not self._kick_scheduled:
            # One signal per turn of the loop: every submit of this turn joins the batch.
            self._kick_scheduled = True
            reply.outbox.loop.call_soon(self._kick)
        info: MessageInfo = await reply.fut
        return info

    async def submit_many(
        self,
        messages: Sequence[NewMessage],
        *,
        now: float,
        lifetime: float,
        routes: Sequence[Sequence[str | None] | None] | None = None,
    ) -> list[MessageInfo]:
        plan = submission_plan(list(messages), routes)
        if not plan:
            return []

        def run(conn: sqlite3.Connection) -> list[MessageInfo]:
            # One transaction (a savepoint when grouped): a message refused part way
            # undoes the ones inserted before it.
            return [
                self._insert_message(conn, m, now=float(now), lifetime=float(lifetime), routes=r)
                for m, r in plan
            ]

        return await self._write("submit_many", run)

    def _insert_message(
        self,
        conn: sqlite3.Connection,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
    ) -> MessageInfo:
        """Insert a message (or recognise it again); used by submit and by settle.

        Refuses (StoreError) before writing anything: callers rely on that.
        """
        fingerprint = _fingerprint(message)
        row = conn.execute(_sql.SELECT_MESSAGE, (message.id,)).fetchone()
        if row is not None:
            if row["fingerprint"] != fingerprint:
                raise StoreError(
                    f"message id {message.id!r} is already used by a different message"
                )
            return _message_from_row(row)
        info = MessageInfo(
            id=message.id,
            sender=message.sender,
            priority=message.priority,
            submitted_at=now,
            send_at=None if message.send_at is None else float(message.send_at),
            # The lifetime starts when the message may first be sent (its send-at time).
            expires_at=max(now, message.send_at or now)
            + (message.lifetime if message.lifetime is not None else lifetime),
            notify=message.notify,
            is_report=message.is_report,
            envelope_id=message.envelope_id,
            size=message.size,
            subject=subject_of(message.content),
        )
        conn.execute(
            _sql.INSERT_MESSAGE,
            {
                "id": info.id,
                "fingerprint": fingerprint,
                "sender": None if info.sender is None else str(info.sender),
                "priority": int(info.priority),
                "submitted_at": info.submitted_at,
                "send_at": info.send_at,
                "expires_at": info.expires_at,
                "notify": int(info.notify),
                "is_report": int(info.is_report),
                "envelope_id": info.envelope_id,
                "size": info.size,
                "subject": info.subject,
                "blob_id": _insert_blob(conn, message.content),
            },
        )
        send_at = float(info.send_at or 0.0)
        conn.executemany(
            _sql.INSERT_RECIPIENT,
            (
                (
                    info.id,
                    i,
                    str(a),
                    routes[i] if routes is not None else None,
                    now,
                    int(info.priority),
                    send_at,
                    send_at,
                    info.expires_at,
                )
                for i, a in enumerate(message.recipients)
            ),
        )
        return info

    # -- routing -------------------------------------------------------------------
    async def unrouted(
        self, *, limit: int, after: tuple[str, int] | None = None
    ) -> list[RecipientRecord]:
        mid, idx = after if after is not None else ("", -1)

        def run(conn: sqlite3.Connection) -> list[RecipientRecord]:
            rows = conn.execute(_sql.SELECT_UNROUTED, (mid, idx, max(0, limit)))
            return [_recipient_from_row(r) for r in rows]

        return await self._read("unrouted", run)

    async def assign_routes(self, assignments: Sequence[tuple[str, int, str]]) -> None:
        items = [(transport, mid, idx) for mid, idx, transport in assignments]

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(_sql.ASSIGN_ROUTE, items)

        await self._write("assign_routes", run)

    async def reroute_missing(self, known: Sequence[str]) -> int:
        names = set(known)

        def run(conn: sqlite3.Connection) -> int:
            rows = [
                _recipient_from_row(r)
                for sql in (_sql.SELECT_ROUTED_QUEUED, _sql.SELECT_ROUTED_PARKED)
                for r in conn.execute(sql)
            ]
            held = _HeldCache(conn)
            n = 0
            for r in rows:
                if r.route in names:
                    continue
                back = _R.HELD if held(r.message_id) else _R.QUEUED
                _move(conn, r, replace(r, state=back, route=None))
                n += 1
            return n

        return await self._write("reroute_missing", run)

    # -- claims --------------------------------------------------------------------
    async def claim(
        self,
        transport: str,
        *,
        owner: str,
        now: float,
        lease: float,
        limit: int = 1,
        ignore_retry: bool = False,
    ) -> list[ClaimedJob]:
        pick_sql = _sql.CLAIM_FLUSH if ignore_retry else _sql.CLAIM_READY
        rows_sql = _sql.CLAIMABLE_OF_MESSAGE_FLUSH if ignore_retry else _sql.CLAIMABLE_OF_MESSAGE
        until = now + lease

        def run(conn: sqlite3.Connection) -> list[ClaimedJob]:
            picked: list[str] = []
            for prio in _PRIORITIES:
                if len(picked) >= limit:
                    break
                cursor = conn.execute(pick_sql, (transport, int(prio), now))
                try:
                    for (mid,) in cursor:
                        if mid not in picked:
                            picked.append(mid)
                            if len(picked) >= limit:
                                break
                finally:
                    cursor.close()
            jobs: list[ClaimedJob] = []
            for mid in picked:
                mrow = conn.execute(_sql.SELECT_MESSAGE, (mid,)).fetchone()
                if mrow is None:
                    raise UnknownMessage(f"no message with id {mid!r}")
                info = _message_from_row(mrow)
                claimed: list[RecipientRecord] = []
                for row in conn.execute(rows_sql, (mid, transport, now)).fetchall():
                    r = _recipient_from_row(row)
                    nr = replace(r, state=_R.ACTIVE, updated_at=now)
                    _move(conn, r, nr, owner=owner, lease_until=until)
                    claimed.append(nr)
                if claimed:
                    # A small message's content comes with the claim: the transport
                    # needs it next, and this saves a store round trip per message.
                    content = (
                        _read_blob(conn, int(mrow["blob_id"]))
                        if info.size <= PREFETCH_LIMIT
                        else None
                    )
                    jobs.append(ClaimedJob(info, tuple(claimed), transport, owner, until, content))
            return jobs

        return await self._progress("claim", run)

    async def renew(self, job: ClaimedJob, *, now: float, lease: float) -> ClaimedJob:
        until = now + lease

        def run(conn: sqlite3.Connection) -> None:
            for r in job.recipients:
                row = conn.execute(_sql.SELECT_RECIPIENT, (r.message_id, r.index)).fetchone()
                if row is None:
                    raise UnknownMessage(f"no recipient {r.message_id}#{r.index}")
                state = _R(row["state"])
                if state is not _R.ACTIVE or row["owner"] != job.owner:
                    if state in TERMINAL:
                        continue
                    raise LeaseLost(
                        f"lease on {r.message_id}#{r.index} is no longer held by {job.owner}"
                    )
            conn.executemany(
                _sql.RENEW_LEASE,
                ((until, r.message_id, r.index, job.owner) for r in job.recipients),
            )

        await self._progress("renew", run)
        return replace(job, lease_until=until)

    async def settle(
        self,
        message_id: str,
        updates: Sequence[RecipientUpdate],
        *,
        owner: str | None,
        now: float,
        reports: Sequence[NewMessage] = (),
        inbox_reports: Sequence[InboundMessage] = (),
    ) -> MessageInfo:
        updates = list(updates)
        reports = list(reports)
        inbox_reports = list(inbox_reports)

        def run(conn: sqlite3.Connection) -> MessageInfo:
            info = _load_message(conn, message_id)
            # Check everything first; an error anywhere rolls the whole transaction back.
            rows: dict[int, sqlite3.Row] = {}
            for u in updates:
                row = rows.get(u.index)
                if row is None:
                    row = conn.execute(_sql.SELECT_RECIPIENT, (message_id, u.index)).fetchone()
                    if row is None:
                        raise StoreError(f"{message_id} has no recipient #{u.index}")
                    rows[u.index] = row
                state = _R(row["state"])
                if state is _R.ACTIVE or owner is not None:
                    holder = row["owner"] if state is _R.ACTIVE else None
                    if owner is None or holder != owner:
                        raise LeaseLost(
                            f"{message_id}#{u.index} is leased by {holder or 'nobody'}, not {owner}"
                        )
                check_transition(state, u.state, what=f"{message_id}#{u.index}")
            # Then write each from the row read above (a second update of the same
            # recipient starts from what the first one wrote).
            recs: dict[int, RecipientRecord] = {}
            for u in updates:
                r = recs.get(u.index) or _recipient_from_row(rows[u.index])
                recs[u.index] = _updated(r, u, now=now, held=info.held)
                _move(conn, r, recs[u.index], check=False)
            for rep in reports:
                self._insert_message(
                    conn, rep, now=now, lifetime=info.expires_at - info.submitted_at
                )
            for inbound in inbox_reports:
                _insert_inbound(conn, inbound, None)
            return info

        return await self._progress("settle", run)

    async def release_expired(self, *, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            rows = conn.execute(_sql.SELECT_LEASE_EXPIRED, (now,)).fetchall()
            return _unlease(conn, rows, now)

        return await self._progress("release_expired", run)

    async def release_owner(self, owner: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            rows = conn.execute(_sql.SELECT_LEASED_BY, (owner,)).fetchall()
            return _unlease(conn, rows, None)

        return await self._progress("release_owner", run)

    async def retry_transport(self, transport: str, *, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            rows = conn.execute(_sql.SELECT_RETRYING, (transport, now)).fetchall()
            for row in rows:
                r = _recipient_from_row(row)
                _move(conn, r, replace(r, retry_at=0.0))
            return len(rows)

        return await self._write("retry_transport", run)

    async def count_claimable(self, transport: str, *, now: float, ignore_retry: bool) -> int:
        sql = _sql.COUNT_FLUSH if ignore_retry else _sql.COUNT_READY

        def run(conn: sqlite3.Connection) -> int:
            # A message has one priority, so the per-priority counts add up.
            return sum(
                int(conn.execute(sql, (transport, int(p), now)).fetchone()[0]) for p in _PRIORITIES
            )

        return await self._read("count_claimable", run)

    async def next_ready_at(self, transport: str) -> float | None:
        def run(conn: sqlite3.Connection) -> float | None:
            found = [
                float(v)
                for p in _PRIORITIES
                if (v := conn.execute(_sql.NEXT_READY, (transport, int(p))).fetchone()[0])
                is not None
            ]
            return min(found) if found else None

        return await self._read("next_ready_at", run)

    async def expired(self, *, now: float, limit: int) -> list[RecipientRecord]:
        def run(conn: sqlite3.Connection) -> list[RecipientRecord]:
            rows = conn.execute(_sql.SELECT_EXPIRED, (now, max(0, limit)))
            return [_recipient_from_row(r) for r in rows]

        return await self._read("expired", run)

    # -- deferral --------------------------------------------------------------------
    async def unpark(self, transport: str, message_id: str | None, *, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            if message_id is None:
                rows = conn.execute(_sql.SELECT_PARKED, (transport,)).fetchall()
            else:
                _load_message(conn, message_id)
                rows = conn.execute(
                    _sql.SELECT_PARKED_OF_MESSAGE, (message_id, transport)
                ).fetchall()
            held = _HeldCache(conn)
            for row in rows:
                r = _recipient_from_row(row)
                back = _R.HELD if held(r.message_id) else _R.QUEUED
                _move(conn, r, replace(r, state=back, retry_at=0.0, updated_at=now))
            return len(rows)

        return await self._write("unpark", run)

    # -- user operations -------------------------------------------------------
    async def hold(self, message_id: str) -> MessageInfo:
        def run(conn: sqlite3.Connection) -> MessageInfo:
            info = replace(_load_message(conn, message_id), held=True)
            conn.execute(_sql.SET_HELD, (1, message_id))
            for r in _recipients_of(conn, message_id):
                if r.state in (_R.QUEUED, _R.PARKED):
                    _move(conn, r, replace(r, state=_R.HELD))
            return info

        return await self._write("hold", run)

    async def release(self, message_id: str, *, now: float) -> MessageInfo:
        def run(conn: sqlite3.Connection) -> MessageInfo:
            info = replace(_load_message(conn, message_id), held=False)
            conn.execute(_sql.SET_HELD, (0, message_id))
            for r in _recipients_of(conn, message_id):
                if r.state is _R.HELD:
                    _move(conn, r, replace(r, state=_R.QUEUED, retry_at=0.0, updated_at=now))
            return info

        return await self._write("release", run)

    async def cancel(self, message_id: str) -> list[RecipientRecord]:
        def run(conn: sqlite3.Connection) -> list[RecipientRecord]:
            _load_message(conn, message_id)
            active: list[RecipientRecord] = []
            for r in _recipients_of(conn, message_id):
                if r.state is _R.ACTIVE:
                    active.append(r)
                elif r.state not in TERMINAL:
                    cancelled = replace(
                        r, state=_R.CANCELLED, status=None, diagnostic="cancelled by user"
                    )
                    _move(conn, r, cancelled)
            return active

        return await self._write("cancel", run)

    async def retry_now(self, message_id: str, *, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            _load_message(conn, message_id)
            n = 0
            for r in _recipients_of(conn, message_id):
                if r.state is _R.QUEUED and r.retry_at > now:
                    _move(conn, r, replace(r, retry_at=0.0))
                    n += 1
            return n

        return await self._write("retry_now", run)

    # -- reading ---------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageInfo:
        return await self._read("get_message", lambda conn: _load_message(conn, message_id))

    async def recipients(self, message_id: str) -> list[RecipientRecord]:
        def run(conn: sqlite3.Connection) -> list[RecipientRecord]:
            _load_message(conn, message_id)
            return _recipients_of(conn, message_id)

        return await self._read("recipients", run)

    async def read_content(self, message_id: str) -> bytes:
        def run(conn: sqlite3.Connection) -> bytes:
            row = conn.execute(_sql.SELECT_MESSAGE, (message_id,)).fetchone()
            if row is None:
                raise UnknownMessage(f"no message with id {message_id!r}")
            return _read_blob(conn, int(row["blob_id"]))

        return await self._read("read_content", run)

    async def iter_content(
        self, message_id: str, *, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")

        def locate(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(_sql.SELECT_MESSAGE, (message_id,)).fetchone()
            if row is None:
                raise UnknownMessage(f"no message with id {message_id!r}")
            blob_id = int(row["blob_id"])
            return blob_id, int(conn.execute(_sql.SELECT_BLOB, (blob_id,)).fetchone()["chunks"])

        blob_id, chunks = await self._read("iter_content", locate)
        buffer = bytearray()
        for seq in range(chunks):
            buffer += await self._read(
                "iter_content", functools.partial(_read_chunk, blob_id=blob_id, seq=seq)
            )
            while len(buffer) >= chunk_size:
                yield bytes(buffer[:chunk_size])
                del buffer[:chunk_size]
        if buffer:
            yield bytes(buffer)

    async def state_of(self, message_id: str, *, now: float) -> MessageState:
        def run(conn: sqlite3.Connection) -> MessageState:
            _load_message(conn, message_id)
            return _state_of(conn, message_id, now)

        return await self._read("state_of", run)

    async def list_messages(
        self,
        *,
        state: MessageState | None = None,
        limit: int = 100,
        after: str | None = None,
        now: float,
    ) -> list[MessageSummary]:
        def run(conn: sqlite3.Connection) -> list[MessageSummary]:
            out: list[MessageSummary] = []
            cursor = after if after is not None else ""
            while len(out) < limit:
                page = min(_PAGE, limit) if state is None else _PAGE
                rows = conn.execute(_sql.SELECT_MESSAGES_AFTER, (cursor, page)).fetchall()
                for row in rows:
                    info = _message_from_row(row)
                    rcpts = _recipients_of(conn, info.id)
                    st = _derive_state(
                        ((r.state, max(float(info.send_at or 0.0), r.retry_at)) for r in rcpts),
                        now,
                    )
                    if state is None or st is state:
                        out.append(MessageSummary(info, st, tuple(rcpts)))
                        if len(out) >= limit:
                            break
                if len(rows) < page:
                    break
                cursor = rows[-1]["id"]
            return out

        return await self._read("list_messages", run)

    async def counts(self) -> dict[RecipientState, int]:
        def run(conn: sqlite3.Connection) -> dict[RecipientState, int]:
            found = {row["state"]: int(row["n"]) for row in conn.execute(_sql.SELECT_COUNTS)}
            return {s: found.get(s.value, 0) for s in RecipientState}

        return await self._read("counts", run)

    # -- inbox and provider state ----------------------------------------------
    async def deliver_inbound(
        self,
        message: InboundMessage,
        *,
        profile_updates: Mapping[str, Mapping[str, JSONValue]] | None = None,
    ) -> InboxEntry:
        encoded = {
            section: _encode_values(section, values)
            for section, values in (profile_updates or {}).items()
        }

        def run(conn: sqlite3.Connection) -> InboxEntry:
            entry = _insert_inbound(conn, message, None)
            for section, values in encoded.items():
                _write_profile(conn, section, values)
            return entry

        return await self._write("deliver_inbound", run)

    async def deliver_inbound_many(
        self,
        items: Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, JSONValue]] | None]],
    ) -> list[InboxEntry]:
        # Encoded up front (on the loop): a value JSON cannot hold fails before the job.
        staged = [
            (
                message,
                [
                    (section, _encode_values(section, values))
                    for section, values in (profile_updates or {}).items()
                ],
            )
            for message, profile_updates in items
        ]

        def run(conn: sqlite3.Connection) -> list[InboxEntry]:
            # One write job = one transaction (a savepoint when grouped): all or nothing.
            out: list[InboxEntry] = []
            for message, updates in staged:
                out.append(_insert_inbound(conn, message, None))
                for section, values in updates:
                    _write_profile(conn, section, values)
            return out

        if not staged:
            return []
        return await self._write("deliver_inbound_many", run)

    async def list_inbox(self, *, limit: int = 100, after: str | None = None) -> list[InboxEntry]:
        def run(conn: sqlite3.Connection) -> list[InboxEntry]:
            rows = conn.execute(
                _sql.SELECT_INBOX_AFTER, (after if after is not None else "", max(0, limit))
            )
            return [_inbox_from_row(r) for r in rows]

        return await self._read("list_inbox", run)

    async def read_inbox(self, entry_id: str) -> bytes:
        def run(conn: sqlite3.Connection) -> bytes:
            row = conn.execute(_sql.SELECT_INBOX_ENTRY, (entry_id,)).fetchone()
            if row is None:
                raise UnknownMessage(f"no inbox message with id {entry_id!r}")
            return _read_blob(conn, int(row["blob_id"]))

        return await self._read("read_inbox", run)

    async def profile_get(self, section: str) -> dict[str, JSONValue]:
        def run(conn: sqlite3.Connection) -> dict[str, JSONValue]:
            rows = conn.execute(_sql.SELECT_PROFILE, (section,))
            return {str(r["key"]): json.loads(r["value"]) for r in rows}

        return await self._read("profile_get", run)

    async def profile_update(self, section: str, values: Mapping[str, JSONValue]) -> None:
        encoded = _encode_values(section, values)
        await self._write("profile_update", lambda conn: _write_profile(conn, section, encoded))


# -- rows <-> domain objects ----------------------------------------------------------


def _address_or_none(text: str | None) -> Address | None:
    return None if text is None else Address.parse(text)


def _message_from_row(row: sqlite3.Row) -> MessageInfo:
    return MessageInfo(
        id=row["id"],
        sender=_address_or_none(row["sender"]),
        priority=Priority(row["priority"]),
        submitted_at=row["submitted_at"],
        send_at=row["send_at"],
        expires_at=row["expires_at"],
        notify=Notify(row["notify"]),
        is_report=bool(row["is_report"]),
        envelope_id=row["envelope_id"],
        size=row["size"],
        subject=row["subject"],
        held=bool(row["held"]),
    )


def _fsync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` durable."""
    fd = os.open(directory if str(directory) else ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private(path: Path) -> None:
    """Mode 0600 for the store and its -wal and -shm files, if other users could read
    or write them (a store made by an older spoolbox): queued mail is in them."""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            try:
                os.chmod(p, 0o600)
            except OSError as exc:
                log.warning("%s is mode %04o; cannot make it 0600: %s", p, st.st_mode & 0o7777, exc)
                continue
            log.warning(
                "%s was mode %04o (other users could read queued mail): made it 0600",
                p,
                st.st_mode & 0o7777,
            )


def _read_only_reason(path: Path) -> str | None:
    """Why the store at ``path`` could not be written, if we can tell up front."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"the file system holding {directory} is mounted read-only"
    except OSError:
        return None
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable by this user"
    if not os.access(directory, os.W_OK):
        return f"the directory {directory} is not writable (SQLite needs its -wal/-shm files)"
    return None


def _recipient_from_row(row: sqlite3.Row) -> RecipientRecord:
    return RecipientRecord(
        message_id=row["message_id"],
        index=row["idx"],
        address=Address.parse(row["address"]),
        state=RecipientState(row["state"]),
        route=row["route"],
        refused_by=tuple(json.loads(row["refused_by"])),
        attempts=row["attempts"],
        retry_at=row["retry_at"],
        status=row["status"],
        diagnostic=row["diagnostic"],
        updated_at=row["updated_at"],
        first_failed_at=row["first_failed_at"],
        delay_warned=bool(row["delay_warned"]),
    )


def _inbox_from_row(row: sqlite3.Row) -> InboxEntry:
    return InboxEntry(
        id=row["id"],
        transport=row["transport"],
        sender=row["sender"],
        recipients=tuple(json.loads(row["recipients"])),
        received_at=row["received_at"],
        size=row["size"],
        subject=row["subject"],
        remote_id=row["remote_id"],
        meta=json.loads(row["meta"]),
    )


def _fingerprint(message: NewMessage) -> bytes:
    """A digest of the whole submission: equal digests mean equal NewMessages."""
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
    digest = hashlib.sha256(envelope.encode())
    digest.update(b"\n")
    digest.update(message.content)
    return digest.digest()


# -- statements used by several operations ---------------------------------------


def _sync_level(name: str, value: str) -> str:
    level = value.upper()
    if level not in _SYNCHRONOUS_MODES:
        raise ValueError(f"{name} must be one of {', '.join(_SYNCHRONOUS_MODES)}, not {value!r}")
    return level


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (with any extended code): another connection has it."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # pragma: no cover - Python < 3.11 has no error codes
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _load_message(conn: sqlite3.Connection, message_id: str) -> MessageInfo:
    row = conn.execute(_sql.SELECT_MESSAGE, (message_id,)).fetchone()
    if row is None:
        raise UnknownMessage(f"no message with id {message_id!r}")
    return _message_from_row(row)


def _recipients_of(conn: sqlite3.Connection, message_id: str) -> list[RecipientRecord]:
    return [_recipient_from_row(r) for r in conn.execute(_sql.SELECT_RECIPIENTS, (message_id,))]


class _HeldCache:
    """Whether a message is held, read once per message within one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._held: dict[str, bool] = {}

    def __call__(self, message_id: str) -> bool:
        if message_id not in self._held:
            self._held[message_id] = _load_message(self._conn, message_id).held
        return self._held[message_id]


def _move(
    conn: sqlite3.Connection,
    old: RecipientRecord,
    new: RecipientRecord,
    *,
    owner: str | None = None,
    lease_until: float | None = None,
    check: bool = True,
) -> None:
    """Write ``new`` over ``old`` (checked against the transition table)."""
    if check and new.state is not old.state:
        check_transition(old.state, new.state, what=f"{old.message_id}#{old.index}")
    conn.execute(
        _sql.UPDATE_RECIPIENT,
        {
            "message_id": new.message_id,
            "idx": new.index,
            "state": new.state.value,
            "route": new.route,
            "refused_by": json.dumps(list(new.refused_by)),
            "attempts": new.attempts,
            "retry_at": new.retry_at,
            "status": new.status,
            "diagnostic": new.diagnostic,
            "updated_at": new.updated_at,
            "first_failed_at": new.first_failed_at,
            "delay_warned": int(new.delay_warned),
            "owner": owner if new.state is _R.ACTIVE else None,
            "lease_until": lease_until if new.state is _R.ACTIVE else None,
        },
    )


def _updated(r: RecipientRecord, u: RecipientUpdate, *, now: float, held: bool) -> RecipientRecord:
    """The recipient after a settle update (the same rules as the memory store)."""
    first_failed = r.first_failed_at
    if u.status is not None and u.status.startswith("4") and first_failed is None:
        first_failed = now
    retry_at = u.retry_at
    if retry_at is None:
        retry_at = r.retry_at if u.state is _R.QUEUED else 0.0
    state = _R.HELD if u.state is _R.QUEUED and held else u.state
    return replace(
        r,
        state=state,
        route=r.route if u.keep_route else u.route,
        refused_by=r.refused_by + tuple(t for t in u.refused_by if t not in r.refused_by),
        attempts=r.attempts + (1 if u.count_attempt else 0),
        retry_at=retry_at,
        status=u.status if u.status is not None else r.status,
        diagnostic=u.diagnostic if u.diagnostic is not None else r.diagnostic,
        updated_at=now,
        first_failed_at=first_failed,
        delay_warned=r.delay_warned if u.delay_warned is None else u.delay_warned,
    )


def _unlease(conn: sqlite3.Connection, rows: Iterable[sqlite3.Row], now: float | None) -> int:
    """Return leased recipients to QUEUED (HELD if their message is held)."""
    held = _HeldCache(conn)
    n = 0
    for row in rows:
        r = _recipient_from_row(row)
        back = _R.HELD if held(r.message_id) else _R.QUEUED
        _move(conn, r, replace(r, state=back, updated_at=r.updated_at if now is None else now))
        n += 1
    return n


def _derive_state(readiness: Iterable[tuple[RecipientState, float]], now: float) -> MessageState:
    states: list[RecipientState] = []
    queued_ready: list[float] = []
    for state, ready_at in readiness:
        states.append(state)
        if state is _R.QUEUED:
            queued_ready.append(ready_at)
    waiting = bool(queued_ready) and all(t > now for t in queued_ready)
    return message_state(states, waiting_on_retry=waiting)


def _state_of(conn: sqlite3.Connection, message_id: str, now: float) -> MessageState:
    rows = conn.execute(_sql.SELECT_READINESS, (message_id,))
    return _derive_state(((_R(r["state"]), float(r["ready_at"])) for r in rows), now)


def _insert_blob(conn: sqlite3.Connection, data: bytes) -> int:
    size = _sql.CHUNK_SIZE
    chunks = max(1, -(-len(data) // size))
    blob_id = conn.execute(_sql.INSERT_BLOB, (len(data), chunks)).lastrowid
    if blob_id is None:  # pragma: no cover - sqlite always reports the rowid of an INSERT
        raise StoreError("sqlite did not report the id of a new content row")
    conn.executemany(
        _sql.INSERT_CHUNK, ((blob_id, i, data[i * size : (i + 1) * size]) for i in range(chunks))
    )
    return blob_id


def _read_chunk(conn: sqlite3.Connection, blob_id: int, seq: int) -> bytes:
    row = conn.execute(_sql.SELECT_CHUNK, (blob_id, seq)).fetchone()
    if row is None:
        raise StoreError(f"content {blob_id} lacks chunk {seq}: the store is damaged")
    return bytes(row["data"])


def _read_blob(conn: sqlite3.Connection, blob_id: int) -> bytes:
    """The whole content, held once: the chunks go into one growing buffer whose bytes
    ``getvalue`` hands over without a copy (``b"".join`` would hold every chunk and
    the joined copy at once: twice the message)."""
    buffer = io.BytesIO()
    for row in conn.execute(_sql.SELECT_CHUNKS, (blob_id,)):
        buffer.write(row["data"])
    return buffer.getvalue()


def _insert_inbound(
    conn: sqlite3.Connection, message: InboundMessage, meta: Mapping[str, JSONValue] | None
) -> InboxEntry:
    entry, content = new_inbox_entry(message, meta)
    conn.execute(
        _sql.INSERT_INBOX,
        {
            "id": entry.id,
            "transport": entry.transport,
            "sender": entry.sender,
            "recipients": json.dumps(list(entry.recipients)),
            "received_at": entry.received_at,
            "size": entry.size,
            "subject": entry.subject,
            "remote_id": entry.remote_id,
            "meta": json.dumps(entry.meta),
            "blob_id": _insert_blob(conn, content),
        },
    )
    return entry


def _encode_values(section: str, values: Mapping[str, JSONValue]) -> dict[str, str | None]:
    """JSON text per key (None deletes the key); refuses what JSON cannot hold."""
    out: dict[str, str | None] = {}
    for key, value in values.items():
        if value is None:
            out[key] = None
            continue
        try:
            out[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"profile value {section}.{key} = {value!r} cannot be stored as JSON: {exc}"
            ) from exc
    return out


def _write_profile(
    conn: sqlite3.Connection, section: str, values: Mapping[str, str | None]
) -> None:
    for key, text in values.items():
        if text is None:
            conn.execute(_sql.DELETE_PROFILE, (section, key))
        else:
            conn.execute(_sql.UPSERT_PROFILE, (section, key, text))
