"""A message committed by a listener process (``[listeners.NAME] processes = 1``) of
one node wakes another node, an idle ``spoolbox run`` of its own, through the
database's LISTEN/NOTIFY: real processes on the private PostgreSQL cluster, a real
SMTP client (smtplib) and server.

The node with the listener is frozen (SIGSTOP; its listener process runs on) once the
listener process has started, so only the other node can relay; that node polls once
an hour (router and transports), so only the NOTIFY of the listener process's commit
can bring it the message before the test's deadline."""

from __future__ import annotations

import signal
import smtplib
from collections.abc import Callable
from pathlib import Path

from nodes import Cluster, SharedStore, Sink, free_port, wait_for
from test_pg_listener_processes import _listener_processes

from spoolbox.client import Client

_HOURLY = 'router_interval = "1h"\npoll_interval = "1h"\nhousekeeping_interval = 1\n'


def test_a_listener_process_commit_wakes_an_idle_node_of_another_process(
    tmp_path: Path, pg_database: Callable[[], str], sink: Sink
) -> None:
    cluster = Cluster(tmp_path, SharedStore.postgres(pg_database()))
    try:
        idle = cluster.add("idle-node", sink.port, policy=_HOURLY)
        port = free_port()
        listener = (
            f'\n[listeners.sub]\nkind = "smtp"\nhost = "127.0.0.1"\nport = {port}\nprocesses = 1\n'
        )
        front = cluster.add("front", sink.port, transports=listener)
        wait_for("the listener process", lambda: len(_listener_processes(front)) == 1)
        front.signal(signal.SIGSTOP)  # its daemon can relay nothing now
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as session:
                message = b"Subject: woken\r\n\r\nhello\r\n"
                assert session.sendmail("alice@example.org", ["bob@example.org"], message) == {}
            wait_for("the message at the server", lambda: len(sink.received) == 1)
            assert b"Subject: woken" in sink.received[0][1]

            def delivered_by_the_idle_node() -> int:
                relay = Client(idle.profile).statistics()["transports"]["relay"]
                return int(relay["counters"].get("delivered", 0))

            wait_for("the idle node's settle", lambda: delivered_by_the_idle_node() == 1)
        finally:
            front.signal(signal.SIGCONT)
    finally:
        cluster.stop_all()
    assert front.process is not None and front.process.returncode == 0, front.log()
    assert idle.process is not None and idle.process.returncode == 0, idle.log()
