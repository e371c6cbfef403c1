"""The status table over Server-Sent Events, bounded for every client.

Each client gets the current rows first, then the rows that changed, at most every
:data:`COALESCE` seconds (a row that changed three times in that time is sent once, as
it is now): 10 updates a second, more than a flush's progress makes (5 a second), at
a cost that does not grow with the mail flowing.  An event is ``status`` with
``{"rows": [...], "removed": [...]}``; rows have the ``status`` op's form.

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
from ..status import StatusChange, SubscriberDropped
from .context import WebContext

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


async def status_events(
    context: WebContext,
    *,
    queue: int = QUEUE,
    coalesce: float = COALESCE,
    keepalive: float = KEEPALIVE,
) -> AsyncIterator[bytes]:
    """The event stream of one client (see the module's docstring)."""
    spooler: Spooler = await context.daemon.current()
    subscription = spooler.subscribe(maxsize=queue, name="web-events")
    closing = asyncio.ensure_future(context.closing.wait())
    try:
        yield b"retry: 2000\n\n"
        while True:
            first = asyncio.ensure_future(_next(subscription, keepalive))
            await asyncio.wait({first, closing}, return_when=asyncio.FIRST_COMPLETED)
            if closing.done():
                first.cancel()
                await asyncio.gather(first, return_exceptions=True)
                yield sse("bye", {"reason": "the daemon's web server stops"})
                return
            try:
                change = first.result()
            except SubscriberDropped:
                yield sse("reload", {"reason": "this page fell behind; reload it"})
                return
            except StopAsyncIteration:
                yield sse("reload", {"reason": "the spooler was replaced"})
                return
            if change is None:
                if await context.daemon.current() is not spooler:
                    yield sse("reload", {"reason": "the spooler was replaced"})
                    return
                yield b": keepalive\n\n"
                continue
            rows: dict[str, Any] = {}
            removed: set[str] = set()
            _note(change, rows, removed)
            until = time.monotonic() + coalesce
            ended = False
            try:
                while (left := until - time.monotonic()) > 0:
                    more = await _next(subscription, left)
                    if more is None:
                        break
                    _note(more, rows, removed)
            except SubscriberDropped:
                yield sse("reload", {"reason": "this page fell behind; reload it"})
                return
            except StopAsyncIteration:
                ended = True
            yield sse(
                "status",
                context.redacted({"rows": list(rows.values()), "removed": sorted(removed)}),
            )
            if ended:
                yield sse("reload", {"reason": "the spooler was replaced"})
                return
    finally:
        closing.cancel()
        subscription.close()


def _note(change: StatusChange, rows: dict[str, Any], removed: set[str]) -> None:
    if change.new is None:
        rows.pop(change.name, None)
        removed.add(change.name)
    else:
        removed.discard(change.name)
        rows[change.name] = change.new.to_dict()
