"""``max_rate`` across nodes: two ``spoolbox run`` nodes on one store (a SQLite file,
a PostgreSQL database), each with the relay's ``max_rate = "4/s"``, send four
messages a second between them, not four each.

Half the mail is submitted through each node, each node has two connections and the
sink takes half a second a message, so that one node cannot take a window's four by
itself: both deliver (with a window of its own each, they would send eight a second
between them: the test fails on that code for both stores; with one node taking
everything, as the first version of this test let it, it passed on PostgreSQL by
chance)."""

from __future__ import annotations

import pytest
from nodes import Cluster, Sink, new_message, wait_for

from spoolbox.client import Client

N = 12


def test_two_nodes_share_one_sending_rate(
    cluster: Cluster, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink.slow(0.5)
    nodes = [
        cluster.add(name, sink.port, start=False, max_connections=2)
        for name in ("node-a", "node-b")
    ]
    for node in nodes:
        text = node.profile.read_text()
        old = 'address_types = ["SMTP"]\n[transports.options]\n'
        assert old in text
        new = 'address_types = ["SMTP"]\nmax_rate = "4/s"\n[transports.options]\n'
        node.profile.write_text(text.replace(old, new, 1))
        node.start()
    client = Client(nodes[0].profile)
    wait_for(
        "node-a to see node-b's relay",
        lambda: any(r["node"] == "node-b" and r["name"] == "relay" for r in client.status()),
    )
    # Half through each node: each is woken by its own submit (SQLite has no NOTIFY
    # to wake the other), so both have mail to claim from the start.
    messages = [new_message(i) for i in range(N)]
    for node, half in zip(nodes, (messages[: N // 2], messages[N // 2 :]), strict=True):
        Client(node.profile).submit_many(half)
    wait_for(f"all {N} received", lambda: len(sink.received) == N)
    arrived = sink.arrived
    # Four at most in a second, between the two nodes: three rounds a second apart.
    for i, t in enumerate(arrived):
        assert sum(1 for u in arrived[i:] if u < t + 0.9) <= 4, arrived
    assert arrived[-1] - arrived[0] >= 1.8, arrived

    def sent() -> list[int]:
        return [node.log().count("status=sent") for node in nodes]

    # (the sink counts a message before its 250 reaches the node that settles it)
    wait_for(f"all {N} settled sent", lambda: sum(sent()) == N)
    assert sum(sent()) == N, sent()
    assert all(sent()), sent()  # both nodes delivered: the window was theirs to share
    cluster.stop_all()
    # With no node running, the window is read from the store: the sends the last
    # take kept (those of the last second: one to four), counted within an hour.
    profile = nodes[0].profile
    profile.write_text(profile.read_text().replace('max_rate = "4/s"', 'max_rate = "100/h"'))
    for key, value in cluster.store.env.items():  # the DSN, as the nodes have it
        monkeypatch.setenv(key, value)
    assert 1 <= Client(profile).sent_in_windows()["relay"] <= 4
