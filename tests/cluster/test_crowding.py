"""More nodes on one machine than it has CPUs: the daemon says so.  The pure check
(:func:`spoolbox.daemon.crowding.crowded`), the periodic look, and real ``spoolbox
run`` nodes on one PostgreSQL database, started with one CPU of this machine (the
affinity a child inherits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nodes import Cluster, SharedStore, Sink, wait_for

from spoolbox.daemon.crowding import crowded, watch_crowding
from spoolbox.store import NodeRecord


def _node(
    name: str, host: str = "mx1", *, lease_until: float = 200.0, running: bool = True
) -> NodeRecord:
    return NodeRecord(name, host, 1, 0.0, 90.0, lease_until, running=running)


def test_more_nodes_up_on_this_host_than_cpus_is_said_with_their_names() -> None:
    records = [_node("b"), _node("a"), _node("c", "mx2"), _node("d", lease_until=50.0)]
    found = crowded(records, host="mx1", cpus=1, now=100.0)
    assert found is not None
    count, said = found
    assert count == 2  # c is on another machine, d's lease ran out
    assert said.startswith(
        "2 spoolbox nodes are up on this machine (mx1: a, b) and it has 1 CPU: with more "
        "delivering processes than CPUs each message costs more CPU"
    )
    assert crowded(records, host="mx1", cpus=2, now=100.0) is None
    assert crowded(records, host="mx1", cpus=None, now=100.0) is None  # unknown: no guess
    stopped = [_node("a"), _node("b", running=False)]
    assert crowded(stopped, host="mx1", cpus=1, now=100.0) is None


def test_the_watch_warns_once_and_again_only_when_the_count_grows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: list[object] = [
        [_node("a"), _node("b")],
        [_node("a"), _node("b")],  # the same: no second warning
        OSError("store down"),  # said at DEBUG, looked at again
        [_node("a"), _node("b"), _node("c")],  # one more: warned again
    ]

    async def nodes() -> list[NodeRecord]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return answer

    async def main() -> None:
        task = asyncio.ensure_future(
            watch_crowding(nodes, host="mx1", cpus=1, clock=lambda: 100.0, interval=0.01)
        )
        while answers:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.DEBUG, logger="spoolbox.daemon"):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(" (")[0] for w in warnings] == [
        "2 spoolbox nodes are up on this machine",
        "3 spoolbox nodes are up on this machine",
    ]
    assert any("cannot list the nodes: store down" in r.getMessage() for r in caplog.records)


@contextlib.contextmanager
def _one_cpu() -> Iterator[None]:
    """The processes started in the block run on one CPU (they inherit it)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def test_a_second_node_on_a_one_cpu_machine_warns(
    tmp_path: Path, pg_database: Callable[[], str], sink: Sink
) -> None:
    """Two nodes started with one CPU between them: the second sees the first up and
    warns, naming both; the first, alone when it looked, did not."""
    store = SharedStore.postgres(pg_database())
    cluster = Cluster(tmp_path, store)
    try:
        with _one_cpu():
            a = cluster.add("node-a", sink.port)
            wait_for("node-a running", lambda: " running (pid" in a.log())
            assert "spoolbox nodes are up on this machine" not in a.log()
            b = cluster.add("node-b", sink.port)
        said = f"2 spoolbox nodes are up on this machine ({socket.gethostname()}: node-a, node-b)"
        wait_for("node-b's warning", lambda: said in b.log())
        assert f"WARNING spoolbox.daemon: {said} and it has 1 CPU" in b.log()
    finally:
        cluster.stop_all()
    assert not [n.name for n in cluster.nodes.values() if "Traceback" in n.log()]
