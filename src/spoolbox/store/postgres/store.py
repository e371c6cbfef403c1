"""The PostgreSQL store: :class:`~spoolbox.store.base.Store` on a PostgreSQL database.

Same semantics as the SQLite and memory stores (all pass
:func:`spoolbox.testing.store_conformance.check_store`), on a server that several
spooler processes, on one machine or many, share.  This module is its async face:
each operation checks what needs no database, then runs its function of
:mod:`.transactions` in one transaction (:meth:`.connection.Database.run`).

* **Claims across nodes.**  A claim picks ready recipients with ``SELECT ... FOR
  UPDATE SKIP LOCKED`` (highest priority, then oldest ready) and takes every ready
  recipient of the picked messages in the same statement family, so nodes claiming
  at once take different recipients and never wait on each other.  A lease is the
  node's name (``owner``) and an expiry (``lease_until``); ``release_owner`` at a
  node's start returns what it held when it stopped, ``release_expired`` what a dead
  node held.  A settle checks the lease in the same transaction that writes it.
* **Group commit.**  ``submit`` calls made in one turn of the event loop, and those
  that arrive while a batch is committing, go into the next transaction together: one
  WAL flush on the server for the batch.  ``settle`` calls are grouped the same way:
  those of one turn of the loop (and those that arrive while a group commits) are one
  transaction.  One refused submission, or a settle whose lease is lost, fails only
  its caller: the group is then run again with each call in a savepoint
  (:meth:`.connection.Database.run_batch`).
* **Few round trips.**  A submit is one statement, a claim two, a settle three (see
  :mod:`.queries`); a group of submits or settles (and a ``submit_many``) is sent in
  pipeline mode, its ``BEGIN`` and ``COMMIT`` as statements of the pipeline, so the
  whole group waits for the server twice (:mod:`.submits`, :mod:`.settles`);
  ``statistics()`` counts transactions, statements and round trips.
* **Durability.**  Acceptances (submits, inbound messages, user actions) commit with
  the database's ``synchronous_commit``; the spooler's progress with it off (see
  :mod:`.connection`).
* **Versioned schema.**  :meth:`open` migrates the database (``migrate=False``: it
  refuses an old schema instead) and refuses one from a newer spoolbox (:mod:`.schema`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

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
from ..sqlite.rows import encode_profile
from . import purge as _purge
from . import schema
from . import transactions as tx
from .cluster import PostgresCluster
from .connection import AfterCommit, Conn, Database
from .settles import NotAlone, SettleCall, groupable, settle_group
from .submits import Handoff, SubmitCall, submit_group, submit_group_committing
from .wakeups import Listener

__all__ = ["PostgresStore"]

_T = TypeVar("_T")
_C = TypeVar("_C")
_Call = Callable[[Conn], Awaitable[Any]]
_Pending = list[tuple[_Call, asyncio.Future[Any]]]


class PostgresStore(PostgresCluster):
    """A :class:`~spoolbox.store.base.Store` in a PostgreSQL database.

    ``PostgresStore(dsn)`` (a libpq connection string or a ``postgresql://`` URL);
    then ``await store.open()`` (or ``async with``).  ``pool_size``: the most
    connections this store opens, split between its two pools (acceptances and
    reads; progress, opened when first needed: :mod:`.connection`; 2 at least);
    ``migrate=False`` refuses a database whose schema is older instead of upgrading
    it (``spoolbox store migrate`` does that).
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
        migrate: bool = True,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self._db = Database(
            dsn, max_size=pool_size, connect_timeout=connect_timeout, migrate=migrate
        )
        self._open = False
        self._pending: list[tuple[SubmitCall, asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._settles: list[tuple[SettleCall, asyncio.Future[Any]]] = []  # the next group
        self._settler: asyncio.Task[None] | None = None
        self._stats = {"commits": 0, "submits": 0, "submit_batches": 0, "largest_batch": 0}
        self._listener: Listener | None = None

    def __repr__(self) -> str:
        return f"<PostgresStore {self._db.where} {'open' if self._open else 'closed'}>"

    @property
    def where(self) -> str:
        """The database, for messages (never the password)."""
        return self._db.where

    def statistics(self) -> dict[str, object]:
        return {
            "database": self._db.where,
            "open": self._open,
            "schema_version": schema.SCHEMA_VERSION,
            "migrated": list(self._db.migrated),
            **self._stats,
            **self._db.counts.as_dict(),
        }

    # -- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        """Connect, migrate (or check) the schema, open the pool; raises StoreError."""
        if self._open:
            raise StoreError(f"{self!r} is already open")
        await self._db.open()
        self._open = True

    async def close(self) -> None:
        """Finish the submits under way, then close every connection."""
        if not self._open:
            return
        for task in (self._committer, self._settler):
            if task is not None:
                await asyncio.shield(task)
        self._open = False
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        await self._db.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- wake-ups across nodes ----------------------------------------------------------
    async def listen(
        self,
        callback: Callable[[str], None],
        on_state: Callable[[str | None], None] | None = None,
    ) -> None:
        """Call ``callback(payload)`` whenever a store on this database (any node)
        commits recipients that may be claimable: the payload is the transport's name,
        :data:`~.wakeups.ROUTE` (waiting for routing) or :data:`~.wakeups.ANY`; until
        :meth:`close`.  ``on_state(problem)`` hears when wake-ups stop (why) and come
        back (None); with it a first LISTEN that fails is retried in the background
        instead of raising StoreError.  See :mod:`.wakeups`."""
        if not self._open:
            raise StoreError(f"{self!r} is not open: call open() first")
        if self._listener is not None:
            raise StoreError(f"{self!r} already has a wake-up listener")
        listener = Listener(self._db.connect, callback, where=self._db.where, on_state=on_state)
        await listener.start()
        self._listener = listener

    # -- running operations ----------------------------------------------------------
    async def _run(self, what: str, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        return await self._run_kind(OPERATIONS[what], what, fn)

    async def _run_kind(
        self,
        kind: Kind,
        what: str,
        fn: Callable[[Conn], Awaitable[_T]],
        *,
        pipelined: bool = False,
    ) -> _T:
        if not self._open:
            raise StoreError(f"{self!r} is not open: call open() first")
        result = await self._db.run(kind, what, fn, pipelined=pipelined)
        if kind is not Kind.READ:
            self._stats["commits"] += 1
        return result

    # -- submission ----------------------------------------------------------------
    def _check_submit(self, message: NewMessage, routes: Sequence[str | None] | None) -> None:
        if not self._open:
            raise StoreError(f"{self!r} is not open: call open() first")
        if routes is not None and len(routes) != len(message.recipients):
            raise StoreError(
                f"{len(routes)} routes for {len(message.recipients)} recipients of {message.id}"
            )

    async def submit(
        self,
        message: NewMessage,
        *,
        now: float,
        lifetime: float,
        routes: Sequence[str | None] | None = None,
    ) -> MessageInfo:
        self._check_submit(message, routes)
        info: MessageInfo = await self._submit_grouped(
            SubmitCall(message, float(now), float(lifetime), routes)
        )
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
        under a lease of ``lease`` seconds: the hand-off of a new message to a lane of
        this node that waits for work (``_core/handoff.py``), as the SQLite store does.
        The job is None when no recipient could be claimed."""
        self._check_submit(message, routes)
        handoff = Handoff(transport, owner, float(lease))
        out: tuple[MessageInfo, ClaimedJob | None] = await self._submit_grouped(
            SubmitCall(message, float(now), float(lifetime), routes, handoff)
        )
        return out

    async def _submit_grouped(self, call: SubmitCall) -> Any:
        """``call`` in the next group commit of submits (those of one turn of the loop,
        and those that arrive while a group commits, in one transaction)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((call, fut))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_submits())
        return await fut

    async def _commit_submits(self) -> None:
        """Commit the pending submits in groups until none is left (:meth:`_commit_group`)."""
        # The task first runs in the next turn of the loop: every submit of this turn
        # has joined by then.
        try:
            while self._pending:
                group, self._pending = self._pending, []
                await self._commit_group("submit", group, submit_group_committing, _submit_alone)
        finally:
            self._committer = None

    async def _commit_group(
        self,
        what: str,
        group: list[tuple[_C, asyncio.Future[Any]]],
        together: Callable[[Conn, list[_C]], Awaitable[Sequence[Any] | AfterCommit[Any]]],
        alone: Callable[[Conn, _C], Awaitable[Any]],
    ) -> None:
        """A group of calls (submits or settles) in one pipelined transaction
        (``together``: :mod:`.submits`, :mod:`.settles`); if that fails, or one of
        them must go alone (NotAlone), the group again with each call (``alone``) in a
        savepoint of its own, so that only the calls that are wrong fail."""
        calls = [call for call, _ in group]
        if self._open:
            try:
                # No BEGIN and COMMIT (an implicit transaction, committed at the
                # pipeline's sync): a group of settles reads before it writes and
                # raises NotAlone before writing; a group of submits decides nothing
                # before its commit (each refusal is its caller's, read after it).
                outcomes = await self._db.run(
                    OPERATIONS[what],
                    what,
                    _bind(together, calls),
                    pipelined=True,
                    implicit=True,
                )
            except Exception as exc:
                if len(group) == 1 and not isinstance(exc, NotAlone):
                    outcomes = [exc]
                else:
                    await self._commit_batch(what, _each(alone, group), together=False)
                    return
            else:
                self._counted(what, len(group))
            # (What ``together`` returned AfterCommit, run read after the commit.)
            assert not isinstance(outcomes, AfterCommit)
            _resolve([fut for _, fut in group], outcomes)
            return
        await self._commit_batch(what, _each(alone, group))

    def _counted(self, what: str, calls: int) -> None:
        self._stats["commits"] += 1
        if what == "submit":
            self._stats["submits"] += calls
            self._stats["submit_batches"] += 1
            self._stats["largest_batch"] = max(self._stats["largest_batch"], calls)

    async def _commit_batch(self, what: str, batch: _Pending, *, together: bool = True) -> None:
        """``batch`` (submits or settles) in one transaction (see
        :meth:`.connection.Database.run_batch`: savepoints only after a failure, or
        from the start with ``together=False``)."""
        if not self._open:
            exc: Exception = StoreError(f"{self!r} is not open: call open() first")
            outcomes: list[Any] = [exc] * len(batch)
        else:
            try:
                outcomes = await self._db.run_batch(
                    OPERATIONS[what], what, [fn for fn, _ in batch], together=together
                )
            except Exception as exc:
                outcomes = [exc] * len(batch)
            else:
                self._counted(what, len(batch))
        _resolve([fut for _, fut in batch], outcomes)

    async def submit_many(
        self,
        messages: Sequence[NewMessage],
        *,
        now: float,
        lifetime: float,
        routes: Sequence[Sequence[str | None] | None] | None = None,
    ) -> list[MessageInfo]:
        messages = list(messages)
        plan = submission_plan(messages, routes)
        if not plan:
            return []
        calls = [SubmitCall(m, float(now), float(lifetime), r) for m, r in plan]
        try:
            # All the messages in one pipelined transaction (:mod:`.submits`).
            infos = await self._run_kind(
                OPERATIONS["submit_many"],
                "submit_many",
                _bind(submit_group, calls),
                pipelined=True,
            )
        except NotAlone:
            # One is refused: one after another, so that the error names it.
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
        return [i if isinstance(i, MessageInfo) else i[0] for i in infos]

    # -- routing -------------------------------------------------------------------
    async def unrouted(
        self, *, limit: int, after: tuple[str, int] | None = None
    ) -> list[RecipientRecord]:
        return await self._run("unrouted", functools.partial(tx.unrouted, limit=limit, after=after))

    async def assign_routes(self, assignments: Sequence[tuple[str, int, str]]) -> None:
        items = list(assignments)
        if items:
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
        if limit <= 0:
            return []
        if not self._open:
            raise StoreError(f"{self!r} is not open: call open() first")
        # Pipelined: two waits for the server (:func:`.transactions.claim`).
        jobs = await self._db.run_reading_after_commit(
            OPERATIONS["claim"],
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
        self._stats["commits"] += 1
        return jobs

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
        if not self._open:
            raise StoreError(f"{self!r} is not open: call open() first")
        call = SettleCall(
            message_id,
            list(updates),
            owner,
            now,
            claim=claim,
            reports=list(reports),
            inbox_reports=list(inbox_reports),
            drop_finished=frozenset(drop_finished),
            restoring=restoring,
        )
        fut: asyncio.Future[MessageInfo] = asyncio.get_running_loop().create_future()
        self._settles.append((call, fut))
        if self._settler is None:
            self._settler = asyncio.create_task(self._commit_settles())
        return await fut

    async def _commit_settles(self) -> None:
        """Commit the pending settles in groups until none is left (as submits): a
        group in one pipelined transaction (:mod:`.settles`) where it can go so, else
        one settle after another in one transaction (:meth:`_commit_batch`)."""
        try:
            while self._settles:
                group, self._settles = self._settles, []
                if groupable([call for call, _ in group]):
                    await self._commit_group("settle", group, settle_group, _settle_alone)
                else:
                    await self._commit_batch("settle", _each(_settle_alone, group))
        finally:
            self._settler = None

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
        staged = [(message, _encode_updates(updates)) for message, updates in items]
        if not staged:
            return []
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
        return await self._run(
            "purge",
            functools.partial(_purge.purge, finished_before=dict(finished_before), limit=limit),
        )

    async def purge_inbox(self, *, received_before: float, limit: int) -> list[str]:
        retention.check_limit(limit)
        return await self._run(
            "purge_inbox",
            functools.partial(_purge.purge_inbox, received_before=received_before, limit=limit),
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


def _resolve(futures: Sequence[asyncio.Future[Any]], outcomes: Sequence[Any]) -> None:
    """Each caller's outcome: its result, or the exception that failed its call."""
    for fut, outcome in zip(futures, outcomes, strict=True):
        if fut.done():
            continue
        if isinstance(outcome, Exception):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


def _bind(fn: Callable[[Conn, _C], Awaitable[_T]], arg: _C) -> Callable[[Conn], Awaitable[_T]]:
    """``fn`` with its second argument given: a call for one transaction."""

    def call(conn: Conn) -> Awaitable[_T]:
        return fn(conn, arg)

    return call


async def _submit_alone(conn: Conn, call: SubmitCall) -> Any:
    if call.handoff is not None:
        return await tx.submit_claiming(conn, call)
    return await tx.submit(
        conn, call.message, now=call.now, lifetime=call.lifetime, routes=call.routes
    )


def _each(
    alone: Callable[[Conn, _C], Awaitable[Any]], group: list[tuple[_C, asyncio.Future[Any]]]
) -> _Pending:
    """A group's calls as one transaction's calls each (``alone``), with their callers."""
    return [(_bind(alone, call), fut) for call, fut in group]


async def _settle_alone(conn: Conn, call: SettleCall) -> MessageInfo:
    return await tx.settle(
        conn,
        call.message_id,
        call.updates,
        owner=call.owner,
        now=call.now,
        claim=call.claim,
        reports=call.reports,
        inbox_reports=call.inbox_reports,
        drop_finished=call.drop_finished,
        restoring=call.restoring,
    )


def _encode_updates(
    updates: Mapping[str, Mapping[str, JSONValue]] | None,
) -> dict[str, dict[str, str | None]]:
    return {section: encode_profile(section, values) for section, values in (updates or {}).items()}
