"""The flush protocol's rules that test_flush_protocol.py leaves unguarded (issue #21,
the survivors of ``scripts/mutation.py flush``): cancels that meet (a transport's
part and the whole flush, a user's cancel and the deadline), a cancel while the part
asks ``flush_queues`` or counts what is still queued, a flush ended by the spooler's
shutdown, the progress between a phase's start and its first count, and what a
part reports of a transport that is not logged on.

Every wait is on an event a gated provider call or a gated store call sets, or on a
fake clock; expected values are written out by hand."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from helpers import FAST, SLOW_TIMERS, message, spooler, until
from test_flush_protocol import SlowLogonProvider, SlowLogonScript

from spoolbox import Spooler, TransportConfig
from spoolbox.contract import (
    FlushFlags,
    InboundWriter,
    LogonCaps,
    LogonFlags,
    OutboundMessage,
    SubmitFlags,
    Support,
    TransportNotifyFlags,
)
from spoolbox.model import Progress, StatusCode
from spoolbox.status import StatusChange
from spoolbox.testing import Act, FakeClock, Script, ScriptedProvider, ScriptedSession

N = TransportNotifyFlags
F = FlushFlags
FLUSH_NOTES = (
    N.BEGIN_OUTBOUND_FLUSH | N.END_OUTBOUND_FLUSH | N.BEGIN_INBOUND_FLUSH | N.END_INBOUND_FLUSH
)
BITS = StatusCode.OUTBOUND_FLUSH | StatusCode.INBOUND_FLUSH
#: What helpers.message() carries.
CONTENT = b"From: alice@example.org\r\nSubject: test\r\n\r\nhello\r\n"


@dataclass
class GateScript(Script):
    """A script whose calls named in ``gated`` stop at a gate: "flush_queues",
    "submit_message", "start_message", or a flush notification's name such as
    "END_OUTBOUND_FLUSH".  ``arrived[name]`` counts the calls that got to the gate;
    ``let_through(name, n)`` lets ``n`` more through, ``open(name)`` all.
    ``finished`` lists the flush notifications that returned (a cancelled one is in
    ``script.calls`` but not here)."""

    gated: set[str] = field(default_factory=set)
    arrived: dict[str, int] = field(default_factory=dict)
    passes: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    finished: list[TransportNotifyFlags] = field(default_factory=list)

    def _passes(self, name: str) -> asyncio.Semaphore:
        return self.passes.setdefault(name, asyncio.Semaphore(0))

    def let_through(self, name: str, n: int = 1) -> None:
        for _ in range(n):
            self._passes(name).release()

    def open(self, name: str) -> None:
        """No gate for ``name`` any more; the calls held there go on."""
        self.gated.discard(name)
        self.let_through(name, self.arrived.get(name, 0))

    async def gate(self, name: str) -> None:
        if name in self.gated:
            self.arrived[name] = self.arrived.get(name, 0) + 1
            await self._passes(name).acquire()


class GateSession(ScriptedSession):
    script: GateScript

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        await self.script.gate("submit_message")
        await super().submit_message(message, flags)

    async def flush_queues(self, flags: FlushFlags) -> None:
        await super().flush_queues(flags)
        await self.script.gate("flush_queues")

    async def start_message(self, message: InboundWriter) -> None:
        await self.script.gate("start_message")
        await super().start_message(message)

    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        if flags & FLUSH_NOTES:
            await self.script.gate(str(N(flags).name))
            self.script.finished.append(N(flags))


class GateProvider(ScriptedProvider):
    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> ScriptedSession:
        inner = await super().logon(support, config, flags)
        session = GateSession(support, inner.script)
        self.sessions[-1] = session
        return session


def gated(name: str, script: GateScript) -> TransportConfig:
    return TransportConfig(name, GateProvider, options={"script": script})


def plain(name: str, script: Script) -> TransportConfig:
    return TransportConfig(name, ScriptedProvider, options={"script": script})


def flush_notes(script: Script) -> list[TransportNotifyFlags]:
    return [d for c, d in script.calls if c == "transport_notify" and d & FLUSH_NOTES]


def flush_calls(script: Script) -> list[FlushFlags]:
    return [d for c, d in script.calls if c == "flush_queues"]


async def reached(script: GateScript, name: str, calls: int = 1) -> None:
    """Until ``calls`` calls of ``name`` have got to the gate."""
    await until(lambda: script.arrived.get(name, 0) == calls, what=f"{name} {calls} at its gate")


class StoreGate:
    """Holds the store's ``count_claimable`` calls for one transport at a gate while
    armed: those with ``ignore_retry=True`` (what is still queued after a part) or with
    ``ignore_retry=False`` (the upload phase's counts).  ``calls`` counts the calls that
    reached the gate; each ``passes.release()`` lets one through."""

    def __init__(self, sp: Spooler, transport: str, *, ignore_retry: bool) -> None:
        self.transport = transport
        self.ignore_retry = ignore_retry
        self.armed = False
        self.calls = 0
        self.passes = asyncio.Semaphore(0)
        self._original = sp.store.count_claimable
        sp.store.count_claimable = self._count  # type: ignore[method-assign]

    async def _count(self, name: str, *, now: float, ignore_retry: bool) -> int:
        if self.armed and name == self.transport and ignore_retry is self.ignore_retry:
            self.calls += 1
            await self.passes.acquire()
        return await self._original(name, now=now, ignore_retry=ignore_retry)

    async def reached(self, calls: int) -> None:
        await until(lambda: self.calls == calls, what=f"count_claimable call {calls} held")


class Recorder:
    """The progress a transport's row shows, every change in order; and the changes of
    its bits (``(on|off, bits)``)."""

    def __init__(self, sp: Spooler, name: str) -> None:
        self.progress: list[Progress] = []
        self.bits: list[tuple[str, StatusCode]] = []
        self.name = name
        sp.status.add_observer(self._note)

    def _note(self, change: StatusChange) -> None:
        if change.name != self.name:
            return
        if change.new is not None and change.new.progress is not None:
            self.progress.append(change.new.progress)
        if change.bits_set:
            self.bits.append(("on", change.bits_set))
        if change.bits_cleared:
            self.bits.append(("off", change.bits_cleared))

    def ticks(self, prefix: str) -> list[Progress]:
        """The ticker's updates whose text starts with ``prefix`` and then the time."""
        return [
            p for p in self.progress if re.fullmatch(re.escape(prefix) + r" \(\d+\.\d s\)", p.text)
        ]

    async def tick(self, prefix: str) -> Progress:
        await until(lambda: bool(self.ticks(prefix)), what=f"a tick {prefix!r}")
        return self.ticks(prefix)[-1]


async def test_a_whole_cancel_right_after_a_transports_cancel_ends_the_flush() -> None:
    """Cancelling a's part and then the whole flush: the flush ends there (the next
    transport is not flushed); a's phases still end once each."""
    a = Script(("SMTP",), submit=[Act.HANG])
    b = Script(("FAX",))
    async with spooler(plain("a", a), plain("b", b)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            hang = await sp.submit(message("SMTP:bob@example.org"))
            await sp.submit(message("FAX:+1555"))
            handle = sp.start_flush()
            await until(lambda: "submit_message" in a.names(), what="a's message hangs")
            handle.cancel("a")
            handle.cancel()
            report = await handle
            row = sp.status["a"]
            await sp.cancel(hang.id)
    assert report.cancelled is True
    assert [(r.transport, r.cancelled) for r in report.results] == [("a", True)]
    assert flush_calls(b) == []
    assert flush_notes(a) == [N.BEGIN_OUTBOUND_FLUSH, N.END_OUTBOUND_FLUSH, N.END_INBOUND_FLUSH]
    assert not row.status_code & BITS


async def test_the_deadline_does_not_cut_short_a_part_that_a_cancel_is_ending() -> None:
    """On a fake clock: the user cancels a's part, whose END_OUTBOUND_FLUSH is still
    with the provider when the deadline passes.  The deadline marks the report timed
    out but does not cancel the part a second time: the notification returns and the
    bit is cleared."""
    a = GateScript(("SMTP",), submit=[Act.HANG], gated={"END_OUTBOUND_FLUSH"})
    clock = FakeClock()
    async with spooler(gated("a", a), policy=SLOW_TIMERS, clock=clock) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            hang = await sp.submit(message("SMTP:bob@example.org"))
            handle = sp.start_flush(download=False, deadline=30.0)
            await until(lambda: "submit_message" in a.names(), what="a's message hangs")
            handle.cancel("a")
            await reached(a, "END_OUTBOUND_FLUSH")
            await clock.advance(31.0)
            await until(lambda: handle.report.timed_out, what="the deadline")
            a.open("END_OUTBOUND_FLUSH")
            report = await asyncio.wait_for(handle.wait(), 5)
            row = sp.status["a"]
            flushing = sp.host("a").flushing
            await sp.cancel(hang.id)
    assert a.finished == [N.BEGIN_OUTBOUND_FLUSH, N.END_OUTBOUND_FLUSH]
    assert not row.status_code & BITS and row.progress is None
    assert flushing == F.NONE
    assert report.timed_out and not report.cancelled
    [result] = report.results
    assert (result.transport, result.cancelled, result.timed_out) == ("a", True, False)


async def test_a_cancel_while_a_part_counts_what_is_left_changes_nothing() -> None:
    """a's part is over and the flush counts what is still queued for it when the user
    cancels a: too late to cancel anything, and no error; b flushes next."""
    a = Script(("SMTP",))
    b = Script(("FAX",))
    async with spooler(plain("a", a), plain("b", b)) as sp:
        await sp.wait_ready(timeout=5)
        gate = StoreGate(sp, "a", ignore_retry=True)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            await sp.submit(message("FAX:+1555"))
            gate.armed = True
            handle = sp.start_flush(download=False)
            await gate.reached(1)
            assert handle.current == "a"
            handle.cancel("a")
            gate.armed = False
            gate.passes.release()
            report = await handle
    assert [(r.transport, r.cancelled, r.uploaded, r.error) for r in report.results] == [
        ("a", False, 1, None),
        ("b", False, 1, None),
    ]
    assert not report.cancelled


async def test_a_part_cancelled_in_flush_queues_ends_both_phases_and_counts_nothing() -> None:
    """The user cancels a's part while its flush_queues runs: the phases it was told of
    end (END_* once each, no BEGIN), nothing is counted as uploaded (an earlier flush's
    count is not reported again), and the report says cancelled, not failed."""
    a = GateScript(("SMTP",))
    async with spooler(gated("a", a)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            first = await sp.flush(download=False)
            a.calls.clear()
            a.gated.add("flush_queues")
            handle = sp.start_flush()
            await reached(a, "flush_queues")
            handle.cancel("a")
            report = await handle
            row = sp.status["a"]
            flushing = sp.host("a").flushing
    assert first.for_transport("a").uploaded == 1
    assert flush_calls(a) == [F.UPLOAD | F.DOWNLOAD | F.FORCE]
    assert flush_notes(a) == [N.END_OUTBOUND_FLUSH, N.END_INBOUND_FLUSH]
    [result] = report.results
    assert (result.cancelled, result.error, result.uploaded, result.bytes) == (True, None, 0, 0)
    assert not report.cancelled
    assert flushing == F.NONE
    assert not row.status_code & BITS and row.progress is None


async def test_a_transport_not_logged_on_reports_how_long_its_part_waited() -> None:
    """The part of a transport whose logon failed ends at once with the logon error;
    its duration is counted from its start, within the flush's own."""
    down = Script(("SMTP",), raise_in={"logon"})
    async with spooler(plain("down", down)) as sp:
        await sp.wait_ready(timeout=5)
        t0 = time.perf_counter()
        report = await sp.flush(download=False)
        took = time.perf_counter() - t0
    [result] = report.results
    assert result.error == "logon failed: ScriptedError: scripted failure in logon"
    assert 0 < result.seconds <= took


async def test_closing_the_spooler_cancels_a_flush_held_in_the_store() -> None:
    """The spooler closes while a flush waits for the store (its upload phase counts
    the queue): the flush task is cancelled with the others and its report says so,
    whether or not a's session is still there to hear the end of the phase; the
    transports after the one under way are not flushed."""
    a = Script(("SMTP",))
    b = Script(("FAX",))
    async with spooler(plain("a", a), plain("b", b)) as sp:
        await sp.wait_ready(timeout=5)
        gate = StoreGate(sp, "a", ignore_retry=False)
        with sp.foreground_busy():
            gate.armed = True
            handle = sp.start_flush(download=False)
            await gate.reached(1)
    assert handle.done()
    report = await handle
    assert report.cancelled is True
    assert [(r.transport, r.cancelled, r.timed_out, r.error) for r in report.results] == [
        ("a", True, False, None)
    ]
    assert flush_calls(b) == []
    assert flush_notes(a)[:1] == [N.BEGIN_OUTBOUND_FLUSH]


async def test_a_message_cancelled_during_the_upload_keeps_the_total_it_was_counted_in() -> None:
    """The total of an upload never shrinks: of the two messages counted, one hangs
    with the provider and the other, still queued, is cancelled; then the hanging one
    is cancelled too (it ends, and counts as done).  "Uploaded 1" of the 2 counted."""
    a = Script(("SMTP",), submit=[Act.HANG], flush_sets_bits=False)
    async with spooler(plain("a", a), policy=replace(FAST, progress_interval=0.05)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            hang = await sp.submit(message("SMTP:bob@example.org"))
            queued = await sp.submit(message("SMTP:carol@example.net"))
            rec = Recorder(sp, "a")
            handle = sp.start_flush(download=False)
            await until(lambda: "submit_message" in a.names(), what="a's message hangs")
            await rec.tick("Uploading 0 of 2")
            await sp.cancel(queued.id)
            await sp.cancel(hang.id)
            report = await handle
    assert a.names().count("submit_message") == 1
    assert rec.progress[-1] == Progress(done=1, total=2, bytes_done=len(CONTENT), text="Uploaded 1")
    assert report.for_transport("a").uploaded == 1


async def test_the_progress_before_a_phase_begins_and_before_its_first_count() -> None:
    """Ticks land while the provider hears BEGIN_OUTBOUND_FLUSH, while the store counts
    the upload's total, and while the loop counts again: each shows the phase as far as
    it got ("Starting", then "Uploading" with no total, then the total: none queued)."""
    a = GateScript(("SMTP",), gated={"BEGIN_OUTBOUND_FLUSH"}, flush_sets_bits=False)
    pol = replace(FAST, progress_interval=0.05)
    async with spooler(gated("a", a), policy=pol) as sp:
        await sp.wait_ready(timeout=5)
        gate = StoreGate(sp, "a", ignore_retry=False)
        with sp.foreground_busy():
            rec = Recorder(sp, "a")
            handle = sp.start_flush(download=False)
            await reached(a, "BEGIN_OUTBOUND_FLUSH")
            starting = await rec.tick("Starting 0")
            gate.armed = True
            a.open("BEGIN_OUTBOUND_FLUSH")
            await gate.reached(1)  # the phase's total
            begun = await rec.tick("Uploading 0")
            gate.passes.release()
            await gate.reached(2)  # the loop's first count
            counted = await rec.tick("Uploading 0 of 0")
            gate.armed = False
            gate.passes.release()
            report = await handle
    assert (starting.done, starting.total, starting.bytes_done) == (0, None, 0)
    assert (begun.done, begun.total, begun.bytes_done) == (0, None, 0)
    assert (counted.done, counted.total, counted.bytes_done) == (0, 0, 0)
    assert report.for_transport("a").uploaded == 0
    assert rec.progress[-1] == Progress(done=0, total=0, bytes_done=0, text="Uploaded 0")


async def test_a_download_only_flush_shows_its_start_until_the_phase_begins() -> None:
    a = GateScript(
        ("SMTP",),
        gated={"BEGIN_INBOUND_FLUSH"},
        flush_sets_bits=False,
        inbound=[b"x: y\r\n\r\nz\r\n"],
    )
    pol = replace(FAST, progress_interval=0.05)
    async with spooler(gated("a", a), policy=pol) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            rec = Recorder(sp, "a")
            handle = sp.start_flush(upload=False)
            await reached(a, "BEGIN_INBOUND_FLUSH")
            starting = await rec.tick("Starting 0")
            a.open("BEGIN_INBOUND_FLUSH")
            report = await handle
    assert (starting.done, starting.total, starting.bytes_done) == (0, None, 0)
    assert report.for_transport("a").downloaded == 1


async def test_an_upload_ended_by_the_session_stopping_counts_the_message_it_finished() -> None:
    """On a fake clock (the upload loop wakes only when a job is settled): the session
    is told to stop while its one message is with the provider; the message is then
    delivered, and the phase ends with it counted."""
    a = GateScript(("SMTP",), gated={"submit_message"}, flush_sets_bits=False)
    clock = FakeClock()
    async with spooler(gated("a", a), policy=SLOW_TIMERS, clock=clock) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            rec = Recorder(sp, "a")
            handle = sp.start_flush(download=False, deadline=60.0)
            await reached(a, "submit_message")
            await rec.tick("Uploading 0 of 1")
            await sp.host("a").stop()
            a.open("submit_message")
            report = await asyncio.wait_for(handle.wait(), 5)
    assert report.for_transport("a").uploaded == 1
    assert Progress(done=1, total=1, bytes_done=len(CONTENT), text="Uploaded 1") in rec.progress


async def test_a_download_waits_between_messages_while_another_session_holds_the_section() -> None:
    """b enters a critical section as a's first message is committed: a's download
    takes no further message (it does not even start collecting one) until b leaves."""
    inbound = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]
    a = Script(("SMTP",), capabilities=LogonCaps.SP_POLL, inbound=list(inbound))
    b = Script(("FAX",))
    pol = replace(FAST, progress_interval=0.05)
    async with spooler(plain("a", a), plain("b", b), policy=pol) as sp:
        await sp.wait_ready(timeout=5)
        section = sp.host("b").support.critical_section()
        original = sp.store.deliver_inbound

        async def deliver(msg: Any, **kw: Any) -> Any:
            entry = await original(msg, **kw)
            await section.__aenter__()  # b enters as a's first message is committed
            sp.store.deliver_inbound = original  # type: ignore[method-assign]
            return entry

        sp.store.deliver_inbound = deliver  # type: ignore[method-assign]
        with sp.foreground_busy():
            rec = Recorder(sp, "a")
            handle = sp.start_flush(upload=False)
            # The loop published the first message's count, then came to the section.
            await rec.tick("Downloading 1 of 2")
            held = (list(rec.bits), a.names().count("start_message"))
            await section.__aexit__(None, None, None)
            report = await handle
    assert held == (
        [
            ("on", StatusCode.INBOUND_FLUSH),
            ("on", StatusCode.INBOUND_ACTIVE),
            ("off", StatusCode.INBOUND_ACTIVE),
        ],
        1,
    )
    assert report.for_transport("a").downloaded == 2


INBOUND = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond!\r\n"]


async def test_a_users_upload_leaves_a_download_the_provider_started_running() -> None:
    """The provider starts a download flush (its bit); while its first message is with
    the provider, the user flushes the same transport's uploads.  The user's part ends
    its own phase only: the download goes on, with its bit, and counts both messages."""
    a = GateScript(("SMTP",), capabilities=LogonCaps.SP_POLL, inbound=list(INBOUND))
    a.gated.add("start_message")
    async with spooler(gated("a", a)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            rec = Recorder(sp, "a")
            host = sp.host("a")
            host.support.modify_status_row(set_bits=StatusCode.INBOUND_FLUSH)
            await reached(a, "start_message")
            user = await sp.flush(transport="a", download=False)
            during = (sp.status["a"].status_code & BITS, host.flushing)
            a.open("start_message")
            await until(lambda: host.flushing == F.NONE, what="the provider's flush ends")
            row = sp.status["a"]
    assert user.for_transport("a").uploaded == 0 and not user.cancelled
    assert during == (StatusCode.INBOUND_FLUSH, F.DOWNLOAD)
    assert flush_calls(a) == [F.DOWNLOAD | F.NO_UI, F.UPLOAD | F.FORCE]
    assert flush_notes(a) == [
        N.BEGIN_INBOUND_FLUSH,
        N.BEGIN_OUTBOUND_FLUSH,
        N.END_OUTBOUND_FLUSH,
        N.END_INBOUND_FLUSH,
    ]
    assert a.inbound == []
    everything = sum(len(m) for m in INBOUND)
    assert Progress(done=2, total=2, bytes_done=everything, text="Downloaded 2") in rec.progress
    assert not row.status_code & BITS


async def test_a_users_download_leaves_an_upload_the_provider_started_running() -> None:
    """The same the other way round: the provider's upload flush has its message with
    the provider while the user flushes the downloads.  The user's part ends its own
    phase only; the upload goes on and counts the message when it is delivered."""
    a = GateScript(("SMTP",), gated={"submit_message"})
    async with spooler(gated("a", a)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            rec = Recorder(sp, "a")
            host = sp.host("a")
            host.support.modify_status_row(set_bits=StatusCode.OUTBOUND_FLUSH)
            await reached(a, "submit_message")
            user = await sp.flush(transport="a", upload=False)
            during = (sp.status["a"].status_code & BITS, host.flushing)
            a.open("submit_message")
            await until(lambda: host.flushing == F.NONE, what="the provider's flush ends")
            row = sp.status["a"]
    result = user.for_transport("a")
    assert (result.downloaded, result.delivered, result.cancelled) == (0, 0, False)
    assert during == (StatusCode.OUTBOUND_FLUSH, F.UPLOAD)
    assert flush_calls(a) == [F.UPLOAD | F.NO_UI, F.DOWNLOAD | F.FORCE]
    assert flush_notes(a) == [
        N.BEGIN_OUTBOUND_FLUSH,
        N.BEGIN_INBOUND_FLUSH,
        N.END_INBOUND_FLUSH,
        N.END_OUTBOUND_FLUSH,
    ]
    assert len(a.sent) == 1
    assert Progress(done=1, total=1, bytes_done=len(CONTENT), text="Uploaded 1") in rec.progress
    assert not row.status_code & BITS


async def test_a_flush_waits_for_a_first_logon_no_longer_than_a_call_may_take() -> None:
    """a's first logon is held at another session's critical section (its time there
    is not counted against it); a flush of a waits for that logon at most
    ``call_timeout`` and then reports a as not logged on, without waiting for b."""
    script = SlowLogonScript(("SMTP",))
    slow = TransportConfig("a", SlowLogonProvider, options={"script": script})
    pol = replace(FAST, call_timeout=1.0, critsec_max=30.0)
    async with spooler(slow, plain("b", Script(("FAX",))), policy=pol) as sp:
        async with asyncio.timeout(5):
            await script.logon_entered.wait()
        await until(lambda: sp.host("b").online, what="b logs on")
        async with sp.host("b").support.critical_section():
            script.logon_gate.set()  # a's logon goes on, to the section's gate
            async with asyncio.timeout(30):
                report = await sp.flush(transport="a")
            online = sp.host("a").online
        await until(lambda: sp.host("a").online, what="a logs on once b leaves")
    assert not online
    [result] = report.results
    assert (result.transport, result.error) == ("a", "transport is not logged on")


async def test_a_flush_that_ends_before_its_deadline_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The deadline's timer is stopped and collected when the flush ends: nothing is
    logged (a failure in the flush task would be logged as one)."""
    script = Script(("SMTP",))
    async with spooler(plain("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with caplog.at_level(logging.DEBUG, logger="spoolbox"), sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            handle = sp.start_flush(download=False, deadline=60.0)
            report = await handle
    assert handle.done() and not (report.cancelled or report.timed_out)
    assert report.for_transport("smtp").uploaded == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
