"""What several nodes on one store share besides the queue: the ClusterStore protocol.

A *node* is one spooler process with a name (``SpoolerConfig.node``).  Nodes on one
store (a SQLite file shared by processes of one machine, a PostgreSQL database shared
by machines) see each other only through these operations:

* **Nodes.**  Each node publishes a :class:`NodeRecord` (name, host, pid, start
  time, a heartbeat and its expiry, and its status rows as JSON) with
  :meth:`ClusterStore.publish_node`; :meth:`~ClusterStore.nodes` reads every node.
  A node whose ``lease_until`` passed is *gone* (:func:`node_state`); one gone for
  long is deleted by :meth:`~ClusterStore.forget_nodes`.
* **Flush requests.**  :meth:`~ClusterStore.request_flush` records a flush (one
  transport or all, upload and/or download, until a deadline) under a new id that
  grows; every node reads those after the last id it saw
  (:meth:`~ClusterStore.flush_requests`), runs its part and writes its progress and
  final report (:meth:`~ClusterStore.report_flush`), which the requester reads
  (:meth:`~ClusterStore.flush_progress`).
* **Named leases.**  :meth:`~ClusterStore.acquire_lease` takes (or renews) a lease
  on a name (an inbound mailbox: ``inbound:<transport>``) for one owner until an
  expiry, atomically: one owner at a time, another may take it once it expired.
  :meth:`~ClusterStore.deliver_inbound_leased` commits an inbound batch only while
  its owner holds such a lease, checked in the batch's own transaction (the fence
  of an inbound mailbox).
* **Send rates.**  :meth:`~ClusterStore.take_sends` records, atomically, up to
  ``want`` messages starting now under a name's limit (a transport's ``max_rate``:
  at most ``count`` in any ``period`` seconds) and says how many it granted, how
  many the window holds and when the next may start (:class:`SendGrant`, worked out
  by :func:`rate_grant` from the sends still in the window); every node on the store
  counts against one window, which outlives their restarts.
  :meth:`~ClusterStore.sends_in_window` reads how many the window holds.

The operations and their transaction kinds are :data:`CLUSTER_OPERATIONS` (the
same kinds as :data:`spoolbox.store.operations.OPERATIONS`).  The memory, SQLite
and PostgreSQL stores implement the protocol; ``spoolbox.testing.cluster_conformance``
checks them.  Values are frozen; the JSON of status rows and reports is the local
API's (``StatusRow.to_dict()``, ``flush_report_to_dict``), opaque to the store.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol, runtime_checkable

from .base import InboundMessage, InboxEntry, JSONValue, StoreError
from .operations import Kind

__all__ = [
    "CLUSTER_OPERATIONS",
    "ClusterFace",
    "ClusterStore",
    "FlushProgress",
    "FlushRequest",
    "LeaseHeld",
    "NodeRecord",
    "NodeState",
    "SendGrant",
    "check_lease_args",
    "check_lease_holder",
    "check_node",
    "check_rate_args",
    "decode_rows",
    "encode_rows",
    "node_state",
    "rate_grant",
]


class NodeState(enum.Enum):
    """A node as others see it."""

    #: Its heartbeat is current.
    UP = "up"
    #: Its heartbeat expired (it died, stalled or lost the store) or it stopped.
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One node as it published itself.  ``rows``: its status rows, JSON-ready."""

    name: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    lease_until: float
    rows: tuple[Mapping[str, JSONValue], ...] = field(default=(), compare=False)
    #: False: the node stopped cleanly (its last publish said so).
    running: bool = True


def node_state(node: NodeRecord, *, now: float) -> NodeState:
    """UP while its lease runs and it did not say it stopped; else GONE."""
    return NodeState.UP if node.running and node.lease_until > now else NodeState.GONE


@dataclass(frozen=True, slots=True)
class FlushRequest:
    """A flush asked of every node that serves ``transport`` (None: all transports)."""

    id: int
    transport: str | None
    upload: bool
    download: bool
    requested_by: str
    requested_at: float
    deadline_at: float


@dataclass(frozen=True, slots=True)
class FlushProgress:
    """One node's part of a flush request: its progress rows while it runs, then its
    report (``done``)."""

    request_id: int
    node: str
    done: bool
    report: Mapping[str, JSONValue]
    updated_at: float


class LeaseHeld(StoreError):
    """The named lease is held by another owner (the text says whom, until when)."""


@dataclass(frozen=True, slots=True)
class SendGrant:
    """What :meth:`ClusterStore.take_sends` recorded: ``granted`` sends (0 to the
    ``want`` asked for), the sends the window holds with them (``used``), and when
    the next one may start (``next_at``: ``now`` while the window has room)."""

    granted: int
    used: int
    next_at: float


def rate_grant(
    sent: Sequence[tuple[float, int]], *, count: int, period: float, now: float, want: int
) -> SendGrant:
    """The grant for ``want`` sends at ``now`` under "at most ``count`` in any
    ``period`` seconds", given the sends recorded (``(at, n)``: ``n`` sends started
    at ``at``, oldest first; those a period old or more no longer count).  Every
    backend's ``take_sends`` records ``(now, granted)`` after it."""
    # A send counts until ``at + period`` (the very sum ``next_at`` gives: ``at >
    # now - period`` rounds differently).
    live = [(at, n) for at, n in sent if at + period > now]
    used = sum(n for _, n in live)
    granted = max(0, min(want, count - used))
    used += granted
    if granted:
        live.append((now, granted))
    if used < count:
        return SendGrant(granted, used, now)
    # Full: the next send may start once enough of the oldest have aged out that the
    # window holds count - 1.
    excess = used - count + 1
    for at, n in live:
        excess -= n
        if excess <= 0:
            return SendGrant(granted, used, at + period)
    raise AssertionError("unreachable: the sends add up to used")  # pragma: no cover


def check_rate_args(name: str, count: int, period: float, want: int) -> None:
    """StoreError for a send-rate request no backend should record."""
    if not name:
        raise StoreError("a send rate needs a name")
    if count < 1 or not period > 0 or want < 0:
        raise StoreError(
            f"send rate {name!r}: count must be at least 1 (got {count}), the period more "
            f"than 0 s (got {period!r}) and want at least 0 (got {want})"
        )


#: The operations of :class:`ClusterStore` and their transaction kinds.
CLUSTER_OPERATIONS: Final[Mapping[str, Kind]] = MappingProxyType(
    {
        "publish_node": Kind.PROGRESS,
        "nodes": Kind.READ,
        "forget_nodes": Kind.PROGRESS,
        "request_flush": Kind.WRITE,
        "last_flush_id": Kind.READ,
        "flush_requests": Kind.READ,
        "report_flush": Kind.PROGRESS,
        "flush_progress": Kind.READ,
        "acquire_lease": Kind.PROGRESS,
        "release_lease": Kind.PROGRESS,
        "deliver_inbound_leased": Kind.WRITE,
        "take_sends": Kind.PROGRESS,
        "sends_in_window": Kind.READ,
    }
)

#: ``deliver_inbound_many``'s items: each inbound message with its profile updates.
InboundItems = Sequence[tuple[InboundMessage, Mapping[str, Mapping[str, JSONValue]] | None]]


@runtime_checkable
class ClusterStore(Protocol):
    """The operations nodes sharing one store use to see each other (see module doc)."""

    async def publish_node(self, node: NodeRecord) -> None:
        """Insert or replace the node's record (by name)."""
        ...

    async def nodes(self) -> list[NodeRecord]:
        """Every node's record, by name."""
        ...

    async def forget_nodes(self, *, before: float) -> int:
        """Delete the nodes whose lease ended before ``before``, and the flush
        requests (with their progress) whose deadline passed before it; returns how
        many nodes."""
        ...

    async def request_flush(
        self,
        *,
        transport: str | None,
        upload: bool,
        download: bool,
        requested_by: str,
        now: float,
        deadline_at: float,
    ) -> FlushRequest:
        """Record a flush request under a new id, larger than every earlier one."""
        ...

    async def last_flush_id(self) -> int:
        """The largest flush request id recorded so far (0: none)."""
        ...

    async def flush_requests(self, *, after: int) -> list[FlushRequest]:
        """The requests with an id above ``after``, in id order."""
        ...

    async def report_flush(
        self,
        request_id: int,
        *,
        node: str,
        report: Mapping[str, JSONValue],
        done: bool,
        now: float,
    ) -> None:
        """Insert or replace ``node``'s part of request ``request_id``."""
        ...

    async def flush_progress(self, request_id: int) -> list[FlushProgress]:
        """Every node's part of request ``request_id``, by node name."""
        ...

    async def acquire_lease(self, name: str, *, owner: str, now: float, lease: float) -> float:
        """Take or renew the lease ``name`` for ``owner`` until ``now + lease``, and
        return that expiry; :class:`LeaseHeld` if another owner holds it until after
        ``now``."""
        ...

    async def release_lease(self, name: str, *, owner: str) -> bool:
        """Give the lease up if ``owner`` holds it; True if it did."""
        ...

    async def deliver_inbound_leased(
        self, items: InboundItems, *, lease: str, owner: str, now: float
    ) -> list[InboxEntry]:
        """``deliver_inbound_many(items)``, in a transaction that first checks that
        ``owner`` holds the lease ``lease`` at ``now`` (:func:`check_lease_holder`):
        :class:`LeaseHeld` otherwise, and nothing is committed.  The lease cannot
        move between the check and the commit (SQLite: one ``BEGIN IMMEDIATE``;
        PostgreSQL: the lease row is locked until the commit)."""
        ...

    async def take_sends(
        self, name: str, *, count: int, period: float, now: float, want: int
    ) -> SendGrant:
        """Record as many of ``want`` sends starting at ``now`` as "at most ``count``
        in any ``period`` seconds" lets through, by the sends of every node recorded
        under ``name`` (:func:`rate_grant`), and forget those a period old.  Atomic:
        two nodes asking at once never both get the last room."""
        ...

    async def sends_in_window(self, name: str, *, period: float, now: float) -> int:
        """How many sends recorded under ``name`` started within ``period`` of ``now``."""
        ...


class ClusterFace:
    """The async face of the ClusterStore operations of a backend with one function per
    operation (SQLite, PostgreSQL): checks the arguments, encodes a report, then runs
    the backend's function ``what`` with the keyword arguments (:meth:`_cluster`)."""

    __slots__ = ()

    async def _cluster(self, what: str, **kwargs: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - the backend's

    async def publish_node(self, node: NodeRecord) -> None:
        check_node(node)
        await self._cluster("publish_node", node=node)

    async def nodes(self) -> list[NodeRecord]:
        records: list[NodeRecord] = await self._cluster("nodes")
        return records

    async def forget_nodes(self, *, before: float) -> int:
        count: int = await self._cluster("forget_nodes", before=before)
        return count

    async def request_flush(
        self,
        *,
        transport: str | None,
        upload: bool,
        download: bool,
        requested_by: str,
        now: float,
        deadline_at: float,
    ) -> FlushRequest:
        request: FlushRequest = await self._cluster(
            "request_flush",
            transport=transport,
            upload=upload,
            download=download,
            requested_by=requested_by,
            now=now,
            deadline_at=deadline_at,
        )
        return request

    async def last_flush_id(self) -> int:
        last: int = await self._cluster("last_flush_id")
        return last

    async def flush_requests(self, *, after: int) -> list[FlushRequest]:
        requests: list[FlushRequest] = await self._cluster("flush_requests", after=after)
        return requests

    async def report_flush(
        self,
        request_id: int,
        *,
        node: str,
        report: Mapping[str, JSONValue],
        done: bool,
        now: float,
    ) -> None:
        text = encode_report(report)
        await self._cluster(
            "report_flush", request_id=request_id, node=node, report=text, done=done, now=now
        )

    async def flush_progress(self, request_id: int) -> list[FlushProgress]:
        parts: list[FlushProgress] = await self._cluster("flush_progress", request_id=request_id)
        return parts

    async def acquire_lease(self, name: str, *, owner: str, now: float, lease: float) -> float:
        check_lease_args(name, owner, lease)
        until: float = await self._cluster(
            "acquire_lease", name=name, owner=owner, now=now, lease=lease
        )
        return until

    async def release_lease(self, name: str, *, owner: str) -> bool:
        released: bool = await self._cluster("release_lease", name=name, owner=owner)
        return released

    async def deliver_inbound_leased(
        self, items: InboundItems, *, lease: str, owner: str, now: float
    ) -> list[InboxEntry]:
        entries: list[InboxEntry] = await self._cluster(
            "deliver_inbound_leased", items=list(items), lease=lease, owner=owner, now=now
        )
        return entries

    async def take_sends(
        self, name: str, *, count: int, period: float, now: float, want: int
    ) -> SendGrant:
        check_rate_args(name, count, period, want)
        grant: SendGrant = await self._cluster(
            "take_sends", name=name, count=count, period=period, now=now, want=want
        )
        return grant

    async def sends_in_window(self, name: str, *, period: float, now: float) -> int:
        used: int = await self._cluster("sends_in_window", name=name, period=period, now=now)
        return used


# -- checks and encodings every backend shares ------------------------------------------


def check_node(node: NodeRecord) -> None:
    """StoreError for a record no backend should store."""
    if not node.name:
        raise StoreError("a node needs a name")
    if node.lease_until < node.heartbeat_at:
        raise StoreError(f"node {node.name}: its lease ends before its heartbeat")


def check_lease_args(name: str, owner: str, lease: float) -> None:
    if not name or not owner:
        raise StoreError("a lease needs a name and an owner")
    if not lease > 0:
        raise StoreError(f"lease {name}: its duration must be positive, not {lease}")


def lease_held(name: str, holder: str, until: float) -> LeaseHeld:
    return LeaseHeld(f"lease {name} is held by {holder} until {until:.3f}")


def check_lease_holder(
    name: str, held: tuple[str, float] | None, *, owner: str, now: float
) -> None:
    """Does ``owner`` hold the lease ``name`` at ``now``, ``held`` being its
    ``(owner, lease end)`` or None (no lease)?  LeaseHeld if not (for backends)."""
    if held is None:
        raise LeaseHeld(f"lease {name} is held by nobody, not by {owner}")
    holder, until = held
    if holder != owner or until <= now:
        raise LeaseHeld(
            f"lease {name} is held by {holder} until {until:.3f}, not by {owner} at {now:.3f}"
        )


def encode_rows(rows: Sequence[Mapping[str, JSONValue]]) -> str:
    return json.dumps(list(rows), separators=(",", ":"), sort_keys=True)


def decode_rows(text: str) -> tuple[Mapping[str, JSONValue], ...]:
    value: Any = json.loads(text)
    return tuple(dict(row) for row in value if isinstance(row, dict))


def encode_report(report: Mapping[str, JSONValue]) -> str:
    return json.dumps(dict(report), separators=(",", ":"), sort_keys=True)


def decode_report(text: str) -> Mapping[str, JSONValue]:
    value: Any = json.loads(text)
    return dict(value) if isinstance(value, dict) else {}
