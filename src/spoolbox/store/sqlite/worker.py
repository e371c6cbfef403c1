"""The SQLite store's thread: its job queue, group commit, and the way outcomes get
back to the event loop.

One dedicated thread owns the only connection (sqlite connections are bound to
their thread).  Every operation is a :class:`Job` on the thread's queue; reads run
each in its own read transaction.  Writes are grouped: every write already waiting,
and every submission collected so far, join one transaction (one fsync), each write
in its own savepoint.  A group of writes put together (:meth:`Worker.put_group`: the
settles of one turn of the event loop) is one transaction too, whoever else is
waiting.  A transaction that has to wait for another process's write lock takes in
what arrives meanwhile.  Outcomes go back to the event loop through
one :class:`Outbox` per loop: those that arrive before the loop gets round to them
(a group commit's, say) wake it once, not once each.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import enum
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..base import StoreError
from ..operations import Kind
from .connection import Stats, StoreFile

__all__ = ["Job", "Outbox", "Reply", "Worker"]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_READ: Final = Kind.READ
_WRITE: Final = Kind.WRITE

_WRITE_BATCH: Final = 64  # writes sharing one transaction at most (group commit)


class _Completion(Protocol):
    """What the store's thread needs of a job's future (``concurrent.futures.Future``
    has it; so has :class:`Reply`)."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException | None, /) -> None: ...


class Outbox:
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


class Reply:
    """A job's future as the store's thread sees it: the outcome goes to the
    caller's asyncio future through its loop's outbox."""

    __slots__ = ("fut", "outbox")

    def __init__(self, fut: asyncio.Future[Any], outbox: Outbox) -> None:
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
class Job:
    """One operation for the thread: ``fn`` in a transaction of ``kind``."""

    what: str
    fn: Callable[[sqlite3.Connection], Any]
    future: _Completion
    kind: Kind
    stop: bool = False

    @property
    def writes(self) -> bool:
        return self.kind is not _READ

    @property
    def durable(self) -> bool:
        """False for progress (committed at ``progress_synchronous``)."""
        return self.kind is _WRITE


@dataclass(slots=True)
class _Submission:
    #: Inserts one message (its MessageInfo, or more: a hand-off claims it too);
    #: refuses (StoreError) before it writes anything.
    fn: Callable[[sqlite3.Connection], Any]
    future: _Completion


class _Signal(enum.Enum):
    SUBMIT_BATCH = "submit-batch"  # commit the submissions collected so far


@dataclass(slots=True)
class _Group:
    """Writes to commit in one transaction (each in its own savepoint)."""

    jobs: list[Job]


#: ``more(limit, progress_only)``: write jobs waiting in the store's queue, started.
_MoreWrites = Callable[[int, bool], list[Job]]


def _stop_job(done: _Completion | None = None) -> Job:
    future = concurrent.futures.Future[None]() if done is None else done
    return Job("close", lambda conn: None, future, Kind.READ, stop=True)


class Worker:
    """The thread of one opening of a store: ``start`` it, ``put`` jobs, ``submit``
    messages (committed in groups), ``stop`` it.  ``open_file`` opens the store on
    the thread; ``stats`` counts from then on."""

    def __init__(self, name: str, open_file: Callable[[Stats], StoreFile]) -> None:
        self.stats = Stats()
        self._name = name
        self._open_file = open_file
        self._jobs: queue.SimpleQueue[Job | _Signal | _Group] = queue.SimpleQueue()
        self._pending: list[_Submission] = []
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def pending_jobs(self) -> int:
        return self._jobs.qsize()

    def start(self) -> concurrent.futures.Future[None]:
        """Start the thread; the future is done once the file is open (or failed)."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=self._name, daemon=True
        )
        self._thread.start()
        return ready

    def put(self, job: Job) -> None:
        self._jobs.put(job)

    def put_group(self, jobs: list[Job]) -> None:
        """Write jobs to commit together, in one transaction (with whatever other
        writes wait then), each in a savepoint of its own."""
        self._jobs.put(_Group(jobs))

    def submit(self, fn: Callable[[sqlite3.Connection], Any], future: _Completion) -> None:
        """A submission for the next group commit (see :meth:`submit_batch`)."""
        with self._pending_lock:
            self._pending.append(_Submission(fn, future))

    def submit_batch(self) -> None:
        """Commit the submissions collected so far (once the thread gets to it)."""
        self._jobs.put(_Signal.SUBMIT_BATCH)

    def stop(self, done: _Completion | None = None) -> None:
        """Finish the queued work, commit what was submitted, close the file; ``done``
        is resolved last.  After a failed start the thread has ended by itself."""
        self._jobs.put(_stop_job(done))

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    # -- the thread --------------------------------------------------------------------
    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        if not ready.set_running_or_notify_cancel():
            return
        try:
            db = self._open_file(self.stats)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        jobs = self._jobs
        stop: Job | None = None
        backlog: collections.deque[Job | _Signal | _Group] = collections.deque()

        def more_writes(limit: int, progress_only: bool) -> list[Job]:
            """Write jobs waiting in the queue, started, up to ``limit`` (the rest of
            the queue keeps its order in ``backlog``)."""
            out: list[Job] = []
            while len(out) < limit:
                try:
                    nxt = jobs.get_nowait()
                except queue.Empty:
                    break
                if (
                    isinstance(nxt, Job)
                    and nxt.writes
                    and not nxt.stop
                    and not (progress_only and nxt.durable)
                ):
                    if nxt.future.set_running_or_notify_cancel():
                        out.append(nxt)
                elif isinstance(nxt, _Group) and not (
                    progress_only and any(job.durable for job in nxt.jobs)
                ):
                    out += [job for job in nxt.jobs if job.future.set_running_or_notify_cancel()]
                else:
                    backlog.append(nxt)
            return out

        try:
            while stop is None:
                item = backlog.popleft() if backlog else jobs.get()
                if isinstance(item, _Group):
                    group = [j for j in item.jobs if j.future.set_running_or_notify_cancel()]
                    group += more_writes(_WRITE_BATCH - len(group), False)
                    self._commit_group(db, group, more_writes)
                elif item is not _Signal.SUBMIT_BATCH and item.stop:
                    stop = item
                elif item is _Signal.SUBMIT_BATCH or item.writes:
                    # Group commit: every write already waiting, and every submission
                    # collected so far, join this transaction (one fsync for all).
                    batch: list[Job] = []
                    if item is not _Signal.SUBMIT_BATCH:
                        if not item.future.set_running_or_notify_cancel():
                            continue  # the caller gave up before the job started
                        batch.append(item)
                    batch += more_writes(_WRITE_BATCH - len(batch), False)
                    if len(batch) == 1 and not self._pending:
                        self._execute(db, batch[0], more_writes)
                    else:
                        self._commit_group(db, batch, more_writes)
                else:
                    if item.future.set_running_or_notify_cancel():
                        self._execute(db, item, more_writes)
            # Whatever was submitted before close is committed, not dropped.
            self._commit_group(db, [], more_writes)
        finally:
            db.close()
            if stop is not None and stop.future.set_running_or_notify_cancel():
                stop.future.set_result(None)

    def _execute(self, db: StoreFile, job: Job, more: _MoreWrites) -> None:
        """One started job in a transaction of its own (unless it must wait for the
        write lock: then it waits as a group, see ``_commit_group``)."""
        try:
            if job.writes:
                db.set_sync(job.durable)
                if not db.try_begin():
                    self._commit_group(db, [job], more)
                    return
                result = db.commit_started(job.fn, job.durable)
            else:
                result = db.read(job.fn)
        except sqlite3.Error as exc:
            job.future.set_exception(db.error(job.what, exc))
        except BaseException as exc:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    def _take_pending(self) -> list[_Submission]:
        with self._pending_lock:
            subs, self._pending = self._pending, []
        return [sub for sub in subs if sub.future.set_running_or_notify_cancel()]

    def _commit_group(self, db: StoreFile, started: list[Job], more: _MoreWrites) -> None:
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
        conn = db.conn
        sub_outcomes: list[Any] = []  # each submission's result, or its StoreError
        outcomes: list[tuple[bool, Any]] = []
        durable = bool(subs) or any(job.durable for job in started)
        try:
            db.set_sync(durable)
            if db.begin_immediate():
                if durable:
                    subs += self._take_pending()
                started += more(_WRITE_BATCH - len(started), not durable)
            began = time.monotonic()
            try:
                for sub in subs:
                    # No savepoint: a submission refuses (StoreError) before it writes
                    # anything, and any other error undoes the whole group.
                    try:
                        sub_outcomes.append(sub.fn(conn))
                    except StoreError as exc:
                        # This submission is refused; the rest of the group goes on.
                        sub_outcomes.append(exc)
                for job in started:
                    conn.execute("SAVEPOINT write")
                    try:
                        result = job.fn(conn)
                    except BaseException as exc:
                        conn.execute("ROLLBACK TO write")
                        conn.execute("RELEASE write")
                        err: BaseException = exc
                        if isinstance(exc, sqlite3.Error):
                            err = db.error(job.what, exc)
                        outcomes.append((False, err))
                    else:
                        conn.execute("RELEASE write")
                        outcomes.append((True, result))
                db.commit()
                self.stats.write_seconds += time.monotonic() - began
            except BaseException:
                db.rollback()
                self.stats.rollbacks += 1
                raise
            db.after_commit(durable)  # committed: the sync (FULL) before the results
        except BaseException as exc:
            for sub in subs:
                serr = (
                    db.error("submit", exc)
                    if isinstance(exc, sqlite3.Error | OSError)
                    else StoreError(f"{db.path}: submit failed: {exc!r}")
                )
                serr.__cause__ = exc
                sub.future.set_exception(serr)
            for job in started:
                job.future.set_exception(
                    db.error(job.what, exc) if isinstance(exc, sqlite3.Error) else exc
                )
            return
        stats = self.stats
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
