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

A client that reads slower than the rows change does not make the daemon hold
more and more for it: its subscription to the status table is a bounded queue
(:data:`QUEUE` changes); when that is full the status table drops it, and the
client gets a ``reload`` event and the end of the stream (the page then reloads
itself and starts afresh).  The stream also ends with ``reload`` when the spooler
is replaced (``spoolbox reload``) and with ``bye`` when the server stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from .. import Spooler
from .._core.cluster_view import RowKey, row_changes, rows_by_key
from ..status import StatusChange, SubscriberDropped
from .context import WebContext
from .nodes import OtherNodes

__all__ = ["COALESCE", "KEEPALIVE", "QUEUE", "sse", "status_events"]

COALESCE = 0.1
QUEUE = 256
KEEPALIVE = 15.0


def sse(kind: str, data: Any) -> bytes:
    """One event in the text/event-stream format (the data is one JSON line)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _next(subscription: Any, timeout: float) -> StatusChange | None:
    """The next change, or None when none came within ``timeout``."""
    try:
        return await asyncio.wait_for(anext(subscription), timeout)
    except TimeoutError:
        return None


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

    def note_local(self, node: str, change: StatusChange) -> None:
        row = None if change.new is None else {**change.new.to_dict(), "node": node}
        self.note(node, change.name, row)

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
    queue: int = QUEUE,
    coalesce: float = COALESCE,
    keepalive: float = KEEPALIVE,
) -> AsyncIterator[bytes]:
    """The event stream of one client (see the module's docstring)."""
    spooler: Spooler = await context.daemon.current()
    node = spooler.owner
    subscription = spooler.subscribe(maxsize=queue, name="web-events")
    others = _OtherRows(context.others, spooler)
    closing = asyncio.ensure_future(context.closing.wait())
    try:
        yield b"retry: 2000\n\n"
        batch = _Batch()
        await others.note(batch)  # the first event has every node's rows
        quiet_since = time.monotonic()
        while True:
            first = asyncio.ensure_future(_next(subscription, others.timeout(keepalive)))
            await asyncio.wait({first, closing}, return_when=asyncio.FIRST_COMPLETED)
            if closing.done():
                first.cancel()
                await asyncio.gather(first, return_exceptions=True)
                yield sse("bye", {"reason": "the daemon's web server stops"})
                return
            change: StatusChange | None = None
            ended = False
            try:
                change = first.result()
                if change is not None:
                    batch.note_local(node, change)
                    until = time.monotonic() + coalesce
                    while (left := until - time.monotonic()) > 0:
                        more = await _next(subscription, left)
                        if more is None:
                            break
                        batch.note_local(node, more)
            except SubscriberDropped:
                yield sse("reload", {"reason": "this page fell behind; reload it"})
                return
            except StopAsyncIteration:
                ended = True
            if change is None and await context.daemon.current() is not spooler:
                ended = True
            await others.note(batch)
            if batch:
                yield sse("status", context.redacted(batch.event()))
                batch = _Batch()
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= keepalive:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
            if ended:
                yield sse("reload", {"reason": "the spooler was replaced"})
                return
    finally:
        closing.cancel()
        subscription.close()
