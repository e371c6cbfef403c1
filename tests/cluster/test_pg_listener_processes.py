"""``[listeners.NAME] processes = 1`` on a PostgreSQL store: a real ``spoolbox run``
on the private PostgreSQL cluster, its SMTP listener in a process of its own that
commits to the database itself, a real SMTP client (smtplib) and a real SMTP server
(aiosmtpd) the relay delivers to.

* Each ``250`` comes after the commit: the message is in the database when the
  client has its answer.
* Every accepted message reaches the server exactly once.
* A SIGKILL of the listener process while the client sends loses nothing that got
  ``250``; the daemon starts another process on the same port.
"""

from __future__ import annotations

import collections
import email
import itertools
import os
import signal
import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from nodes import Cluster, Node, SharedStore, Sink, free_port, wait_for

from spoolbox.client import Client

_WORKER = b"spoolbox.daemon.listener_worker"


def _listener_processes(node: Node) -> list[int]:
    """The daemon's children that run the listener worker program."""
    assert node.process is not None
    pid = node.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in children:
        try:
            if _WORKER in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except OSError:
            continue  # it ended meanwhile
    return found


def _subjects(sink: Sink) -> collections.Counter[str]:
    return collections.Counter(
        str(email.message_from_bytes(content)["Subject"]) for _, content in sink.received
    )


def _listener(node: Node) -> dict[str, int]:
    stats: dict[str, int] = Client(node.profile).statistics()["listeners"]["sub"]
    return stats


def _node(tmp_path: Path, dsn: str, sink: Sink) -> tuple[Cluster, Node, int]:
    port = free_port()
    cluster = Cluster(tmp_path, SharedStore.postgres(dsn))
    listener = (
        f'\n[listeners.sub]\nkind = "smtp"\nhost = "127.0.0.1"\nport = {port}\nprocesses = 1\n'
    )
    node = cluster.add("pg-listener", sink.port, transports=listener)
    wait_for("the listener process", lambda: len(_listener_processes(node)) == 1)
    return cluster, node, port


def test_a_listener_process_commits_to_postgres_before_250_and_each_is_relayed_once(
    tmp_path: Path, pg_database: Callable[[], str], sink: Sink
) -> None:
    dsn = pg_database()
    cluster, node, port = _node(tmp_path, dsn, sink)
    try:
        subjects = [f"lp-{i:02d}" for i in range(20)]
        with (
            psycopg.connect(dsn, autocommit=True) as conn,
            smtplib.SMTP("127.0.0.1", port, timeout=30) as session,
        ):
            for subject in subjects:
                message = f"Subject: {subject}\r\n\r\nhello\r\n".encode()
                assert session.sendmail("alice@example.org", ["bob@example.org"], message) == {}
                # The 250 came after the commit: the message is there, seen from outside.
                row = conn.execute(
                    "SELECT count(*) FROM messages WHERE subject = %s", (subject,)
                ).fetchone()
                assert row == (1,), subject
        wait_for("every message at the server", lambda: sum(_subjects(sink).values()) >= 20)
        assert _subjects(sink) == collections.Counter(subjects)  # each exactly once
        # The listener process told its daemon of each commit, and counts them.
        wait_for("the listener's count", lambda: _listener(node).get("accepted") == 20)
        assert _listener(node)["processes"] == 1
        assert Client(node.profile).statistics()["counters"]["submitted"] == 20
    finally:
        cluster.stop_all()
    assert node.process is not None and node.process.returncode == 0, node.log()


def test_sigkill_of_the_listener_process_loses_nothing_that_got_250(
    tmp_path: Path, pg_database: Callable[[], str], sink: Sink
) -> None:
    cluster, node, port = _node(tmp_path, pg_database(), sink)
    accepted: list[str] = []
    stop = threading.Event()

    def sessions() -> None:
        """Message after message in one SMTP session, a new one when it breaks."""
        numbers = itertools.count()
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as session:
                    while not stop.is_set():
                        subject = f"k-{next(numbers):04d}"
                        message = f"Subject: {subject}\r\n\r\nhello\r\n".encode()
                        session.sendmail("alice@example.org", ["bob@example.org"], message)
                        accepted.append(subject)  # 250: accepted
            except (OSError, smtplib.SMTPException):
                time.sleep(0.01)  # cut off (or refused): that one was not accepted

    sender = threading.Thread(target=sessions)
    sender.start()
    try:
        (first,) = _listener_processes(node)
        wait_for("some accepted messages", lambda: len(accepted) >= 20)
        os.kill(first, signal.SIGKILL)
        before = len(accepted)
        wait_for("another listener process", lambda: _listener_processes(node) not in ([], [first]))
        wait_for("messages accepted by it", lambda: len(accepted) >= before + 20)
    finally:
        stop.set()
        sender.join(60)
    try:
        assert not sender.is_alive()
        got = list(accepted)
        wait_for("every accepted message relayed", lambda: set(got) <= set(_subjects(sink)))
        relayed = _subjects(sink)
        assert all(relayed[s] == 1 for s in got), [s for s in got if relayed[s] != 1]
        # At most the transaction in progress at the kill committed without its 250
        # reaching the client (the client has one connection at a time).
        assert len(set(relayed) - set(got)) <= 1, set(relayed) - set(got)
        assert "exited with status -9" in node.log()
    finally:
        cluster.stop_all()
