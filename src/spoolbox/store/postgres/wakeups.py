"""Wake-ups across nodes: LISTEN/NOTIFY on the channel :data:`.queries.CHANNEL`.

A write that makes recipients claimable (or leaves some to route) sends, in its own
transaction, a notification whose payload says for whom (:func:`payloads`):
a transport's name, :data:`ROUTE` (recipients wait for routing) or :data:`ANY`
(anything may have changed).  PostgreSQL delivers it at commit, once per distinct
payload, to every listening connection, on every node.

:class:`Listener` holds one connection of its own (outside the pool) that LISTENs
and hands each payload to a callback.  When the connection is lost it reconnects
with backoff and then calls the callback with :data:`ANY`: notifications sent while
it was away are lost, so the node looks at everything once.  Polling stays the
fallback: a node that never hears a notification still finds its work, later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from ..base import StoreError
from . import queries as _q
from .arrays import text_array

__all__ = ["ANY", "ROUTE", "Listener", "notify", "payloads"]

log = logging.getLogger("spoolbox.store")

#: Payload: recipients wait for routing.
ROUTE: Final = "route"
#: Payload: recipients of any transport may have become claimable.
ANY: Final = "*"

_BACKOFF: Final = (0.1, 0.5, 1.0, 2.0, 5.0)

Conn = AsyncConnection[DictRow]


def payloads(routes: Iterable[str | None]) -> set[str]:
    """The payloads that announce new QUEUED recipients with these routes."""
    return {ROUTE if r is None else r for r in routes}


async def notify(conn: Conn, what: Iterable[str]) -> None:
    """Send one notification per payload (one statement), delivered when the
    transaction commits."""
    distinct = sorted(set(what))
    if distinct:
        await conn.execute(_q.NOTIFY, (_q.CHANNEL, text_array(distinct)))


class Listener:
    """LISTENs on its own connection and calls ``callback(payload)`` for each
    notification (on the event loop that started it)."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Conn]],
        callback: Callable[[str], None],
        *,
        where: str,
        backoff: Sequence[float] = _BACKOFF,
    ) -> None:
        self._connect = connect
        self._callback = callback
        self._where = where
        self._backoff = tuple(backoff)
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def start(self) -> None:
        """Start listening; returns once the first LISTEN is in place (StoreError if
        the first connection fails)."""
        conn = await self._listen()
        self._task = asyncio.create_task(self._run(conn), name=f"listen {self._where}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self) -> Conn:
        conn = await self._connect()
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(_q.CHANNEL)))
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self, conn: Conn) -> None:
        failures = 0
        while True:
            try:
                async with conn:
                    async for note in conn.notifies():
                        failures = 0
                        self._deliver(note.payload)
            except psycopg.Error as exc:
                log.warning(
                    "store %s: the wake-up connection failed (%s); reconnecting",
                    self._where,
                    " ".join(str(exc).split()),  # (libpq's hints come on lines of their own)
                )
            while True:
                await asyncio.sleep(self._backoff[min(failures, len(self._backoff) - 1)])
                failures += 1
                try:
                    conn = await self._listen()
                except StoreError as exc:
                    log.debug("store %s: wake-ups not back yet: %s", self._where, exc)
                    continue
                except psycopg.Error as exc:
                    log.debug("store %s: wake-ups not back yet: %s", self._where, exc)
                    continue
                break
            self.reconnects += 1
            log.info("store %s: wake-ups back after a reconnect", self._where)
            self._deliver(ANY)  # what was sent meanwhile is lost: look at everything

    def _deliver(self, payload: str) -> None:
        try:
            self._callback(payload)
        except Exception:
            log.exception("store %s: a wake-up callback failed", self._where)
