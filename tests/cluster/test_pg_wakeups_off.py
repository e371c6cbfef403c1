"""A node whose LISTEN connection is down says so on its spooler row, and says when
it is back: a real ``spoolbox run`` node on the private PostgreSQL cluster, its
wake-up connection terminated while the database takes no new connection (the
node's pooled connections go on working), then connections allowed again."""

from __future__ import annotations

from typing import Any

import postgres_cluster as pgc
import psycopg
import pytest
from nodes import DSN_ENV, Cluster, SharedStore, Sink, message, wait_for
from psycopg.conninfo import conninfo_to_dict

from spoolbox import Address, NewMessage
from spoolbox._core.node import NO_WAKEUPS
from spoolbox.client import Client


@pytest.fixture
def shared_store(pg_database: Any) -> SharedStore:  # PostgreSQL only
    return SharedStore.postgres(pg_database())


def _admin(cluster: pgc.Cluster, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _spooler_row(client: Client) -> dict[str, Any]:
    return next(r for r in client.status() if r["name"] == "spooler")


def test_a_node_without_wake_ups_says_so_and_goes_on_working(
    cluster: Cluster, sink: Sink, pg_cluster: pgc.Cluster
) -> None:
    dbname = str(conninfo_to_dict(cluster.store.env[DSN_ENV])["dbname"])
    node = cluster.add("node-a", sink.port, policy="housekeeping_interval = 1\n")
    client = Client(node.profile)
    assert _spooler_row(client)["detail"] in (None, "")
    _admin(pg_cluster, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
    try:
        cut = _admin(
            pg_cluster,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND query LIKE 'LISTEN%%'",
            dbname,
        )
        assert cut == [(True,)]
        wait_for(
            "the row to say wake-ups are off",
            lambda: str(_spooler_row(client)["detail"]).startswith(NO_WAKEUPS + ": "),
        )
        # First the lost connection, then why it cannot come back (the last error).
        wait_for(
            "the row to say why",
            lambda: "not currently accepting connections" in str(_spooler_row(client)["detail"]),
        )
        assert _spooler_row(client)["status"] == "Available"  # the store itself works
        # The node goes on relaying meanwhile.
        mid, content = message(1)
        sender = Address.parse("SMTP:postmaster@example.org")
        rcpt = (Address.parse("SMTP:dora@example.org"),)
        client.submit(NewMessage(id=mid, sender=sender, recipients=rcpt, content=content))
        wait_for("the message at the server", lambda: len(sink.received) == 1)
    finally:
        _admin(pg_cluster, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    wait_for("the row to clear", lambda: _spooler_row(client)["detail"] in (None, ""))
    log = node.log()
    assert "the wake-up connection failed" in log
    assert "wake-ups back after a reconnect" in log
