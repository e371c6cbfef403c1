"""The whole cluster as one node's local API shows it: every node's status rows, and a
flush that every node serving the transport takes part in.

* :func:`cluster_rows` is the status table of all nodes: this node's rows, then the
  rows every other node published to the store (:mod:`.node`), each with a ``node``
  field.  A node whose heartbeat expired shows its rows as ``Gone`` (never
  ``Available`` for ever), with when it was last heard of; its record is dropped
  after :attr:`~.node.NodeSettings.forget_after`.
* :class:`RemoteRows` reads the other nodes' rows again and says what changed
  (``status --watch``); :func:`row_changes` is that difference, for a reader that
  reads the rows itself (the web page's event stream).
* :func:`start_cluster_flush` starts the local flush at once and, when other nodes
  that are up serve the transport, records a flush request in the store; the
  :class:`ClusterFlush` it returns ends when this node's part and every other
  node's part is done (a node that goes meanwhile is not waited for) or the
  deadline passes, and merges their reports (:func:`merge_reports`).  On one node
  the only extra work is one read of the node records.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..store import StoreError
from ..store.cluster import ClusterStore, FlushRequest, NodeRecord, NodeState, node_state
from .clock import Clock
from .flush import FlushHandle, FlushReport, TransportFlushResult
from .node import keep_progress as _keep_progress
from .node import node_of, report_from_dict

__all__ = [
    "GONE",
    "ClusterFlush",
    "RemoteRows",
    "RowChange",
    "RowKey",
    "cluster_rows",
    "combine_progress",
    "merge_reports",
    "node_rows",
    "other_rows",
    "row_changes",
    "rows_by_key",
    "start_cluster_flush",
]

#: The status shown for the rows of a node whose heartbeat expired.
GONE = "Gone"

_SUMMED = ("uploaded", "downloaded", "bytes", "delivered", "deferred", "failed")


def node_rows(node: NodeRecord, *, now: float) -> list[dict[str, Any]]:
    """A node's published rows as others show them: with ``node``, and ``Gone`` (no
    progress) once its lease ended."""
    up = node_state(node, now=now) is NodeState.UP
    rows = []
    for published in node.rows:
        row = {**published, "node": node.name}
        if not up:
            heard = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(node.heartbeat_at))
            why = "stopped" if not node.running else "no heartbeat"
            row.update(
                status=GONE, progress=None, detail=f"node {node.name} gone: {why} since {heard}"
            )
        rows.append(row)
    return rows


async def cluster_rows(
    store: object, *, node: str, local: Iterable[Mapping[str, Any]], now: float
) -> list[dict[str, Any]]:
    """This node's rows, then every other node's (see the module doc); only the
    local rows when the store keeps no nodes or cannot be read."""
    rows = [{**row, "node": node} for row in local]
    with contextlib.suppress(StoreError):
        rows += await other_rows(store, node=node, now=now)
    return rows


async def other_rows(store: object, *, node: str, now: float) -> list[dict[str, Any]]:
    """Every other node's rows (with ``node``; ``Gone`` ones too); ``[]`` when the
    store keeps no nodes.  Raises :class:`~spoolbox.store.StoreError` when the store
    cannot be read: a reader that shows the rows keeps what it showed (the other
    nodes did not go away because this node cannot see them)."""
    if not isinstance(store, ClusterStore):
        return []
    return [
        row
        for record in await store.nodes()
        if record.name != node
        for row in node_rows(record, now=now)
    ]


#: A row's place in the cluster's table: (node, name).
RowKey = tuple[str, str]
#: A row that is new or changed (``(node, name, row)``) or went away (``(node, name, None)``).
RowChange = tuple[str, str, dict[str, Any] | None]


def rows_by_key(rows: Iterable[Mapping[str, Any]]) -> dict[RowKey, dict[str, Any]]:
    """Rows that carry their ``node``, by (node, name)."""
    return {(str(r["node"]), str(r["name"])): dict(r) for r in rows}


def row_changes(
    shown: Mapping[RowKey, Mapping[str, Any]], current: Mapping[RowKey, dict[str, Any]]
) -> list[RowChange]:
    """What changed from the rows ``shown`` to the ``current`` ones: each row that is
    new or differs, then each that went away."""
    out: list[RowChange] = [
        (node, name, row) for (node, name), row in current.items() if shown.get((node, name)) != row
    ]
    out += [(node, name, None) for node, name in shown.keys() - current.keys()]
    return out


class RemoteRows:
    """The other nodes' rows, read again on each :meth:`changes` call."""

    def __init__(self, store: object, node: str) -> None:
        self._store = store
        self._node = node
        self._shown: dict[RowKey, dict[str, Any]] = {}

    async def changes(self, now: float) -> list[RowChange]:
        """``(node, name, row)`` for each row that is new or changed, and
        ``(node, name, None)`` for each that went away, since the last call; nothing
        while the store cannot be read (the rows shown stay as they were)."""
        try:
            rows = await other_rows(self._store, node=self._node, now=now)
        except StoreError:
            return []
        current = rows_by_key(rows)
        out = row_changes(self._shown, current)
        self._shown = current
        return out


def combine_progress(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One transport's flush progress over several nodes: done and bytes added up;
    the total is the largest one (each node counted the same shared queue)."""
    parts = [r["progress"] for r in rows if r.get("progress")]
    if not parts:
        return None
    totals = [p["total"] for p in parts if p.get("total") is not None]
    done = sum(int(p.get("done") or 0) for p in parts)
    total = max(max(totals), done) if totals else None
    return {
        "done": done,
        "total": total,
        "bytes_done": sum(int(p.get("bytes_done") or 0) for p in parts),
        "bytes_total": sum(int(p.get("bytes_total") or 0) for p in parts) or None,
        "percent": None if not total else round(100.0 * done / total, 1),
        "text": parts[-1].get("text"),
    }


def merge_reports(reports: Sequence[FlushReport]) -> FlushReport:
    """Several nodes' reports of one flush as one: per transport the counts added up,
    ``queued`` the smallest (what was left of the shared queue when the last node
    looked), the longest time, errors joined, the first node's reason for what is
    still queued (``held``) while any is; cancelled or timed out if any was."""
    merged: dict[str, TransportFlushResult] = {}
    for report in reports:
        for r in report.results:
            m = merged.get(r.transport)
            if m is None:
                merged[r.transport] = replace(r)
                continue
            for key in _SUMMED:
                setattr(m, key, getattr(m, key) + getattr(r, key))
            m.queued = min(m.queued, r.queued)
            m.seconds = max(m.seconds, r.seconds)
            m.cancelled = m.cancelled or r.cancelled
            m.timed_out = m.timed_out or r.timed_out
            if r.error:
                m.error = f"{m.error}; {r.error}" if m.error else r.error
            m.held = m.held or r.held
    for m in merged.values():
        if not m.queued:
            m.held = None  # a node's reason for mail another node found gone
    return FlushReport(
        results=list(merged.values()),
        cancelled=any(r.cancelled for r in reports),
        timed_out=any(r.timed_out for r in reports),
    )


class ClusterFlush:
    """This node's flush and, when other nodes take part, theirs (module doc)."""

    def __init__(
        self,
        local: FlushHandle,
        *,
        store: ClusterStore | None = None,
        clock: Clock | None = None,
        request: FlushRequest | None = None,
        expected: Iterable[str] = (),
        interval: float = 0.25,
    ) -> None:
        self.local = local
        self.request = request
        self.expected = frozenset(expected)
        self._store = store
        self._clock = clock
        self._interval = interval
        #: The latest rows of the other nodes' parts (node, name) -> row.
        self.remote_rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._local: dict[str, dict[str, Any]] = {}  # this node's rows, by name
        self.gone: set[str] = set()

    @property
    def remote(self) -> bool:
        return self.request is not None

    @property
    def transports(self) -> list[str]:
        return self.local.transports

    @property
    def current(self) -> str | None:
        return self.local.current

    def cancel(self, transport: str | None = None) -> None:
        """Cancel this node's part (the other nodes' parts end at the deadline)."""
        self.local.cancel(transport)

    async def poll(self) -> set[str]:
        """Read the other nodes' parts; the nodes still to finish (StoreError if the
        store cannot be read)."""
        assert self._store is not None and self.request is not None and self._clock is not None
        parts = await self._store.flush_progress(self.request.id)
        done = set()
        for part in parts:
            rows = part.report.get("rows")
            for row in rows if isinstance(rows, list) else ():
                if isinstance(row, dict) and isinstance(row.get("name"), str):
                    key = (part.node, row["name"])
                    self.remote_rows[key] = _keep_progress(
                        {**row, "node": part.node}, self.remote_rows.get(key)
                    )
            if part.done:
                done.add(part.node)
        self._done = {p.node: p for p in parts if p.done}
        waiting = self.expected - done
        if waiting:
            now = self._clock.now()
            up = {
                n.name for n in await self._store.nodes() if node_state(n, now=now) is NodeState.UP
            }
            self.gone |= waiting - up
        return set(waiting - self.gone)

    def combined_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A local row of a transport with its progress added up over the nodes (a
        part that ended, and so cleared its progress, counts with its last one)."""
        name = str(row.get("name"))
        mine = self._local[name] = _keep_progress(dict(row), self._local.get(name))
        others = [r for (_, n), r in self.remote_rows.items() if n == name]
        if not others:
            return dict(row)
        return {**row, "progress": combine_progress([mine, *others])}

    async def wait(self) -> FlushReport:
        """The merged report once every part is done or the deadline passed."""
        report = await self.local.wait()
        if self.request is None:
            return report
        assert self._clock is not None
        waiting: set[str] = set(self.expected)
        self._done = {}
        while True:
            with contextlib.suppress(StoreError):  # the store is away: again, until the deadline
                waiting = await self.poll()
            if not waiting or self._clock.now() >= self.request.deadline_at:
                break
            await self._clock.sleep(self._interval)
        reports = [report] + [report_from_dict(p.report) for p in self._done.values()]
        merged = merge_reports(reports)
        if waiting:
            merged.timed_out = True
        return merged


async def start_cluster_flush(
    spooler: Any,
    *,
    upload: bool = True,
    download: bool = True,
    transport: str | None = None,
    deadline: float | None = None,
) -> ClusterFlush:
    """Ask the other nodes that are up and serve ``transport`` (any, if None) to take
    part, then start ``spooler``'s own flush (KeyError for a transport this node does
    not have, as :meth:`Spooler.start_flush`, before anything is asked).

    The request is recorded before this node's flush makes the messages ready: a node
    that claims one of them finds the request when it looks (see
    :meth:`~spoolbox._core.node.NodePresence.flush_asked`)."""
    if transport is not None:
        spooler.host(transport)  # KeyError: nothing asked, nothing started
    presence = node_of(spooler)
    store = spooler.store
    request: FlushRequest | None = None
    others: list[str] = []
    if presence is not None and isinstance(store, ClusterStore):
        clock: Clock = spooler.clock
        now = clock.now()
        if deadline is None:
            deadline = spooler.policy.flush_deadline
        try:
            records = await store.nodes()
            others = [
                n.name
                for n in records
                if n.name != presence.name
                and node_state(n, now=now) is NodeState.UP
                and _serves(n, transport)
            ]
            if others:
                request = await store.request_flush(
                    transport=transport,
                    upload=upload,
                    download=download,
                    requested_by=presence.name,
                    now=now,
                    deadline_at=now + (deadline if deadline is not None else 3600.0),
                )
        except StoreError:
            request = None  # the other nodes cannot be asked: this one flushes
    local: FlushHandle = spooler.start_flush(
        upload=upload, download=download, transport=transport, deadline=deadline
    )
    if request is None or presence is None or not isinstance(store, ClusterStore):
        return ClusterFlush(local)
    return ClusterFlush(
        local,
        store=store,
        clock=spooler.clock,
        request=request,
        expected=others,
        interval=presence.settings.progress_interval,
    )


def _serves(node: NodeRecord, transport: str | None) -> bool:
    """Whether the node has a row of a transport ``transport`` (any, if None)."""
    names = {r.get("name") for r in node.rows if r.get("resource_type") == "transport_provider"}
    return bool(names) if transport is None else transport in names
