"""The conformance suite of :class:`spoolbox.store.cluster.ClusterStore`.

Every backend that nodes share (memory, SQLite, PostgreSQL) passes it:
``await check_cluster_store(factory)`` runs every check on a fresh opened store from
``factory`` and raises AssertionError naming each failed one.  Each check is also
runnable alone (:func:`run_cluster_check`), as pytest parametrises them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..store.base import InboundMessage, StoreError
from ..store.cluster import (
    ClusterStore,
    LeaseHeld,
    NodeRecord,
    NodeState,
    SendGrant,
    node_state,
)

__all__ = ["CLUSTER_CHECKS", "check_cluster_store", "run_cluster_check"]

ClusterCheck = Callable[[Any], Awaitable[None]]
ClusterFactory = Callable[[], Any]

#: Every check, by name, in a stable order.
CLUSTER_CHECKS: dict[str, ClusterCheck] = {}

_F = TypeVar("_F", bound=ClusterCheck)

T0 = 1_700_000_000.0


def _check(fn: _F) -> _F:
    CLUSTER_CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


async def run_cluster_check(name: str, factory: ClusterFactory) -> None:
    """Run one check on a fresh store from ``factory``, then close it."""
    made = factory()
    store: Any = await made if inspect.isawaitable(made) else made
    await store.open()
    close = store.close
    try:
        if not isinstance(store, ClusterStore):
            raise AssertionError(f"{store!r} does not implement ClusterStore")
        await CLUSTER_CHECKS[name](store)
    finally:
        await close()


async def check_cluster_store(factory: ClusterFactory) -> None:
    failures: list[tuple[str, BaseException]] = []
    for name in CLUSTER_CHECKS:
        try:
            await run_cluster_check(name, factory)
        except Exception as exc:
            failures.append((name, exc))
    if failures:
        lines = "\n".join(f"  {name}: {type(e).__name__}: {e}" for name, e in failures)
        raise AssertionError(
            f"store failed {len(failures)} cluster check(s):\n{lines}"
        ) from failures[0][1]


def _node(name: str, *, at: float = T0, lease: float = 15.0, **kw: Any) -> NodeRecord:
    fields: dict[str, Any] = {
        "host": "h1",
        "pid": 42,
        "started_at": T0 - 10,
        "heartbeat_at": at,
        "lease_until": at + lease,
        "rows": ({"name": "spooler", "status": "Available", "counters": {"queued": 1}},),
    }
    fields.update(kw)
    return NodeRecord(name=name, **fields)


def _equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")


@_check
async def check_nodes_publish_and_replace(store: ClusterStore) -> None:
    _equal(await store.nodes(), [], "nodes of a new store")
    await store.publish_node(_node("n2"))
    await store.publish_node(_node("n1", pid=7))
    await store.publish_node(_node("n1", pid=8, at=T0 + 5, rows=()))
    nodes = await store.nodes()
    _equal([n.name for n in nodes], ["n1", "n2"], "nodes, by name")
    n1, n2 = nodes
    _equal((n1.pid, n1.heartbeat_at, n1.lease_until, n1.rows), (8, T0 + 5, T0 + 20, ()), "n1")
    _equal(n2.rows, _node("n2").rows, "n2's status rows come back as published")
    _equal((n2.host, n2.started_at, n2.running), ("h1", T0 - 10, True), "n2")


@_check
async def check_node_gone_after_its_lease_and_forgotten(store: ClusterStore) -> None:
    await store.publish_node(_node("old", at=T0, lease=15))
    await store.publish_node(_node("new", at=T0 + 100, lease=15))
    await store.publish_node(_node("stopped", at=T0 + 100, lease=0, running=False))
    states = {n.name: node_state(n, now=T0 + 50) for n in await store.nodes()}
    _equal(
        states,
        {"old": NodeState.GONE, "new": NodeState.UP, "stopped": NodeState.GONE},
        "node states",
    )
    _equal(await store.forget_nodes(before=T0 + 16), 1, "nodes forgotten")
    _equal([n.name for n in await store.nodes()], ["new", "stopped"], "nodes left")


@_check
async def check_node_refused_without_name(store: ClusterStore) -> None:
    for bad in (_node(""), _node("n", lease=-1)):
        try:
            await store.publish_node(bad)
        except StoreError:
            continue
        raise AssertionError(f"{bad!r} was stored")
    _equal(await store.nodes(), [], "nodes after refusals")


@_check
async def check_flush_requests_in_id_order(store: ClusterStore) -> None:
    _equal(await store.last_flush_id(), 0, "last flush id of a new store")
    a = await store.request_flush(
        transport="relay", upload=True, download=False, requested_by="n1", now=T0,
        deadline_at=T0 + 60,
    )  # fmt: skip
    b = await store.request_flush(
        transport=None, upload=True, download=True, requested_by="n2", now=T0 + 1,
        deadline_at=T0 + 61,
    )  # fmt: skip
    if not b.id > a.id > 0:
        raise AssertionError(f"flush request ids must grow: {a.id}, {b.id}")
    _equal(await store.last_flush_id(), b.id, "last flush id")
    _equal(await store.flush_requests(after=0), [a, b], "every request")
    _equal(await store.flush_requests(after=a.id), [b], "requests after the first")
    _equal(await store.flush_requests(after=b.id), [], "requests after the last")
    _equal((b.transport, b.upload, b.download, b.requested_by), (None, True, True, "n2"), "b")


@_check
async def check_flush_progress_per_node(store: ClusterStore) -> None:
    r = await store.request_flush(
        transport="relay", upload=True, download=True, requested_by="n1", now=T0,
        deadline_at=T0 + 60,
    )  # fmt: skip
    await store.report_flush(r.id, node="n2", report={"done": 1}, done=False, now=T0 + 1)
    await store.report_flush(r.id, node="n1", report={"done": 0}, done=False, now=T0 + 1)
    await store.report_flush(r.id, node="n2", report={"done": 3}, done=True, now=T0 + 2)
    await store.report_flush(r.id + 1000, node="n2", report={}, done=True, now=T0 + 2)
    parts = await store.flush_progress(r.id)
    _equal([(p.node, p.done, dict(p.report)) for p in parts],
           [("n1", False, {"done": 0}), ("n2", True, {"done": 3})], "progress")  # fmt: skip
    _equal(await store.flush_progress(r.id + 1000), [], "progress of an unknown request")
    await store.forget_nodes(before=T0 + 61)
    _equal(await store.flush_requests(after=0), [], "requests after their deadline")
    _equal(await store.flush_progress(r.id), [], "progress of a forgotten request")


@_check
async def check_leases_one_owner_at_a_time(store: ClusterStore) -> None:
    _equal(await store.acquire_lease("inbound:a", owner="n1", now=T0, lease=30), T0 + 30, "n1")
    try:
        await store.acquire_lease("inbound:a", owner="n2", now=T0 + 29, lease=30)
    except LeaseHeld as exc:
        if "n1" not in str(exc):
            raise AssertionError(f"LeaseHeld should name the holder: {exc}") from None
    else:
        raise AssertionError("n2 took a lease n1 holds")
    _equal(await store.acquire_lease("inbound:b", owner="n2", now=T0, lease=30), T0 + 30, "b")
    _equal(
        await store.acquire_lease("inbound:a", owner="n1", now=T0 + 20, lease=30),
        T0 + 50,
        "n1 renews",
    )
    _equal(await store.release_lease("inbound:a", owner="n2"), False, "n2 releases n1's")
    _equal(
        await store.acquire_lease("inbound:a", owner="n2", now=T0 + 51, lease=30),
        T0 + 81,
        "n2 takes it once expired",
    )
    try:
        await store.acquire_lease("inbound:a", owner="n1", now=T0 + 52, lease=30)
    except LeaseHeld:
        pass
    else:
        raise AssertionError("n1 took back a lease n2 now holds")
    _equal(await store.release_lease("inbound:a", owner="n2"), True, "n2 releases")
    _equal(
        await store.acquire_lease("inbound:a", owner="n1", now=T0 + 53, lease=30),
        T0 + 83,
        "n1 after the release",
    )


@_check
async def check_inbound_commits_only_under_its_lease(store: Any) -> None:
    """``deliver_inbound_leased`` commits the batch and the provider's state only for
    the lease's holder while it runs; otherwise LeaseHeld and nothing is written."""
    section = "transport:imap"

    def batch(n: int) -> list[tuple[InboundMessage, dict[str, dict[str, Any]]]]:
        return [
            (InboundMessage("imap", f"Subject: {i}\r\n\r\nhi\r\n".encode()), {section: {"uid": i}})
            for i in range(1, n + 1)
        ]

    async def refused(owner: str, now: float, what: str) -> None:
        try:
            await store.deliver_inbound_leased(batch(2), lease="inbound:imap", owner=owner, now=now)
        except LeaseHeld:
            return
        raise AssertionError(f"an inbound batch was committed by {what}")

    await refused("n1", T0, "a node holding no lease")
    await store.acquire_lease("inbound:imap", owner="n1", now=T0, lease=30)
    await refused("n2", T0 + 1, "a node while another holds the lease")
    await refused("n1", T0 + 30, "the holder after its lease expired")
    _equal(await store.list_inbox(limit=10), [], "the inbox after refused batches")
    _equal(await store.profile_get(section), {}, "the provider's state after refused batches")
    entries = await store.deliver_inbound_leased(
        batch(2), lease="inbound:imap", owner="n1", now=T0 + 29
    )
    _equal(len(entries), 2, "entries committed by the lease's holder")
    _equal(len(await store.list_inbox(limit=10)), 2, "the inbox after the holder's batch")
    _equal(await store.profile_get(section), {"uid": 2}, "the provider's state, committed with it")


@_check
async def check_send_rate_grants_no_more_than_its_count(store: ClusterStore) -> None:
    """``take_sends``: at most ``count`` in any ``period``, whoever asks; room comes
    back as the oldest sends age out; each name has a window of its own."""

    async def take(want: int, at: float, name: str = "transport:relay") -> SendGrant:
        return await store.take_sends(name, count=3, period=10.0, now=T0 + at, want=want)

    _equal(await take(2, 0.0), SendGrant(2, 2, T0), "two of three")
    _equal(await take(2, 1.0), SendGrant(1, 3, T0 + 10.0), "the last room, and when more comes")
    _equal(await take(1, 9.9), SendGrant(0, 3, T0 + 10.0), "nothing while the window is full")
    _equal(await take(0, 5.0), SendGrant(0, 3, T0 + 10.0), "want=0 records nothing")
    _equal(await take(3, 2.0, "transport:other"), SendGrant(3, 3, T0 + 12.0), "another name")
    _equal(
        await store.sends_in_window("transport:relay", period=10.0, now=T0 + 9.9),
        3,
        "sends in the window at 9.9",
    )
    # At 10.0 the two sent at 0 are a period old: two more may start, not three.
    _equal(await take(3, 10.0), SendGrant(2, 3, T0 + 11.0), "room of the two aged out")
    _equal(
        await store.sends_in_window("transport:relay", period=10.0, now=T0 + 10.5),
        3,
        "sends in the window at 10.5",
    )
    _equal(
        await store.sends_in_window("transport:relay", period=10.0, now=T0 + 20.0),
        0,
        "sends in the window a period after the last",
    )
    try:
        await store.take_sends("transport:relay", count=0, period=10.0, now=T0, want=1)
    except StoreError as exc:
        if "count" not in str(exc):
            raise AssertionError(f"the refusal should say what is wrong: {exc}") from None
    else:
        raise AssertionError("take_sends accepted a count of 0")


@_check
async def check_send_rate_is_one_window_for_concurrent_takers(store: ClusterStore) -> None:
    """Ten takers at once against a window of four: four sends granted in all."""
    grants = await asyncio.gather(
        *(
            store.take_sends("transport:sms", count=4, period=60.0, now=T0 + i * 0.001, want=1)
            for i in range(10)
        )
    )
    _equal(sum(g.granted for g in grants), 4, "sends granted to ten concurrent takers")
    _equal(
        await store.sends_in_window("transport:sms", period=60.0, now=T0 + 1),
        4,
        "sends in the window",
    )
