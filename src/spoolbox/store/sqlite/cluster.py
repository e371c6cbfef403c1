"""The SQLite store's :class:`~spoolbox.store.cluster.ClusterStore` operations.

Nodes sharing one store file (processes of one machine: worker processes, several
daemons with distinct node names) publish their records and status rows, record and
answer flush requests, and take named leases here (tables of schema version 4,
:mod:`.schema`), and record the sends of ``max_rate`` windows (version 8).  One
plain function per operation, taking the connection inside the transaction
:data:`~spoolbox.store.cluster.CLUSTER_OPERATIONS` asks for, and the mixin
:class:`SQLiteCluster` that runs them on the store's thread.  A lease is taken in one
``BEGIN IMMEDIATE`` transaction, so two processes never both hold it; an inbound
batch of a leased mailbox commits in the transaction that checks the lease; a
window's sends are counted and recorded in one too.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..base import InboxEntry
from ..cluster import (
    CLUSTER_OPERATIONS,
    ClusterFace,
    FlushProgress,
    FlushRequest,
    InboundItems,
    NodeRecord,
    SendGrant,
    check_lease_holder,
    decode_report,
    decode_rows,
    encode_rows,
    lease_held,
    rate_grant,
)
from ..operations import Kind
from . import transactions as tx
from .rows import encode_profile

__all__ = ["SQLiteCluster"]

_T = TypeVar("_T")

_UPSERT_NODE = """
INSERT INTO nodes (name, host, pid, started_at, heartbeat_at, lease_until, running, rows)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
    lease_until = excluded.lease_until, running = excluded.running, rows = excluded.rows
"""
_SELECT_NODES = "SELECT * FROM nodes ORDER BY name"
_DELETE_OLD_NODES = "DELETE FROM nodes WHERE lease_until < ?"
_DELETE_OLD_REQUESTS = "DELETE FROM flush_requests WHERE deadline_at < ?"
_INSERT_REQUEST = """
INSERT INTO flush_requests (transport, upload, download, requested_by, requested_at,
    deadline_at) VALUES (?, ?, ?, ?, ?, ?)
"""
_LAST_REQUEST = "SELECT seq FROM sqlite_sequence WHERE name = 'flush_requests'"
_SELECT_REQUESTS = "SELECT * FROM flush_requests WHERE id > ? ORDER BY id"
_UPSERT_PROGRESS = """
INSERT INTO flush_progress (request_id, node, done, report, updated_at)
SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM flush_requests WHERE id = ?)
ON CONFLICT (request_id, node) DO UPDATE SET done = excluded.done,
    report = excluded.report, updated_at = excluded.updated_at
"""
_SELECT_PROGRESS = "SELECT * FROM flush_progress WHERE request_id = ? ORDER BY node"
_SELECT_LEASE = "SELECT owner, lease_until FROM leases WHERE name = ?"
_UPSERT_LEASE = """
INSERT INTO leases (name, owner, lease_until) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
"""
_DELETE_LEASE = "DELETE FROM leases WHERE name = ? AND owner = ?"


def node_from_row(row: Mapping[str, Any]) -> NodeRecord:
    return NodeRecord(
        name=str(row["name"]),
        host=str(row["host"]),
        pid=int(row["pid"]),
        started_at=float(row["started_at"]),
        heartbeat_at=float(row["heartbeat_at"]),
        lease_until=float(row["lease_until"]),
        rows=decode_rows(str(row["rows"])),
        running=bool(row["running"]),
    )


def node_params(node: NodeRecord) -> tuple[object, ...]:
    return (
        node.name,
        node.host,
        node.pid,
        node.started_at,
        node.heartbeat_at,
        node.lease_until,
        int(node.running),
        encode_rows(node.rows),
    )


def request_from_row(row: Mapping[str, Any]) -> FlushRequest:
    return FlushRequest(
        id=int(row["id"]),
        transport=None if row["transport"] is None else str(row["transport"]),
        upload=bool(row["upload"]),
        download=bool(row["download"]),
        requested_by=str(row["requested_by"]),
        requested_at=float(row["requested_at"]),
        deadline_at=float(row["deadline_at"]),
    )


def progress_from_row(row: Mapping[str, Any]) -> FlushProgress:
    return FlushProgress(
        request_id=int(row["request_id"]),
        node=str(row["node"]),
        done=bool(row["done"]),
        report=decode_report(str(row["report"])),
        updated_at=float(row["updated_at"]),
    )


# -- one function per operation -----------------------------------------------------------


def publish_node(conn: sqlite3.Connection, node: NodeRecord) -> None:
    conn.execute(_UPSERT_NODE, node_params(node))


def nodes(conn: sqlite3.Connection) -> list[NodeRecord]:
    return [node_from_row(r) for r in conn.execute(_SELECT_NODES)]


def forget_nodes(conn: sqlite3.Connection, before: float) -> int:
    conn.execute(_DELETE_OLD_REQUESTS, (before,))
    return conn.execute(_DELETE_OLD_NODES, (before,)).rowcount


def request_flush(
    conn: sqlite3.Connection,
    transport: str | None,
    upload: bool,
    download: bool,
    requested_by: str,
    now: float,
    deadline_at: float,
) -> FlushRequest:
    cur = conn.execute(
        _INSERT_REQUEST, (transport, int(upload), int(download), requested_by, now, deadline_at)
    )
    assert cur.lastrowid is not None
    return FlushRequest(cur.lastrowid, transport, upload, download, requested_by, now, deadline_at)


def last_flush_id(conn: sqlite3.Connection) -> int:
    row = conn.execute(_LAST_REQUEST).fetchone()
    return 0 if row is None else int(row[0])


def flush_requests(conn: sqlite3.Connection, after: int) -> list[FlushRequest]:
    return [request_from_row(r) for r in conn.execute(_SELECT_REQUESTS, (after,))]


def report_flush(
    conn: sqlite3.Connection,
    request_id: int,
    node: str,
    report: str,
    done: bool,
    now: float,
) -> None:
    conn.execute(_UPSERT_PROGRESS, (request_id, node, int(done), report, now, request_id))


def flush_progress(conn: sqlite3.Connection, request_id: int) -> list[FlushProgress]:
    return [progress_from_row(r) for r in conn.execute(_SELECT_PROGRESS, (request_id,))]


def acquire_lease(
    conn: sqlite3.Connection, name: str, owner: str, now: float, lease: float
) -> float:
    row = conn.execute(_SELECT_LEASE, (name,)).fetchone()
    if row is not None and row[0] != owner and float(row[1]) > now:
        raise lease_held(name, str(row[0]), float(row[1]))
    conn.execute(_UPSERT_LEASE, (name, owner, now + lease))
    return now + lease


def release_lease(conn: sqlite3.Connection, name: str, owner: str) -> bool:
    return conn.execute(_DELETE_LEASE, (name, owner)).rowcount > 0


def deliver_inbound_leased(
    conn: sqlite3.Connection, items: InboundItems, lease: str, owner: str, now: float
) -> list[InboxEntry]:
    """The lease checked and the batch committed in one transaction (the write lock
    held throughout: no other process can take the lease in between)."""
    row = conn.execute(_SELECT_LEASE, (lease,)).fetchone()
    held = None if row is None else (str(row[0]), float(row[1]))
    check_lease_holder(lease, held, owner=owner, now=now)
    return tx.deliver_inbound_many(conn, encoded_items(items))


_FORGET_SENDS = "DELETE FROM rate_sends WHERE name = ? AND at + ? <= ?"
_SELECT_SENDS = "SELECT at, n FROM rate_sends WHERE name = ? ORDER BY at"
_INSERT_SENDS = "INSERT INTO rate_sends (name, at, n) VALUES (?, ?, ?)"
_COUNT_SENDS = "SELECT coalesce(sum(n), 0) FROM rate_sends WHERE name = ? AND at + ? > ?"


def take_sends(
    conn: sqlite3.Connection, name: str, count: int, period: float, now: float, want: int
) -> SendGrant:
    """Under the write lock (``BEGIN IMMEDIATE``): no other process records sends
    between the count and the insert."""
    conn.execute(_FORGET_SENDS, (name, period, now))
    sent = [(float(at), int(n)) for at, n in conn.execute(_SELECT_SENDS, (name,))]
    grant = rate_grant(sent, count=count, period=period, now=now, want=want)
    if grant.granted:
        conn.execute(_INSERT_SENDS, (name, now, grant.granted))
    return grant


def sends_in_window(conn: sqlite3.Connection, name: str, period: float, now: float) -> int:
    return int(conn.execute(_COUNT_SENDS, (name, period, now)).fetchone()[0])


def encoded_items(items: InboundItems) -> list[tuple[Any, dict[str, dict[str, str | None]]]]:
    """``items`` with their profile updates as JSON text (:func:`.rows.encode_profile`)."""
    return [
        (message, {s: encode_profile(s, v) for s, v in (updates or {}).items()})
        for message, updates in items
    ]


# -- the async face --------------------------------------------------------------------

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "publish_node": publish_node,
    "nodes": nodes,
    "forget_nodes": forget_nodes,
    "request_flush": request_flush,
    "last_flush_id": last_flush_id,
    "flush_requests": flush_requests,
    "report_flush": report_flush,
    "flush_progress": flush_progress,
    "acquire_lease": acquire_lease,
    "release_lease": release_lease,
    "deliver_inbound_leased": deliver_inbound_leased,
    "take_sends": take_sends,
    "sends_in_window": sends_in_window,
}


class SQLiteCluster(ClusterFace):
    """The ClusterStore operations of :class:`~spoolbox.store.sqlite.SQLiteStore`."""

    __slots__ = ()

    async def _send(self, what: str, fn: Callable[[sqlite3.Connection], _T], kind: Kind) -> _T:
        raise NotImplementedError  # pragma: no cover - SQLiteStore's

    async def _cluster(self, what: str, **kwargs: Any) -> Any:
        fn = functools.partial(_FUNCTIONS[what], **kwargs)
        return await self._send(what, fn, CLUSTER_OPERATIONS[what])
