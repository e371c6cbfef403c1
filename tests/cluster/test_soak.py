"""The crash soaks of several delivering processes on one store, relaying to
Postfix's ``smtp-sink`` while a random process is killed with SIGKILL every few
seconds.  At the end: no message lost, the deliveries made twice bounded by what was
in flight at the kills, every recipient in exactly one terminal state (delivered).

* Three real ``spoolbox run`` nodes on one PostgreSQL database, a few thousand
  messages; the victim node is started again at once.  Slow: ``--runslow``.
* One ``spoolbox run --workers 2`` daemon on SQLite (WAL): the messages are submitted
  through the client while it runs, and the victim is the daemon (started again by
  the test) or worker w1 or w2 (started again by the daemon: the test waits for
  that).  The in-flight bound is exact: the victim is stopped (SIGSTOP) before the
  kill and its ACTIVE recipients counted then.  The store passes ``PRAGMA
  integrity_check`` at the end.  A quick version (300 messages, 3 kills) runs in
  the normal suite; the long one (3000 messages, 12 kills) with ``--runslow``.

Needs ``postfix`` (smtp-sink) and, for the first, ``postgresql``; the sink, its
checks and the messages are the single-node SMTP crash test's (tests/crash)."""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import random
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nodes import DSN_ENV, Cluster, SharedStore, wait_for
from workers_kit import NODE, Daemon, Store, alive, wait_until, write_profile

from spoolbox.client import Client

_CRASH = Path(__file__).resolve().parent.parent / "crash"
sys.path.append(str(_CRASH))
_spec = importlib.util.spec_from_file_location(
    "spoolbox_cluster_crash_smtp", _CRASH / "test_crash_smtp.py"
)
assert _spec is not None and _spec.loader is not None
crash_smtp = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = crash_smtp  # its dataclasses look their module up
_spec.loader.exec_module(crash_smtp)
smtp_sink = crash_smtp.smtp_sink  # the fixture: a running smtp-sink

N = 6000
NODES = ("node-a", "node-b", "node-c")
#: The SMTP transport's connections per node: the messages in a node's hands at a kill.
#: (The claim lease stays the default 120 s: a node killed is started again at once
#: and returns its claims then; a short lease would let a node stalled by this busy
#: machine lose its claims to another node, duplicates that are not the kills'.)
IN_FLIGHT = 4
#: messages submitted at a time (N / LOT lots, one after each kill)
LOT = 500
POLICY = "housekeeping_interval = 1\nretry_base = 1\nretry_cap = 5\n"


@pytest.fixture
def shared_store(pg_database: Any) -> SharedStore:  # PostgreSQL only
    return SharedStore.postgres(pg_database())


def _states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


@pytest.mark.slow
@pytest.mark.parametrize("standby", [False, True], ids=["all-deliver", "standby"])
def test_three_nodes_killed_at_random_lose_nothing(
    cluster: Cluster, smtp_sink: Any, monkeypatch: pytest.MonkeyPatch, standby: bool
) -> None:
    """With ``standby`` every node has ``[daemon] standby_when_crowded = true``: on a
    machine with fewer CPUs than nodes the last ones by name stand by, and take over
    when a delivering one is killed (its lease runs out)."""
    tail = "\n[daemon]\nstandby_when_crowded = true\n" if standby else ""
    nodes = [
        cluster.add(name, smtp_sink.port, policy=POLICY, max_connections=IN_FLIGHT, transports=tail)
        for name in NODES
    ]
    worker = crash_smtp.worker
    dsn = cluster.store.env[DSN_ENV]
    # A client whose node is down opens the store itself, as the nodes do: from the
    # profile's dsn_env.
    monkeypatch.setenv(DSN_ENV, dsn)
    rng = random.Random()
    # The mail goes in a lot at a time while the nodes are killed (a lot after each
    # kill), so that the kills land while mail flows however fast this machine drains.
    lots = iter(range(0, N, LOT))

    def submit_next(via: Any) -> None:
        start = next(lots, None)
        if start is not None:  # through a node's daemon, or offline if it is down
            messages = [worker.new_message(i, "smtp") for i in range(start, start + LOT)]
            Client(via.profile).submit_many(messages)

    submit_next(nodes[0])
    kills = 0
    end = time.monotonic() + 600
    while _states(dsn).get("delivered", 0) < N and time.monotonic() < end and kills < 10:
        time.sleep(rng.uniform(1.0, 2.5))
        victim = rng.choice(nodes)
        victim.kill()
        kills += 1
        victim.start(wait=False)  # it comes back while the others go on
        submit_next(rng.choice([n for n in nodes if n is not victim]))
    for _ in range(0, N, LOT):
        submit_next(nodes[0])  # what the kills did not take in
    for node in nodes:
        if node.process is None or node.process.poll() is not None:
            node.start()
    wait_for(f"all {N} delivered", lambda: _states(dsn).get("delivered", 0) == N, deadline=600)
    crash_smtp._settle(smtp_sink)
    deliveries = crash_smtp.scan_sink(smtp_sink)
    assert deliveries.problems == []
    expected = {worker.message_id(i) for i in range(N)}
    lost = expected - set(deliveries.copies)
    duplicates = sum(n - 1 for n in deliveries.copies.values())
    states = _states(dsn)
    print(f"soak: {N} messages, {kills} kills, {len(lost)} lost, {duplicates} duplicates")
    assert lost == set()
    assert states == {"delivered": N}, states  # each recipient in one terminal state
    assert kills >= 3
    assert duplicates <= kills * IN_FLIGHT, (duplicates, kills)
    logs = [node.log() for node in nodes]
    if standby and len(os.sched_getaffinity(0)) < len(nodes):
        assert any("standing by:" in log for log in logs), "no node stood by"
    if not standby:
        assert not any("standing by:" in log for log in logs)


# -- the same with `spoolbox run --workers 2` on SQLite ------------------------------------
#: the daemon's policy in the workers soak (a message a kill cut short goes again soon)
WORKERS_POLICY = "\n[policy]\nhousekeeping_interval = 1\nretry_base = 1\nretry_cap = 5\n"
WORKER_TAGS = ("w1", "w2")


def _running_workers(daemon: Daemon) -> dict[str, int]:
    """The pid of each worker once both are running (the daemon started any that died
    again): from their status rows (``delivering (node wk-w1, pid N)``)."""
    pids: dict[str, int] = {}

    def running() -> bool:
        rows = daemon.rows()
        for tag in WORKER_TAGS:
            status = rows.get(f"worker:{tag}", {}).get("status", "")
            found = re.fullmatch(r"delivering \(node .*, pid (\d+)\)", status)
            if found is None or not alive(int(found.group(1))):
                return False
            pids[tag] = int(found.group(1))
        return True

    wait_until("both workers running", running)
    return pids


def _holding(store: Store, owner: str, deadline: float = 20.0) -> None:
    """Wait (a while) until node ``owner`` holds recipients: a kill then hits
    deliveries in flight (if it never does, the kill goes ahead on an idle process)."""
    end = time.monotonic() + deadline
    while store.active_of(owner) == 0 and time.monotonic() < end:
        time.sleep(0.01)


def _kill(daemon: Daemon, victim: str, pid: int, store: Store) -> tuple[Daemon, list[str]]:
    """SIGKILL ``victim`` (``daemon``, ``w1`` or ``w2``, process ``pid``) once it holds
    recipients; start the daemon again if it was the one, else see the daemon start
    the worker again.  Returns the daemon now running and the messages in flight in
    the victim at the kill: it is stopped (SIGSTOP) first, so that what it holds
    (recipients ACTIVE under its node name) is read while it can neither claim nor
    settle; only those can reach the sink twice."""
    owner = NODE if victim == "daemon" else f"{NODE}-{victim}"
    _holding(store, owner)
    os.kill(pid, signal.SIGSTOP)
    held = "SELECT message_id FROM recipients WHERE state = 'active' AND owner = ?"
    in_flight = [str(mid) for (mid,) in store.query(held, owner)]
    os.kill(pid, signal.SIGKILL)
    if victim == "daemon":
        daemon.proc.wait(timeout=60)
        return Daemon(daemon.profile, "--workers", "2"), in_flight
    restarts = daemon.log().count(f"delivery worker {victim} started again")
    wait_until(
        f"the daemon to start {victim} again",
        lambda: daemon.log().count(f"delivery worker {victim} started again") > restarts,
    )
    assert _running_workers(daemon)[victim] != pid
    return daemon, in_flight


def _workers_soak(
    tmp_path: Path, sink: Any, *, total: int, batch: int, kills: int, seed: int
) -> dict[str, int]:
    """``total`` messages submitted through the client, ``batch`` at a time, to a
    ``spoolbox run --workers 2`` daemon on SQLite, with a random process of the three
    SIGKILLed ``kills`` times in between (every one of the three at least once); the
    figures of the end, after checking them."""
    directory = tmp_path / "workers"
    profile = write_profile(directory, sink.port, 'backend = "sqlite"', WORKERS_POLICY)
    store = Store(directory / "spool.sqlite3")
    rng = random.Random(seed)
    victims = ["daemon", *WORKER_TAGS]
    rng.shuffle(victims)
    victims += rng.choices(("daemon", *WORKER_TAGS), k=kills - len(victims))
    worker = crash_smtp.worker
    daemon = Daemon(profile, "--workers", "2")
    started = [daemon]
    submitted = 0
    in_flight: collections.Counter[str] = collections.Counter()  # kills that caught each
    ids: dict[str, str] = {}  # the store's message id -> the message's Message-ID
    try:
        client = Client(profile)
        while submitted < total or victims:
            pids = _running_workers(daemon) | {"daemon": daemon.proc.pid}
            if submitted < total:
                lot = [worker.new_message(i, "smtp") for i in range(submitted, submitted + batch)]
                done = client.submit_many(lot)
                assert done["via"] == "daemon"
                ids |= {mid: worker.message_id(submitted + k) for k, mid in enumerate(done["ids"])}
                submitted += batch
            if victims:
                victim = victims.pop()
                daemon, held = _kill(daemon, victim, pids[victim], store)
                started.append(daemon)
                in_flight.update(ids[mid] for mid in held)
        wait_until(
            f"all {total} delivered",
            lambda: store.states().get("delivered", 0) >= total,
            deadline=600,
        )
        crash_smtp._settle(sink)
        deliveries = crash_smtp.scan_sink(sink)
        assert deliveries.problems == []
        assert daemon.stop() == 0
    finally:
        for d in started:
            d.kill()
    lost = {worker.message_id(i) for i in range(total)} - set(deliveries.copies)
    duplicates = sum(n - 1 for n in deliveries.copies.values())
    figures = {"messages": total, "kills": kills, "lost": len(lost), "duplicates": duplicates}
    bound = sum(in_flight.values())
    print(f"workers soak: {figures}, in-flight bound {bound}")
    assert lost == set()
    assert store.states() == {"delivered": total}  # each recipient in one terminal state
    # A message reached the sink twice only if the victim of a kill held it then, and
    # at most once more per such kill.
    extra = {mid: n - 1 for mid, n in deliveries.copies.items() if n > 1}
    beyond = {mid: n for mid, n in extra.items() if n > in_flight[mid]}
    assert beyond == {}, f"sent again without being in a victim's hands: {sorted(beyond)}"
    assert bound >= 1  # the kills hit deliveries in flight
    with contextlib.closing(sqlite3.connect(directory / "spool.sqlite3")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    return figures | {"bound": bound}


def test_workers_killed_at_random_lose_nothing_quick(tmp_path: Path, smtp_sink: Any) -> None:
    _workers_soak(tmp_path, smtp_sink, total=300, batch=100, kills=3, seed=16)


@pytest.mark.slow
def test_workers_killed_at_random_lose_nothing(tmp_path: Path, smtp_sink: Any) -> None:
    _workers_soak(tmp_path, smtp_sink, total=3000, batch=250, kills=12, seed=1602)
