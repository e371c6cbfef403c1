"""Fencing: a node stalled past its lease (SIGSTOP) must not settle a recipient another
node now owns.  Real ``spoolbox run`` nodes on one store (SQLite file, PostgreSQL
database) and an SMTP server that answers each DATA with its number, slowly: node-a
starts a delivery and is stopped; node-b takes the lease over when it expires and
delivers again; node-a is continued while node-b's attempt is still under way (its
server's 250 may reach it, or it cuts the connection when it finds its lease gone).
The recipient ends delivered with node-b's answer, and node-a says it lost the lease."""

from __future__ import annotations

import signal

from nodes import Cluster, Sink, new_message, wait_for

from spoolbox.client import Client

POLICY = "housekeeping_interval = 1\nlease = 3\nretry_base = 600\n"


def test_a_node_stalled_past_its_lease_settles_nothing(cluster: Cluster, sink: Sink) -> None:
    sink.handler.delays = [4.0, 12.0]  # node-a's DATA, then node-b's, each this slow
    a = cluster.add("node-a", sink.port, policy=POLICY)
    client = Client(a.profile)
    mid = client.submit(new_message(1))["id"]
    wait_for("node-a's DATA", lambda: sink.started == 1)
    a.signal(signal.SIGSTOP)  # stalled mid-delivery, holding the lease
    try:
        b = cluster.add("node-b", sink.port, policy=POLICY)
        wait_for("node-b's DATA, after node-a's lease expired", lambda: sink.started == 2)
    finally:
        a.signal(signal.SIGCONT)  # node-a's "250 id=1" is waiting for it
    # node-a's "250 id=1" may reach it, or node-a may cut its connection first (its
    # renewer finds the lease gone the moment it runs again, and the transport is told
    # to cancel): either way it must settle nothing.

    def settled() -> bool:
        shown = Client(b.profile).show(mid)
        return shown["state"] == "sent"

    wait_for("the message sent", settled, deadline=60)
    [recipient] = Client(b.profile).show(mid)["recipients"]
    assert recipient["state"] == "delivered"
    assert "id=2" in (recipient["diagnostic"] or ""), recipient  # node-b's, not node-a's
    assert "lost its lease" in a.log() or "its lease was taken over" in a.log()
