"""IMAP IDLE (RFC 2177): a connection of its own waits in IDLE and raises
``spooler_notify(NEWMAIL)`` when the folder grows.

It runs from ``BEGIN_INBOUND`` until ``END_INBOUND`` or logoff, renews the IDLE
every ``_IDLE_RENEW`` seconds, and on a failure logs it, says so in ``state`` (the
``idle`` entry of the session's status object) and connects again with back-off;
the spooler's polls find new mail meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib

import aioimaplib  # type: ignore[import-untyped]  # no py.typed in 2.0

from spoolbox.contract import SpoolerNotifyFlags, Support

from .._mailbox import MailboxSettings
from .connection import _Connection
from .wire import _check, _exists

_IDLE_RENEW = 300.0  # re-issue IDLE this often (RFC 2177: at most 29 minutes)
_IDLE_BACKOFF_CAP = 300.0


class _IdleWatch:
    """The IDLE connection of one session, and what it is doing (``state``)."""

    def __init__(self, settings: MailboxSettings, support: Support) -> None:
        self.settings = settings
        self.support = support
        self.state = "off"
        self._task: asyncio.Task[None] | None = None

    def start(self, conn: _Connection | None) -> None:
        """Start watching, if not already, when the session's connection ``conn``
        says the server has IDLE; else say that new mail is found by polling."""
        if self._task is not None:
            return
        if conn is not None and "IDLE" in conn.capabilities:
            self._task = asyncio.create_task(
                self._loop(), name=f"{self.support.transport_name}-imap-idle"
            )
        else:
            self.state = "not offered by the server: polling"

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        """Own connection in IDLE; NEWMAIL when the folder grows.  Runs until cancelled
        (END_INBOUND or logoff); failures are logged and retried with back-off."""
        delay = 1.0
        while True:
            conn = _Connection(self.settings, self.support)
            try:
                await conn.open()
                self.state = "idling"
                delay = 1.0
                # Mail that came while no IDLE was running.
                self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
                while True:
                    await self._once(conn)
            except asyncio.CancelledError:
                await conn.close()
                raise
            except Exception as exc:
                await conn.discard()
                self.state = f"failed ({type(exc).__name__}: {exc}); polling meanwhile"
                self.support.logger.warning(
                    "imap %s: IDLE connection failed (retrying in %.0f s): %s",
                    self.settings.where,
                    delay,
                    exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _IDLE_BACKOFF_CAP)

    async def _once(self, conn: _Connection) -> None:
        imap = conn._imap()
        renew = min(_IDLE_RENEW, 29 * 60.0)
        idle = await imap.idle_start(timeout=renew)
        try:
            while imap.has_pending_idle():
                push = await _push_or_lost(conn, imap, renew + self.settings.timeout)
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if _exists(push if isinstance(push, list) else [push]):
                    self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
        finally:
            if imap.has_pending_idle():
                imap.idle_done()
        async with asyncio.timeout(self.settings.timeout):
            _check(await idle, "IDLE")


async def _push_or_lost(conn: _Connection, imap: aioimaplib.IMAP4, timeout: float) -> object:
    """The server's next push in IDLE; ConnectionError as soon as the connection is
    lost (else the watch would wait for the push's timeout, minutes, hearing nothing)."""
    push = asyncio.ensure_future(imap.wait_server_push(timeout=timeout))
    lost = asyncio.ensure_future(conn.lost.wait())
    try:
        await asyncio.wait((push, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if not push.done():
            push.cancel()
    if push.done() and not push.cancelled():
        return push.result()
    raise ConnectionError(f"imap {conn.settings.where}: the IDLE connection was lost")
