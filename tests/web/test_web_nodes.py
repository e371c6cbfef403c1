# ruff: noqa: F811 - the fixtures imported from webnodes_support are parameters here
"""The page when several nodes share one store: two real ``spoolbox run`` nodes on one
SQLite file (``tests/cluster/nodes.py``), the page on node-a.  Its HTML, its JSON
(``/api/status``: the rows of ``spoolbox status --json``, one schema) and its event
stream carry both nodes' rows, each with its node; a change of a row of node-b (a
message node-b alone picks up) reaches the stream; node-b killed (SIGKILL), its rows
turn ``Gone`` once its lease (3 s) ends, in the stream, the JSON and the HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webnodes_support import (
    Cluster,
    EventReader,
    Sink,
    api_rows,
    cluster,  # noqa: F401 - a fixture
    free_port,
    new_message,
    page_client,
    rows_of,
    sink,  # noqa: F401 - a fixture
    wait_for,
    web_section,
)

from spoolbox.client import Client

#: lease 3 s (three housekeeping intervals), rows published at most once a second;
#: node-b looks at its pickup maildir twice a second.
POLICY = "housekeeping_interval = 1\nretry_base = 60\npoll_interval = 0.5\n"

#: node-b's own transport, which node-a does not have: a maildir it picks up from.
LOCAL = """
[[transports]]
name = "local"
provider = "maildir"
address_types = ["MAILDIR"]
[transports.options]
root = "{root}"
pickup = "{pickup}"
"""

Rows = dict[tuple[str, str], dict[str, Any]]


def _received(rows: Rows) -> int:
    row = rows.get(("node-b", "local"))
    return 0 if row is None else int((row.get("counters") or {}).get("received", 0))


def _gone(rows: Rows) -> bool:
    return all(
        rows.get(("node-b", name), {}).get("status") == "Gone"
        for name in ("spooler", "relay", "local")
    )


def test_the_page_shows_every_nodes_rows_and_a_killed_node_as_gone(
    cluster: Cluster, sink: Sink, tmp_path: Path
) -> None:
    a = cluster.add("node-a", sink.port, policy=POLICY, transports=web_section(free_port()))
    pickup = tmp_path / "pickup"
    for sub in ("tmp", "new", "cur"):
        (pickup / sub).mkdir(parents=True)
    b = cluster.add(
        "node-b",
        sink.port,
        policy=POLICY,
        transports=LOCAL.format(root=tmp_path / "mail", pickup=pickup),
    )
    with page_client(a) as client, EventReader(client) as events:
        every = {("node-a", "spooler"), ("node-a", "relay"), ("node-b", "spooler")}
        every |= {("node-b", "relay"), ("node-b", "local")}
        events.until("both nodes' rows", lambda rows: every <= rows.keys())
        assert ("node-a", "local") not in events.rows
        assert all(row["status"] != "Gone" for row in events.rows.values())

        # One schema: the page's JSON is `spoolbox status --json`, and so are the events.
        page = api_rows(client)
        cli = rows_of(a.json("status")["rows"])
        assert page.keys() == cli.keys() == events.rows.keys()
        for key, row in page.items():
            assert row.keys() == cli[key].keys() == events.rows[key].keys(), key
            assert row["node"] == key[0]
        html = client.get("/").text
        assert '<tr data-node="node-b" data-row="local">' in html
        assert '<tr data-node="node-a" data-row="relay">' in html

        # A row of node-b changes (it picks up a message): the page's stream has it.
        (pickup / "new" / "1.msg").write_bytes(
            b"From: carol@example.org\nTo: bob@example.org\nSubject: picked\n\nhello\n"
        )
        events.until("node-b's pickup counted", lambda rows: _received(rows) == 1)

        b.kill()  # SIGKILL: node-b never says goodbye; its lease runs out
        events.until("node-b's rows gone", _gone)
        assert "node node-b gone: no heartbeat since" in events.rows[("node-b", "relay")]["detail"]
        assert events.rows[("node-a", "relay")]["status"] != "Gone"
        assert _gone(api_rows(client))
        html = client.get("/").text
        assert '<tr data-node="node-b" data-row="relay" class="gone">' in html
        assert '<tr data-node="node-a" data-row="relay">' in html
        cluster.stop_all()  # node-a stops: the stream ends with "bye"
        assert events.rest()[-1] == "bye", events.kinds


def _deferred(page: Any) -> int:
    listing = page.get("/api/queue", params={"state": "deferred", "limit": 1}).json()
    return int(listing["total"])


def test_send_receive_on_the_page_reaches_every_node_like_spoolbox_flush(
    cluster: Cluster, sink: Sink
) -> None:
    """The page's Send/Receive is ``spoolbox flush``: node-b, which serves the relay
    too, runs its part, and the report adds both parts up."""
    policy = "housekeeping_interval = 1\nretry_base = 600\n"
    sink.refuse(True)  # 451 at DATA: every message is deferred (retry in ten minutes)
    a = cluster.add("node-a", sink.port, policy=policy, transports=web_section(free_port()))
    b = cluster.add("node-b", sink.port, policy=policy)
    n = 40
    with page_client(a) as page:
        csrf = page.get("/").text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        mail = Client(a.profile)
        mail.submit_many([new_message(i) for i in range(n)])
        wait_for(f"{n} deferred", lambda: _deferred(page) == n)
        wait_for("node-a to see node-b's relay", lambda: ("node-b", "relay") in api_rows(page))
        sink.refuse(False)
        sink.slow(0.1)  # the flush lasts seconds: long enough for node-b to hear of it
        started = page.post(
            "/api/flush",
            json={"mode": "upload", "transport": "relay"},
            headers={"X-CSRF-Token": csrf},
        )
        assert started.status_code == 202, started.text
        flush_id = started.json()["id"]
        state = f"/api/flush/{flush_id}"
        wait_for("the flush's report", lambda: not page.get(state).json()["running"])
        report = page.get(state).json()["report"]
        assert report["totals"]["delivered"] == n, report
        assert report["cancelled"] is False and report["timed_out"] is False
        assert "flush relay asked by node node-a" in b.log()
        sent_by_b = b.log().count("status=sent")
        assert 0 < sent_by_b < n, "both nodes took part"
        assert _deferred(page) == 0
