"""The Maildir session (delivery out, pickup in) and the provider that logs it on.

The package docstring of :mod:`spoolbox.transports.maildir` says what it
guarantees; the file work lives in :mod:`.delivery` and :mod:`.pickup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

from spoolbox.contract import (
    BaseTransportSession,
    FailOneProvider,
    InboundWriter,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    MessageCancelled,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    Support,
    TransportNotifyFlags,
)

from .delivery import _line_ending, _remove_stale_tmp, _TmpFile, status_for_error
from .files import _ensure_maildir, _finally_blocking
from .pickup import _PICKED, _PickupFile, _remove_picked, _scan_pickup, _Source
from .settings import _BadDestination, _Settings

#: Seconds between two looks at the pickup maildir's directories
#: (:meth:`MaildirSession._watch_pickup`).
WATCH_INTERVAL = 1.0


def _dir_times(pickup: str) -> tuple[int, int]:
    """The modification times of ``pickup/new`` and ``pickup/cur`` (nanoseconds)."""
    return (
        os.stat(os.path.join(pickup, "new")).st_mtime_ns,
        os.stat(os.path.join(pickup, "cur")).st_mtime_ns,
    )


__all__ = ["ADDRESS_TYPE", "MaildirProvider", "MaildirSession"]

ADDRESS_TYPE = "MAILDIR"
_CHUNK = 65536


class MaildirSession(BaseTransportSession):
    """One logon of the Maildir transport; see the module docstring."""

    ADDRESS_TYPES: ClassVar[Collection[str]] = (ADDRESS_TYPE,)

    def __init__(self, support: Support, settings: _Settings) -> None:
        super().__init__(support)
        self.settings = settings
        self._host = support.hostname  # the profile's hostname: unique file names
        self._pending: dict[str, _PickupFile] = {}  # handed out, commit not seen yet
        self._committed: dict[str, _PickupFile] = {}  # committed, removal not durable yet
        self._bad: dict[str, str] = {}  # unreadable this session -> why
        self._swept: set[str] = set()  # maildirs whose stale tmp/ files are gone
        self.counts = {"delivered": 0, "failed": 0, "deferred": 0, "received": 0}
        self._watch: asyncio.Task[None] | None = None  # the pickup's new/ and cur/ watched

    def __repr__(self) -> str:
        return f"<MaildirSession root={self.settings.root} pickup={self.settings.pickup}>"

    def capabilities(self) -> LogonCaps:
        return LogonCaps.SP_POLL if self.settings.pickup is not None else LogonCaps.NONE

    def describe(self) -> str:
        s = self.settings
        out = f"delivering into maildirs under {s.root}" if s.root else "delivering into maildirs"
        if s.pickup:
            out += f"; picking up from {s.pickup}"
        return out

    def status_object(self) -> Mapping[str, Any]:
        return {
            "root": self.settings.root,
            "pickup": self.settings.pickup,
            "create": self.settings.create,
            **self.counts,
            "pickup_pending_removal": len(self._committed),
            "pickup_skipped": dict(self._bad),
        }

    def _status(self, text: str) -> None:
        self.support.modify_status_row(status_string=text)

    async def _start(self) -> None:
        """Logon work: check the pickup maildir and finish removals a crash cut off."""
        pickup = self.settings.pickup
        if pickup is None:
            return
        run = self.support.run_blocking
        if self.settings.create:
            await run(_ensure_maildir, pickup, True)
        if not await run(os.path.isdir, os.path.join(pickup, "new")):
            raise FailOneProvider(
                f"pickup {pickup} is not a maildir (no new/ directory)"
                + ("" if self.settings.create else " and 'create' is false")
            )
        section = self.support.profile_section()
        for key, value in section.snapshot().items():
            if not key.startswith(_PICKED):
                continue
            f = _PickupFile.from_state(value)
            if f is None:
                await section.update({key: None})
            else:
                self._committed[f.key] = f
        await self._retry_removals()

    # -- the pickup watched between polls ---------------------------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        pickup = self.settings.pickup
        if (
            flags & TransportNotifyFlags.BEGIN_INBOUND
            and pickup is not None
            and self._watch is None
        ):
            self._watch = asyncio.create_task(
                self._watch_pickup(pickup), name=f"{self.support.transport_name}-maildir-pickup"
            )
        if flags & TransportNotifyFlags.END_INBOUND:
            await self._stop_watch()

    async def logoff(self, flags: LogoffFlags) -> None:
        await self._stop_watch()
        await super().logoff(flags)

    async def _stop_watch(self) -> None:
        task, self._watch = self._watch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch_pickup(self, pickup: str) -> None:
        """NEWMAIL when a file arrives: the modification times of ``new/`` and ``cur/``
        looked at every :data:`WATCH_INTERVAL` seconds (two ``stat`` calls, in a
        worker thread: a stalled network file system must not hold the loop), so
        what is dropped there comes in within about a second, not at the next poll
        (``poll_interval``, a minute by default), as Postfix's pickup is woken by
        postdrop.  The polls stay: they find what this misses."""
        seen: tuple[int, int] | None = None
        while True:
            try:
                now = await self.support.run_blocking(_dir_times, pickup)
            except OSError:
                now = None  # gone, or unreadable: the poll says why
            if now is not None and seen is not None and now != seen:
                self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
            seen = now if now is not None else seen
            await asyncio.sleep(WATCH_INTERVAL)

    # -- outbound ---------------------------------------------------------------------
    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        results: list[RecipientResult] = []
        try:
            async for r in message.iter_recipients():
                if results:
                    await self.support.spooler_yield()  # MessageCancelled propagates
                results.append(await self._deliver(message, r))
        except (Exception, asyncio.CancelledError):
            if results:  # what is in new/ is delivered: say so, or it is sent twice
                await self._report(message, results)
            raise
        if results:
            await self._report(message, results)

    async def _report(self, message: OutboundMessage, results: list[RecipientResult]) -> None:
        await self.support.status_recips(message, results)
        last_error = ""
        last_path = ""
        for res in results:
            self.counts[str(res.outcome)] += 1
            if res.status.startswith("2"):
                last_path = res.diagnostic.removeprefix("maildir; delivered to ")
            else:
                last_error = res.diagnostic
        if last_error:
            self._status(f"{last_error} (delivered {self.counts['delivered']})")
        elif last_path:
            self._status(f"delivered {self.counts['delivered']}, last: {last_path}")

    async def _deliver(self, message: OutboundMessage, r: OutboundRecipient) -> RecipientResult:
        try:
            path = self.settings.resolve(r.value)
        except _BadDestination as exc:
            return RecipientResult.failed(r, f"maildir; {exc}", status="5.1.3")
        try:
            final = await self._write(message, r, path)
        except OSError as exc:
            status, reason = status_for_error(exc)
            text = f"maildir; {path}: {reason} ({exc.strerror or exc})"
            if status.startswith("5"):
                return RecipientResult.failed(r, text, status=status)
            return RecipientResult.deferred(r, text, status=status)
        return RecipientResult.delivered(r, f"maildir; delivered to {final}")

    def _trace(self, message: OutboundMessage, path: str, first: bytes) -> bytes:
        eol = _line_ending(first)
        sender = message.sender
        who = "" if sender is None else sender.value if sender.type == "SMTP" else str(sender)
        rp = f"<{who}>"
        lines = f"Return-Path: {rp}", f"Delivered-To: {ADDRESS_TYPE}:{path}"
        return b"".join(line.encode("utf-8", "backslashreplace") + eol for line in lines)

    async def _write(self, message: OutboundMessage, r: OutboundRecipient, path: str) -> str:
        run = self.support.run_blocking
        await run(_ensure_maildir, path, self.settings.create)
        if path not in self._swept:
            self._swept.add(path)
            removed = await run(_remove_stale_tmp, path, time.time())
            if removed:
                self.support.logger.info(
                    "maildir %s: removed %d tmp/ files left over from an interrupted "
                    "delivery (untouched for 36 hours)",
                    path,
                    len(removed),
                )
        tmp = await run(_TmpFile.create, path, self._host)
        try:
            first = True
            async for chunk in message.iter_content(_CHUNK):
                if first:
                    chunk = self._trace(message, path, chunk) + chunk
                    first = False
                await run(tmp.write, chunk)
            if first:  # no content at all: the trace lines alone
                await run(tmp.write, self._trace(message, path, b""))
            return await run(tmp.commit)
        except BaseException:
            await _finally_blocking(self.support, tmp.abort)
            raise

    # -- inbound ------------------------------------------------------------------------
    def _available(self, files: list[_PickupFile]) -> list[_PickupFile]:
        skip = self._committed.keys() | self._bad.keys()
        return [f for f in files if f.key not in skip]

    def _settle_pending(self) -> None:
        """Sort out the files earlier ``start_message`` calls handed out.

        The spooler calls ``start_message`` once at a time and commits (or drops)
        its message before the next call, so an earlier call's message is committed
        by now, or never will be.  A commit stores the
        ``picked:`` record with it (set_state), so the record tells which: committed
        files wait for their removal; the others are offered again.
        """
        section = self.support.profile_section()
        for key, f in list(self._pending.items()):
            del self._pending[key]
            if section.get(_PICKED + key) is not None:
                self._committed[key] = f

    async def poll(self) -> int:
        pickup = self.settings.pickup
        if pickup is None:
            return 0
        await self._retry_removals()
        files = await self.support.run_blocking(_scan_pickup, pickup)
        # Files handed out whose commit is not known yet count: if the commit failed,
        # the next start_message offers them again (poll must not decide that, as it
        # may run while a commit is still in progress).
        return len(self._available(files))

    async def start_message(self, message: InboundWriter) -> None:
        pickup = self.settings.pickup
        if pickup is None:
            return
        run = self.support.run_blocking
        self._settle_pending()
        files = self._available(await run(_scan_pickup, pickup))
        if not files:
            return
        f = files[0]
        self._pending[f.key] = f
        try:
            source = await run(_Source.open, os.path.join(pickup, f.sub, f.name))
        except FileNotFoundError:
            del self._pending[f.key]  # vanished (a reader took it): nothing delivered
            return
        except OSError as exc:
            self._skip(f, exc)
            raise
        try:
            while chunk := await run(source.read, _CHUNK):
                await message.write(chunk)
        except MessageCancelled:
            del self._pending[f.key]
            raise
        except Exception as exc:
            self._skip(f, exc)
            raise
        except BaseException:
            del self._pending[f.key]
            raise
        finally:
            await _finally_blocking(self.support, source.close)
        if message.size == 0:  # emptied since the scan: nothing to deliver
            del self._pending[f.key]
            return
        message.set_remote_id(f.name)
        message.set_state(_PICKED + f.key, f.to_state())

        async def committed() -> None:
            await self._picked_up(f)

        message.after_commit(committed)

    def _skip(self, f: _PickupFile, exc: BaseException) -> None:
        self._pending.pop(f.key, None)
        self._bad[f.key] = f"{type(exc).__name__}: {exc}"
        text = f"skipping pickup file {f.rel}: {exc}"
        self.support.logger.warning("%s", text)
        self._status(text)

    async def _picked_up(self, f: _PickupFile) -> None:
        """after_commit: the message is in the inbox; now remove its file."""
        self._pending.pop(f.key, None)
        self._committed[f.key] = f
        self.counts["received"] += 1
        if await self._remove(f):
            self._status(f"received {self.counts['received']}, last: {f.rel}")

    async def _remove(self, f: _PickupFile) -> bool:
        pickup = self.settings.pickup
        assert pickup is not None
        try:
            await self.support.run_blocking(_remove_picked, pickup, f)
        except OSError as exc:
            text = f"cannot remove picked-up {f.rel} (retrying at the next poll): {exc}"
            self.support.logger.warning("%s", text)
            self._status(text)
            return False
        await self.support.profile_section().update({_PICKED + f.key: None})
        self._committed.pop(f.key, None)
        return True

    async def _retry_removals(self) -> None:
        for f in list(self._committed.values()):
            await self._remove(f)


class MaildirProvider:
    """The Maildir transport provider (entry point ``maildir``)."""

    display_name: ClassVar[str] = "Maildir"

    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        """Read ``config`` as :meth:`logon` does, without logging on (``spoolbox
        check``, and the daemon before it starts): OptionError, ValueError or
        Unconfigured say what is wrong."""
        _Settings.from_config(config)

    @staticmethod
    def process_limits(config: Mapping[str, Any]) -> dict[str, int]:
        """None: any number of processes may write into the folders at once (a
        daemon with delivery workers has nothing of this transport to share)."""
        return {}

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> MaildirSession:
        settings = _Settings.from_config(config)
        session = MaildirSession(support, settings)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=session.describe()
        )
        await session._start()
        return session

    async def shutdown(self) -> None:
        return None
