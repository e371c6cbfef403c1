"""The flush protocol (src/spoolbox/_core/flush.py), through Spooler.flush and its
handle: the *_FLUSH bits and END/BEGIN notifications in order, exactly once each;
transport order; upload and download; per-transport and whole cancels; the progress a
flush publishes; a flush a provider starts with a status bit; the retry of deferred
mail; the report.  Expected values are written out here (message counts and sizes,
flag sets, notification sequences), not read from the code under test.  Nothing is
timed: progress is checked by counting the updates published while a message hangs."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from helpers import FAST, message, spooler, transport, until

from spoolbox import MessageState, Policy, Spooler, TransportConfig
from spoolbox.contract import InboundWriter, LogonFlags, Support
from spoolbox.model import FlushFlags, LogonCaps, Progress, StatusCode, TransportNotifyFlags
from spoolbox.status import StatusChange
from spoolbox.testing import Act, Script, ScriptedProvider, ScriptedSession

F = FlushFlags
FLUSH_NOTES = (
    TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH
    | TransportNotifyFlags.END_OUTBOUND_FLUSH
    | TransportNotifyFlags.BEGIN_INBOUND_FLUSH
    | TransportNotifyFlags.END_INBOUND_FLUSH
)
#: What helpers.message() carries, and so what an upload flush counts per message.
CONTENT = b"From: alice@example.org\r\nSubject: test\r\n\r\nhello\r\n"
INBOUND = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond!\r\n"]


def flush_notes(script: Script) -> list[TransportNotifyFlags]:
    return [d for c, d in script.calls if c == "transport_notify" and d & FLUSH_NOTES]


def flush_calls(script: Script) -> list[F]:
    return [d for c, d in script.calls if c == "flush_queues"]


class Recorder:
    """Every change of the rows, in order: (row, bits set, bits cleared, progress)."""

    def __init__(self, sp: Spooler) -> None:
        self.changes: list[StatusChange] = []
        self.remove = sp.status.add_observer(self.changes.append)

    def bits(self, mask: StatusCode) -> list[tuple[str, str, StatusCode]]:
        out = []
        for c in self.changes:
            if c.bits_set & mask:
                out.append((c.name, "on", c.bits_set & mask))
            if c.bits_cleared & mask:
                out.append((c.name, "off", c.bits_cleared & mask))
        return out

    def progress(self, name: str) -> list[Progress]:
        return [
            c.new.progress
            for c in self.changes
            if c.name == name and c.new is not None and c.new.progress is not None
        ]


async def test_upload_then_download_bits_notes_progress_and_report_exactly() -> None:
    script = Script(
        ("SMTP",),
        capabilities=LogonCaps.SP_POLL,
        inbound=list(INBOUND),
        flush_sets_bits=False,
    )
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            ids = [(await sp.submit(message(f"SMTP:u{i}@x{i}.org"))).id for i in range(3)]
            rec = Recorder(sp)
            t0 = time.perf_counter()
            handle = sp.start_flush()
            assert handle.current is None and handle.transports == ["smtp"]
            report = await handle
            took = time.perf_counter() - t0
            assert handle.done() and handle.current is None
        for i in ids:
            assert await sp.store.state_of(i, now=sp.clock.now()) is MessageState.SENT
        host = sp.host("smtp")
        row = sp.status["smtp"]
    assert [r.transport for r in report.results] == ["smtp"]
    assert not report.cancelled
    result = report.for_transport("smtp")
    assert result.uploaded == 3
    assert result.downloaded == 2
    assert result.bytes == 3 * len(CONTENT) + sum(len(m) for m in INBOUND)
    assert result.error is None and not result.cancelled
    assert 0 < result.seconds <= took
    with pytest.raises(KeyError) as missing:
        report.for_transport("nosuch")
    assert missing.value.args == ("nosuch",)
    assert flush_calls(script) == [F.UPLOAD | F.DOWNLOAD | F.FORCE]
    assert flush_notes(script) == [
        TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH,
        TransportNotifyFlags.END_OUTBOUND_FLUSH,
        TransportNotifyFlags.BEGIN_INBOUND_FLUSH,
        TransportNotifyFlags.END_INBOUND_FLUSH,
    ]
    # The upload phase's bit, then the download phase's, each set and cleared once.
    assert rec.bits(StatusCode.OUTBOUND_FLUSH | StatusCode.INBOUND_FLUSH) == [
        ("smtp", "on", StatusCode.OUTBOUND_FLUSH),
        ("smtp", "off", StatusCode.OUTBOUND_FLUSH),
        ("smtp", "on", StatusCode.INBOUND_FLUSH),
        ("smtp", "off", StatusCode.INBOUND_FLUSH),
    ]
    progress = rec.progress("smtp")
    up = Progress(done=3, total=3, bytes_done=3 * len(CONTENT), text="Uploaded 3")
    down = Progress(done=2, total=2, bytes_done=sum(len(m) for m in INBOUND), text="Downloaded 2")
    assert up in progress and down in progress
    assert progress.index(up) < progress.index(down)
    assert row.progress is None
    assert not row.status_code & (StatusCode.OUTBOUND_FLUSH | StatusCode.INBOUND_FLUSH)
    assert host.flushing == F.NONE
    assert host.flush_done == 2 and host.flush_bytes == sum(len(m) for m in INBOUND)


async def test_download_without_a_poll_count_publishes_what_it_took() -> None:
    script = Script(("SMTP",), inbound=list(INBOUND), flush_sets_bits=False)
    async with spooler(transport("in", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            rec = Recorder(sp)
            report = await sp.flush(upload=False)
    result = report.for_transport("in")
    assert (result.uploaded, result.downloaded) == (0, 2)
    assert result.bytes == sum(len(m) for m in INBOUND)
    assert flush_calls(script) == [F.DOWNLOAD | F.FORCE]
    assert flush_notes(script) == [
        TransportNotifyFlags.BEGIN_INBOUND_FLUSH,
        TransportNotifyFlags.END_INBOUND_FLUSH,
    ]
    assert rec.bits(StatusCode.OUTBOUND_FLUSH | StatusCode.INBOUND_FLUSH) == [
        ("in", "on", StatusCode.INBOUND_FLUSH),
        ("in", "off", StatusCode.INBOUND_FLUSH),
    ]
    assert Progress(
        done=2, total=2, bytes_done=sum(len(m) for m in INBOUND), text="Downloaded 2"
    ) in rec.progress("in")
    # Three start_message calls: two messages, then one that delivered nothing.
    assert script.names().count("start_message") == 3


async def test_each_transport_flushes_only_the_directions_it_serves() -> None:
    out_only = Script(("SMTP",), capabilities=LogonCaps.SP_POLL, inbound=list(INBOUND))
    in_only = Script(("FAX",), capabilities=LogonCaps.SP_POLL, inbound=list(INBOUND))
    async with spooler(
        transport("out", out_only, inbound=False), transport("in", in_only, outbound=False)
    ) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            report = await sp.flush()
    assert flush_calls(out_only) == [F.UPLOAD | F.FORCE]
    assert flush_calls(in_only) == [F.DOWNLOAD | F.FORCE]
    assert flush_notes(out_only) == [
        TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH,
        TransportNotifyFlags.END_OUTBOUND_FLUSH,
    ]
    assert flush_notes(in_only) == [
        TransportNotifyFlags.BEGIN_INBOUND_FLUSH,
        TransportNotifyFlags.END_INBOUND_FLUSH,
    ]
    assert (report.for_transport("out").uploaded, report.for_transport("out").downloaded) == (1, 0)
    assert (report.for_transport("in").uploaded, report.for_transport("in").downloaded) == (0, 2)
    assert "start_message" not in out_only.names()


async def test_transports_flush_one_after_the_other_in_order() -> None:
    a = Script(("SMTP",), flush_sets_bits=False)
    b = Script(("FAX",), flush_sets_bits=False)
    async with spooler(transport("a", a), transport("b", b)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            await sp.submit(message("FAX:+1555"))
            rec = Recorder(sp)
            report = await sp.flush(download=False)
    assert [r.transport for r in report.results] == ["a", "b"]
    assert [(r.uploaded, r.bytes) for r in report.results] == [(1, len(CONTENT))] * 2
    assert rec.bits(StatusCode.OUTBOUND_FLUSH) == [
        ("a", "on", StatusCode.OUTBOUND_FLUSH),
        ("a", "off", StatusCode.OUTBOUND_FLUSH),
        ("b", "on", StatusCode.OUTBOUND_FLUSH),
        ("b", "off", StatusCode.OUTBOUND_FLUSH),
    ]
    assert flush_calls(a) == flush_calls(b) == [F.UPLOAD | F.FORCE]


async def test_a_flush_right_after_open_waits_for_the_first_logon() -> None:
    script = Script(("SMTP",))
    async with spooler(transport("smtp", script)) as sp:
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            report = await sp.flush(download=False)
    result = report.for_transport("smtp")
    assert result.error is None
    assert result.uploaded == 1


async def test_a_transport_that_is_not_logged_on_reports_its_logon_error() -> None:
    script = Script(("SMTP",), raise_in={"logon"})
    good = Script(("FAX",))
    async with spooler(transport("down", script), transport("good", good)) as sp:
        await sp.wait_ready(timeout=5)
        report = await sp.flush(download=False)
    down = report.for_transport("down")
    assert down.error is not None and "ScriptedError" in down.error
    assert (down.uploaded, down.cancelled) == (0, False)
    assert "flush_queues" not in script.names()
    assert report.for_transport("good").error is None


async def test_a_failing_flush_queues_is_reported_and_the_flush_goes_on() -> None:
    script = Script(("SMTP",), raise_in={"flush_queues"})
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            report = await sp.flush(download=False)
            last_error = sp.host("smtp").last_error
    result = report.for_transport("smtp")
    assert last_error is not None and last_error.startswith("flush_queues raised ScriptedError")
    assert result.error == last_error
    assert result.uploaded == 1


async def test_a_store_error_during_a_flush_is_reported_and_the_next_transport_flushes() -> None:
    a = Script(("SMTP",))
    b = Script(("FAX",))
    async with spooler(transport("a", a), transport("b", b)) as sp:
        await sp.wait_ready(timeout=5)
        original = sp.store.count_claimable

        async def broken(name: str, **kw: Any) -> int:
            if name == "a":
                raise OSError("disk on fire")
            return await original(name, **kw)

        sp.store.count_claimable = broken  # type: ignore[method-assign,assignment]
        with sp.foreground_busy():
            await sp.submit(message("FAX:+1555"))
            report = await sp.flush(download=False)
        row = sp.status["a"]
    assert [r.transport for r in report.results] == ["a", "b"]
    assert report.for_transport("a").error == "OSError: disk on fire"
    assert not report.for_transport("a").cancelled
    assert row.detail == "flush failed: OSError: disk on fire"
    assert report.for_transport("b").uploaded == 1


async def test_deferred_mail_is_retried_once_and_a_new_deferral_ends_the_flush() -> None:
    script = Script(("SMTP",), submit=[Act.FAIL_TEMP] * 3 + [Act.SUCCEED])
    async with spooler(transport("smtp", script)) as sp:
        first = await sp.submit(message("SMTP:a@x1.org"))
        await sp.wait_for(first.id, [MessageState.DEFERRED], timeout=5)
        second = await sp.submit(message("SMTP:b@x2.org"))
        await sp.wait_for(second.id, [MessageState.DEFERRED], timeout=5)
        with sp.foreground_busy():
            third = await sp.submit(message("SMTP:c@x3.org"))
            async with asyncio.timeout(5):
                report = await sp.flush(download=False)
        states = [await sp.store.state_of(i.id, now=sp.clock.now()) for i in (first, second, third)]
        recs = [(await sp.store.recipients(i.id))[0] for i in (first, second, third)]
    # The flush made the two deferred messages ready once: each had one more attempt;
    # the first deferred again (retry_base 10 s later) and the flush ended without it.
    assert script.names().count("submit_message") == 5
    assert report.for_transport("smtp").uploaded == 3
    assert sorted(s.value for s in states).count(MessageState.SENT.value) == 2
    assert sorted(r.attempts for r in recs) == [1, 2, 2]


async def test_cancels_per_transport_skip_or_stop_one_and_leave_the_others() -> None:
    a = Script(("SMTP",), submit=[Act.HANG])
    b = Script(("FAX",))
    c = Script(("X400",))
    async with spooler(transport("a", a), transport("b", b), transport("c", c)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            hang = await sp.submit(message("SMTP:bob@example.org"))
            await sp.submit(message("FAX:+1555"))
            await sp.submit(message("X400:someone"))
            handle = sp.start_flush(download=False)
            await until(lambda: "submit_message" in a.names(), what="a's message hangs")
            assert handle.current == "a"
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert "flush" in names and "a-flush-progress" in names
            handle.cancel("b")  # not its turn yet: skipped, a goes on
            version = sp.status["a"].version
            await until(lambda: sp.status["a"].version > version + 1, what="a's row moves on")
            handle.cancel("c")
            assert handle.current == "a" and not handle.done()
            assert sp.status["a"].status_code & StatusCode.OUTBOUND_FLUSH
            handle.cancel("a")
            report = await handle
            host_a = sp.host("a")
            await sp.cancel(hang.id)
    assert not report.cancelled
    assert [(r.transport, r.cancelled) for r in report.results] == [
        ("a", True),
        ("b", True),
        ("c", True),
    ]
    assert all(r.uploaded == 0 and r.error is None for r in report.results)
    assert flush_calls(b) == flush_calls(c) == []
    # a heard the end of its flush once, and nothing of a download.
    assert flush_notes(a) == [
        TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH,
        TransportNotifyFlags.END_OUTBOUND_FLUSH,
    ]
    assert host_a.flushing == F.NONE


async def test_a_skipped_transport_between_others_does_not_end_the_flush() -> None:
    a = Script(("SMTP",))
    b = Script(("FAX",))
    c = Script(("X400",))
    async with spooler(transport("a", a), transport("b", b), transport("c", c)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("X400:someone"))
            handle = sp.start_flush(download=False)
            handle.cancel("b")
            report = await handle
    assert [(r.transport, r.cancelled) for r in report.results] == [
        ("a", False),
        ("b", True),
        ("c", False),
    ]
    assert report.for_transport("c").uploaded == 1
    assert flush_calls(b) == []


async def test_cancelling_the_whole_flush_returns_the_report_so_far() -> None:
    a = Script(("SMTP",), submit=[Act.HANG])
    b = Script(("FAX",))
    async with spooler(transport("a", a), transport("b", b)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            hang = await sp.submit(message("SMTP:bob@example.org"))
            handle = sp.start_flush()
            await until(lambda: "submit_message" in a.names(), what="a's message hangs")
            handle.cancel()
            report = await handle  # the report, not CancelledError
            row = sp.status["a"]
            host_a = sp.host("a")
            await sp.cancel(hang.id)
    assert report.cancelled is True
    assert [(r.transport, r.cancelled) for r in report.results] == [("a", True)]
    assert flush_calls(b) == []
    # flush_queues was told of both phases, so both end (the download never began).
    assert flush_calls(a) == [F.UPLOAD | F.DOWNLOAD | F.FORCE]
    assert flush_notes(a) == [
        TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH,
        TransportNotifyFlags.END_OUTBOUND_FLUSH,
        TransportNotifyFlags.END_INBOUND_FLUSH,
    ]
    assert not row.status_code & StatusCode.OUTBOUND_FLUSH and row.progress is None
    assert host_a.flushing == F.NONE


def _elapsed(text: str) -> float:
    found = re.fullmatch(r".* \((\d+\.\d) s\)", text)
    assert found, text
    return float(found.group(1))


async def test_progress_repeats_while_a_message_hangs_and_counts_what_was_added() -> None:
    """Counted, not timed: with progress_interval 0.05 s the ticker publishes again
    and again while the one message hangs; its text says what the phase is at."""
    assert Policy().progress_interval <= 0.25  # at least four times a second by default
    a = Script(("SMTP",), submit=[Act.SUCCEED, Act.HANG, Act.SUCCEED], flush_sets_bits=False)
    pol = replace(FAST, progress_interval=0.05)
    async with spooler(transport("a", a), policy=pol) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:carol@x2.org"))
            hang = await sp.submit(message("SMTP:bob@x1.org"))
            rec = Recorder(sp)
            t0 = time.perf_counter()
            handle = sp.start_flush(download=False)
            await until(lambda: a.names().count("submit_message") == 2, what="a message hangs")

            def ticks(prefix: str) -> list[Progress]:
                return [p for p in rec.progress("a") if p.text.startswith(prefix)]

            await until(lambda: len(ticks("Uploading 1 of 2 (")) >= 3, what="three ticks")
            # A message submitted during the flush joins its total.
            await sp.submit(message("SMTP:dave@x3.org"))
            await until(lambda: len(ticks("Uploading 1 of 3 (")) >= 2, what="total 3")
            took = time.perf_counter() - t0
            for p in ticks("Uploading 1 of"):
                assert p.done == 1 and p.bytes_done == len(CONTENT)
                assert p.total in (2, 3)
                assert 0 <= _elapsed(p.text) <= took + 0.05
            # The transport ends the flush by clearing its bit: the phase ends with
            # what it did (nothing) of the total it knew.
            sp.host("a").support.modify_status_row(clear_bits=StatusCode.OUTBOUND_FLUSH)
            report = await handle
            final = rec.progress("a")[-1]
            row = sp.status["a"]
            await sp.cancel(hang.id)
    assert final == Progress(done=1, total=3, bytes_done=len(CONTENT), text="Uploaded 1")
    assert report.for_transport("a").uploaded == 1
    assert not report.for_transport("a").cancelled
    assert flush_notes(a) == [
        TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH,
        TransportNotifyFlags.END_OUTBOUND_FLUSH,
    ]
    assert row.progress is None


async def test_a_provider_starts_a_download_flush_by_setting_its_bit() -> None:
    script = Script(("SMTP",), capabilities=LogonCaps.SP_POLL, inbound=list(INBOUND))
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():  # the background lane would not take them now
            sp.host("smtp").support.modify_status_row(set_bits=StatusCode.INBOUND_FLUSH)
            await until(lambda: not script.inbound, what="both messages taken")
            await until(
                lambda: TransportNotifyFlags.END_INBOUND_FLUSH in flush_notes(script),
                what="the end of the flush",
            )
            row = sp.status["smtp"]
            host = sp.host("smtp")
            await until(lambda: host.flushing == F.NONE, what="flush over")
    assert flush_calls(script) == [F.DOWNLOAD | F.NO_UI]
    assert flush_notes(script) == [
        TransportNotifyFlags.BEGIN_INBOUND_FLUSH,
        TransportNotifyFlags.END_INBOUND_FLUSH,
    ]
    assert not row.status_code & StatusCode.INBOUND_FLUSH


@dataclass
class GatedScript(Script):
    """Each start_message waits for one ``passes.release()``; ``entered`` counts the
    calls that reached the gate."""

    passes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    entered: int = 0


class GatedSession(ScriptedSession):
    async def start_message(self, message: InboundWriter) -> None:
        script = self.script
        assert isinstance(script, GatedScript)
        script.entered += 1
        await script.passes.acquire()
        await super().start_message(message)


class GatedProvider(ScriptedProvider):
    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> ScriptedSession:
        plain = await super().logon(support, config, flags)
        gated = GatedSession(support, plain.script)
        self.sessions[-1] = gated
        return gated


async def test_a_download_cancelled_for_its_transport_ends_its_phase_once() -> None:
    script = GatedScript(("SMTP",), capabilities=LogonCaps.SP_POLL, inbound=list(INBOUND))
    cfg = TransportConfig("in", GatedProvider, options={"script": script})
    async with spooler(cfg) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            rec = Recorder(sp)
            handle = sp.start_flush()
            await until(lambda: script.entered == 1, what="start_message at the gate")
            assert sp.status["in"].status_code & StatusCode.INBOUND_FLUSH
            handle.cancel("in")
            report = await handle
            row = sp.status["in"]
            host = sp.host("in")
    assert not report.cancelled
    assert [(r.transport, r.cancelled, r.downloaded) for r in report.results] == [("in", True, 0)]
    assert flush_notes(script) == [
        TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH,
        TransportNotifyFlags.END_OUTBOUND_FLUSH,
        TransportNotifyFlags.BEGIN_INBOUND_FLUSH,
        TransportNotifyFlags.END_INBOUND_FLUSH,
    ]
    assert not row.status_code & (StatusCode.INBOUND_FLUSH | StatusCode.OUTBOUND_FLUSH)
    assert row.progress is None
    assert host.flushing == F.NONE
    assert len(script.inbound) == 2  # nothing taken, nothing lost
    # The upload phase had nothing to do, and said so.
    assert Progress(done=0, total=0, bytes_done=0, text="Uploaded 0") in rec.progress("in")


async def test_download_progress_counts_each_message_and_a_total_that_grows() -> None:
    script = GatedScript(("SMTP",), capabilities=LogonCaps.SP_POLL, inbound=list(INBOUND))
    third = b"Subject: three\r\n\r\nthird message\r\n"
    cfg = TransportConfig("in", GatedProvider, options={"script": script})
    pol = replace(FAST, progress_interval=0.05)
    async with spooler(cfg, policy=pol) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))  # the upload phase counts 1
            rec = Recorder(sp)
            handle = sp.start_flush()

            async def tick(n: int, text: str, bytes_done: int, total: int) -> None:
                await until(lambda: script.entered == n, what=f"start_message {n} waits")

                def seen() -> bool:
                    return any(
                        p.text.startswith(text + " (")
                        and (p.done, p.total, p.bytes_done) == (n - 1, total, bytes_done)
                        for p in rec.progress("in")
                    )

                await until(seen, what=text)

            await tick(1, "Downloading 0 of 2", 0, 2)
            script.passes.release()
            await tick(2, "Downloading 1 of 2", len(INBOUND[0]), 2)
            script.inbound.append(third)  # one more than the poll counted
            script.passes.release()
            await tick(3, "Downloading 2 of 2", len(INBOUND[0]) + len(INBOUND[1]), 2)
            script.passes.release()
            everything = sum(len(m) for m in INBOUND) + len(third)
            await tick(4, "Downloading 3 of 3", everything, 3)
            script.passes.release()  # the fourth call finds nothing: the phase ends
            report = await handle
    result = report.for_transport("in")
    assert (result.uploaded, result.downloaded) == (1, 3)
    assert result.bytes == len(CONTENT) + everything
    assert rec.progress("in")[-1] == Progress(
        done=3, total=3, bytes_done=everything, text="Downloaded 3"
    )


async def test_a_provider_ends_a_download_by_clearing_its_bit() -> None:
    script = GatedScript(("SMTP",), inbound=[*INBOUND, INBOUND[0]])
    cfg = TransportConfig("in", GatedProvider, options={"script": script})
    pol = replace(FAST, progress_interval=0.05)
    async with spooler(cfg, policy=pol) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            rec = Recorder(sp)
            handle = sp.start_flush()

            def tick(text: str, done: int, bytes_done: int) -> bool:
                return any(
                    p.text.startswith(text + " (")
                    and (p.done, p.total, p.bytes_done) == (done, None, bytes_done)
                    for p in rec.progress("in")
                )

            # Without SP_POLL the download's total is unknown: "Downloading n".
            await until(lambda: script.entered == 1, what="start_message 1 waits")
            await until(lambda: tick("Downloading 0", 0, 0), what="tick 0")
            script.passes.release()
            await until(lambda: script.entered == 2, what="start_message 2 waits")
            await until(lambda: tick("Downloading 1", 1, len(INBOUND[0])), what="tick 1")
            sp.host("in").support.modify_status_row(clear_bits=StatusCode.INBOUND_FLUSH)
            script.passes.release()  # the message under way is taken, then it stops
            report = await handle
            entered = script.entered
    assert entered == 2
    assert len(script.inbound) == 1
    assert report.for_transport("in").downloaded == 2
    assert "poll" not in script.names()
    assert rec.progress("in")[-1] == Progress(
        done=2, total=2, bytes_done=sum(len(m) for m in INBOUND), text="Downloaded 2"
    )


async def test_a_batching_session_downloads_in_one_batch_and_publishes_its_count() -> None:
    script = Script(
        ("SMTP",),
        capabilities=LogonCaps.SP_POLL | LogonCaps.SP_INBOUND_BATCH,
        inbound=list(INBOUND),
    )
    async with spooler(transport("in", script)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            rec = Recorder(sp)
            report = await sp.flush(upload=False)
    assert report.for_transport("in").downloaded == 2
    # One batch: two messages and the call that found nothing, committed together.
    assert script.names().count("start_message") == 3
    assert rec.bits(StatusCode.INBOUND_ACTIVE) == [
        ("in", "on", StatusCode.INBOUND_ACTIVE),
        ("in", "off", StatusCode.INBOUND_ACTIVE),
    ]
    assert rec.progress("in")[-1] == Progress(
        done=2, total=2, bytes_done=sum(len(m) for m in INBOUND), text="Downloaded 2"
    )


async def test_a_flush_cancelled_before_it_starts_reports_cancelled() -> None:
    script = Script(("SMTP",))
    async with spooler(transport("smtp", script)) as sp:
        await sp.wait_ready(timeout=5)
        handle = sp.start_flush()
        handle.cancel()
        report = await handle
    assert report.cancelled is True
    assert report.results == []
    assert flush_calls(script) == []


async def test_closing_the_spooler_ends_a_running_flush_with_what_it_did() -> None:
    a = Script(("SMTP",), submit=[Act.HANG])
    b = Script(("FAX",))
    async with spooler(transport("a", a), transport("b", b)) as sp:
        await sp.wait_ready(timeout=5)
        with sp.foreground_busy():
            await sp.submit(message("SMTP:bob@example.org"))
            await sp.submit(message("FAX:+1555"))
            handle = sp.start_flush(download=False)
            await until(lambda: "submit_message" in a.names(), what="a's message hangs")
    assert handle.done()
    report = await handle
    # The sessions stop: a's phase ends with nothing sent, b is no longer logged on.
    assert not report.cancelled
    assert [(r.transport, r.cancelled, r.uploaded) for r in report.results] == [
        ("a", False, 0),
        ("b", False, 0),
    ]
    assert report.for_transport("a").error is None
    assert report.for_transport("b").error == "transport is not logged on"
    assert flush_calls(b) == []


@dataclass
class SlowLogonScript(Script):
    """The logon waits at ``logon_gate``; ``logon_entered`` is set when it gets there."""

    logon_gate: asyncio.Event = field(default_factory=asyncio.Event)
    logon_entered: asyncio.Event = field(default_factory=asyncio.Event)


class SlowLogonProvider(ScriptedProvider):
    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> ScriptedSession:
        script = config["script"]
        assert isinstance(script, SlowLogonScript)
        script.logon_entered.set()
        await script.logon_gate.wait()
        return await super().logon(support, config, flags)


async def test_a_flush_started_during_a_slow_first_logon_waits_for_it() -> None:
    """The flush starts while the first logon is still at its gate: it must wait for
    the logon instead of reporting "not logged on" at once."""
    script = SlowLogonScript(("SMTP",))
    config = TransportConfig("smtp", SlowLogonProvider, options={"script": script})
    async with spooler(config) as sp:
        async with asyncio.timeout(5):
            await script.logon_entered.wait()
        assert not sp.host("smtp").online
        await sp.submit(message("SMTP:bob@example.org"))
        handle = sp.start_flush(download=False)
        await until(lambda: handle.current == "smtp", what="the flush reaches the transport")
        script.logon_gate.set()
        report = await handle
    result = report.for_transport("smtp")
    assert result.error is None
    assert result.uploaded == 1
    assert script.names().count("logon") == 1
