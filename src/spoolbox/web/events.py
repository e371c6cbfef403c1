"""The status table over Server-Sent Events, bounded for every client.

Each client gets the current rows first, then the rows that changed, at most every
:data:`COALESCE` seconds (a row that changed three times in that time is sent once, as
it is now): 10 updates a second, more than a flush's progress makes (5 a second), at
a cost that does not grow with the mail flowing.  An event is ``status`` with
``{"rows": [...], "removed": [{"node", "name"}, ...]}``; rows have the ``status``
op's form, each with its ``node``.

When several nodes share the store, the rows are every node's, as ``spoolbox
status`` shows them: this node's come from its status table as they change; the
other nodes' are read from the store every half publishing interval
(:class:`.nodes.OtherNodes`) and sent when they changed, so another node's change
reaches the page within about one interval; the rows of a node whose lease ended
turn ``Gone``.

What a client costs the spooler is one observer of the status table
(:class:`_Latest`): a change of this node's rows only replaces the row's pending state
and sets an event, so a delivery pays a dictionary write per watching page, not a
wake-up; the page's stream wakes once per event it sends.  A client that reads
slower than the rows change (or not at all) makes the daemon hold at most one
pending state per row, however long it stalls: when it reads again it gets the rows
as they are then.  What was sent and not read waits in the connection's buffers,
bounded too (uvicorn stops the stream while the transport's buffer is full; the
kernel's send buffer is fixed, :data:`.server.SEND_BUFFER`).  The stream ends with
``reload`` when the spooler is replaced (``spoolbox reload``), and with ``bye`` when
the server stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from .. import Spooler
from .._core.cluster_view import RowKey, row_changes, rows_by_key
from ..status import StatusChange, StatusRow
from .context import WebContext
from .nodes import OtherNodes

__all__ = ["COALESCE", "KEEPALIVE", "sse", "status_events"]

COALESCE = 0.1
KEEPALIVE = 15.0


def sse(kind: str, data: Any) -> bytes:
    """One event in the text/event-stream format (the data is one JSON line)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Latest:
    """The newest state of every row of this node that changed since the last
    :meth:`take` (None: removed): a status-table observer, so at most one pending
    state a row."""

    __slots__ = ("ready", "rows")

    def __init__(self, rows: Iterable[StatusRow]) -> None:
        self.rows: dict[str, StatusRow | None] = {row.name: row for row in rows}
        self.ready = asyncio.Event()
        self.ready.set()  # the current rows are the first event

    def __call__(self, change: StatusChange) -> None:
        self.rows[change.name] = change.new
        self.ready.set()

    def take(self) -> dict[str, StatusRow | None]:
        rows, self.rows = self.rows, {}
        self.ready.clear()
        return rows


class _Batch:
    """The rows that changed since the last event, by (node, name), and those removed."""

    def __init__(self) -> None:
        self.rows: dict[RowKey, dict[str, Any]] = {}
        self.removed: set[RowKey] = set()

    def __bool__(self) -> bool:
        return bool(self.rows or self.removed)

    def note(self, node: str, name: str, row: dict[str, Any] | None) -> None:
        key = (node, name)
        if row is None:
            self.rows.pop(key, None)
            self.removed.add(key)
        else:
            self.removed.discard(key)
            self.rows[key] = row

    def note_local(self, node: str, rows: dict[str, StatusRow | None]) -> None:
        for name, row in rows.items():
            self.note(node, name, None if row is None else {**row.to_dict(), "node": node})

    def event(self) -> dict[str, Any]:
        removed = [{"node": node, "name": name} for node, name in sorted(self.removed)]
        return {"rows": list(self.rows.values()), "removed": removed}


class _OtherRows:
    """What one client was shown of the other nodes' rows, and when to look again."""

    def __init__(self, others: OtherNodes, spooler: Spooler) -> None:
        self._others = others
        self._spooler = spooler
        self._period = others.period(spooler)
        self._due = float("-inf")
        self._shown: dict[RowKey, dict[str, Any]] = {}

    def timeout(self, keepalive: float) -> float:
        """How long to wait for a local change before looking again."""
        if self._period is None:
            return keepalive
        return min(keepalive, max(0.01, self._due - time.monotonic()))

    async def note(self, batch: _Batch) -> None:
        """Add to ``batch`` the other nodes' rows that changed, if it is time to look."""
        if self._period is None or time.monotonic() < self._due:
            return
        self._due = time.monotonic() + self._period
        current = rows_by_key(await self._others.rows(self._spooler))
        for node, name, row in row_changes(self._shown, current):
            batch.note(node, name, row)
        self._shown = current


async def status_events(
    context: WebContext,
    *,
    coalesce: float = COALESCE,
    keepalive: float = KEEPALIVE,
) -> AsyncIterator[bytes]:
    """The event stream of one client (see the module's docstring)."""
    spooler: Spooler = await context.daemon.current()
    node = spooler.owner
    latest = _Latest(spooler.status)
    unobserve = spooler.status.add_observer(latest)
    others = _OtherRows(context.others, spooler)
    closing = asyncio.ensure_future(context.closing.wait())
    try:
        yield b"retry: 2000\n\n"
        batch = _Batch()
        await others.note(batch)  # the first event has every node's rows
        quiet_since = time.monotonic()
        while True:
            ready = asyncio.ensure_future(latest.ready.wait())
            await asyncio.wait(
                {ready, closing},
                timeout=others.timeout(keepalive),
                return_when=asyncio.FIRST_COMPLETED,
            )
            woke = ready.done()
            if not woke:
                ready.cancel()
                await asyncio.gather(ready, return_exceptions=True)
            if closing.done():
                yield sse("bye", {"reason": "the daemon's web server stops"})
                return
            if await context.daemon.current() is not spooler:
                yield sse("reload", {"reason": "the spooler was replaced"})
                return
            if woke:
                batch.note_local(node, latest.take())
            await others.note(batch)
            if batch:
                yield sse("status", context.redacted(batch.event()))
                batch = _Batch()
                quiet_since = time.monotonic()
                await asyncio.sleep(coalesce)  # the changes meanwhile go out as one event
            elif time.monotonic() - quiet_since >= keepalive:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
    finally:
        closing.cancel()
        unobserve()
