"""The cooperative scheduler: watchdog, failure isolation, critical sections, flush,
idle gating and status subscribers."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
from helpers import FAST, SLOW_TIMERS, message, spooler, transport

from spoolbox import ManualIdle, MessageState, RecipientState, SubscriberDropped
from spoolbox._core import flush, slices
from spoolbox.model import LogonCaps, StatusCode, TransportNotifyFlags
from spoolbox.testing import Act, Script, scripted


async def test_watchdog_names_a_provider_that_hogs_the_cpu(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hog = Script(submit=[Act.HOG, Act.HOG, Act.HOG], hog_seconds=0.03)
    caplog.set_level(logging.DEBUG, "spoolbox")
    async with spooler(transport("hog", hog), policy=replace(FAST, slice_budget=0.005)) as sp:
        for _ in range(3):
            info = await sp.submit(message("SMTP:bob@example.org"))
            assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        row = sp.status["hog"]
        stats = sp.statistics()
    assert row.counters["slow_slices"] >= 3
    assert row.detail is not None and "over the 5.0 ms budget" in row.detail
    assert re.search(r"a slice ran \d+\.\d\d ms,", row.detail), row.detail
    assert stats["transports"]["hog"]["longest_slice"] >= 0.03
    assert stats["scheduler"]["overruns"] >= 3
    # Internal noise: at DEBUG, and one line a minute however many overruns there were.
    overran = [r for r in caplog.records if "'hog' overran its slice" in r.getMessage()]
    assert [r.levelno for r in overran] == [logging.DEBUG]


async def test_a_provider_that_yields_is_not_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake clock shared by the provider's work loop and the slice meter: each look at
    # the time in the work loop is one tick of work (2**-10 s, so every sum is exact),
    # and nothing else moves it; the slice lengths are then known, not hoped for.
    tick = 2.0**-10
    now = [0.0]

    def work_clock() -> float:
        now[0] += tick
        return now[0]

    monkeypatch.setattr(scripted, "time", SimpleNamespace(perf_counter=work_clock))
    monkeypatch.setattr(slices, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    polite = Script(submit=[Act.HOG_YIELDING], hog_seconds=48 * tick)
    pol = replace(FAST, slice_budget=5 * tick)  # slice_spent() from 4 ticks on
    async with spooler(transport("polite", polite), policy=pol) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        row = sp.status["polite"]
        busy = sp.meter.busy_time
        longest = sp.meter.longest
    # Its 48 ticks of work (49 looks at the clock) were cut into slices of 4 ticks,
    # each inside the 5-tick budget: none is slow, and there are at least 12 of them.
    assert longest == 4 * tick
    assert busy == 49 * tick
    assert row.counters["slow_slices"] == 0
    assert row.counters["slices"] >= 13


async def test_watchdog_thread_names_a_provider_while_it_blocks_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = Script(submit=[Act.HOG], hog_seconds=0.4)
    caplog.set_level(logging.WARNING, "spoolbox.watchdog")
    pol = replace(FAST, watchdog_stall=0.1)
    async with spooler(transport("blocker", blocker), policy=pol) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        assert sp.meter.stalls >= 1
    assert any("'blocker' has held the event loop" in r.getMessage() for r in caplog.records)


async def test_a_provider_raising_everywhere_is_isolated_and_loses_nothing() -> None:
    broken = Script(
        ("SMTP",),
        submit=[Act.RAISE],
        raise_in={"poll", "idle", "start_message", "flush_queues", "validate_state"},
        capabilities=LogonCaps.SP_POLL | LogonCaps.SP_IDLE,
        inbound=[b"Subject: x\r\n\r\n"],
    )
    good = Script(("FAX",))
    async with spooler(transport("broken", broken), transport("good", good)) as sp:
        bad = await sp.submit(message("SMTP:bob@example.org"))
        fine = [await sp.submit(message(f"FAX:+1555{i}")) for i in range(5)]
        for f in fine:
            assert await sp.wait_for(f.id, timeout=5) is MessageState.SENT
        for _ in range(300):
            if sp.status["broken"].status_code & StatusCode.FAILURE:
                break
            await asyncio.sleep(0.01)
        row = sp.status["broken"]
        (rec,) = await sp.store.recipients(bad.id)
        assert row.status_code & StatusCode.FAILURE
        assert "ScriptedError" in (row.detail or "")
        # Its message is kept for a later retry, never lost or failed.
        assert rec.state is RecipientState.QUEUED
        assert rec.attempts >= 1
        assert rec.status == "4.3.0"
        # Flushing it does not hang and reports the failure.
        report = await sp.flush(transport="broken")
        assert report.results[0].transport == "broken"
        assert await sp.validate_state() == {"broken": "error", "good": "ok"}
        # The good transport kept delivering throughout.
        assert len(good.sent) == 5


async def test_failed_logon_is_retried_and_its_messages_wait() -> None:
    script = Script(raise_in={"logon"})
    async with spooler(transport("flaky", script, address_types=("SMTP",))) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_ready(timeout=5)
        row = sp.status["flaky"]
        assert row.status_code & StatusCode.FAILURE
        assert "logon failed" in (row.detail or "")
        script.raise_in.clear()
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert script.names().count("logon") >= 2


async def test_flush_sets_and_clears_bits_reports_progress_and_finishes() -> None:
    clock_script = Script(("SMTP",), submit=[Act.FAIL_TEMP] * 10 + [Act.SUCCEED])
    async with spooler(transport("smtp", clock_script)) as sp:
        # One domain each: a shared domain would be held back by destination back-off.
        ids = [(await sp.submit(message(f"SMTP:u{i}@x{i}.org"))).id for i in range(10)]
        for i in ids:
            await sp.wait_for(i, [MessageState.DEFERRED], timeout=5)
        changes = []
        sub = sp.subscribe(name="test")

        async def watch() -> None:
            async for ch in sub:
                if ch.name == "smtp":
                    changes.append(ch)

        watcher = asyncio.create_task(watch())
        report = await sp.flush(download=False)
        sub.close()
        await watcher
        for i in ids:
            assert await sp.store.state_of(i, now=sp.clock.now()) is MessageState.SENT
    result = report.for_transport("smtp")
    assert result.uploaded == 10 and not result.cancelled
    set_at = [i for i, c in enumerate(changes) if c.bits_set & StatusCode.OUTBOUND_FLUSH]
    cleared_at = [i for i, c in enumerate(changes) if c.bits_cleared & StatusCode.OUTBOUND_FLUSH]
    assert set_at and cleared_at and set_at[0] < cleared_at[-1]
    assert (
        changes[-1].new is not None and not changes[-1].new.status_code & StatusCode.OUTBOUND_FLUSH
    )
    progress = [c.new.progress for c in changes if c.new is not None and c.new.progress]
    assert progress and progress[-1].total == 10
    assert any(p.done == 10 for p in progress)
    flush_calls = [d for c, d in clock_script.calls if c == "flush_queues"]
    notes = [d for c, d in clock_script.calls if c == "transport_notify"]
    assert len(flush_calls) == 1
    assert (
        TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH in notes
        and TransportNotifyFlags.END_OUTBOUND_FLUSH in notes
    )


async def test_flush_progress_is_published_at_least_four_times_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The flush's progress ticker on a fake clock: its sleep (the only one in flush.py)
    # moves the flush's clock on by what it asked for and gives the loop one turn, so
    # each tick publishes a row whose elapsed time differs from the last one's.
    now = [1000.0]
    asked: list[float] = []

    async def fake_sleep(delay: float) -> None:
        asked.append(delay)
        now[0] += delay
        await asyncio.sleep(0)

    class FlushAsyncio:
        """asyncio for flush.py, but with the fake sleep."""

        sleep = staticmethod(fake_sleep)

        def __getattr__(self, name: str) -> object:
            return getattr(asyncio, name)

    monkeypatch.setattr(flush, "asyncio", FlushAsyncio())
    monkeypatch.setattr(flush, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    slow = Script(("SMTP",), submit=[Act.HOG_YIELDING], hog_seconds=0.02)
    async with spooler(transport("slow", slow)) as sp:
        for i in range(3):
            await sp.submit(message(f"SMTP:u{i}@x.org"))
        texts: list[str] = []
        remove = sp.status.add_observer(
            lambda ch: (
                texts.append(ch.new.progress.text)
                if ch.name == "slow" and ch.new is not None and ch.new.progress
                else None
            )
        )
        await sp.flush(download=False)
        remove()
        interval = sp.policy.progress_interval
    assert interval <= 0.25  # at least four times a second
    assert len(asked) >= 2 and set(asked) == {interval}  # the ticker sleeps exactly that
    # A row for every tick, each one interval (of the flush's clock) after the last:
    # the rows say 0.0 s, 0.2 s, 0.4 s ... with none missing.
    ticked = [t.rsplit(" (", 1)[1] for t in texts if t.endswith(" s)")]
    assert sorted(set(ticked), key=lambda e: float(e.removesuffix(" s)"))) == [
        f"{i * interval:.1f} s)" for i in range(len(asked))
    ]


async def test_flush_can_be_cancelled_per_transport_and_as_a_whole() -> None:
    a = Script(("SMTP",), submit=[Act.HANG])
    b = Script(("FAX",))
    async with spooler(transport("a", a), transport("b", b)) as sp:
        with sp.foreground_busy():
            hang = await sp.submit(message("SMTP:bob@example.org"))
            fax = await sp.submit(message("FAX:+1555"))
            handle = sp.start_flush(download=False)
            while "submit_message" not in a.names():
                await asyncio.sleep(0.005)
            handle.cancel("a")
            report = await handle
        assert [r.transport for r in report.results] == ["a", "b"]
        assert report.for_transport("a").cancelled
        assert report.for_transport("b").uploaded == 1
        assert await sp.wait_for(fax.id, timeout=5) is MessageState.SENT
        assert not sp.status["a"].status_code & StatusCode.OUTBOUND_FLUSH
        # The hung message was not touched by the cancel: still in a's hands.
        assert await sp.store.state_of(hang.id, now=sp.clock.now()) is MessageState.ACTIVE
        # Cancelling the caller of flush() cancels the whole flush.
        task = asyncio.create_task(sp.flush(download=False))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not sp.status["a"].status_code & StatusCode.OUTBOUND_FLUSH
        await sp.cancel(hang.id)


async def test_provider_can_start_its_own_flush_by_setting_a_bit() -> None:
    script = Script(("SMTP",), submit=[Act.DEFER, Act.SUCCEED])
    async with spooler(transport("smtp", script), idle=ManualIdle()) as sp:
        await sp.wait_ready(timeout=5)
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        from spoolbox.model import SpoolerNotifyFlags

        assert isinstance(sp.idle, ManualIdle)
        sp.idle.set_busy(True)  # background work held back...
        support = sp.host("smtp").support
        support.spooler_notify(SpoolerNotifyFlags.SENTDEFERRED, None)
        support.modify_status_row(set_bits=StatusCode.OUTBOUND_FLUSH)  # ...but a flush is not
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        assert "flush_queues" in script.names()


async def test_background_work_waits_for_the_foreground() -> None:
    from spoolbox.testing import FakeClock

    clock = FakeClock()
    script = Script(("SMTP",))
    async with spooler(transport("smtp", script), clock=clock, policy=SLOW_TIMERS) as sp:
        await sp.wait_ready(timeout=5)
        # The control: with the foreground idle, this much clock time (and the loop
        # turns the fake clock runs with it) sends a message...
        first = await sp.submit(message("SMTP:bob@example.org"))
        await clock.advance(5)
        assert await sp.store.state_of(first.id, now=clock.now()) is MessageState.SENT
        # ...and with the foreground busy, the same sends nothing.
        with sp.foreground_busy():
            info = await sp.submit(message("SMTP:carol@example.org"))
            await clock.advance(5)
            assert await sp.store.state_of(info.id, now=clock.now()) is MessageState.QUEUED
            assert script.names().count("submit_message") == 1
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT


async def test_a_slow_subscriber_is_dropped_and_delivery_goes_on() -> None:
    async with spooler(transport("smtp", Script())) as sp:
        sub = sp.subscribe(maxsize=3, name="slow")
        ids = [(await sp.submit(message(f"SMTP:u{i}@x.org"))).id for i in range(20)]
        for i in ids:
            assert await sp.wait_for(i, timeout=5) is MessageState.SENT
        assert sub.dropped
        with pytest.raises(SubscriberDropped):
            async for _ in sub:
                pass
        assert sp.status.statistics()["subscribers_dropped"] == 1


async def test_a_raising_observer_is_removed_and_delivery_goes_on() -> None:
    async with spooler(transport("smtp", Script())) as sp:

        def bad(_change: object) -> None:
            raise ValueError("observer bug")

        sp.status.add_observer(bad)
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        assert sp.status.statistics()["subscribers_dropped"] == 1


async def test_blocking_code_runs_in_a_thread() -> None:
    import threading

    async with spooler(transport("smtp", Script())) as sp:
        await sp.wait_ready(timeout=5)
        support = sp.host("smtp").support
        from_loop = threading.Event()

        async def set_from_the_loop() -> None:
            await asyncio.sleep(0)
            from_loop.set()

        def blocking() -> tuple[bool, int]:
            # Blocks until the loop sets the event: run on the loop's thread it could
            # not, and would return False after the timeout.
            return from_loop.wait(10), threading.get_ident()

        setter = asyncio.create_task(set_from_the_loop())
        was_set, thread = await support.run_blocking(blocking)
        await setter
    assert was_set
    assert thread != threading.get_ident()


async def test_support_object_is_dead_after_logoff() -> None:
    from spoolbox.contract import InvalidObject

    async with spooler(transport("smtp", Script())) as sp:
        await sp.wait_ready(timeout=5)
        support = sp.host("smtp").support
    with pytest.raises(InvalidObject):
        await support.spooler_yield()


async def test_destination_backoff_holds_other_recipients_of_a_failing_destination() -> None:
    from spoolbox.testing import FakeClock

    clock = FakeClock()
    script = Script(("SMTP",), submit=[Act.FAIL_TEMP, Act.SUCCEED])
    async with spooler(transport("smtp", script), clock=clock) as sp:
        first = await sp.submit(message("SMTP:a@down.example"))
        await sp.wait_for(first.id, [MessageState.DEFERRED], timeout=5)
        second = await sp.submit(message("SMTP:b@down.example"))
        other = await sp.submit(message("SMTP:c@up.example"))
        assert await sp.wait_for(other.id, timeout=5) is MessageState.SENT
        await sp.wait_for(second.id, [MessageState.DEFERRED], timeout=5)
        (rec,) = await sp.store.recipients(second.id)
        # Held back with the destination, without an attempt of its own.
        assert rec.attempts == 0
        assert rec.retry_at == pytest.approx(clock.now() + FAST.retry_base)
        assert script.names().count("submit_message") == 2  # first and other only
        await clock.advance(FAST.retry_base + 1)
        assert await sp.wait_for(second.id, timeout=5) is MessageState.SENT
        assert await sp.wait_for(first.id, timeout=5) is MessageState.SENT


async def test_one_delay_report_when_the_sender_asked_for_it() -> None:
    from spoolbox import Notify
    from spoolbox.testing import FakeClock

    clock = FakeClock()
    # Timers far apart: advancing the fake clock wakes every sleeper due on the way.
    pol = replace(SLOW_TIMERS, delay_warning_after=25.0, destination_backoff=False)
    script = Script(("SMTP",), submit=[Act.FAIL_TEMP])
    async with spooler(transport("smtp", script), clock=clock, policy=pol) as sp:
        asked = await sp.submit(message("SMTP:a@x.org", notify=Notify.DELAY | Notify.FAILURE))
        silent = await sp.submit(message("SMTP:b@y.org"))
        for _ in range(6):  # retries at +10, +20, +40, +80 ...: well past 25 s
            await sp.wait_for(asked.id, [MessageState.DEFERRED], timeout=5)
            await clock.advance(90)
        reports = [m for m in await sp.store.list_messages(now=clock.now()) if m.info.is_report]
        (rec,) = await sp.store.recipients(asked.id)
        body = await sp.store.read_content(reports[0].info.id) if reports else b""
    assert len(reports) == 1  # one for the sender who asked, none for the other
    assert rec.delay_warned
    assert b"Action: delayed" in body
    assert b"Will-Retry-Until" in body
    _ = silent


async def test_destination_backoff_counts_an_attempt_once_and_keeps_the_transports_delay() -> None:
    from spoolbox.testing import FakeClock

    clock = FakeClock()
    script = Script(("SMTP",), submit=[Act.WAIT, Act.SUCCEED], wait_delay=5.0)
    async with spooler(transport("smtp", script), clock=clock) as sp:
        info = await sp.submit(message(*[f"SMTP:u{i}@same.example" for i in range(6)]))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        recs = await sp.store.recipients(info.id)
        # One attempt for the six recipients, each due again after the transport's delay.
        assert [r.attempts for r in recs] == [1] * 6
        assert [r.retry_at for r in recs] == pytest.approx([clock.now() + 5.0] * 6)
        # The destination waits that long too (the transport's delay, not the computed
        # back-off of retry_base = 10 s): a new message for it is held until then.
        later = await sp.submit(message("SMTP:v@same.example"))
        await sp.wait_for(later.id, [MessageState.DEFERRED], timeout=5)
        (held,) = await sp.store.recipients(later.id)
        assert held.attempts == 0
        assert held.retry_at == pytest.approx(clock.now() + 5.0)
        assert script.names().count("submit_message") == 1
        await clock.advance(5.5)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        assert await sp.wait_for(later.id, timeout=5) is MessageState.SENT
