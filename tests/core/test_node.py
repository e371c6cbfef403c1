"""A node's presence in the store (spoolbox._core.node): its record and status rows
written at a bounded rate, a heartbeat, "store unavailable" while the store fails, its
last record on a clean stop; and the cluster view that others build from the records
(a node gone after its lease, rows of every node, reports merged)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from spoolbox._core.cluster_view import (
    GONE,
    RemoteRows,
    cluster_rows,
    combine_progress,
    merge_reports,
)
from spoolbox._core.flush import FlushHandle, FlushReport, TransportFlushResult
from spoolbox._core.node import NO_WAKEUPS, STORE_UNAVAILABLE, NodePresence, NodeSettings
from spoolbox.model import ResourceType, StatusCode
from spoolbox.status import StatusRow, StatusTable
from spoolbox.store import MemoryStore, NodeRecord, StoreError
from spoolbox.testing import FakeClock

T = TypeVar("T")


class _Store(MemoryStore):
    """The memory store, counting publishes; ``down`` makes every node write fail."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.published: list[NodeRecord] = []

    async def publish_node(self, node: NodeRecord) -> None:
        if self.down:
            raise StoreError("PostgreSQL store postgresql://db/spool: connection refused")
        await super().publish_node(node)
        self.published.append(node)

    async def nodes(self) -> list[NodeRecord]:
        if self.down:
            raise StoreError("PostgreSQL store postgresql://db/spool: connection refused")
        return await super().nodes()

    async def flush_requests(self, *, after: int) -> list[Any]:
        if self.down:
            raise StoreError("PostgreSQL store postgresql://db/spool: connection refused")
        return await super().flush_requests(after=after)


@dataclass
class _Host:
    name: str


class _Spooler:
    """What a node needs of a spooler: a name, a clock, a status table, hosts."""

    def __init__(self, clock: FakeClock, name: str = "n1") -> None:
        self.owner = name
        self.clock = clock
        self.status = StatusTable(clock.now)
        self.hosts: Sequence[_Host] = [_Host("relay")]
        self.tasks: list[asyncio.Task[Any]] = []
        self.status.put(
            StatusRow("spooler", ResourceType.SPOOLER, "spoolbox", status_code=StatusCode.AVAILABLE)
        )
        self.status.put(StatusRow("relay", ResourceType.TRANSPORT_PROVIDER, "smtp"))
        self.forgotten: list[str] = []  # forget_destinations calls
        self.parts: list[str] = []  # flush parts spawned (not run), with serve_parts False
        self.serve_parts = True
        self.flushes: list[dict[str, Any]] = []
        self.store_failures = 0  # store_failed calls

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        if not self.serve_parts:
            self.parts.append(name)
            coro.close()
            return asyncio.ensure_future(asyncio.sleep(0))  # type: ignore[return-value]
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    def start_flush(self, **kwargs: Any) -> FlushHandle:
        self.flushes.append(kwargs)
        raise AssertionError("no flush was asked")

    def forget_destinations(self, transport: str) -> None:
        self.forgotten.append(transport)

    def store_failed(self) -> None:
        self.store_failures += 1


SETTINGS = NodeSettings(lease=15.0, interval=1.0, forget_after=600.0)


async def test_rows_are_written_at_most_once_an_interval() -> None:
    clock, store = FakeClock(), _Store()
    spooler = _Spooler(clock)
    presence = NodePresence(spooler, store, SETTINGS)
    task = asyncio.ensure_future(presence.run())
    try:
        await clock.advance(0)
        assert len(store.published) == 1  # at once
        for i in range(50):  # many changes within one interval
            spooler.status.update("relay", detail=f"change {i}")
            await clock.advance(0.01)
        assert len(store.published) == 1
        await clock.advance(0.6)
        assert len(store.published) == 2
        rows = {r["name"]: r for r in store.published[-1].rows}
        assert rows["relay"]["detail"] == "change 49"  # the latest rows
        await clock.advance(1.0)
        assert len(store.published) == 2  # nothing changed and no heartbeat due yet
        await clock.advance(5.0)
        assert len(store.published) == 3  # the heartbeat: a third of the lease
        last = store.published[-1]
        assert last.lease_until == last.heartbeat_at + 15.0 and last.running
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert store.published[-1].running is False  # a clean stop says so
    assert store.published[-1].lease_until == store.published[-1].heartbeat_at


async def test_store_unavailable_is_shown_then_cleared() -> None:
    clock, store = FakeClock(), _Store()
    spooler = _Spooler(clock)
    presence = NodePresence(spooler, store, SETTINGS)
    await presence.tick()
    assert spooler.status["spooler"].display_string == "Available"
    assert spooler.store_failures == 0
    store.down = True
    await presence.tick()
    row = spooler.status["spooler"]
    assert row.display_string == STORE_UNAVAILABLE
    assert row.detail is not None and "connection refused" in row.detail
    # Noted for the lanes: they put right what the failure may have undone.
    assert spooler.store_failures == 1
    assert await presence.flush_asked("relay") is False
    assert spooler.store_failures == 2
    store.down = False
    await presence.tick()
    assert spooler.store_failures == 2
    assert spooler.status["spooler"].display_string == "Available"
    assert spooler.status["spooler"].detail is None
    assert [r["status"] for r in store.published[-1].rows if r["name"] == "spooler"] == [
        "Available"
    ]


async def test_wake_ups_off_are_shown_beside_the_store_unavailable() -> None:
    clock, store = FakeClock(), _Store()
    spooler = _Spooler(clock)
    presence = NodePresence(spooler, store, SETTINGS)
    await presence.tick()
    published = len(store.published)
    presence.wakeups("connection refused")
    row = spooler.status["spooler"]
    assert (row.display_string, row.detail) == ("Available", f"{NO_WAKEUPS}: connection refused")
    await presence.tick()  # the other nodes see it at the next tick
    assert len(store.published) == published + 1
    assert presence.statistics()["no_wakeups"] == "connection refused"
    store.down = True  # the store itself: that says more
    await presence.tick()
    assert spooler.status["spooler"].display_string == STORE_UNAVAILABLE
    assert "connection refused" in str(spooler.status["spooler"].detail)
    presence.wakeups("still refused")
    assert spooler.status["spooler"].display_string == STORE_UNAVAILABLE
    store.down = False
    await presence.tick()  # back: the wake-ups are still off, and the row says so
    row = spooler.status["spooler"]
    assert (row.display_string, row.detail) == ("Available", f"{NO_WAKEUPS}: still refused")
    presence.wakeups(None)
    assert spooler.status["spooler"].detail is None


async def test_cluster_rows_show_a_node_gone_after_its_lease() -> None:
    clock, store = FakeClock(), _Store()
    for name in ("n1", "n2"):
        await NodePresence(_Spooler(clock, name), store, SETTINGS).tick()
    local = [{"name": "spooler", "status": "Available"}]
    rows = await cluster_rows(store, node="n1", local=local, now=clock.now() + 14.9)
    assert [(r["node"], r["name"], r["status"]) for r in rows] == [
        ("n1", "spooler", "Available"),
        ("n2", "spooler", "Available"),
        ("n2", "relay", "Off-line"),
    ]
    rows = await cluster_rows(store, node="n1", local=local, now=clock.now() + 15.0)
    assert [r["status"] for r in rows if r["node"] == "n2"] == [GONE, GONE]
    assert await store.forget_nodes(before=clock.now() + 15.0 + 1) == 2


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"progress": {"done": 2, "total": 10}}, {"progress": {"done": 3, "total": 9}}], (5, 10)),
        ([{"progress": None}, {"progress": {"done": 1, "total": None}}], (1, None)),
        ([{"progress": {"done": 8, "total": 5}}, {"progress": {"done": 0, "total": 5}}], (8, 8)),
    ],
)
def test_progress_adds_up_over_nodes(rows: list[dict[str, Any]], expected: tuple[Any, Any]) -> None:
    combined = combine_progress(rows)
    assert combined is not None and (combined["done"], combined["total"]) == expected


def test_reports_merge_per_transport() -> None:
    a = FlushReport([TransportFlushResult("relay", uploaded=3, delivered=3, queued=4, seconds=1)])
    b = FlushReport(
        [TransportFlushResult("relay", uploaded=4, delivered=2, deferred=2, queued=0, error="x")],
        timed_out=True,
    )
    merged = merge_reports([a, b])
    [relay] = merged.results
    assert (relay.uploaded, relay.delivered, relay.deferred, relay.queued) == (7, 5, 2, 0)
    assert (relay.error, relay.seconds, merged.timed_out) == ("x", 1, True)
    assert a.results[0].uploaded == 3  # the parts are not changed


def test_reports_merge_keep_a_nodes_reason_for_what_is_queued() -> None:
    """The reason one node gives for mail still queued (``held``) stays in the merged
    report, whichever node gave it, unless another node found nothing queued."""
    why = "slow.test gets one message every 2 s, its destination_rate_delay"
    a = FlushReport([TransportFlushResult("mx", queued=3)])
    b = FlushReport([TransportFlushResult("mx", queued=2, held=why)])
    [mx] = merge_reports([a, b]).results
    assert (mx.queued, mx.held) == (2, why)
    c = FlushReport([TransportFlushResult("mx", queued=0)])
    [mx] = merge_reports([b, c]).results
    assert (mx.queued, mx.held) == (0, None)


async def test_a_store_that_cannot_be_read_leaves_the_other_nodes_shown() -> None:
    """The other nodes did not go away because this node cannot read the store: the
    watcher reports no change (not every row removed), then the real changes."""
    clock, store = FakeClock(), _Store()
    n2 = _Spooler(clock, "n2")
    await NodePresence(_Spooler(clock, "n1"), store, SETTINGS).tick()
    await NodePresence(n2, store, SETTINGS).tick()
    watcher = RemoteRows(store, "n1")
    first = await watcher.changes(clock.now())
    assert [(node, name) for node, name, _ in first] == [("n2", "spooler"), ("n2", "relay")]
    store.down = True
    assert await watcher.changes(clock.now()) == []
    local = [{"name": "spooler", "status": "Available"}]
    assert await cluster_rows(store, node="n1", local=local, now=clock.now()) == [
        {"name": "spooler", "status": "Available", "node": "n1"}
    ]
    store.down = False
    n2.status.update("relay", detail="back")
    await NodePresence(n2, store, SETTINGS).tick()
    again = await watcher.changes(clock.now())
    assert [(node, name, row is not None) for node, name, row in again] == [("n2", "relay", True)]


async def test_a_flush_request_is_taken_once_by_the_lane_or_the_tick() -> None:
    clock, store = FakeClock(), _Store()
    spooler = _Spooler(clock, "n2")
    presence = NodePresence(spooler, store, SETTINGS)
    assert await presence.flush_asked("relay") is False  # before its first tick: none
    await presence.tick()
    assert await presence.flush_asked("relay") is False  # none recorded
    await store.request_flush(
        transport="relay",
        upload=True,
        download=False,
        requested_by="n1",
        now=clock.now(),
        deadline_at=clock.now() + 60,
    )
    spooler.serve_parts = False
    served = spooler.parts
    # A lane about to hold a message back asks: the request is taken, the back-off of
    # the transport's destinations lifted at once, this node's part started.
    assert await presence.flush_asked("relay") is True
    assert spooler.forgotten == ["relay"] and len(served) == 1
    # Taken once: neither the lane nor the tick takes it again.
    assert await presence.flush_asked("relay") is False
    await presence.tick()
    assert len(served) == 1 and spooler.forgotten == ["relay"]
    # A download-only flush lifts no back-off, and does not answer the lane.
    await store.request_flush(
        transport=None,
        upload=False,
        download=True,
        requested_by="n1",
        now=clock.now(),
        deadline_at=clock.now() + 60,
    )
    assert await presence.flush_asked("relay") is False
    assert spooler.forgotten == ["relay"] and len(served) == 2
    # The store down: the lane holds the message back as before (no error).
    store.down = True
    assert await presence.flush_asked("relay") is False
