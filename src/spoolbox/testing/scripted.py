"""Scripted transport providers: succeed, fail, defer, hog, hang or raise on cue.

A :class:`Script` says what the session does; pass it as the transport's ``script``
option::

    script = Script(address_types=("SMTP",), submit=[Act.FAIL_TEMP, Act.SUCCEED])
    TransportConfig("smtp", ScriptedProvider, options={"script": script})

``submit`` is a queue of actions, one per ``submit_message`` call, the last repeated
when the queue runs out.  Every call the spooler makes is appended to
``script.calls`` as ``(method, detail)``, so tests can check the call order, and
``script.sent`` holds ``(message id, recipient index)`` pairs reported delivered.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..contract import (
    BaseTransportSession,
    EndFlags,
    FlushFlags,
    InboundWriter,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    NetworkError,
    NotMe,
    OutboundMessage,
    RecipientResult,
    StatusCode,
    SubmitCancelled,
    SubmitFlags,
    Support,
    TransportBusy,
    TransportNotifyFlags,
    ValidateFlags,
    WaitRetry,
)

__all__ = ["Act", "Script", "ScriptedError", "ScriptedProvider", "ScriptedSession"]


class ScriptedError(RuntimeError):
    """What a scripted session raises when told to raise."""


class Act(enum.Enum):
    SUCCEED = "succeed"  # every recipient delivered (2.0.0)
    FAIL_TEMP = "fail-temp"  # every recipient deferred (4.4.1)
    FAIL_PERM = "fail-perm"  # every recipient failed (5.1.1)
    FIRST_ONLY = "first-only"  # deliver the first recipient, leave the rest unreported
    DEFER = "defer"  # report nothing; end_message answers DONT_RESEND
    RESEND_LATER = "resend-later"
    RESEND_NOW = "resend-now"
    BUSY = "busy"  # raise TransportBusy
    NOT_ME = "not-me"  # raise NotMe
    WAIT = "wait"  # raise WaitRetry(script.wait_delay)
    NETWORK_ERROR = "network-error"  # raise NetworkError(script.wait_delay)
    CANCEL = "cancel"  # raise SubmitCancelled
    RAISE = "raise"  # raise ScriptedError
    HOG = "hog"  # burn the CPU for script.hog_seconds without yielding, then succeed
    HOG_YIELDING = "hog-yielding"  # the same work, cut with spooler_yield
    HANG = "hang"  # wait until cancelled (NOTIFY_CANCEL_MESSAGE), then yield (raises)


@dataclass
class Script:
    address_types: Collection[str] = ("SMTP",)
    capabilities: LogonCaps = LogonCaps.NONE
    submit: list[Act] = field(default_factory=lambda: [Act.SUCCEED])
    raise_in: set[str] = field(default_factory=set)  # method names that raise ScriptedError
    inbound: list[bytes] = field(default_factory=list)  # messages poll/start_message hand out
    inbound_state_key: str | None = "last"  # set_state(key, n) with each inbound message
    fail_inbound_once: bool = False  # the first start_message raises after writing
    wait_delay: float = 30.0
    hog_seconds: float = 0.05
    concurrency: int = 1
    create_row: bool = True
    flush_sets_bits: bool = True
    calls: list[tuple[str, Any]] = field(default_factory=list)
    sent: list[tuple[str, int]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    critsec_seconds: float = 0.0
    critsec_yields: int = 0
    #: When set, each ``submit_message`` first waits for it, heeding no cancellation
    #: (a transport stalled mid-delivery, as in a process stopped past its lease).
    stall: asyncio.Event | None = field(default=None, repr=False)

    def next_act(self) -> Act:
        return self.submit.pop(0) if len(self.submit) > 1 else self.submit[0]

    def names(self) -> list[str]:
        return [c for c, _ in self.calls]


class ScriptedSession(BaseTransportSession):
    def __init__(self, support: Support, script: Script) -> None:
        super().__init__(support)
        self.script = script
        self.concurrency = script.concurrency
        self._cancel = asyncio.Event()
        self._inbound_failed = False

    def _record(self, name: str, detail: Any = None) -> None:
        self.script.calls.append((name, detail))
        if name in self.script.raise_in:
            raise ScriptedError(f"scripted failure in {name}")

    def capabilities(self) -> LogonCaps:
        self._record("capabilities")
        return self.script.capabilities

    def address_types(self) -> Collection[str]:
        self._record("address_types")
        return self.script.address_types

    def register_options(self) -> tuple[()]:
        self._record("register_options")
        return ()

    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        self._record("transport_notify", TransportNotifyFlags(flags))
        await super().transport_notify(flags, ref)
        if flags & TransportNotifyFlags.CANCEL_MESSAGE and ref is not None:
            self.script.cancelled.append(ref)
            self._cancel.set()

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        self._record("submit_message", (message.ref, SubmitFlags(flags)))
        if self.script.stall is not None:
            await self.script.stall.wait()
        act = self.script.next_act()
        self._act = act
        rcpts = message.recipients
        if act is Act.BUSY:
            raise TransportBusy()
        if act is Act.NOT_ME:
            raise NotMe()
        if act is Act.WAIT:
            raise WaitRetry(self.script.wait_delay, "scripted wait")
        if act is Act.NETWORK_ERROR:
            raise NetworkError(self.script.wait_delay, "scripted network error")
        if act is Act.CANCEL:
            raise SubmitCancelled()
        if act is Act.RAISE:
            raise ScriptedError("scripted failure in submit_message")
        if act is Act.HANG:
            await self._cancel.wait()
            self._cancel.clear()
            await self.support.spooler_yield()  # raises MessageCancelled
            return
        if act in (Act.HOG, Act.HOG_YIELDING):
            end = time.perf_counter() + self.script.hog_seconds
            while time.perf_counter() < end:
                if act is Act.HOG_YIELDING and self.support.slice_spent():
                    await self.support.spooler_yield()
        await message.content()
        if act in (Act.SUCCEED, Act.HOG, Act.HOG_YIELDING):
            results = [RecipientResult.delivered(r, "scripted: delivered") for r in rcpts]
        elif act is Act.FIRST_ONLY:
            results = [RecipientResult.delivered(rcpts[0], "scripted: delivered")]
        elif act is Act.FAIL_TEMP:
            results = [
                RecipientResult.deferred(r, "scripted: try later", status="4.4.1") for r in rcpts
            ]
        elif act is Act.FAIL_PERM:
            results = [
                RecipientResult.failed(r, "scripted: no such user", status="5.1.1") for r in rcpts
            ]
        else:
            results = []
        if results:
            await self.support.status_recips(message, results)
            for r in results:
                if r.outcome.value == "delivered":
                    self.script.sent.append((message.ref, r.index))

    async def end_message(self, message: OutboundMessage) -> EndFlags:
        self._record("end_message", message.ref)
        act = getattr(self, "_act", Act.SUCCEED)
        return {
            Act.DEFER: EndFlags.DONT_RESEND,
            Act.RESEND_LATER: EndFlags.RESEND_LATER,
            Act.RESEND_NOW: EndFlags.RESEND_NOW,
        }.get(act, EndFlags.SENT)

    async def poll(self) -> int:
        self._record("poll")
        return len(self.script.inbound)

    async def start_message(self, message: InboundWriter) -> None:
        self._record("start_message", message.ref)
        if not self.script.inbound:
            return
        data = self.script.inbound[0]
        half = len(data) // 2
        await message.write(data[:half])
        await message.write(data[half:])
        if self.script.inbound_state_key:
            done = int(self.support.profile_section().get(self.script.inbound_state_key, 0))
            message.set_state(self.script.inbound_state_key, done + 1)
        if self.script.fail_inbound_once and not self._inbound_failed:
            self._inbound_failed = True
            raise ScriptedError("scripted failure in start_message after writing")
        self.script.inbound.pop(0)

    async def idle(self) -> None:
        self._record("idle")

    async def flush_queues(self, flags: FlushFlags) -> None:
        self._record("flush_queues", FlushFlags(flags))
        if self.script.flush_sets_bits:
            bits = StatusCode.NONE
            if flags & FlushFlags.UPLOAD:
                bits |= StatusCode.OUTBOUND_FLUSH
            if flags & FlushFlags.DOWNLOAD:
                bits |= StatusCode.INBOUND_FLUSH
            self.support.modify_status_row(set_bits=bits)

    async def validate_state(self, flags: ValidateFlags) -> None:
        self._record("validate_state", ValidateFlags(flags))

    def status_object(self) -> Mapping[str, Any]:
        self._record("status_object")
        return {"scripted": True}

    async def logoff(self, flags: LogoffFlags) -> None:
        self._record("logoff", LogoffFlags(flags))


class ScriptedProvider:
    """A provider whose sessions follow ``config["script"]`` (a :class:`Script`)."""

    display_name = "Scripted test provider"

    def __init__(self) -> None:
        self.sessions: list[ScriptedSession] = []
        self.shut_down = False

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> ScriptedSession:
        script = config.get("script")
        if not isinstance(script, Script):
            script = Script()
        script.calls.append(("logon", LogonFlags(flags)))
        if "logon" in script.raise_in:
            raise ScriptedError("scripted failure in logon")
        if script.create_row:
            support.modify_status_row(
                update=False, status_code=StatusCode.AVAILABLE, status_string="scripted"
            )
        session = ScriptedSession(support, script)
        self.sessions.append(session)
        return session

    async def shutdown(self) -> None:
        self.shut_down = True
        for s in self.sessions:
            s.script.calls.append(("shutdown", None))
