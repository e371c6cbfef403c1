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
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import Cluster, SharedStore, Sink, new_message, wait_for

from spoolbox import ManualIdle
from spoolbox._core.idle import StandbyIdle
from spoolbox.client import Client
from spoolbox.daemon.crowding import (
    STANDBY_INTERVAL,
    STANDBY_RECHECK,
    crowded,
    pid_alive,
    running_here,
    served_by,
    standby_reason,
    watch_crowding,
)
from spoolbox.store import NodeRecord


def _row(name: str, *bits: str, kind: str = "transport") -> dict[str, object]:
    return {"name": name, "resource_type": kind, "status_bits": ["AVAILABLE", *bits]}


_RELAY = (_row("relay", "OUTBOUND_ENABLED"),)


def _node(
    name: str,
    host: str = "mx1",
    *,
    lease_until: float = 200.0,
    running: bool = True,
    rows: tuple[dict[str, object], ...] = _RELAY,
    pid: int = 1,
) -> NodeRecord:
    return NodeRecord(name, host, pid, 0.0, 90.0, lease_until, rows=rows, running=running)


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


def _watch(answers: list[object], **more: Any) -> None:
    """``watch_crowding`` on mx1 looking at the scripted ``answers`` (node lists, or an
    exception the store raises), one every 10 ms, until none is left."""

    async def nodes() -> list[NodeRecord]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return answer

    async def main() -> None:
        task = asyncio.ensure_future(
            watch_crowding(nodes, host="mx1", clock=lambda: 100.0, interval=0.01, **more)
        )
        while answers:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_the_watch_warns_once_and_again_only_when_the_count_grows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: list[object] = [
        [_node("a"), _node("b")],
        [_node("a"), _node("b")],  # the same: no second warning
        OSError("store down"),  # said at DEBUG, looked at again
        [_node("a"), _node("b"), _node("c")],  # one more: warned again
    ]

    with caplog.at_level(logging.DEBUG, logger="spoolbox.daemon"):
        _watch(answers, cpus=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(" (")[0] for w in warnings] == [
        "2 spoolbox nodes are up on this machine",
        "3 spoolbox nodes are up on this machine",
    ]
    assert any("cannot list the nodes: store down" in r.getMessage() for r in caplog.records)


def test_what_a_node_serves_is_read_from_its_rows() -> None:
    rows = [
        _row("relay", "OUTBOUND_ENABLED"),
        _row("box", "INBOUND_ENABLED"),
        _row("both", "OUTBOUND_ENABLED", "INBOUND_ENABLED"),
        _row("off"),  # logged off: neither side enabled
        _row("spooler", "OUTBOUND_ENABLED", kind="spooler"),
        {"name": "odd", "resource_type": "transport", "status_bits": "OUTBOUND_ENABLED"},
    ]
    assert served_by(rows) == {
        ("relay", "out"),
        ("box", "in"),
        ("both", "out"),
        ("both", "in"),
    }


def test_the_nodes_after_the_first_as_many_as_cpus_stand_by() -> None:
    """Three nodes up on mx1 with two CPUs: a and b deliver, c stands by (its own
    record not read yet: it counts itself); nodes elsewhere, lapsed or stopped do not
    count."""
    records = [
        _node("b"),
        _node("a"),
        _node("z", "mx2"),
        _node("old", lease_until=50.0),
        _node("gone", running=False),
    ]
    mine = {("relay", "out")}
    said = standby_reason(records, me="c", mine=mine, host="mx1", cpus=2, now=100.0)
    assert said == (
        "standing by: 3 spoolbox nodes are up on this machine (mx1: a, b, c) and it has "
        "2 CPUs; a, b deliver this node's transports; it starts no new delivery or "
        "mailbox poll (a flush still runs) until fewer are up ([daemon] "
        "standby_when_crowded)"
    )
    for me in ("a", "b"):  # the first ones deliver
        assert standby_reason(records, me=me, mine=mine, host="mx1", cpus=2, now=100.0) is None
    for cpus in (3, None):  # room for all, or no CPU count to go by
        assert standby_reason(records, me="c", mine=mine, host="mx1", cpus=cpus, now=100.0) is None
    one = standby_reason(records, me="c", mine=mine, host="mx1", cpus=1, now=100.0)
    assert one is not None and "it has 1 CPU; a delivers this node's transports" in one


def test_a_node_whose_transports_the_first_ones_do_not_serve_delivers() -> None:
    """Mail only this node could send (or fetch) is never left waiting: c serves an
    sms transport, or fetches a mailbox, that a and b do not; and a transport that is
    off-line on a does not count as served."""
    records = [_node("a"), _node("b")]
    for mine in ({("relay", "out"), ("gsm", "out")}, {("relay", "out"), ("box", "in")}):
        assert standby_reason(records, me="c", mine=mine, host="mx1", cpus=2, now=100.0) is None
    off = [_node("a", rows=(_row("relay"),))]
    assert (
        standby_reason(off, me="c", mine={("relay", "out")}, host="mx1", cpus=1, now=100.0) is None
    )
    # served between the two that deliver: enough
    split = [_node("a"), _node("b", rows=(_row("box", "INBOUND_ENABLED"),))]
    said = standby_reason(
        split, me="c", mine={("relay", "out"), ("box", "in")}, host="mx1", cpus=2, now=100.0
    )
    assert said is not None and said.startswith("standing by: 3 spoolbox nodes")


def test_a_standby_idle_holds_background_work_until_it_delivers_again() -> None:
    async def main() -> None:
        inner = ManualIdle()
        idle = StandbyIdle(inner, standing_by=True)
        assert not idle.is_idle()
        assert idle.statistics()["standby"] is True
        waiter = asyncio.ensure_future(idle.wait_idle())
        await asyncio.sleep(0.02)
        assert not waiter.done()
        idle.stand_by(False)
        await asyncio.wait_for(waiter, 1)
        assert idle.is_idle()
        inner.set_busy(True)  # the policy it wraps still decides
        assert not idle.is_idle()
        inner.set_busy(False)
        with idle.foreground_busy():
            assert not idle.is_idle()
        assert idle.is_idle() and idle.statistics() == {
            "idle": True,
            "busy_marks": 0,
            "standby": False,
        }

    asyncio.run(main())


def test_the_watch_stands_by_and_delivers_again_as_the_count_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crowd = [_node("a"), _node("b"), _node("c")]
    answers: list[object] = [
        crowd,
        crowd,  # the same: nothing new said or done
        OSError("store down"),  # keeps standing by
        [_node("a"), _node("b", running=False), _node("c")],  # b stopped
        crowd,
    ]
    told: list[str | None] = []

    with caplog.at_level(logging.DEBUG, logger="spoolbox.daemon"):
        _watch(answers, cpus=2, me="c", mine=lambda: {("relay", "out")}, stand_by=told.append)
    assert [t is not None for t in told] == [True, False, True]
    said = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert [s for s in said if s[0] in ("WARNING", "INFO")] == [
        ("WARNING", "standing by"),
        ("INFO", "delivering again"),
        ("WARNING", "standing by"),
    ]
    # the warning of the warn-only watch is not said by a node that can stand by
    assert not any("CPUs: with more delivering" in r.getMessage() for r in caplog.records)
    assert STANDBY_INTERVAL <= 10


def test_a_node_of_this_machine_whose_process_is_gone_is_not_counted() -> None:
    """Its lease still runs (a crash: the lease ends 15 s after its last heartbeat),
    but its process is not on this machine: gone now.  A node of another machine is
    never looked for here."""
    records = [_node("a", pid=4242), _node("b", "mx2", pid=4242), _node("c")]
    kept = running_here(records, host="mx1", me="c", alive=lambda pid: pid != 4242)
    assert [r.name for r in kept] == ["b", "c"]
    # this node itself is never dropped, whatever its pid says
    assert [r.name for r in running_here(records, host="mx1", me="a", alive=lambda _: False)] == [
        "a",
        "b",
    ]
    assert pid_alive(os.getpid()) and pid_alive(1)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not pid_alive(gone.pid)


def test_a_standing_node_delivers_again_once_the_process_of_one_before_it_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Node a (pid 4242) delivers, c stands by; a is killed: its record is the same
    (its lease runs), but its process is gone, and c delivers again at its next look."""
    dead: set[int] = set()
    records = [_node("a", pid=4242), _node("c")]
    told: list[str | None] = []

    def alive(pid: int) -> bool:
        return pid not in dead

    def kill_a_after_standing(reason: str | None) -> None:
        told.append(reason)
        dead.add(4242)

    with caplog.at_level(logging.INFO, logger="spoolbox.daemon"):
        _watch(
            [records, records],
            cpus=1,
            me="c",
            mine=lambda: {("relay", "out")},
            stand_by=kill_a_after_standing,
            alive=alive,
        )
    assert [t is not None for t in told] == [True, False]
    assert "delivering again" in caplog.records[-1].getMessage()
    assert STANDBY_RECHECK <= 1.0 < STANDBY_INTERVAL


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


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_second_node_stands_by_and_takes_over_when_the_first_stops(
    tmp_path: Path, pg_database: Callable[[], str], sink: Sink, how: str
) -> None:
    """``standby_when_crowded = true``, two nodes with one CPU between them: the
    second stands by (its log, its row in ``spoolbox status``), and the mail
    submitted through it is delivered by the first; when the first stops (or is
    killed with SIGKILL: its process is gone, while the store still lists it up until
    its lease runs out), the second delivers again within its next look and sends
    what comes next."""
    store = SharedStore.postgres(pg_database())
    cluster = Cluster(tmp_path, store)
    standby = "\n[daemon]\nstandby_when_crowded = true\n"
    # The default housekeeping: a node's lease runs 15 s after its last heartbeat,
    # far longer than a takeover of a killed node on this machine should take.
    policy = "housekeeping_interval = 5\nretry_base = 60\n"
    try:
        with _one_cpu():
            a = cluster.add("node-a", sink.port, transports=standby, policy=policy)
            wait_for("node-a running", lambda: " running (pid" in a.log())
            b = cluster.add("node-b", sink.port, transports=standby, policy=policy)
        said = (
            f"WARNING spoolbox.daemon: standing by: 2 spoolbox nodes are up on this machine "
            f"({socket.gethostname()}: node-a, node-b) and it has 1 CPU; node-a delivers "
            "this node's transports"
        )
        # node-b looks at its start, before node-a's relay may be on-line in the
        # store: within a few looks
        wait_for("node-b standing by", lambda: said in b.log(), deadline=4 * STANDBY_INTERVAL)
        assert "standing by" not in a.log()
        rows = {(r["node"], r["name"]): r for r in b.json("status")["rows"]}
        assert rows[("node-b", "spooler")]["status"] == "Standing by", rows
        client = Client(b.profile)
        for batch in (range(10), range(10, 20)):
            client.submit_many([new_message(i) for i in batch])
            if batch[0] == 0:
                wait_for("the first ten delivered", lambda: len(sink.received) == 10)
                wait_for("node-a settled them", lambda: a.log().count("status=sent") == 10)
                assert b.log().count("status=sent") == 0
                if how == "stop":
                    a.stop()
                else:
                    a.kill()
                wait_for(
                    "node-b delivering again",
                    lambda: "INFO spoolbox.daemon: delivering again" in b.log(),
                    deadline=4 * STANDBY_INTERVAL,
                )
                if how == "kill":  # taken over before node-a's lease ran out
                    rows = {(r["node"], r["name"]): r for r in b.json("status")["rows"]}
                    assert rows[("node-a", "spooler")]["status"] != "Gone", rows
        wait_for("the next ten delivered by node-b", lambda: b.log().count("status=sent") == 10)
        assert len(sink.received) == 20
    finally:
        cluster.stop_all()
    assert not [n.name for n in cluster.nodes.values() if "Traceback" in n.log()]
