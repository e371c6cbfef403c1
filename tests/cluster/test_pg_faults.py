"""PostgreSQL faults under load, with two real ``spoolbox run`` nodes relaying to an
SMTP server: every server connection of the database terminated again and again
(``pg_terminate_backend``: claims and settles cut mid-way), then the server stopped
(``pg_ctl stop -m immediate``: the nodes' spooler rows say "store unavailable") and
started again, then restarted (``pg_ctl restart -m immediate``) mid-run.  The nodes
recover without a manual step: every message delivered, each recipient delivered
once in the store, the deliveries made twice bounded by what was in flight.

The nodes keep the default lease (120 s) and the test waits less than that for the
last delivery: what a restart leaves leased to a node that holds no job of it (a
claim whose answer was lost, a settle the crash undid) must go back to the queue
when the store is back (``release_lost_claims``), not when the lease ends.  (A settle
the crash undid is written again: ``_core/recovery.py``.)"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from typing import Any

import postgres_cluster as pgc
import psycopg
import pytest
from nodes import DSN_ENV, Cluster, SharedStore, Sink, message, wait_for
from psycopg.conninfo import conninfo_to_dict

from spoolbox import Address, NewMessage
from spoolbox.client import Client

N = 400
POLICY = "housekeeping_interval = 1\nretry_base = 1\nretry_cap = 2\n"
#: Less than the lease: a message left to its lease fails the test.
DELIVERED_WITHIN = 90.0


@pytest.fixture
def shared_store(pg_database: Any) -> SharedStore:  # PostgreSQL only
    return SharedStore.postgres(pg_database())


def _terminate(cluster: pgc.Cluster, dbname: str) -> int:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


def _spooler_status(client: Client) -> str:
    try:
        rows = client.status()
    except Exception:
        return "no answer"
    return str(next(r["status"] for r in rows if r["name"] == "spooler"))


def test_nodes_survive_terminated_connections_and_server_restarts(
    cluster: Cluster, sink: Sink, pg_cluster: pgc.Cluster
) -> None:
    dbname = str(conninfo_to_dict(cluster.store.env[DSN_ENV])["dbname"])
    sink.slow(0.02)
    a = cluster.add("node-a", sink.port, policy=POLICY)
    b = cluster.add("node-b", sink.port, policy=POLICY)
    client_a = Client(a.profile)
    sender = Address.parse("SMTP:postmaster@example.org")
    rcpt = (Address.parse("SMTP:dora@example.org"),)
    batch = []
    for i in range(N):
        mid, content = message(i)
        batch.append(NewMessage(id=mid, sender=sender, recipients=rcpt, content=content))
    half = N // 2
    client_a.submit_many(batch[:half])  # accepted before the faults: none may be lost

    terminated = 0
    for _ in range(6):  # connections cut while the nodes claim and settle
        time.sleep(0.4)
        terminated += _terminate(pg_cluster, dbname)

    pg_cluster.pg_ctl("stop", "-m", "immediate", "-w")
    try:
        wait_for(
            "node-a's row to say the store is unavailable",
            lambda: _spooler_status(client_a) == "store unavailable",
        )
    finally:
        pg_cluster.start()
    wait_for("node-a's row to recover", lambda: _spooler_status(client_a) == "Available")

    client_a.submit_many(batch[half:])
    time.sleep(0.5)  # the second half is being relayed: the server crashes and restarts
    with open(pg_cluster.root / "postgres.log", "ab") as log:  # the server keeps its stdout
        argv = [str(pg_cluster.bindir / "pg_ctl"), "-D", str(pg_cluster.data)]
        restarted = subprocess.run(
            pg_cluster._command(*argv, "restart", "-m", "immediate", "-w"),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert restarted.returncode == 0, pg_cluster.log()[-2000:]

    def sent() -> bool:
        with psycopg.connect(cluster.store.env[DSN_ENV]) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) FROM recipients"
            ).fetchone()
        return row is not None and row[0] == row[1] == N

    wait_for(f"all {N} recipients delivered", sent, deadline=DELIVERED_WITHIN)
    ids = Counter(c.split(b"Subject: ")[1].split(b"\r\n")[0] for _, c in sink.received)
    assert len(ids) == N, f"lost: {N - len(ids)}"
    duplicates = sum(n - 1 for n in ids.values())
    # At most the messages in flight at each fault: a node's lanes (10 SMTP
    # connections at most) for each of the 6 terminations and 2 server stops.
    assert duplicates <= 2 * 10 * 8, duplicates
    assert terminated > 0
    client_b = Client(b.profile)
    # node-b's row says so again at its next write (node-a may have relayed the rest)
    wait_for("node-b's row to recover", lambda: _spooler_status(client_b) == "Available")
    print(f"pg faults: {N} messages, {terminated} connections cut, {duplicates} duplicates")
