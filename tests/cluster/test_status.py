"""The status table of every node, through any node: real ``spoolbox run`` nodes on one
store (one SQLite file, one PostgreSQL database), ``spoolbox status --json``,
``status --watch --json`` and the Python client; a node killed with SIGKILL is shown
as gone once its lease ends, and a node stopped cleanly at once."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from typing import Any

from nodes import CLI, Cluster, Sink, wait_for

from spoolbox.client import Client


def _by_node(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["node"], row["name"]): row for row in rows}


def test_status_shows_every_node_and_a_killed_node_as_gone(cluster: Cluster, sink: Sink) -> None:
    a = cluster.add("node-a", sink.port)
    b = cluster.add("node-b", sink.port)

    def both() -> bool:
        rows = _by_node(a.json("status")["rows"])
        return {("node-a", "relay"), ("node-b", "relay"), ("node-b", "spooler")} <= rows.keys()

    wait_for("node-a to show node-b's rows", both)
    rows = _by_node(Client(b.profile).status())  # the Python client, through node-b
    assert rows[("node-a", "spooler")]["status"] == "Available"
    assert rows[("node-b", "relay")]["status"] != "Gone"

    b.kill()  # SIGKILL: node-b never says goodbye; its lease (3 s here) runs out

    def gone() -> bool:
        return _by_node(a.json("status")["rows"])[("node-b", "spooler")]["status"] == "Gone"

    wait_for("node-b shown as gone", gone)
    row = _by_node(a.json("status")["rows"])[("node-b", "relay")]
    assert row["status"] == "Gone"
    assert "node node-b gone: no heartbeat since" in row["detail"]
    assert _by_node(a.json("status")["rows"])[("node-a", "relay")]["status"] != "Gone"


def test_a_node_stopped_cleanly_is_gone_at_once(cluster: Cluster, sink: Sink) -> None:
    a = cluster.add("node-a", sink.port, policy="housekeeping_interval = 600\n")
    b = cluster.add("node-b", sink.port, policy="housekeeping_interval = 600\n")
    wait_for(
        "node-b's rows at node-a",
        lambda: ("node-b", "spooler") in _by_node(a.json("status")["rows"]),
    )
    b.stop()  # SIGTERM: its last record says it stopped (its lease would last 30 min)
    row = _by_node(a.json("status")["rows"])[("node-b", "spooler")]
    assert row["status"] == "Gone"
    assert "stopped since" in row["detail"]


def test_status_watch_json_streams_other_nodes_rows(cluster: Cluster, sink: Sink) -> None:
    a = cluster.add("node-a", sink.port)
    cluster.add("node-b", sink.port)
    watch = subprocess.Popen(
        [*CLI, "--profile", str(a.profile), "status", "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=a.env,
        text=True,
    )
    seen: list[dict[str, Any]] = []
    found = threading.Event()

    def read() -> None:
        assert watch.stdout is not None
        for line in watch.stdout:
            event = json.loads(line)
            seen.append(event)
            if event.get("event") == "status" and event["row"].get("node") == "node-b":
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(60), seen
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
        reader.join(timeout=30)
        assert watch.stdout is not None
        watch.stdout.close()
    local = [e for e in seen if e.get("event") == "status" and e["row"]["node"] == "node-a"]
    assert local, "the watching node's own rows carry its name too"
