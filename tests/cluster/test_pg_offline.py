"""The client's offline access on a PostgreSQL store: with no daemon on this host,
``spoolbox send``, ``queue`` and ``inbox`` (and the Python client) work on the
database itself, as they do on the SQLite file.  Real ``spoolbox`` commands in
subprocesses; the nodes are real ``spoolbox run`` processes on the private
PostgreSQL cluster, each "host" a profile and data directory of its own.

* A message sent offline on host A is delivered by the node running on host B, which
  polls once an hour: only the store's NOTIFY can bring it there in time.
* Host A's offline answers equal, key for key, what host B's daemon answers for the
  same request (the local API's), and hold/release/cancel/retry and the inbox act on
  the shared database.
* A wrong password, a refused connection, a database without the schema and an
  unset DSN each give one line saying which, exit 74, never a traceback or the
  password.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import postgres_cluster as pgc
import psycopg
import pytest
from nodes import Cluster, Node, SharedStore, Sink, wait_for

from spoolbox import Address, NewMessage
from spoolbox.client import Client
from spoolbox.profile import load_profile
from spoolbox.store import InboundMessage
from spoolbox.store.postgres import PostgresStore

#: The node of host B polls this rarely: only a wake-up brings it work in time.
_HOURLY = 'router_interval = "1h"\nhousekeeping_interval = 1\n'


def _offline(node: Node) -> Node:
    assert not Client(node.profile).running(), f"{node.name}'s daemon runs: not offline"
    return node


def _answer(node: Node, *args: str) -> Any:
    done = node.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    assert pgc.PASSWORD not in done.stdout + done.stderr
    return json.loads(done.stdout)


def test_an_offline_send_is_delivered_at_once_by_a_node_on_another_host(
    tmp_path: Path, pg_database: Callable[[], str], sink: Sink
) -> None:
    cluster = Cluster(tmp_path, SharedStore.postgres(pg_database()))
    try:
        b = cluster.add("host-b", sink.port, policy=_HOURLY)
        a = _offline(cluster.add("host-a", sink.port, start=False))
        sent = a.cli("send", "--to", "SMTP:dora@example.org", "--subject", "offline", "--body", "x")
        assert sent.returncode == 0, sent.stderr
        mid = sent.stdout.strip()
        assert "queued in the PostgreSQL store" in sent.stderr
        assert "Traceback" not in sent.stderr
        # Committed before `send` said so: the row is in the database now.
        with psycopg.connect(cluster.store.env["SPOOLBOX_TEST_PG_DSN"]) as conn:
            row = conn.execute("SELECT subject FROM messages WHERE id = %s", (mid,)).fetchone()
        assert row == ("offline",)
        # Refused as the daemon refuses it: no transport serves FAX, nothing queued.
        refused = a.cli("send", "--to", "FAX:+15551234", "--subject", "no", "--body", "x")
        assert refused.returncode == 67, refused.stderr
        assert "FAX" in refused.stderr
        with psycopg.connect(cluster.store.env["SPOOLBOX_TEST_PG_DSN"]) as conn:
            count = conn.execute("SELECT count(*) FROM messages").fetchone()
        assert count == (1,)  # the refused one was not queued
        wait_for("the message at the SMTP server", lambda: len(sink.received) == 1)
        assert sink.received[0][0] == ["dora@example.org"]
        assert b"Subject: offline" in sink.received[0][1]

        def delivered() -> bool:
            return bool(_answer(b, "queue", "show", mid)["state"] == "sent")

        wait_for("the settle", delivered)
        # Host A, still without a daemon, answers as host B's daemon does.
        assert _answer(_offline(a), "queue", "show", mid) == _answer(b, "queue", "show", mid)
    finally:
        cluster.stop_all()


def _later(i: int) -> NewMessage:
    """A message not to be sent for an hour (a node routes it and leaves it)."""
    return NewMessage(
        sender=Address.parse("SMTP:postmaster@example.org"),
        recipients=(Address.parse(f"SMTP:user{i}@example.org"),),
        content=b"Subject: later %d\r\n\r\nbody\r\n" % i,
        send_at=time.time() + 3600,
    )


def _inbound(dsn: str, count: int) -> list[str]:
    async def deliver() -> list[str]:
        async with PostgresStore(dsn, pool_size=1) as store:
            entries = [
                await store.deliver_inbound(
                    InboundMessage(
                        transport="relay",
                        content=b"From: x@example.org\r\nSubject: in %d\r\n\r\nhello\r\n" % i,
                        sender="x@example.org",
                        received_at=time.time(),
                    )
                )
                for i in range(count)
            ]
        return [entry.id for entry in entries]

    return asyncio.run(deliver())


def test_offline_queue_and_inbox_answer_as_a_running_node_does(
    tmp_path: Path, pg_database: Callable[[], str], sink: Sink
) -> None:
    dsn = pg_database()
    cluster = Cluster(tmp_path, SharedStore.postgres(dsn))
    try:
        a = _offline(cluster.add("host-a", sink.port, start=False))
        b = cluster.add("host-b", sink.port, start=False)
        # The Python client (what spoolbox.send and the Django backend use), offline.
        client = Client(load_profile(a.profile, environ=a.env))
        queued = client.submit_many([_later(i) for i in range(3)])
        assert (queued["via"], queued["state"]) == ("store", "queued")
        ids = queued["ids"]
        listing = _answer(a, "queue", "list")
        assert (listing["total"], listing["more"]) == (3, 0)
        assert [m["id"] for m in listing["messages"]] == ids[::-1]  # newest first
        short = {m["id"]: m["short_id"] for m in listing["messages"]}

        held = _answer(a, "queue", "hold", short[ids[0]])
        assert held == {"results": [{"id": ids[0], "state": "hold"}]}
        assert _answer(a, "queue", "show", short[ids[0]])["state"] == "hold"
        released = _answer(a, "queue", "release", ids[0])["results"][0]["state"]
        assert released == _answer(a, "queue", "show", ids[0])["state"] != "hold"
        assert _answer(a, "queue", "cancel", ids[1])["results"][0]["state"] == "cancelled"
        missing = a.cli("queue", "show", "zzzzzzzz")
        assert missing.returncode == 4, missing.stderr
        assert "no message" in missing.stderr and "Traceback" not in missing.stderr
        retried = _answer(a, "queue", "retry", ids[2])["results"][0]
        assert retried["id"] == ids[2] and "retried" in retried
        with psycopg.connect(dsn) as conn:  # the actions are in the shared database
            states = dict(conn.execute("SELECT message_id, state FROM recipients").fetchall())
        assert states[ids[1]] == "cancelled"

        entries = _inbound(dsn, 2)
        inbox = _answer(a, "inbox", "list")["messages"]
        assert sorted(e["id"] for e in inbox) == sorted(entries)
        shown = a.cli("inbox", "show", entries[0][:12])
        assert shown.returncode == 0, shown.stderr
        assert "Subject: in 0" in shown.stdout

        # Host B's daemon, on the same database, gives the same answers.
        b.start()
        same = [
            ("queue", "list", "--all"),
            ("queue", "show", ids[0]),
            ("queue", "show", ids[1]),
            ("inbox", "list"),
            ("queue", "purge", "--older-than", "0", "--dry-run"),
        ]

        def routed() -> bool:
            shown = _answer(b, "queue", "show", ids[0])
            return all(r["route"] == "relay" for r in shown["recipients"])

        wait_for("host B's router", routed)
        for args in same:
            assert _answer(_offline(a), *args) == _answer(b, *args), args
        purge = _answer(a, "queue", "purge", "--older-than", "0", "--dry-run")
        assert (purge["removed"], purge["ids"]) == (1, [ids[1]])  # the cancelled one

        deleted = _answer(a, "inbox", "delete", entries[1][:12])
        assert deleted == {"deleted": [entries[1]]}
        assert [e["id"] for e in _answer(b, "inbox", "list")["messages"]] == [entries[0]]
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("command", [("send", "--to", "SMTP:x@example.org"), ("queue", "list")])
def test_offline_store_errors_say_which_part_is_wrong(
    tmp_path: Path, pg_cluster: pgc.Cluster, command: tuple[str, ...]
) -> None:
    refused = pgc.free_port()  # nothing listens there
    cases = {
        "password": (
            pg_cluster.dsn("postgres", password="not the password"),
            "password authentication failed",
        ),
        "port": (
            pg_cluster.dsn("postgres").replace(f"port={pg_cluster.port}", f"port={refused}"),
            f"127.0.0.1:{refused}/postgres: cannot connect",
        ),
        "schema": ("", "is at schema version 0, this spoolbox needs"),
    }
    schemaless = pg_cluster.new_database()
    cases["schema"] = (pg_cluster.dsn(schemaless), cases["schema"][1])
    for what, (dsn, says) in cases.items():
        cluster = Cluster(tmp_path / what, SharedStore.postgres(dsn))
        a = _offline(cluster.add("host-a", 25, start=False))
        done = a.cli(*command)
        assert done.returncode == 74, (what, done.stderr)
        assert says in done.stderr, (what, done.stderr)
        assert done.stderr.startswith("spoolbox: error: PostgreSQL store postgresql://"), what
        assert "Traceback" not in done.stderr
        assert "not the password" not in done.stderr + done.stdout
        assert pgc.PASSWORD not in done.stderr + done.stdout
    pg_cluster.drop_database(schemaless)
    unset = Cluster(tmp_path / "unset", SharedStore.postgres("x"))
    node = unset.add("host-a", 25, start=False)
    del node.env["SPOOLBOX_TEST_PG_DSN"]
    done = node.cli(*command)
    assert done.returncode == 74, done.stderr
    assert "dsn could not be read from environment variable SPOOLBOX_TEST_PG_DSN" in done.stderr
