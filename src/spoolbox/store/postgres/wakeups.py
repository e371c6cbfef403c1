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
Given ``on_state``, the listener says when wake-ups stop (the error) and come back
(None), and a first connection that fails is tried again in the background like a
lost one, instead of wake-ups staying off for the node's life.
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
        on_state: Callable[[str | None], None] | None = None,
    ) -> None:
        self._connect = connect
        self._callback = callback
        self._where = where
        self._backoff = tuple(backoff)
        self._on_state = on_state
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        #: Why no notification can be heard now (None: listening).
        self.problem: str | None = None

    async def start(self) -> None:
        """Start listening; returns once the first LISTEN is in place.  A first
        connection that fails raises StoreError, or with ``on_state`` is said
        through it and tried again in the background."""
        conn: Conn | None
        try:
            conn = await self._listen()
        except (StoreError, psycopg.Error) as exc:
            if self._on_state is None:
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"store {self._where}: LISTEN failed: {exc}") from exc
            log.warning(
                "store %s: no wake-ups from other nodes (%s); trying again in the background",
                self._where,
                _one_line(exc),
            )
            self._down(exc)
            conn = None
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

    async def _run(self, first: Conn | None) -> None:
        failures = 0
        conn = first
        while True:
            if conn is not None:
                try:
                    async with conn:
                        async for note in conn.notifies():
                            failures = 0
                            self._deliver(note.payload)
                except psycopg.Error as exc:
                    log.warning(
                        "store %s: the wake-up connection failed (%s); reconnecting",
                        self._where,
                        _one_line(exc),
                    )
                    self._down(exc)
            while True:
                await asyncio.sleep(self._backoff[min(failures, len(self._backoff) - 1)])
                failures += 1
                try:
                    conn = await self._listen()
                except (StoreError, psycopg.Error) as exc:
                    log.debug("store %s: wake-ups not back yet: %s", self._where, exc)
                    self._down(exc)
                    continue
                break
            self.reconnects += 1
            log.info("store %s: wake-ups back after a reconnect", self._where)
            self._up()
            self._deliver(ANY)  # what was sent meanwhile is lost: look at everything

    def _down(self, exc: BaseException) -> None:
        problem = _one_line(exc)
        if problem != self.problem:
            self.problem = problem
            self._tell(problem)

    def _up(self) -> None:
        if self.problem is not None:
            self.problem = None
            self._tell(None)

    def _tell(self, problem: str | None) -> None:
        if self._on_state is None:
            return
        try:
            self._on_state(problem)
        except Exception:
            log.exception("store %s: a wake-up state callback failed", self._where)

    def _deliver(self, payload: str) -> None:
        try:
            self._callback(payload)
        except Exception:
            log.exception("store %s: a wake-up callback failed", self._where)


def _one_line(exc: BaseException) -> str:
    """An error as one line (libpq's hints come on lines of their own)."""
    return " ".join(str(exc).split()) or type(exc).__name__
