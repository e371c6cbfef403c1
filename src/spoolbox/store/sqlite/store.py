"""The SQLite store: the embedded default backend of :class:`~spoolbox.store.base.Store`.

Same semantics as :class:`~spoolbox.store.memory.MemoryStore` (both pass
:func:`spoolbox.testing.store_conformance.check_store`), on a file that survives
crashes.  This module is its async face: each operation checks what needs no
database, then sends its function of :mod:`.transactions` to the store's thread
(:mod:`.worker`) and awaits the outcome.  How it is built:

* **Off the event loop.**  One dedicated thread owns the only connection; every
  operation is a job on its queue.  Reads run each in its own read transaction, so
  they see a consistent snapshot.
* **Durable and atomic.**  WAL journal, ``synchronous=FULL`` by default (its fsync
  made after the write lock is released when other processes share the file,
  :mod:`.walsync`), foreign keys on.  Every
  write is one ``BEGIN IMMEDIATE`` transaction, so a claim is atomic across processes:
  two spoolers on one file never claim the same recipient.  ``settle`` (with its
  reports) and ``deliver_inbound`` (with the provider's profile updates)
  are one transaction each.  The spooler's progress (claims, lease renewals and
  releases, settles: :data:`~spoolbox.store.operations.OPERATIONS`) commits at
  ``progress_synchronous``, ``NORMAL`` by default: not fsynced, yet ordered in the
  WAL before every later fsynced commit, and never lost by a process crash.  A
  power cut can undo only such progress, never an acceptance; the work is then done
  again (delivered twice at worst).
* **Group commit.**  ``submit`` calls are collected: all submits made in one turn of
  the event loop, and all those that arrive while the thread is busy committing, go
  into the next transaction together, one fsync for the batch.  Each submitter
  resumes only after its batch committed.  ``settle`` calls are collected the same
  way: those of one turn of the loop (the lanes of every transport) are one
  transaction, each in a savepoint of its own.  ``statistics()`` counts commits and
  submits.
* **No queue scans.**  Recipient rows carry their route, state, priority and ready
  time (``max(send_at, retry_at)``); picking the next job is a range scan of a partial
  index per priority.  Recipients per state live in a counters table kept by triggers.
  See :mod:`.schema` for the tables and :mod:`.queries` for every query.
* **Careful opening.**  :func:`.schema.connect` refuses, untouched, a file that is not
  a spoolbox store or is from a newer schema, creates a new store whole, mode 0600,
  and runs the pending migrations.

Content is stored once, in chunks, and streamed chunk by chunk by ``iter_content``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from ...model import (
    MessageInfo,
    MessageState,
    MessageSummary,
    NewMessage,
    RecipientRecord,
    RecipientState,
)
from .. import retention
from ..base import (
    ClaimedJob,
    InboundMessage,
    InboxEntry,
    JSONValue,
    RecipientCheck,
    RecipientUpdate,
    StoreError,
    submission_plan,
)
from ..operations import OPERATIONS, Kind
from . import compact as _compact
from . import purge as _purge
from . import schema
from . import transactions as tx
from .cluster import SQLiteCluster
from .connection import BUSY_TIMEOUT, Stats, StoreFile, commit_levels
from .rows import encode_profile
from .worker import Job, Outbox, Reply, Worker

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")


log = logging.getLogger("spoolbox.store")

#: A purge that leaves at least this many bytes of the file free (and half of it)
#: says so in the log, at most once in FREE_HINT_EVERY seconds.
FREE_HINT_BYTES = 64 * 1024 * 1024
FREE_HINT_EVERY = 86400.0


class SQLiteStore(SQLiteCluster):
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
    (``write_seconds``), the ``progress_commits``, and the WAL syncs made after the
    lock (``wal_syncs``, ``wal_sync_seconds``).  ``sync_after_unlock=True`` (for a
    file that other processes write too: the daemon's with listener processes or
    delivery workers, and theirs) makes a ``FULL`` commit at SQLite's ``NORMAL`` and
    syncs the WAL after the write lock is released, before the commit's caller
    resumes (:mod:`.walsync`): as durable, without the other processes' writers
    waiting on the disk.  Without it (the default) ``FULL`` is SQLite's own, a few
    per cent faster for one process alone.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        progress_synchronous: str = "NORMAL",
        busy_timeout: float = BUSY_TIMEOUT,
        sync_after_unlock: bool = False,
    ) -> None:
        self._path = os.fspath(path)
        self._sync_after_unlock = sync_after_unlock
        self._levels = commit_levels(synchronous, progress_synchronous)
        self._busy_timeout = float(busy_timeout)
        self._worker: Worker | None = None  # the thread, while open
        self._stats = Stats()  # the counters of the current (or last) opening
        self._kick_scheduled = False
        self._settles: list[Job] = []  # settles of this turn of the loop, not sent yet
        self._outbox: Outbox | None = None
        self._open = False
        self._next_space_hint = 0.0  # monotonic: when a purge may say how much is free

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<SQLiteStore {self._path!r} {state}>"

    @property
    def sync_after_unlock(self) -> bool:
        """Whether a ``FULL`` commit's fsync is made after the write lock (:mod:`.walsync`)."""
        return self._sync_after_unlock

    @property
    def path(self) -> str:
        return self._path

    def statistics(self) -> dict[str, object]:
        """Counters since ``open``: commits (write transactions), submits, batches, ..."""
        s, worker = self._stats, self._worker
        return {
            "path": self._path,
            "open": self._open,
            "schema_version": schema.SCHEMA_VERSION,
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
            "sync_after_unlock": self._sync_after_unlock,
            "wal_syncs": s.wal_syncs,
            "wal_sync_seconds": s.wal_sync_seconds,
            "durable_commits": s.commits - s.progress_commits,
            "pending_jobs": worker.pending_jobs() if worker is not None else 0,
            "pragmas": dict(s.pragmas),
        }

    # -- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        """Start the store's thread, check the file, migrate it; raises StoreError."""
        if self._worker is not None:
            raise StoreError(f"{self!r} is already open")
        # A fresh thread and queue per opening: jobs left from an earlier one can
        # never leak in.
        synchronous, progress = self._levels

        def open_file(stats: Stats) -> StoreFile:
            return StoreFile.open(
                self._path,
                synchronous=synchronous,
                progress_synchronous=progress,
                busy_timeout=self._busy_timeout,
                stats=stats,
                sync_after_unlock=self._sync_after_unlock,
            )

        worker = Worker(f"spoolbox-sqlite {self._path}", open_file)
        self._worker, self._stats = worker, worker.stats
        try:
            await asyncio.wrap_future(worker.start())
        except BaseException:
            # After a failed open the thread has ended by itself; after a cancelled
            # open it finds this stop job once it has opened the file, and closes.
            worker.stop()
            self._worker = None
            raise
        self._open = True

    async def close(self) -> None:
        """Finish the queued work, commit what was submitted, close the file."""
        worker = self._worker
        if worker is None:
            return
        self._open = False
        self._send_settles(worker)  # settles made in this turn of the loop, before the end
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        worker.stop(done)
        await asyncio.shield(asyncio.wrap_future(done))
        # The thread's last step was to resolve ``done``: this join returns at once.
        worker.join()
        self._worker = None

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- calling the thread ----------------------------------------------------------
    def _check_open(self) -> Worker:
        if not self._open or self._worker is None:
            raise StoreError(f"{self!r} is not open: call open() first")
        return self._worker

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """``fn`` on the store's thread, in the transaction the operation ``what``
        needs (:data:`~spoolbox.store.operations.OPERATIONS`)."""
        return await self._send(what, fn, OPERATIONS[what])

    async def _send(self, what: str, fn: Callable[[sqlite3.Connection], _T], kind: Kind) -> _T:
        worker = self._check_open()
        reply = self._reply()
        worker.put(Job(what, fn, reply, kind))
        result: _T = await reply.fut
        return result

    def _reply(self) -> Reply:
        """A future on the running loop, answered through that loop's outbox."""
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        if outbox is None or outbox.loop is not loop:
            outbox = self._outbox = Outbox(loop)
        return Reply(loop.create_future(), outbox)

    def _kick(self, worker: Worker) -> None:
        self._kick_scheduled = False
        worker.submit_batch()

    def _send_settles(self, worker: Worker) -> None:
        jobs, self._settles = self._settles, []
        if jobs:  # (close() may have sent them already)
            worker.put_group(jobs)

    # -- submission ----------------------------------------------------------------
    async def submit(
        self,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
    ) -> MessageInfo:
        # Prepared here, not in the store's thread: that holds the write lock.
        prepared = tx.Prepared.of(message, now=float(now), lifetime=float(lifetime))
        fn = functools.partial(tx.submit_prepared, prepared=prepared, now=float(now), routes=routes)
        info: MessageInfo = await self._submit_grouped(message, routes, fn)
        return info

    async def submit_claiming(
        self,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
        transport: str,
        owner: str,
        lease: float,
    ) -> tuple[MessageInfo, ClaimedJob | None]:
        """``submit``, and in the same (durable, grouped) transaction a claim of the
        message's recipients routed to ``transport`` and ready now, for ``owner``
        under a lease of ``lease`` seconds: the hand-off of a new message to a lane
        that is free (as Postfix's queue manager takes a queue file the moment
        cleanup closes it).  The job is None when no recipient could be claimed."""
        fn = functools.partial(
            tx.submit_claiming,
            prepared=tx.Prepared.of(message, now=float(now), lifetime=float(lifetime)),
            now=float(now),
            routes=routes,
            transport=transport,
            owner=owner,
            lease=float(lease),
        )
        out: tuple[MessageInfo, ClaimedJob | None] = await self._submit_grouped(message, routes, fn)
        return out

    async def _submit_grouped(
        self,
        message: NewMessage,
        routes: Sequence[str | None] | None,
        fn: Callable[[sqlite3.Connection], _T],
    ) -> _T:
        """``fn`` (a submission) in the next group commit of submissions."""
        worker = self._check_open()
        if routes is not None and len(routes) != len(message.recipients):
            raise StoreError(
                f"{len(routes)} routes for {len(message.recipients)} recipients of {message.id}"
            )
        reply = self._reply()
        worker.submit(fn, reply)
        if not self._kick_scheduled:
            # One signal per turn of the loop: every submit of this turn joins the batch.
            self._kick_scheduled = True
            reply.outbox.loop.call_soon(self._kick, worker)
        result: _T = await reply.fut
        return result

    async def submit_many(
        self,
        messages: Sequence[NewMessage],
        *,
        now: float,
        lifetime: float,
        routes: Sequence[Sequence[str | None] | None] | None = None,
    ) -> list[MessageInfo]:
        messages = list(messages)
        # Checked here too: arguments that do not fit fail before the job.
        if not submission_plan(messages, routes):
            return []
        return await self._run(
            "submit_many",
            functools.partial(
                tx.submit_many,
                messages=messages,
                routes=routes,
                now=float(now),
                lifetime=float(lifetime),
            ),
        )

    # -- routing -------------------------------------------------------------------
    async def unrouted(
        self, *, limit: int, after: tuple[str, int] | None = None
    ) -> list[RecipientRecord]:
        return await self._run("unrouted", functools.partial(tx.unrouted, limit=limit, after=after))

    async def assign_routes(self, assignments: Sequence[tuple[str, int, str]]) -> None:
        items = list(assignments)
        await self._run("assign_routes", functools.partial(tx.assign_routes, assignments=items))

    async def reroute_missing(
        self, known: Sequence[str], *, limited: Mapping[str, RecipientCheck] | None = None
    ) -> int:
        names = list(known)
        return await self._run(
            "reroute_missing",
            functools.partial(tx.reroute_missing, known=names, limited=dict(limited or {})),
        )

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
        skip_destinations: Collection[str] = (),
    ) -> list[ClaimedJob]:
        return await self._run(
            "claim",
            functools.partial(
                tx.claim,
                transport=transport,
                owner=owner,
                now=now,
                lease=lease,
                limit=limit,
                ignore_retry=ignore_retry,
                skip_destinations=frozenset(skip_destinations),
            ),
        )

    async def renew(self, job: ClaimedJob, *, now: float, lease: float) -> ClaimedJob:
        return await self._run("renew", functools.partial(tx.renew, job=job, now=now, lease=lease))

    async def settle(
        self,
        message_id: str,
        updates: Sequence[RecipientUpdate],
        *,
        owner: str | None,
        now: float,
        claim: int | None = None,
        reports: Sequence[NewMessage] = (),
        inbox_reports: Sequence[InboundMessage] = (),
        drop_finished: Collection[MessageState] = (),
        restoring: bool = False,
    ) -> MessageInfo:
        worker = self._check_open()
        fn = functools.partial(
            tx.settle,
            message_id=message_id,
            updates=list(updates),
            owner=owner,
            now=now,
            claim=claim,
            reports=list(reports),
            inbox_reports=list(inbox_reports),
            drop_finished=frozenset(drop_finished),
            restoring=restoring,
        )
        reply = self._reply()
        if not self._settles:
            # One transaction for the settles of this turn of the loop (group commit).
            reply.outbox.loop.call_soon(self._send_settles, worker)
        self._settles.append(Job("settle", fn, reply, OPERATIONS["settle"]))
        info: MessageInfo = await reply.fut
        return info

    async def release_expired(self, *, now: float) -> int:
        return await self._run("release_expired", functools.partial(tx.release_expired, now=now))

    async def release_owner(self, owner: str) -> int:
        return await self._run("release_owner", functools.partial(tx.release_owner, owner=owner))

    async def release_lost_claims(
        self,
        owner: str,
        transport: str,
        *,
        leased_until: float,
        keep: Collection[tuple[str, int]],
    ) -> int:
        fn = functools.partial(
            tx.release_lost_claims,
            owner=owner,
            transport=transport,
            leased_until=leased_until,
            keep=frozenset(keep),
        )
        return await self._run("release_lost_claims", fn)

    async def retry_transport(self, transport: str, *, now: float) -> int:
        return await self._run(
            "retry_transport", functools.partial(tx.retry_transport, transport=transport, now=now)
        )

    async def count_claimable(self, transport: str, *, now: float, ignore_retry: bool) -> int:
        return await self._run(
            "count_claimable",
            functools.partial(
                tx.count_claimable, transport=transport, now=now, ignore_retry=ignore_retry
            ),
        )

    async def next_ready_at(self, transport: str) -> float | None:
        return await self._run(
            "next_ready_at", functools.partial(tx.next_ready_at, transport=transport)
        )

    async def expired(self, *, now: float, limit: int) -> list[RecipientRecord]:
        return await self._run("expired", functools.partial(tx.expired, now=now, limit=limit))

    # -- deferral --------------------------------------------------------------------
    async def unpark(self, transport: str, message_id: str | None, *, now: float) -> int:
        return await self._run(
            "unpark",
            functools.partial(tx.unpark, transport=transport, message_id=message_id, now=now),
        )

    # -- user operations -------------------------------------------------------
    async def hold(self, message_id: str) -> MessageInfo:
        return await self._run("hold", functools.partial(tx.hold, message_id=message_id))

    async def release(self, message_id: str, *, now: float) -> MessageInfo:
        return await self._run(
            "release", functools.partial(tx.release, message_id=message_id, now=now)
        )

    async def cancel(self, message_id: str) -> list[RecipientRecord]:
        return await self._run("cancel", functools.partial(tx.cancel, message_id=message_id))

    async def retry_now(self, message_id: str, *, now: float) -> int:
        return await self._run(
            "retry_now", functools.partial(tx.retry_now, message_id=message_id, now=now)
        )

    # -- reading ---------------------------------------------------------------
    async def get_message(self, message_id: str) -> MessageInfo:
        return await self._run(
            "get_message", functools.partial(tx.get_message, message_id=message_id)
        )

    async def recipients(self, message_id: str) -> list[RecipientRecord]:
        return await self._run(
            "recipients", functools.partial(tx.recipients, message_id=message_id)
        )

    async def read_content(self, message_id: str) -> bytes:
        return await self._run(
            "read_content", functools.partial(tx.read_content, message_id=message_id)
        )

    async def iter_content(
        self, message_id: str, *, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        blob_id, chunks = await self._run(
            "iter_content", functools.partial(tx.content_chunks, message_id=message_id)
        )
        buffer = bytearray()
        for seq in range(chunks):
            buffer += await self._run(
                "iter_content", functools.partial(tx.read_chunk, blob_id=blob_id, seq=seq)
            )
            while len(buffer) >= chunk_size:
                yield bytes(buffer[:chunk_size])
                del buffer[:chunk_size]
        if buffer:
            yield bytes(buffer)

    async def state_of(self, message_id: str, *, now: float) -> MessageState:
        return await self._run(
            "state_of", functools.partial(tx.state_of, message_id=message_id, now=now)
        )

    async def list_messages(
        self,
        *,
        state: MessageState | None = None,
        limit: int = 100,
        after: str | None = None,
        now: float,
    ) -> list[MessageSummary]:
        return await self._run(
            "list_messages",
            functools.partial(tx.list_messages, state=state, limit=limit, after=after, now=now),
        )

    async def counts(self) -> dict[RecipientState, int]:
        return await self._run("counts", tx.counts)

    # -- inbox and provider state ----------------------------------------------
    async def deliver_inbound(
        self,
        message: InboundMessage,
        *,
        profile_updates: Mapping[str, Mapping[str, JSONValue]] | None = None,
    ) -> InboxEntry:
        encoded = _encode_updates(profile_updates)
        return await self._run(
            "deliver_inbound",
            functools.partial(tx.deliver_inbound, message=message, profile_updates=encoded),
        )

    async def deliver_inbound_many(
        self,
        items: Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, JSONValue]] | None]],
    ) -> list[InboxEntry]:
        # Encoded up front (on the loop): a value JSON cannot hold fails before the job.
        staged = [(message, _encode_updates(updates)) for message, updates in items]
        if not staged:
            return []
        # One write job = one transaction (a savepoint when grouped): all or nothing.
        return await self._run(
            "deliver_inbound_many", functools.partial(tx.deliver_inbound_many, items=staged)
        )

    async def list_inbox(self, *, limit: int = 100, after: str | None = None) -> list[InboxEntry]:
        return await self._run(
            "list_inbox", functools.partial(tx.list_inbox, limit=limit, after=after)
        )

    async def read_inbox(self, entry_id: str) -> bytes:
        return await self._run("read_inbox", functools.partial(tx.read_inbox, entry_id=entry_id))

    async def delete_inbox(self, entry_id: str) -> None:
        await self._run("delete_inbox", functools.partial(_purge.delete_inbox, entry_id=entry_id))

    # -- retention -------------------------------------------------------------------
    async def purge(
        self, *, finished_before: Mapping[MessageState, float], limit: int
    ) -> list[str]:
        retention.check_limit(limit)
        retention.check_cutoffs(finished_before)
        cutoffs = dict(finished_before)
        # The scan in a snapshot (no write lock), the deletion in a short write.
        ids = await self._send(
            "purge",
            functools.partial(_purge.candidates, finished_before=cutoffs, limit=limit),
            Kind.READ,
        )
        if not ids:
            return []
        gone: list[str] = await self._run(
            "purge", functools.partial(_purge.purge, ids=ids, finished_before=cutoffs)
        )
        if gone:
            await self._hint_free_space()
        return gone

    async def space(self) -> _compact.Space:
        """The file's size, how much of it is free pages, its WAL's size."""
        fn = functools.partial(_compact.space_of, path=Path(self._path))
        return await self._send("space", fn, Kind.READ)

    async def _hint_free_space(self) -> None:
        """After a purge: when much of the file is free pages (:data:`FREE_HINT_BYTES`
        and half of it at least), say so and what gives it back, at most once in
        :data:`FREE_HINT_EVERY` seconds."""
        now = time.monotonic()
        if now < self._next_space_hint:
            return
        try:
            space = await self.space()
        except (StoreError, sqlite3.Error) as exc:
            log.debug("store %s: cannot read its free space: %s", self._path, exc)
            return
        if space.free >= FREE_HINT_BYTES and 2 * space.free >= space.size:
            self._next_space_hint = now + FREE_HINT_EVERY
            log.info(
                "store %s: %.1f MB of its %.1f MB are free pages (purged mail); "
                "`spoolbox store compact` gives them back to the file system",
                self._path,
                space.free / 1e6,
                space.size / 1e6,
            )

    async def purge_inbox(self, *, received_before: float, limit: int) -> list[str]:
        retention.check_limit(limit)
        ids = await self._send(
            "purge_inbox",
            functools.partial(_purge.old_inbox, received_before=received_before, limit=limit),
            Kind.READ,
        )
        if not ids:
            return []
        return await self._run(
            "purge_inbox",
            functools.partial(_purge.purge_inbox, ids=ids, received_before=received_before),
        )

    async def orphan_sections(self, prefix: str, *, limit: int) -> list[str]:
        retention.check_section_prefix(prefix)
        retention.check_limit(limit)
        return await self._run(
            "orphan_sections",
            functools.partial(_purge.orphan_sections, prefix=prefix, limit=limit),
        )

    async def purge_sections(self, prefix: str, ids: Collection[str]) -> list[str]:
        retention.check_section_prefix(prefix)
        if not ids:
            return []
        return await self._run(
            "purge_sections", functools.partial(_purge.purge_sections, prefix=prefix, ids=list(ids))
        )

    async def profile_get(self, section: str) -> dict[str, JSONValue]:
        return await self._run("profile_get", functools.partial(tx.profile_get, section=section))

    async def profile_update(self, section: str, values: Mapping[str, JSONValue]) -> None:
        encoded = encode_profile(section, values)
        await self._run(
            "profile_update",
            functools.partial(tx.profile_update, section=section, values=encoded),
        )


def _encode_updates(
    updates: Mapping[str, Mapping[str, JSONValue]] | None,
) -> dict[str, dict[str, str | None]]:
    return {section: encode_profile(section, values) for section, values in (updates or {}).items()}
