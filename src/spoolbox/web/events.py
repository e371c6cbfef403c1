"""The status table over Server-Sent Events, bounded for every client.

Each client gets the current rows first, then the rows that changed, at most every
:data:`COALESCE` seconds (a row that changed three times in that time is sent once, as
it is now): 10 updates a second, more than a flush's progress makes (5 a second), at
a cost that does not grow with the mail flowing.  An event is ``status`` with
``{"rows": [...], "removed": [...]}``; rows have the ``status`` op's form.

What a client costs the spooler is one observer of the status table
(:class:`_Latest`): a change only replaces the row's pending state and sets an event,
so a delivery pays a dictionary write per watching page, not a wake-up; the page's
stream wakes once per event it sends.  A client that reads slower than the rows
change (or not at all) makes the daemon hold at most one pending state per row,
however long it stalls: when it reads again it gets the rows as they are then.  The
server's own buffer for the client is bounded too (uvicorn stops the stream while the
client's socket is full).  The stream ends with ``reload`` when the spooler is
replaced (``spoolbox reload``), and with ``bye`` when the server stops.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from .. import Spooler
from ..status import StatusChange, StatusRow
from .context import WebContext

__all__ = ["COALESCE", "KEEPALIVE", "sse", "status_events"]

COALESCE = 0.1
KEEPALIVE = 15.0


def sse(kind: str, data: Any) -> bytes:
    """One event in the text/event-stream format (the data is one JSON line)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Latest:
    """The newest state of every row that changed since the last :meth:`take` (None:
    removed): a status-table observer, so at most one pending state a row."""

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


async def status_events(
    context: WebContext,
    *,
    coalesce: float = COALESCE,
    keepalive: float = KEEPALIVE,
) -> AsyncIterator[bytes]:
    """The event stream of one client (see the module's docstring)."""
    spooler: Spooler = await context.daemon.current()
    latest = _Latest(spooler.status)
    unobserve = spooler.status.add_observer(latest)
    closing = asyncio.ensure_future(context.closing.wait())
    try:
        yield b"retry: 2000\n\n"
        while True:
            ready = asyncio.ensure_future(latest.ready.wait())
            await asyncio.wait(
                {ready, closing}, timeout=keepalive, return_when=asyncio.FIRST_COMPLETED
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
            if not woke:
                yield b": keepalive\n\n"
                continue
            rows = latest.take()
            yield sse(
                "status",
                context.redacted(
                    {
                        "rows": [row.to_dict() for row in rows.values() if row is not None],
                        "removed": sorted(name for name, row in rows.items() if row is None),
                    }
                ),
            )
            await asyncio.sleep(coalesce)  # the changes meanwhile go out as one event
    finally:
        closing.cancel()
        unobserve()
