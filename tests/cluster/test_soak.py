"""The multi-node crash soak: three real ``spoolbox run`` nodes on one PostgreSQL
database relay a few thousand messages to Postfix's ``smtp-sink`` while a random
node is killed with SIGKILL every few seconds and started again.  At the end: no
message lost, the deliveries made twice bounded by what was in flight at the kills,
every recipient in exactly one terminal state (delivered).  Slow: run with
``--runslow``.  Needs ``postfix`` (smtp-sink) and ``postgresql``; the sink, its
checks and the messages are the single-node SMTP crash test's (tests/crash)."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from nodes import DSN_ENV, Cluster, SharedStore, wait_for

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
POLICY = "housekeeping_interval = 1\nretry_base = 1\nretry_cap = 5\n"


@pytest.fixture
def shared_store(pg_database: Any) -> SharedStore:  # PostgreSQL only
    return SharedStore.postgres(pg_database())


def _states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


@pytest.mark.slow
def test_three_nodes_killed_at_random_lose_nothing(cluster: Cluster, smtp_sink: Any) -> None:
    options = f"max_connections = {IN_FLIGHT}"
    nodes = [
        cluster.add(name, smtp_sink.port, policy=POLICY, relay_options=options) for name in NODES
    ]
    client = Client(nodes[0].profile)
    worker = crash_smtp.worker
    for start in range(0, N, 500):
        client.submit_many([worker.new_message(i, "smtp") for i in range(start, start + 500)])
    dsn = cluster.store.env[DSN_ENV]
    rng = random.Random()
    kills = 0
    end = time.monotonic() + 600
    while _states(dsn).get("delivered", 0) < N and time.monotonic() < end and kills < 10:
        time.sleep(rng.uniform(1.0, 2.5))
        victim = rng.choice(nodes)
        victim.kill()
        kills += 1
        victim.start(wait=False)  # it comes back while the others go on
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
