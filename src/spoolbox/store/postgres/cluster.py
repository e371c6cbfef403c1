"""The PostgreSQL store's :class:`~spoolbox.store.cluster.ClusterStore` operations.

The tables of schema version 2 (:mod:`.schema`), with the row functions of the
SQLite store's (:mod:`spoolbox.store.sqlite.cluster`: the same encodings).  A flush
request also sends ``NOTIFY spoolbox_work`` with the payload ``flush:<id>`` (see
:data:`FLUSH_PREFIX`) in its transaction, so every node hears of it at once; a named
lease is taken with the row locked (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``
the lease is ours or expired), so two nodes never both hold it; an inbound batch of a
leased mailbox commits in a transaction that holds the lease row (``FOR SHARE``).
The sends of a ``max_rate`` window are counted and recorded under a transaction
advisory lock on the window's name, so two nodes never both take its last room.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

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
    lease_held,
    rate_grant,
)
from ..operations import Kind
from ..sqlite.cluster import (
    encoded_items,
    node_from_row,
    node_params,
    progress_from_row,
    request_from_row,
)
from . import transactions as tx
from .connection import Conn
from .wakeups import notify

__all__ = ["FLUSH_PREFIX", "PostgresCluster"]

_T = TypeVar("_T")

#: A wake-up payload ``flush:<id>``: flush request ``id`` was recorded.  No transport
#: name holds a colon, so no transport mistakes it for its own.
FLUSH_PREFIX: Final = "flush:"

_UPSERT_NODE = """
INSERT INTO nodes (name, host, pid, started_at, heartbeat_at, lease_until, running, rows)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
    lease_until = excluded.lease_until, running = excluded.running, rows = excluded.rows
"""
_INSERT_REQUEST = """
INSERT INTO flush_requests (transport, upload, download, requested_by, requested_at,
    deadline_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id
"""
_UPSERT_PROGRESS = """
INSERT INTO flush_progress (request_id, node, done, report, updated_at)
SELECT %s, %s, %s, %s, %s WHERE EXISTS (SELECT 1 FROM flush_requests WHERE id = %s)
ON CONFLICT (request_id, node) DO UPDATE SET done = excluded.done,
    report = excluded.report, updated_at = excluded.updated_at
"""
_TAKE_LEASE = """
INSERT INTO leases AS l (name, owner, lease_until) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until
WHERE l.owner = excluded.owner OR l.lease_until <= %s
RETURNING lease_until
"""


async def _publish_node(conn: Conn, node: NodeRecord) -> None:
    await conn.execute(_UPSERT_NODE, node_params(node))


async def _nodes(conn: Conn) -> list[NodeRecord]:
    cur = await conn.execute("SELECT * FROM nodes ORDER BY name")
    return [node_from_row(r) for r in await cur.fetchall()]


async def _forget_nodes(conn: Conn, before: float) -> int:
    await conn.execute("DELETE FROM flush_requests WHERE deadline_at < %s", (before,))
    cur = await conn.execute("DELETE FROM nodes WHERE lease_until < %s", (before,))
    return cur.rowcount


async def _request_flush(
    conn: Conn,
    transport: str | None,
    upload: bool,
    download: bool,
    requested_by: str,
    now: float,
    deadline_at: float,
) -> FlushRequest:
    cur = await conn.execute(
        _INSERT_REQUEST, (transport, int(upload), int(download), requested_by, now, deadline_at)
    )
    row = await cur.fetchone()
    assert row is not None
    request = FlushRequest(
        int(row["id"]), transport, upload, download, requested_by, now, deadline_at
    )
    await notify(conn, [f"{FLUSH_PREFIX}{request.id}"])
    return request


async def _last_flush_id(conn: Conn) -> int:
    cur = await conn.execute("SELECT coalesce(max(id), 0) AS id FROM flush_requests")
    row = await cur.fetchone()
    return 0 if row is None else int(row["id"])


async def _flush_requests(conn: Conn, after: int) -> list[FlushRequest]:
    cur = await conn.execute("SELECT * FROM flush_requests WHERE id > %s ORDER BY id", (after,))
    return [request_from_row(r) for r in await cur.fetchall()]


async def _report_flush(
    conn: Conn, request_id: int, node: str, report: str, done: bool, now: float
) -> None:
    await conn.execute(_UPSERT_PROGRESS, (request_id, node, int(done), report, now, request_id))


async def _flush_progress(conn: Conn, request_id: int) -> list[FlushProgress]:
    cur = await conn.execute(
        "SELECT * FROM flush_progress WHERE request_id = %s ORDER BY node", (request_id,)
    )
    return [progress_from_row(r) for r in await cur.fetchall()]


async def _acquire_lease(conn: Conn, name: str, owner: str, now: float, lease: float) -> float:
    cur = await conn.execute(_TAKE_LEASE, (name, owner, now + lease, now))
    if await cur.fetchone() is None:
        cur = await conn.execute("SELECT owner, lease_until FROM leases WHERE name = %s", (name,))
        row = await cur.fetchone()
        holder, until = (str(row["owner"]), float(row["lease_until"])) if row else ("?", now)
        raise lease_held(name, holder, until)
    return now + lease


async def _release_lease(conn: Conn, name: str, owner: str) -> bool:
    cur = await conn.execute("DELETE FROM leases WHERE name = %s AND owner = %s", (name, owner))
    return cur.rowcount > 0


async def _deliver_inbound_leased(
    conn: Conn, items: InboundItems, lease: str, owner: str, now: float
) -> list[InboxEntry]:
    # FOR SHARE: another node's acquire_lease (an UPDATE of the row) waits for this
    # transaction, so the lease cannot move between the check and the commit.
    cur = await conn.execute(
        "SELECT owner, lease_until FROM leases WHERE name = %s FOR SHARE", (lease,)
    )
    row = await cur.fetchone()
    held = None if row is None else (str(row["owner"]), float(row["lease_until"]))
    check_lease_holder(lease, held, owner=owner, now=now)
    return await tx.deliver_inbound_many(conn, encoded_items(items))


#: The first key of a send window's advisory lock (the second: a hash of its name).
_RATE_LOCK: Final = 0x53505258  # "SPRX"


async def _take_sends(
    conn: Conn, name: str, count: int, period: float, now: float, want: int
) -> SendGrant:
    # One node at a time counts and records sends of a window: the lock is held until
    # the commit (a hash that two names share only makes them take turns).
    await conn.execute(
        "SELECT pg_advisory_xact_lock(%s::integer, hashtext(%s))", (_RATE_LOCK, name)
    )
    await conn.execute(
        "DELETE FROM rate_sends WHERE name = %s AND at + %s <= %s", (name, period, now)
    )
    cur = await conn.execute("SELECT at, n FROM rate_sends WHERE name = %s ORDER BY at", (name,))
    sent = [(float(r["at"]), int(r["n"])) for r in await cur.fetchall()]
    grant = rate_grant(sent, count=count, period=period, now=now, want=want)
    if grant.granted:
        await conn.execute(
            "INSERT INTO rate_sends (name, at, n) VALUES (%s, %s, %s)", (name, now, grant.granted)
        )
    return grant


async def _sends_in_window(conn: Conn, name: str, period: float, now: float) -> int:
    cur = await conn.execute(
        "SELECT coalesce(sum(n), 0) AS used FROM rate_sends WHERE name = %s AND at + %s > %s",
        (name, period, now),
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row["used"])


_FUNCTIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    "publish_node": _publish_node,
    "nodes": _nodes,
    "forget_nodes": _forget_nodes,
    "request_flush": _request_flush,
    "last_flush_id": _last_flush_id,
    "flush_requests": _flush_requests,
    "report_flush": _report_flush,
    "flush_progress": _flush_progress,
    "acquire_lease": _acquire_lease,
    "release_lease": _release_lease,
    "deliver_inbound_leased": _deliver_inbound_leased,
    "take_sends": _take_sends,
    "sends_in_window": _sends_in_window,
}


class PostgresCluster(ClusterFace):
    """The ClusterStore operations of :class:`~spoolbox.store.postgres.PostgresStore`."""

    __slots__ = ()

    async def _run_kind(self, kind: Kind, what: str, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        raise NotImplementedError  # pragma: no cover - PostgresStore's

    async def _cluster(self, what: str, **kwargs: Any) -> Any:
        fn = functools.partial(_FUNCTIONS[what], **kwargs)
        return await self._run_kind(CLUSTER_OPERATIONS[what], what, fn)
