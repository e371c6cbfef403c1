"""The memory store's :class:`~spoolbox.store.cluster.ClusterStore` operations.

A mixin of :class:`~spoolbox.store.memory.MemoryStore`: nodes, flush requests and
named leases in dictionaries, with the same rules as the durable backends (one
process only, so "several nodes" are several spoolers on one MemoryStore in a test).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .base import InboxEntry, JSONValue
from .cluster import (
    FlushProgress,
    FlushRequest,
    InboundItems,
    NodeRecord,
    SendGrant,
    check_lease_args,
    check_lease_holder,
    check_node,
    check_rate_args,
    lease_held,
    rate_grant,
)

__all__ = ["MemoryCluster"]


@dataclass(slots=True)
class _ClusterState:
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    requests: dict[int, FlushRequest] = field(default_factory=dict)
    progress: dict[tuple[int, str], FlushProgress] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    sends: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    last_id: int = 0


class MemoryCluster:
    """Nodes, flush requests and named leases kept in memory."""

    __slots__ = ()

    @property
    def _cluster(self) -> _ClusterState:
        state: _ClusterState | None = getattr(self, "_cluster_state", None)
        if state is None:
            state = _ClusterState()
            object.__setattr__(self, "_cluster_state", state)
        return state

    async def publish_node(self, node: NodeRecord) -> None:
        check_node(node)
        self._cluster.nodes[node.name] = node

    async def nodes(self) -> list[NodeRecord]:
        return [n for _, n in sorted(self._cluster.nodes.items())]

    async def forget_nodes(self, *, before: float) -> int:
        state = self._cluster
        gone = [name for name, n in state.nodes.items() if n.lease_until < before]
        for name in gone:
            del state.nodes[name]
        old = [i for i, r in state.requests.items() if r.deadline_at < before]
        for i in old:
            del state.requests[i]
        for key in [k for k in state.progress if k[0] in old]:
            del state.progress[key]
        return len(gone)

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
        state = self._cluster
        state.last_id += 1
        request = FlushRequest(
            state.last_id, transport, upload, download, requested_by, now, deadline_at
        )
        state.requests[request.id] = request
        return request

    async def last_flush_id(self) -> int:
        return self._cluster.last_id

    async def flush_requests(self, *, after: int) -> list[FlushRequest]:
        return [r for i, r in sorted(self._cluster.requests.items()) if i > after]

    async def report_flush(
        self,
        request_id: int,
        *,
        node: str,
        report: Mapping[str, JSONValue],
        done: bool,
        now: float,
    ) -> None:
        if request_id not in self._cluster.requests:
            return  # forgotten (or never made): nobody waits for it
        self._cluster.progress[(request_id, node)] = FlushProgress(
            request_id, node, done, dict(report), now
        )

    async def flush_progress(self, request_id: int) -> list[FlushProgress]:
        return [p for (i, _), p in sorted(self._cluster.progress.items()) if i == request_id]

    async def acquire_lease(self, name: str, *, owner: str, now: float, lease: float) -> float:
        check_lease_args(name, owner, lease)
        leases = self._cluster.leases
        held = leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            raise lease_held(name, *held)
        leases[name] = (owner, now + lease)
        return now + lease

    async def release_lease(self, name: str, *, owner: str) -> bool:
        leases = self._cluster.leases
        held = leases.get(name)
        if held is None or held[0] != owner:
            return False
        del leases[name]
        return True

    async def deliver_inbound_leased(
        self, items: InboundItems, *, lease: str, owner: str, now: float
    ) -> list[InboxEntry]:
        # The check and the commit run with no await between them: nothing else runs.
        check_lease_holder(lease, self._cluster.leases.get(lease), owner=owner, now=now)
        return self._deliver(items)

    async def take_sends(
        self, name: str, *, count: int, period: float, now: float, want: int
    ) -> SendGrant:
        check_rate_args(name, count, period, want)
        sent = [(at, n) for at, n in self._cluster.sends.get(name, ()) if at + period > now]
        grant = rate_grant(sent, count=count, period=period, now=now, want=want)
        if grant.granted:
            sent.append((now, grant.granted))
            sent.sort()
        self._cluster.sends[name] = sent
        return grant

    async def sends_in_window(self, name: str, *, period: float, now: float) -> int:
        return sum(n for at, n in self._cluster.sends.get(name, ()) if at + period > now)

    def _deliver(self, items: InboundItems) -> list[InboxEntry]:
        raise NotImplementedError  # pragma: no cover - MemoryStore's
