"""This spooler as a node among others on a shared store: its record, its status rows,
and its part of the flushes other nodes ask for.

:class:`NodePresence` runs as a task of the spooler (:func:`start_node`; the daemon
starts it).  Every :attr:`NodeSettings.interval` seconds at most it writes the
node's record (:class:`~spoolbox.store.cluster.NodeRecord`: name, host, pid, start
time, heartbeat, lease) with its status rows to the store, when a row changed or a
third of the lease passed; so writes are bounded by the interval however fast rows
change, and a node that stops writing is *gone* once its lease ends.  Records of
nodes gone for :attr:`NodeSettings.forget_after` are deleted.

It also reads the flush requests other nodes recorded (at every tick; at once when
:meth:`NodePresence.wake` is called, which the PostgreSQL store's NOTIFY does), runs
its part of each one that names a transport it serves (a local flush, deadline
included) and writes its progress rows while it runs and its report at the end
(:meth:`~spoolbox.store.cluster.ClusterStore.report_flush`).  Taking a request lifts
this node's back-off of the flushed transports' destinations at once.  A lane about
to hold a message back for a destination's back-off first asks
:meth:`NodePresence.flush_asked`, which reads the requests then: the requester
records its request before it makes its messages ready, so a message another node's
flush made ready is never held back by a back-off this node learned before the flush
(it would wait for its retry time, the flush long over).

When the store cannot be reached the spooler's row says ``store unavailable`` (with
the error in its detail) until a write succeeds again; the task retries every tick.
While the store's wake-ups from other nodes are off (:meth:`NodePresence.wakeups`:
the PostgreSQL store's LISTEN connection is down) the row's detail says so: the
node finds the others' work by polling meanwhile, seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import weakref
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from ..status import StatusTable
from ..store import StoreError
from ..store.cluster import ClusterStore, FlushRequest, NodeRecord
from .clock import Clock, wait_event
from .flush import FlushHandle, FlushReport
from .runtime import SPOOLER_ROW

__all__ = [
    "NO_WAKEUPS",
    "STANDING_BY",
    "STORE_UNAVAILABLE",
    "NodePresence",
    "NodeSettings",
    "NodeSpooler",
    "keep_progress",
    "node_of",
    "report_from_dict",
    "report_to_dict",
    "start_node",
]

log = logging.getLogger("spoolbox.spooler")
T = TypeVar("T")

#: The spooler row's status string while the store cannot be reached.
STORE_UNAVAILABLE = "store unavailable"
#: The spooler row's detail while wake-ups from other nodes are off (then ": why").
NO_WAKEUPS = "no wake-ups from other nodes, their work is found by polling"
#: The spooler row's status while the node stands by (:meth:`NodePresence.stand_by`).
STANDING_BY = "Standing by"


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSettings:
    #: Seconds a node's record is good for: without a heartbeat it is gone after.
    lease: float = 15.0
    #: Seconds between two writes of the record at most, and between two reads of
    #: the flush requests (on PostgreSQL a NOTIFY brings them at once).
    interval: float = 1.0
    #: Seconds a flush part writes its progress at most once in.
    progress_interval: float = 0.25
    #: Records of nodes gone this long are deleted (so are old flush requests).
    forget_after: float = 600.0

    @classmethod
    def for_policy(cls, housekeeping_interval: float) -> NodeSettings:
        """The daemon's: a lease of three housekeeping intervals (15 s by default),
        records written at most once a second (or each interval, if shorter)."""
        return cls(lease=3 * housekeeping_interval, interval=min(1.0, housekeeping_interval))


class NodeHost(Protocol):
    """A transport host as the node sees it: its name."""

    name: str


class NodeSpooler(Protocol):
    """What the node reads and does of its spooler (:class:`~spoolbox.Spooler`)."""

    @property
    def owner(self) -> str: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def status(self) -> StatusTable: ...

    @property
    def hosts(self) -> Sequence[NodeHost]: ...

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]: ...

    def start_flush(
        self,
        *,
        upload: bool = True,
        download: bool = True,
        transport: str | None = None,
        force: bool = True,
        deadline: float | None = None,
    ) -> FlushHandle: ...

    def forget_destinations(self, transport: str) -> None: ...

    def store_failed(self) -> None:
        """A store call failed: noted for the lanes' recovery once the store is back
        (:class:`~spoolbox._core.recovery.StoreOutages`)."""
        ...


_NODES: weakref.WeakKeyDictionary[Any, NodePresence] = weakref.WeakKeyDictionary()


def node_of(spooler: object) -> NodePresence | None:
    """The running node presence of ``spooler``, if :func:`start_node` started one."""
    return _NODES.get(spooler)


def start_node(
    spooler: NodeSpooler, store: object, settings: NodeSettings | None = None
) -> NodePresence | None:
    """Start publishing ``spooler`` as a node of ``store`` (its task group owns the
    task); None when the store is not a :class:`ClusterStore`."""
    if not isinstance(store, ClusterStore):
        return None
    if settings is None:
        policy = getattr(spooler, "policy", None)
        interval = getattr(policy, "housekeeping_interval", 5.0)
        settings = NodeSettings.for_policy(float(interval))
    presence = NodePresence(spooler, store, settings)
    _NODES[spooler] = presence
    spooler.spawn(presence.run(), name="node")
    return presence


def keep_progress(row: dict[str, Any], before: Mapping[str, Any] | None) -> dict[str, Any]:
    """``row``, with the progress of ``before`` when it has none (its flush part
    ended and cleared it: what it did still counts in the sum)."""
    if row.get("progress") is None and before is not None:
        row["progress"] = before.get("progress")
    return row


def report_to_dict(report: FlushReport) -> dict[str, Any]:
    """A flush report as a node writes it to the store (read by :func:`report_from_dict`)."""
    return {
        "cancelled": report.cancelled,
        "timed_out": report.timed_out,
        "results": [dataclasses.asdict(r) for r in report.results],
    }


def report_from_dict(data: Any) -> FlushReport:
    """A report written by :func:`report_to_dict` (unknown keys dropped, so a newer
    node's report still reads)."""
    from .flush import TransportFlushResult

    known = {f.name for f in dataclasses.fields(TransportFlushResult)}
    results = [
        TransportFlushResult(**{k: v for k, v in r.items() if k in known})
        for r in (data.get("results") or [])
        if isinstance(r, dict) and isinstance(r.get("transport"), str)
    ]
    return FlushReport(
        results=results,
        cancelled=bool(data.get("cancelled")),
        timed_out=bool(data.get("timed_out")),
    )


class NodePresence:
    """Publishes a spooler's record and rows and answers flush requests (module doc)."""

    def __init__(self, spooler: NodeSpooler, store: ClusterStore, settings: NodeSettings) -> None:
        self._spooler = spooler
        self._store = store
        self.settings = settings
        self.clock = spooler.clock
        self.name = spooler.owner
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = spooler.clock.now()
        self._changed = True
        #: the status table's changes_published when the rows were last published
        self._published_changes = -1
        self._woken = asyncio.Event()
        self._next_heartbeat = float("-inf")
        self._next_forget = float("-inf")
        self._last_request = -1  # read at the first tick: earlier requests are not ours
        self.unavailable: str | None = None
        #: Why the store's wake-ups from other nodes are off (None: on, or none).
        self.no_wakeups: str | None = None
        #: Why this node stands by (None: it delivers), as the daemon says.
        self.standby: str | None = None
        self.publishes = 0
        self.flushes_served = 0

    def __repr__(self) -> str:
        return f"<NodePresence {self.name} publishes={self.publishes}>"

    def statistics(self) -> dict[str, Any]:
        return {
            "node": self.name,
            "publishes": self.publishes,
            "flushes_served": self.flushes_served,
            "store_unavailable": self.unavailable,
            "no_wakeups": self.no_wakeups,
            "standby": self.standby,
        }

    def wakeups(self, problem: str | None) -> None:
        """The store's wake-ups from other nodes stopped (``problem`` says why) or are
        back (None): the spooler row's detail says so, unless the store itself is
        unavailable (which says more)."""
        self.no_wakeups = problem
        self._changed = True  # the other nodes see the row at the next tick
        if self.unavailable is None and SPOOLER_ROW in self._spooler.status:
            self._spooler.status.update(SPOOLER_ROW, detail=self._detail())

    def stand_by(self, reason: str | None) -> None:
        """The node stands by (``reason``) or delivers again (None): the spooler row
        says ``Standing by`` with the reason, unless the store is unavailable."""
        self.standby = reason
        self._changed = True
        if self.unavailable is None and SPOOLER_ROW in self._spooler.status:
            self._spooler.status.update(
                SPOOLER_ROW, status_string=self._status_string(), detail=self._detail()
            )

    def _status_string(self) -> str | None:
        return None if self.standby is None else STANDING_BY

    def _detail(self) -> str | None:
        """The spooler row's detail while the store is reachable."""
        said = [] if self.standby is None else [self.standby]
        if self.no_wakeups is not None:
            said.append(f"{NO_WAKEUPS}: {self.no_wakeups}")
        return "; ".join(said) or None

    def wake(self) -> None:
        """Read the flush requests now (a NOTIFY said one was recorded)."""
        self._woken.set()

    async def run(self) -> None:
        spooler = self._spooler
        try:
            while True:
                await self.tick()
                await wait_event(spooler.clock, self._woken, self.settings.interval)
                self._woken.clear()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._publish(running=False))

    async def tick(self) -> None:
        """One round: publish if due, take new flush requests, forget old nodes."""
        now = self._spooler.clock.now()
        try:
            # (A row changed since the last publish: the table's count of changes
            # moved. Read at each tick, not told of each change: rows change several
            # times a message.)
            changed = self._spooler.status.changes_published != self._published_changes
            if self._changed or changed or now >= self._next_heartbeat:
                await self._publish(running=True)
            if self._last_request < 0:
                self._last_request = await self._store.last_flush_id()
            await self._take_new(now)
            if now >= self._next_forget:
                self._next_forget = now + self.settings.forget_after / 10
                await self._store.forget_nodes(before=now - self.settings.forget_after)
            if self.unavailable is not None:
                self._store_up()
                await self._publish(running=True)  # the row without "store unavailable"
        except StoreError as exc:
            self._store_down(exc)

    async def _publish(self, *, running: bool) -> None:
        clock = self._spooler.clock
        now = clock.now()
        self._changed = False
        self._published_changes = self._spooler.status.changes_published
        rows = tuple(row.to_dict() for row in self._spooler.status)
        lease = self.settings.lease if running else 0.0
        await self._store.publish_node(
            NodeRecord(
                name=self.name,
                host=self.host,
                pid=self.pid,
                started_at=self.started_at,
                heartbeat_at=now,
                lease_until=now + lease,
                rows=rows,
                running=running,
            )
        )
        self.publishes += 1
        self._next_heartbeat = now + self.settings.lease / 3

    def _store_down(self, exc: StoreError) -> None:
        self._changed = True  # publish at once when the store is back
        self._spooler.store_failed()
        if self.unavailable is None:
            log.warning("node %s: the store is unavailable: %s", self.name, exc)
        self.unavailable = str(exc)
        status = self._spooler.status
        if SPOOLER_ROW in status:
            status.update(SPOOLER_ROW, status_string=STORE_UNAVAILABLE, detail=str(exc))

    def _store_up(self) -> None:
        log.info("node %s: the store is back", self.name)
        self.unavailable = None
        status = self._spooler.status
        row = status.get(SPOOLER_ROW)
        if row is not None and row.status_string == STORE_UNAVAILABLE:
            status.update(SPOOLER_ROW, status_string=self._status_string(), detail=self._detail())

    # -- flushes asked by other nodes --------------------------------------------------
    async def flush_asked(self, transport: str) -> bool:
        """Whether another node asked for a flush of ``transport``'s outbound queue
        that this node had not taken yet: read now, and taken (its part started, the
        back-off of the transport's destinations lifted).  False when the store
        cannot be read, or before the node's first tick."""
        if self._last_request < 0:
            return False
        try:
            taken = await self._take_new(self._spooler.clock.now())
        except StoreError:
            self._spooler.store_failed()
            return False
        return any(r.upload and r.transport in (None, transport) for r in taken)

    async def _take_new(self, now: float) -> list[FlushRequest]:
        """Take each flush request recorded since the last one read (once: the tick
        and a lane may read at the same time); the ones this node serves."""
        taken: list[FlushRequest] = []
        for request in await self._store.flush_requests(after=self._last_request):
            if request.id <= self._last_request:
                continue  # taken by the other reader while this one waited
            self._last_request = request.id
            if self._take(request, now):
                taken.append(request)
        return taken

    def _take(self, request: FlushRequest, now: float) -> bool:
        if request.requested_by == self.name or request.deadline_at <= now:
            return False  # our own (the requester runs its part itself), or too late
        names = [h.name for h in self._spooler.hosts]
        if request.transport is not None and request.transport not in names:
            return False
        if request.upload:
            # At once, not when the part starts: a lane may be holding back a message
            # the requester's flush made ready (see flush_asked).
            for name in names if request.transport is None else [request.transport]:
                self._spooler.forget_destinations(name)
        self._spooler.spawn(self._serve(request), name=f"flush-request-{request.id}")
        return True

    async def _serve(self, request: FlushRequest) -> None:
        spooler = self._spooler
        clock = spooler.clock
        log.info(
            "node %s: flush %s asked by node %s",
            self.name,
            request.transport or "of every transport",
            request.requested_by,
        )
        handle = spooler.start_flush(
            upload=request.upload,
            download=request.download,
            transport=request.transport,
            deadline=max(0.001, request.deadline_at - clock.now()),
        )
        names = set(handle.transports)
        done = asyncio.ensure_future(handle.wait())
        last: dict[str, dict[str, Any]] = {}  # each row with its last progress
        try:
            while not done.done():
                rows = [
                    keep_progress(r.to_dict(), last.get(r.name))
                    for r in spooler.status
                    if r.name in names
                ]
                last.update((row["name"], row) for row in rows)
                with contextlib.suppress(StoreError):
                    await self._store.report_flush(
                        request.id, node=self.name, report={"rows": rows}, done=False,
                        now=clock.now(),
                    )  # fmt: skip
                await asyncio.wait({done}, timeout=self.settings.progress_interval)
            report = report_to_dict(done.result())
            report["rows"] = [
                keep_progress(r.to_dict(), last.get(r.name))
                for r in spooler.status
                if r.name in names
            ]
            await self._store.report_flush(
                request.id, node=self.name, report=report, done=True, now=clock.now()
            )
            self.flushes_served += 1
        finally:
            if not done.done():
                handle.cancel()
                done.cancel()
