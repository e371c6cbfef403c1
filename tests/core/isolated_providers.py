"""Providers for the isolation tests: module-level classes, so a child process can
import them (``isolated_providers:Name``).  Their options are plain values."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from spoolbox.contract import (
    BaseTransportSession,
    EndFlags,
    FlushFlags,
    InboundWriter,
    LogonCaps,
    LogonFlags,
    NetworkError,
    OutboundMessage,
    RecipientResult,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    Support,
    TransportNotifyFlags,
)


class _Provider:
    display_name: ClassVar[str] = "isolation test provider"
    session_class: ClassVar[type[BaseTransportSession]] = BaseTransportSession

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> BaseTransportSession:
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=f"pid {os.getpid()}"
        )
        profile = support.profile_section()  # counts logons across children
        await profile.update({"logons": profile.get("logons", 0) + 1})
        session = self.session_class(support)
        session.options = dict(config)  # type: ignore[attr-defined]
        return session

    async def shutdown(self) -> None:
        return None


class _Deliver(BaseTransportSession):
    ADDRESS_TYPES = ("SMTP",)
    options: dict[str, Any]

    async def deliver(self, message: OutboundMessage) -> None:
        body = await message.content()
        self.support.modify_status_row(
            status_string=f"sent {message.ref} ({len(body)} bytes, pid {os.getpid()})"
        )
        await self.support.status_recips(
            message,
            [RecipientResult.delivered(r, "2.0.0") async for r in message.iter_recipients()],
        )


class CheapSession(_Deliver):
    """Delivers every message at once; optionally inside a critical section."""

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        if self.options.get("critsec"):
            async with self.support.critical_section():
                await self.support.spooler_yield()
                await self.deliver(message)
        else:
            await self.deliver(message)


class Cheap(_Provider):
    session_class = CheapSession


class LimitedSession(CheapSession):
    """Says how many messages it takes at once, how many to one destination, and the
    least time between two to one destination."""

    concurrency = 3
    destination_concurrency = 2
    destination_rate_delay = 0.25


class Limited(_Provider):
    session_class = LimitedSession


class FlushingSession(CheapSession):
    """Asks for a flush (its OUTBOUND_FLUSH bit) after each message; says in its row
    which flush calls it got."""

    def _saw(self, what: str) -> None:
        seen = [*getattr(self, "seen", []), what]
        self.seen = seen
        self.support.modify_status_row(status_string=", ".join(seen))

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        await super().submit_message(message, flags)
        self.support.modify_status_row(set_bits=StatusCode.OUTBOUND_FLUSH)

    async def flush_queues(self, flags: FlushFlags) -> None:
        self._saw(f"flush_queues upload={bool(flags & FlushFlags.UPLOAD)}")

    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        for name in ("BEGIN_OUTBOUND_FLUSH", "END_OUTBOUND_FLUSH"):
            if flags & TransportNotifyFlags[name]:
                self._saw(name)


class Flushing(_Provider):
    session_class = FlushingSession


class HogSession(_Deliver):
    """Burns the CPU without ever yielding until the file ``release`` exists (or, so
    that a test run in-process by mistake ends, 30 s have passed)."""

    ADDRESS_TYPES = ("HOG",)

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        self.support.modify_status_row(status_string=f"hogging {message.ref}")
        release = self.options["release"]
        give_up = time.monotonic() + 30
        # Blocking on purpose: this provider is the hog.
        while not os.path.exists(release) and time.monotonic() < give_up:  # noqa: ASYNC240
            pass
        await self.deliver(message)


class Hog(_Provider):
    session_class = HogSession


class HangSession(_Deliver):
    """Hangs in submit_message (says so in its row) until the file ``healed`` exists."""

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        if not os.path.exists(self.options["healed"]):  # noqa: ASYNC240 - a test's marker
            self.support.modify_status_row(status_string=f"hanging {os.getpid()}")
            await asyncio.Event().wait()
        await self.deliver(message)


class Hang(_Provider):
    session_class = HangSession


class PickupSession(BaseTransportSession):
    """Inbound: every file in ``pickup`` is a message, deleted once committed."""

    CAPABILITIES = LogonCaps.SP_POLL
    options: dict[str, Any]

    def _files(self) -> list[str]:
        return sorted(os.listdir(self.options["pickup"]))

    async def poll(self) -> int:
        return len(self._files())

    async def start_message(self, message: InboundWriter) -> None:
        files = self._files()
        if not files:
            return
        name = files[0]
        path = os.path.join(self.options["pickup"], name)
        with open(path, "rb") as f:  # noqa: ASYNC230 - a few bytes of a test's file
            await message.write(f.read())
        message.set_envelope(sender="SMTP:far@example.org", recipients=("SMTP:me@example.org",))
        message.set_remote_id(name)
        message.set_state("last", name)

        def remove() -> None:
            os.remove(path)

        message.after_commit(remove)


class Pickup(_Provider):
    session_class = PickupSession


class DiesInLogon(_Provider):
    """Its child exits with status 3 in the middle of logon."""

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> BaseTransportSession:
        os._exit(3)


class PatientSession(_Deliver):
    """Waits in submit_message, yielding, until the spooler cancels the message."""

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        self.support.modify_status_row(status_string=f"waiting {message.ref}")
        while True:
            await asyncio.sleep(0.01)
            await self.support.spooler_yield()  # raises MessageCancelled once cancelled


class Patient(_Provider):
    session_class = PatientSession


class EndFailsSession(BaseTransportSession):
    """Takes every message, then fails in end_message with a network error."""

    ADDRESS_TYPES = ("SMTP",)

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        return None

    async def end_message(self, message: OutboundMessage) -> EndFlags:
        raise NetworkError(30.0, f"link down after {message.ref}")


class EndFails(_Provider):
    session_class = EndFailsSession


class CriticalSession(BaseTransportSession):
    """Reports a critical error in submit_message and returns normally; says so in its
    row if end_message is ever called (the spooler must not call it then)."""

    ADDRESS_TYPES = ("SMTP",)

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        self.support.spooler_notify(SpoolerNotifyFlags.CRITICAL_ERROR, "broken")

    async def end_message(self, message: OutboundMessage) -> EndFlags:
        self.support.modify_status_row(status_string="end_message called")
        return EndFlags.SENT


class Critical(_Provider):
    session_class = CriticalSession


class KeepPickupSession(BaseTransportSession):
    """Inbound that keeps its source (as IMAP or POP3 with ``after_fetch = "keep"``):
    every file in ``pickup`` is a message and stays there; the names already in the
    inbox are the profile keys ``seen:<name>``, committed with each message."""

    CAPABILITIES = LogonCaps.SP_POLL | LogonCaps.SP_INBOUND_BATCH
    options: dict[str, Any]

    def __init__(self, support: Support) -> None:
        super().__init__(support)
        self.inflight: set[str] = set()  # handed out, not committed or rolled back yet

    def _new(self) -> list[str]:
        section = self.support.profile_section()
        return [
            name
            for name in sorted(os.listdir(self.options["pickup"]))
            if section.get("seen:" + name) is None and name not in self.inflight
        ]

    async def poll(self) -> int:
        return len(self._new())

    async def start_message(self, message: InboundWriter) -> None:
        new = self._new()
        if not new:
            return
        name = new[0]
        self.inflight.add(name)
        with open(os.path.join(self.options["pickup"], name), "rb") as f:  # noqa: ASYNC230
            await message.write(f.read())
        message.set_state("seen:" + name, 1)

        def done() -> None:
            self.inflight.discard(name)

        message.after_commit(done)
        message.after_rollback(done)


class KeepPickup(_Provider):
    session_class = KeepPickupSession
