"""The SMTP transport's connection pool: at most ``max_connections`` open connections,
reused message after message (an ``RSET`` proves an idle one still alive; a dead one is
replaced silently), dropped after any error, closed with ``QUIT`` at logoff."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from .connection import Connection, connect
from .failures import Failure
from .settings import SMTPSettings

__all__ = ["Pool"]

#: A connection idle for less than this is reused without an RSET probe.
_FRESH = 2.0
_QUIT_TIMEOUT = 5.0


class Pool:
    """The connections of one logon: idle ones, and busy ones by message ref."""

    def __init__(
        self, settings: SMTPSettings, tls_context: ssl.SSLContext | None, helo: str
    ) -> None:
        self.settings = settings
        self._tls_context = tls_context
        self._helo = helo
        self._slots = asyncio.Semaphore(settings.max_connections)
        self.idle: list[Connection] = []
        self.busy: dict[str, Connection] = {}  # message ref -> its connection
        self.opened = 0
        self.closed = False
        self._users = 0  # acquiring or holding a connection

    @property
    def unused(self) -> bool:
        """Nothing open, nobody waiting or connecting: the pool may be forgotten."""
        return not self._users and not self.idle and not self.busy

    @property
    def open_count(self) -> int:
        return len(self.idle) + len(self.busy)

    @property
    def alive_count(self) -> int:
        return sum(c.alive for c in self.idle) + len(self.busy)

    @property
    def any_alive(self) -> bool:
        """``alive_count > 0``, asked after every message: a busy one answers it."""
        return bool(self.busy) or any(c.alive for c in self.idle)

    async def acquire(self, ref: str) -> Connection:
        """A connection for message ``ref``: an idle one that still answers, or a new one."""
        self._users += 1
        try:
            await self._slots.acquire()
        except BaseException:
            self._users -= 1
            raise
        try:
            conn = await self._reuse()
            if conn is None:
                self.opened += 1
                conn = await connect(self.settings, self._tls_context, self._helo, self.opened)
        except BaseException:
            self._users -= 1
            self._slots.release()
            raise
        self.busy[ref] = conn
        return conn

    def release(self, ref: str, conn: Connection, reusable: bool) -> None:
        """Back to the pool if ``reusable`` and in step with the server, else closed."""
        self.busy.pop(ref, None)
        if reusable and conn.alive and conn.machine.in_step and not self.closed:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()
        self._users -= 1
        self._slots.release()

    def drop(self, ref: str) -> bool:
        """Close the connection message ``ref`` is being sent on; False if there is none."""
        conn = self.busy.get(ref)
        if conn is None:
            return False
        conn.close()
        return True

    async def quit_idle(self, before: float) -> None:
        """Close (with QUIT) the idle connections unused since ``before``
        (``time.monotonic``), and drop the dead ones."""
        stale = [c for c in self.idle if c.idle_since < before or not c.alive]
        self.idle = [c for c in self.idle if c not in stale]
        for conn in stale:
            await self._quit(conn)

    async def _reuse(self) -> Connection | None:
        """An idle connection that answers RSET, or None (dead ones are dropped)."""
        while self.idle:
            conn = self.idle.pop()
            if not conn.alive or not conn.machine.in_step:
                conn.close()
                continue
            fresh = conn.clean and time.monotonic() - conn.idle_since < _FRESH
            # Clean again only when this use's transaction ends with 250: a flag left
            # set by an earlier one let a transaction that failed be followed by MAIL
            # without RSET ("503 nested MAIL command", and the message bounced).
            conn.clean = False
            if fresh:
                # A transaction that just ended with 250 leaves the session clean
                # (RFC 5321 4.1.4): no RSET round trip for a connection this fresh.
                return conn
            conn.machine.rset()
            try:
                reply = await conn.reply("RSET", self.settings.timeouts["mail"])
            except Failure:
                continue  # closed
            if reply.code == 250:
                return conn
            conn.close()
        return None

    async def close(self, hurry: bool) -> None:
        """Close every connection; the idle ones with QUIT unless ``hurry``."""
        self.closed = True
        idle, self.idle = self.idle, []
        for conn in list(self.busy.values()):
            conn.close()
        for conn in idle:
            if hurry:
                conn.close()
            else:
                await self._quit(conn)

    async def _quit(self, conn: Connection) -> None:
        if conn.alive and conn.machine.in_step:
            conn.machine.quit()
            with contextlib.suppress(Failure):
                await conn.reply("QUIT", min(_QUIT_TIMEOUT, self.settings.timeouts["mail"]))
        conn.close()
