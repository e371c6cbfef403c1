"""A flush through one node reaches every node that serves the transport: real
``spoolbox run`` nodes on one store (SQLite file, PostgreSQL database), mail
deferred by a server that refused it, then the client's flush (what ``spoolbox
flush`` runs) on one node: the other node runs its part (its log says who asked),
both deliver, the progress events and the report add their parts up."""

from __future__ import annotations

from typing import Any

from nodes import Cluster, Sink, new_message, wait_for

from spoolbox.client import Client

N = 60


def _deferred(client: Client) -> int:
    return int(client.queue_listing(state="deferred", limit=1)["total"])


def test_flush_reaches_every_node_and_adds_up(cluster: Cluster, sink: Sink) -> None:
    sink.refuse(True)  # 451 at DATA: every message is deferred (retry in a minute)
    a = cluster.add("node-a", sink.port, policy="housekeeping_interval = 1\nretry_base = 600\n")
    b = cluster.add("node-b", sink.port, policy="housekeeping_interval = 1\nretry_base = 600\n")
    client = Client(a.profile)
    client.submit_many([new_message(i) for i in range(N)])
    wait_for(f"{N} deferred", lambda: _deferred(client) == N)
    # node-b's relay row, not only its spooler row: a node's first record is published
    # before its transports have logged on, and a flush asks only nodes serving it.
    wait_for(
        "node-a to see node-b's relay",
        lambda: any(r["node"] == "node-b" and r["name"] == "relay" for r in client.status()),
    )
    sink.refuse(False)
    sink.slow(0.1)  # the flush lasts seconds: long enough for node-b to hear of it

    events: list[dict[str, Any]] = []
    report = client.flush(upload=True, download=False, on_event=events.append)

    sent = (a.log().count("status=sent"), b.log().count("status=sent"))
    assert report["totals"]["delivered"] == N, (report, sent)
    assert report["timed_out"] is False and report["cancelled"] is False
    assert "flush relay asked by node node-a" not in b.log()  # all transports were asked
    assert "flush of every transport asked by node node-a" in b.log()
    sent_by_b = b.log().count("status=sent")
    assert 0 < sent_by_b < N, "both nodes took part"
    # The bars' progress adds node-b's part to node-a's: more done than node-a sent.
    done = [
        e["row"]["progress"]["done"]
        for e in events
        if e.get("event") == "progress" and e["row"]["name"] == "relay" and e["row"]["progress"]
    ]
    assert max(done) > sent[0], (max(done), sent)
    ids = sorted({c.split(b"Subject: ")[1].split(b"\r\n")[0] for _, c in sink.received})
    assert len(ids) == N
    assert _deferred(client) == 0
