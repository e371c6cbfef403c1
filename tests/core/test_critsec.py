"""Critical sections: the CriticalSections object on a fake clock and fake timers, and
the contract through the Spooler (a provider's ``support.critical_section()``)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import FAST, message, spooler, transport

from spoolbox import MessageState, Policy, Spooler, TransportConfig
from spoolbox._core import deadline
from spoolbox._core.critsec import CriticalSections, Entry
from spoolbox.contract import BaseTransportSession, OutboundMessage, RecipientResult, Support
from spoolbox.model import (
    LogonCaps,
    LogonFlags,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    ValidateFlags,
)
from spoolbox.testing import FakeClock, Script


# -- fakes for the unit tests ------------------------------------------------------------
@dataclass
class _Timer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeTime:
    """A clock and a timer queue that move only when the test says."""

    now: float = 100.0
    timers: list[_Timer] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[float]:
        return [t.when for t in self.timers if not t.cancelled and not t.fired]

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and not t.fired and t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.now = timer.when
            timer.fired = True
            timer.callback()
        self.now = target


@dataclass
class Calls:
    overruns: list[tuple[Any, float]] = field(default_factory=list)
    expired: list[tuple[Any, float, list[Any]]] = field(default_factory=list)

    def overrun(self, owner: Any, held: float) -> None:
        self.overruns.append((owner, held))

    def expire(self, owner: Any, held: float, wheres: Sequence[Any]) -> None:
        self.expired.append((owner, held, list(wheres)))


def _sections(ft: FakeTime, calls: Calls, *, max_duration: float = 2.0) -> CriticalSections:
    return CriticalSections(
        max_duration,
        calls.overrun,
        grace=1.0,
        on_expired=calls.expire,
        now=ft,
        call_later=ft.call_later,
    )


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


A, B, C, D = "A", "B", "C", "D"


# -- unit tests ----------------------------------------------------------------------------
async def test_a_second_session_waits_until_the_first_leaves() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    assert not cs.blocks(A) and not cs.active
    first = await cs.enter(A)
    assert (cs.holder, cs.depth, cs.entries) == (A, 1, 1)
    assert cs.blocks(B) and not cs.blocks(A)
    second = asyncio.create_task(cs.enter(B))
    await _until(lambda: cs.waiting == 1 or second.done())
    assert not second.done()
    assert cs.holder == A
    ft.advance(0.5)
    assert cs.leave(first)
    entry = await second
    assert (cs.holder, cs.depth, cs.entries) == (B, 1, 2)
    assert entry.owner == B
    assert cs.longest == 0.5
    assert cs.leave(entry)
    assert cs.holder is None and not cs.blocks(B)


@dataclass(frozen=True)
class _Session:
    name: str


async def test_statistics_and_repr_name_the_holder() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    fax = _Session("fax")
    assert repr(cs) == "<CriticalSections holder=None depth=0 window=False>"
    entry = await cs.enter(fax)
    await cs.enter(fax)
    assert cs.statistics()["holder"] == "fax"
    assert cs.statistics()["depth"] == 2
    assert repr(cs) == "<CriticalSections holder='fax' depth=2 window=False>"
    cs.window_open = True
    assert repr(cs) == "<CriticalSections holder='fax' depth=2 window=True>"
    cs.window_open = False
    cs.release(fax)
    assert not cs.leave(entry)
    assert cs.statistics()["holder"] is None


async def test_three_sessions_take_turns_one_at_a_time() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    inside: list[str] = []
    log: list[str] = []

    async def session(name: str, gate: asyncio.Event) -> None:
        await gate.wait()
        entry = await cs.enter(name)
        inside.append(name)
        assert len(inside) == 1, f"two sessions inside at once: {inside}"
        log.append(f"{name}-in")
        ft.advance(0.25)
        await asyncio.sleep(0)  # another session may try to enter now
        await asyncio.sleep(0)
        log.append(f"{name}-out")
        inside.remove(name)
        assert cs.leave(entry)

    gate = asyncio.Event()
    tasks = [asyncio.create_task(session(n, gate)) for n in (A, B, C)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    names = [entry[:-3] for entry in log[::2]]
    assert sorted(names) == [A, B, C]
    assert log == [x for n in names for x in (f"{n}-in", f"{n}-out")]
    assert cs.entries == 3
    assert cs.longest == 0.25
    assert cs.statistics() == {
        "holder": None,
        "depth": 0,
        "entries": 3,
        "overruns": 0,
        "expired": 0,
        "left_open": 0,
        "longest": 0.25,
        "waiting": 0,
    }


async def test_nested_sections_release_with_the_outermost_leave() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    outer = await cs.enter(A)
    ft.advance(0.5)
    inner = await cs.enter(A)
    assert (cs.depth, cs.entries) == (2, 1)
    assert ft.pending() == [102.0]  # one timer, from the outermost entry
    waiter = cs.changed()
    ft.advance(0.5)
    assert cs.leave(inner)
    assert not waiter.done()  # an inner leave releases nothing
    assert (cs.holder, cs.depth) == (A, 1)
    assert cs.blocks(B)
    assert cs.longest == 0.0
    assert not cs.leave(inner)  # closed already
    assert (cs.holder, cs.depth) == (A, 1)
    ft.advance(0.25)
    assert cs.leave(outer)
    assert waiter.done()
    assert (cs.holder, cs.depth, cs.entries) == (None, 0, 1)
    assert cs.longest == 1.25
    assert ft.pending() == []


async def test_leaving_cancels_the_overrun_timer_and_re_entering_starts_a_new_one() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    entry = await cs.enter(A)
    assert ft.pending() == [102.0]
    ft.advance(1.5)
    assert cs.leave(entry)
    assert ft.pending() == []
    entry = await cs.enter(A)
    assert ft.pending() == [103.5]
    ft.advance(1.5)  # 3 s since the first entry, 1.5 s in each: within the maximum
    assert calls.overruns == []
    assert cs.leave(entry)
    ft.advance(10)
    assert calls.overruns == [] and calls.expired == []
    assert (cs.entries, cs.overruns, cs.longest) == (2, 0, 1.5)


async def test_an_overrun_is_reported_with_the_held_time_then_the_section_is_taken() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    ft.advance(7)  # time before the entry does not count
    outer = await cs.enter(A, "call-1")
    ft.advance(0.5)
    inner = await cs.enter(A, "call-2")
    waiter = cs.changed()
    ft.advance(1.5)
    assert calls.overruns == [(A, 2.0)]
    assert cs.overruns == 1
    assert cs.holder == A and not waiter.done()
    assert ft.pending() == [110.0]  # the grace
    ft.advance(0.5)
    assert calls.expired == []
    ft.advance(0.5)
    assert calls.expired == [(A, 3.0, ["call-1", "call-2"])]
    assert waiter.done()  # the gate reopens
    assert cs.statistics() == {
        "holder": None,
        "depth": 0,
        "entries": 1,
        "overruns": 1,
        "expired": 1,
        "left_open": 0,
        "longest": 3.0,
        "waiting": 0,
    }
    # The holder's late leaves do not touch the next holder's section.
    nxt = await cs.enter(B)
    assert not cs.leave(inner)
    assert not cs.leave(outer)
    assert (cs.holder, cs.depth) == (B, 1)
    ft.advance(5)
    assert calls.overruns == [(A, 2.0), (B, 2.0)]
    assert calls.expired[1] == (B, 3.0, [None])
    assert (cs.overruns, cs.expired) == (2, 2)
    assert not cs.leave(nxt)


async def test_overrun_is_reported_once_per_entry() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls, max_duration=1.0)
    for _ in range(2):
        entry = await cs.enter(A)
        ft.advance(1.5)
        assert cs.leave(entry)
    assert calls.overruns == [(A, 1.0), (A, 1.0)]
    assert cs.overruns == 2 and calls.expired == []
    assert cs.longest == 1.5


async def test_abandon_closes_only_the_entries_of_that_call() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    await cs.enter(A, "call-1")
    second = await cs.enter(A, "call-2")
    assert cs.abandon(B, "call-1") == 0
    assert cs.abandon(A, "call-3") == 0
    assert cs.left_open == 0
    assert cs.abandon(A, "call-1") == 1
    assert (cs.holder, cs.depth, cs.left_open) == (A, 1, 1)
    ft.advance(0.75)
    assert cs.abandon(A, "call-2") == 1
    assert (cs.holder, cs.depth, cs.left_open) == (None, 0, 2)
    assert cs.longest == 0.75
    assert ft.pending() == []
    assert not cs.leave(second)


async def test_release_closes_every_entry_of_the_owner_only() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    await cs.enter(A, "call-1")
    await cs.enter(A)
    assert cs.release(B) == 0
    assert cs.left_open == 0
    waiter = cs.changed()
    assert cs.release(A) == 2
    assert waiter.done()
    assert (cs.holder, cs.depth, cs.left_open) == (None, 0, 1)
    assert cs.release(A) == 0
    assert cs.left_open == 1


async def test_cancelling_one_waiter_leaves_the_others_waiting() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    held = await cs.enter(A)
    order: list[str] = []

    async def wait_gate(name: str) -> None:
        while cs.blocks(name):
            await cs.changed()
        order.append(name)

    async def wait_enter(name: str) -> Entry:
        entry = await cs.enter(name)
        order.append(name)
        return entry

    b = asyncio.create_task(wait_gate(B))
    c = asyncio.create_task(wait_enter(C))
    d = asyncio.create_task(wait_gate(D))
    await _until(lambda: cs.waiting == 3)
    c.cancel()
    with pytest.raises(asyncio.CancelledError):
        await c
    assert not b.done() and not d.done()
    assert cs.waiting == 2
    assert cs.leave(held)
    await asyncio.gather(b, d)
    assert sorted(order) == [B, D]
    assert cs.holder is None  # the cancelled C never entered


async def test_an_explicit_yield_opens_a_window_for_the_waiters() -> None:
    ft, calls = FakeTime(), Calls()
    cs = _sections(ft, calls)
    entry = await cs.enter(A)
    ran: list[bool] = []

    async def waiter() -> None:
        while cs.blocks(B):
            await cs.changed()
        ran.append(cs.window_open)

    task = asyncio.create_task(waiter())
    await _until(lambda: cs.waiting == 1)
    await cs.explicit_yield(A)
    assert ran == [True]
    assert task.done()
    assert not cs.window_open and cs.blocks(B)
    assert repr(cs).endswith("window=False>")
    assert cs.holder == A
    cs.leave(entry)


# -- the call deadline (policy.call_timeout) at the gate ----------------------------------
async def test_a_paused_deadline_resumes_with_what_was_left() -> None:
    loop = asyncio.get_running_loop()
    with deadline.CallDeadline("poll", 10.0, deadline.DeadlineWatch()) as dl:
        assert deadline.current() is dl
        start = dl.when()
        assert start is not None
        before_pause = loop.time()
        with deadline.paused():
            after_pause = loop.time()
            assert dl.when() is None  # no deadline while waiting
            await asyncio.sleep(0.05)
            before_resume = loop.time()
        after_resume = loop.time()
        resumed = dl.when()
        assert resumed is not None
        # Moved on by the time spent paused, no more and no less.
        assert before_resume - after_pause <= resumed - start
        assert resumed - start <= after_resume - before_pause
    assert deadline.current() is None
    assert not dl.open


async def test_nested_pauses_and_outer_calls() -> None:
    watch = deadline.DeadlineWatch()
    with deadline.CallDeadline("outer", 10.0, watch) as outer:
        with deadline.CallDeadline("inner", 5.0, watch) as inner:
            assert inner.outer is outer
            with deadline.paused():
                # Every call the task is in stops its clock.
                assert inner.when() is None
                assert outer.when() is None
                inner.pause()
                inner.resume()
                await asyncio.sleep(0)
                assert inner.when() is None  # still paused once
            assert inner.when() is not None
            assert outer.when() is not None
        assert deadline.current() is outer


async def test_a_cut_deadline_ends_the_call_with_its_reason() -> None:
    calls: list[deadline.CallDeadline] = []

    async def call() -> None:
        with deadline.CallDeadline("submit_message", 10.0, deadline.DeadlineWatch()) as dl:
            calls.append(dl)
            with deadline.paused():
                dl.cut("held too long")
                assert dl.when() is None  # paused: the cut waits for the resume
                await asyncio.sleep(0)
                assert not dl.expired()
            await asyncio.sleep(1)

    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        await call()
    assert loop.time() - start < 0.5  # cut, not timed out
    [dl] = calls
    assert dl.cut_reason == "held too long"
    assert dl.expired()
    dl.cut("again")  # a closed call is not touched
    assert dl.cut_reason == "held too long"


async def test_a_task_started_in_a_call_is_not_in_the_call() -> None:
    with deadline.CallDeadline("logon", 10.0, deadline.DeadlineWatch()) as dl:
        seen = await asyncio.create_task(asyncio.sleep(0, deadline.current()))
        assert seen is dl  # evaluated here, in the calling task

        async def other() -> deadline.CallDeadline | None:
            return deadline.current()

        assert await asyncio.create_task(other()) is None


# -- the deadlines' one timer ----------------------------------------------------------------
async def test_a_call_past_its_deadline_is_cancelled_as_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with (
        pytest.raises(TimeoutError),
        deadline.CallDeadline("poll", 0.2, deadline.DeadlineWatch()) as dl,
    ):
        await asyncio.sleep(5)
    assert 0.15 <= loop.time() - start < 2.0
    assert dl.expired() and not dl.open


async def test_calls_on_one_watch_each_end_at_their_own_deadline() -> None:
    """A long call starts first (the timer is set for it), a short one after it: the
    timer is brought forward; the long one then goes on to its own deadline."""
    watch = deadline.DeadlineWatch()
    loop = asyncio.get_running_loop()
    ended: dict[str, float] = {}

    async def call(name: str, limit: float, work: float) -> str:
        start = loop.time()
        try:
            with deadline.CallDeadline(name, limit, watch):
                await asyncio.sleep(work)
            return "done"
        except TimeoutError:
            return "timed out"
        finally:
            ended[name] = loop.time() - start

    long = asyncio.create_task(call("long", 0.6, 5.0))
    await asyncio.sleep(0.05)
    short = asyncio.create_task(call("short", 0.2, 5.0))
    quick = asyncio.create_task(call("quick", 0.3, 0.05))
    assert await short == "timed out"
    assert await quick == "done"
    assert await long == "timed out"
    assert 0.15 <= ended["short"] < 0.45
    assert 0.5 <= ended["long"] < 1.2  # not cut short by the timer the short one set
    assert not watch.calls


async def test_calls_ending_in_time_move_no_timer() -> None:
    """A hundred calls within their limit: the watch's timer was made by the first."""
    watch = deadline.DeadlineWatch()
    handles: set[int] = set()
    for _ in range(100):
        with deadline.CallDeadline("submit_message", 30.0, watch):
            await asyncio.sleep(0)
        handles.add(id(watch._handle))
    assert len(handles) == 1 and watch._handle is not None
    assert not watch.calls


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    """The call's task cancelled by someone else: CancelledError, not TimeoutError."""
    entered = asyncio.Event()

    async def call() -> None:
        with deadline.CallDeadline("poll", 0.3, deadline.DeadlineWatch()):
            entered.set()
            await asyncio.sleep(5)

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_call_time_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0 s"):
        deadline.CallDeadline("poll", 0.0, deadline.DeadlineWatch())


# -- a provider for the integration tests ----------------------------------------------------
Body = Callable[["Line", OutboundMessage], Awaitable[None]]


class Line(BaseTransportSession):
    """A session of one address type whose ``submit_message`` runs the test's body,
    then delivers every recipient."""

    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.NONE

    def __init__(self, support: Support, types: tuple[str, ...], body: Body | None) -> None:
        super().__init__(support)
        self._types = types
        self._body = body

    def address_types(self) -> tuple[str, ...]:
        return self._types

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        if self._body is not None:
            await self._body(self, message)
        await self.support.status_recips(
            message, [RecipientResult.delivered(r) for r in message.recipients]
        )

    async def hold(self, entered: asyncio.Event, leave: asyncio.Event) -> None:
        """Provider code outside any spooler call (a line monitor) in the section."""
        async with self.support.critical_section():
            entered.set()
            await leave.wait()


class LineProvider:
    display_name = "line"

    async def logon(self, support: Support, config: Mapping[str, Any], flags: LogonFlags) -> Line:
        support.modify_status_row(update=False, status_code=StatusCode.AVAILABLE)
        session = Line(support, tuple(config["types"]), config.get("body"))
        config["sessions"].append(session)
        return session

    async def shutdown(self) -> None:
        pass


def line(
    name: str,
    *types: str,
    body: Body | None = None,
    sessions: list[Line] | None = None,
    **kw: Any,
) -> TransportConfig:
    options = {"types": types, "body": body, "sessions": sessions if sessions is not None else []}
    return TransportConfig(name, LineProvider, options=options, **kw)


# -- integration tests ----------------------------------------------------------------------
async def test_critical_section_stops_others_except_at_explicit_yields() -> None:
    progress: list[str] = []

    async def modem(session: Line, msg: OutboundMessage) -> None:
        async with session.support.critical_section():
            for i in range(5):
                progress.append(f"modem-{i}")
                await asyncio.sleep(0.01)  # an await, but not a yield to the spooler
            progress.append("modem-yield")
            await session.support.spooler_yield()
            progress.append("modem-after-yield")
            await asyncio.sleep(0.01)
            progress.append("modem-leave")

    async def chatty(session: Line, msg: OutboundMessage) -> None:
        for i in range(200):
            progress.append(f"other-{i}")
            await asyncio.sleep(0.002)

    poller = Script(("X",), capabilities=LogonCaps.SP_POLL)
    async with spooler(
        line("modem", "FAX", body=modem),
        line("chatty", "SMTP", body=chatty),
        transport("poller", poller),
    ) as sp:
        await sp.wait_ready(timeout=5)
        other = await sp.submit(message("SMTP:bob@example.org"))
        await _until(lambda: any(p.startswith("other") for p in progress))
        fax = await sp.submit(message("FAX:+15551234"))
        await _until(lambda: "modem-0" in progress)
        assert sp.critsec.holder is sp.host("modem")
        assert (await sp.validate_state(ValidateFlags.NONE, transport="modem")) == {"modem": "busy"}
        await sp.wait_for(fax.id, timeout=10)
        await sp.wait_for(other.id, timeout=10)
    seq = progress
    start, yielded = seq.index("modem-0"), seq.index("modem-yield")
    after, leave = seq.index("modem-after-yield"), seq.index("modem-leave")
    # Inside the section, before the explicit yield: nobody else ran.
    assert all(p.startswith("modem") for p in seq[start:yielded])
    # At the explicit yield the others got a turn (at most one step each).
    between = seq[yielded + 1 : after]
    assert 1 <= len(between) <= 2
    assert all(p.startswith("other") for p in between)
    # After it, until the holder left, nobody else again.
    assert all(p.startswith("modem") for p in seq[after : leave + 1])
    assert sp.critsec.entries == 1


async def test_no_polls_or_idles_while_a_critical_section_is_held() -> None:
    clock = FakeClock()
    poller = Script(("X",), capabilities=LogonCaps.SP_POLL | LogonCaps.SP_IDLE)
    sessions: list[Line] = []
    entered, leave = asyncio.Event(), asyncio.Event()

    def background() -> list[str]:
        return [c for c in poller.names() if c in ("poll", "idle")]

    async with spooler(
        transport("poller", poller), line("holder", "FAX", sessions=sessions), clock=clock
    ) as sp:
        await sp.wait_ready(timeout=5)
        # Free: one poll interval brings a poll and idle calls.
        await clock.advance(FAST.poll_interval)
        free = background()
        assert "poll" in free and "idle" in free
        holder = asyncio.create_task(sessions[0].hold(entered, leave))
        await entered.wait()
        before = background()
        for _ in range(10):  # ten poll intervals, twenty-five idle intervals
            await clock.advance(FAST.poll_interval)
        during = background()
        # The poller's lanes did wake: they wait at the gate, not on the clock.
        assert sp.critsec.waiting >= 2
        leave.set()
        await holder
        await clock.advance(FAST.poll_interval)
        after = background()
    assert during == before
    assert "poll" in after[len(during) :] and "idle" in after[len(during) :]


@pytest.mark.parametrize("kind", ["line", "maildir"])
async def test_cancelling_one_waiter_does_not_stop_the_others(kind: str, tmp_path: Path) -> None:
    """Issue 13: a download flush cancelled while it waits at the gate stopped every
    other waiting transport for good (in the soak, a maildir transport)."""
    sessions: list[Line] = []
    entered, leave = asyncio.Event(), asyncio.Event()
    box = tmp_path / "box"
    if kind == "maildir":
        sender = TransportConfig("sender", "maildir", inbound=False)
        rcpts = [f"MAILDIR:{box}"] * 5
    else:
        sender = line("sender", "SMTP", inbound=False)
        rcpts = [f"SMTP:u{i}@example.org" for i in range(5)]
    async with spooler(
        line("holder", "FAX", sessions=sessions, outbound=False),
        line("downloader", "X400", outbound=False),
        sender,
    ) as sp:
        await sp.wait_ready(timeout=5)
        holder = asyncio.create_task(sessions[0].hold(entered, leave))
        await entered.wait()
        ids = [(await sp.submit(message(r))).id for r in rcpts]
        flush = sp.start_flush(upload=False, download=True, transport="downloader")
        # Two waiters: the flush's flush_queues step and the sender's outbound lane.
        await _until(lambda: sp.critsec.waiting == 2)
        flush.cancel()
        report = await flush
        assert report.cancelled
        leave.set()
        await holder
        states = [await sp.wait_for(i, timeout=5) for i in ids]
        counters = sp.host("sender").counters
    assert states == [MessageState.SENT] * 5
    assert counters["submitted"] == 5
    if kind == "maildir":
        assert len(os.listdir(box / "new")) == 5


def _holder_and_sender(sessions: list[Line], body: Body, call_timeout: float) -> Spooler:
    """A holder (inbound only: no lane of its own waits at the gate) and a sender
    whose ``submit_message`` runs ``body``."""
    return spooler(
        line("holder", "FAX", sessions=sessions, outbound=False),
        line("sender", "SMTP", body=body, inbound=False),
        policy=replace(FAST, call_timeout=call_timeout),
    )


@pytest.mark.parametrize("hang", [False, True])
async def test_waiting_at_the_gate_does_not_count_against_call_timeout(hang: bool) -> None:
    timeout = 0.3
    sessions: list[Line] = []
    entered, leave = asyncio.Event(), asyncio.Event()
    started, go = asyncio.Event(), asyncio.Event()
    span: list[float] = []

    async def body(session: Line, msg: OutboundMessage) -> None:
        span.append(time.perf_counter())
        started.set()
        await go.wait()  # the step after this is held at the gate
        span.append(time.perf_counter())
        if hang:  # after the gate, call_timeout applies again
            await asyncio.Event().wait()

    async with _holder_and_sender(sessions, body, timeout) as sp:
        await sp.wait_ready(timeout=5)
        info = await sp.submit(message("SMTP:bob@example.org"))
        await started.wait()
        holder = asyncio.create_task(sessions[0].hold(entered, leave))
        await entered.wait()
        go.set()
        await asyncio.sleep(timeout * 2)
        leave.set()
        await holder
        wanted = [MessageState.DEFERRED] if hang else [MessageState.SENT]
        state = await sp.wait_for(info.id, wanted, timeout=5)
        host = sp.host("sender")
    # The call did run longer than call_timeout, held at the gate, and went on.
    assert span[1] - span[0] > timeout
    if hang:
        assert state is MessageState.DEFERRED
        assert "ran longer than 0.3 s and was cancelled (policy.call_timeout" in (
            host.last_error or ""
        )
    else:
        assert state is MessageState.SENT
        assert host.counters["errors"] == 0


async def test_waiting_to_enter_does_not_count_against_call_timeout() -> None:
    timeout = 0.3
    sessions: list[Line] = []
    entered, yield_now, leave = asyncio.Event(), asyncio.Event(), asyncio.Event()
    started, go, entering = asyncio.Event(), asyncio.Event(), asyncio.Event()
    span: list[float] = []

    async def body(session: Line, msg: OutboundMessage) -> None:
        span.append(time.perf_counter())
        started.set()
        await go.wait()
        entering.set()  # in the holder's window; then it waits to enter
        async with session.support.critical_section():
            span.append(time.perf_counter())

    async def hold_and_yield(holder: Line) -> None:
        async with holder.support.critical_section():
            entered.set()
            await yield_now.wait()
            await holder.support.spooler_yield()
            await leave.wait()

    async with _holder_and_sender(sessions, body, timeout) as sp:
        await sp.wait_ready(timeout=5)
        info = await sp.submit(message("SMTP:bob@example.org"))
        await started.wait()
        holder = asyncio.create_task(hold_and_yield(sessions[0]))
        await entered.wait()
        go.set()  # the sender's next step is held at the gate...
        yield_now.set()  # ...and runs in the holder's explicit yield
        await entering.wait()
        await asyncio.sleep(timeout * 2)
        leave.set()
        await holder
        state = await sp.wait_for(info.id, timeout=5)
        counters = sp.host("sender").counters
    assert span[1] - span[0] > timeout
    assert state is MessageState.SENT
    assert counters["errors"] == 0


async def test_a_section_held_past_max_and_grace_is_taken_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "spoolbox")
    entered = asyncio.Event()
    seen: list[str] = []

    async def forever(session: Line, msg: OutboundMessage) -> None:
        async with session.support.critical_section():
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

    policy = replace(FAST, critsec_max=0.1, critsec_grace=0.1)
    async with spooler(
        line("fax", "FAX", body=forever, inbound=False),
        line("smtp", "SMTP", inbound=False),
        policy=policy,
    ) as sp:
        await sp.wait_ready(timeout=5)
        fax = await sp.submit(message("FAX:+15551234"))
        await entered.wait()
        other = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(other.id, timeout=5) is MessageState.SENT
        assert await sp.wait_for(fax.id, [MessageState.DEFERRED], timeout=5) is (
            MessageState.DEFERRED
        )
        row = sp.status["fax"]
        stats = sp.statistics()
        host = sp.host("fax")
    assert seen == ["cancelled"]
    assert row.status_code & StatusCode.FAILURE
    assert "took it away and cancelled submit_message()" in (row.detail or "")
    assert "critsec_max (0.1 s) plus critsec_grace (0.1 s)" in (row.detail or "")
    assert "was cancelled: held the critical section" in (host.last_error or "")
    assert stats["critical_sections"]["expired"] == 1
    assert stats["critical_sections"]["overruns"] == 1
    assert stats["critical_sections"]["holder"] is None
    assert stats["counters"]["critsec_expired"] == 1
    assert stats["transports"]["fax"]["counters"]["errors"] == 1
    assert any(
        r.levelno == logging.ERROR and "took it away" in r.getMessage() for r in caplog.records
    )


async def test_a_section_left_open_when_the_call_returns_is_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "spoolbox")

    kept: list[Any] = []

    async def no_leave(session: Line, msg: OutboundMessage) -> None:
        section = session.support.critical_section()
        kept.append(section)  # not garbage, so nothing leaves it behind the scenes
        await section.__aenter__()

    async with spooler(
        line("fax", "FAX", body=no_leave, inbound=False),
        line("smtp", "SMTP", inbound=False),
    ) as sp:
        await sp.wait_ready(timeout=5)
        fax = await sp.submit(message("FAX:+15551234"))
        assert await sp.wait_for(fax.id, timeout=5) is MessageState.SENT
        other = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(other.id, timeout=5) is MessageState.SENT
        stats = sp.statistics()
        host = sp.host("fax")
    text = "contract violation in submit_message: submit_message() returned without leaving"
    assert text in (host.last_error or "")
    assert stats["critical_sections"]["left_open"] == 1
    assert stats["critical_sections"]["holder"] is None
    assert stats["counters"]["critsec_left_open"] == 1
    assert stats["transports"]["fax"]["counters"]["errors"] == 1
    assert any(text in r.getMessage() for r in caplog.records)


async def test_a_section_held_at_logoff_is_released() -> None:
    sessions: list[Line] = []
    entered, fail = asyncio.Event(), asyncio.Event()

    async def hold_then_fail(session: Line) -> None:
        async with session.support.critical_section():
            entered.set()
            await fail.wait()
            session.support.spooler_notify(SpoolerNotifyFlags.CRITICAL_ERROR, "line dead")
            await asyncio.Event().wait()  # never leaves

    # A lane waiting at the gate must see the stop at once: no grace to wait out.
    async with spooler(
        line("fax", "FAX", sessions=sessions),
        line("smtp", "SMTP", inbound=False),
        policy=replace(FAST, shutdown_grace=600.0),
    ) as sp:
        await sp.wait_ready(timeout=5)
        stuck = asyncio.create_task(hold_then_fail(sessions[0]))
        await entered.wait()
        other = await sp.submit(message("SMTP:bob@example.org"))
        # Both outbound lanes (the holder's own included) wait at the gate.
        await _until(lambda: sp.critsec.waiting == 2)
        fail.set()
        assert await sp.wait_for(other.id, timeout=5) is MessageState.SENT
        stats = sp.statistics()
        host = sp.host("fax")
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert sp.critsec.holder is None  # its late leave released nothing
    assert "contract violation in logoff: the session ended while it held" in (
        host.last_error or ""
    )
    assert stats["critical_sections"]["left_open"] == 1
    assert stats["counters"]["critsec_left_open"] == 1


async def test_an_overrun_is_reported_and_the_section_kept() -> None:
    sessions: list[Line] = []
    entered, leave = asyncio.Event(), asyncio.Event()
    policy = replace(FAST, critsec_max=0.05, critsec_grace=60.0)
    async with spooler(line("holder", "FAX", sessions=sessions), policy=policy) as sp:
        await sp.wait_ready(timeout=5)
        holder = asyncio.create_task(sessions[0].hold(entered, leave))
        await entered.wait()
        await _until(lambda: sp.critsec.overruns == 1)
        assert sp.critsec.holder is sp.host("holder")  # reported, not taken away
        detail = sp.status["holder"].detail or ""
        leave.set()
        await holder
        stats = sp.statistics()
    assert "held a critical section for" in detail
    assert "over the 0.05 s maximum" in detail
    assert "taken away after 60 s more" in detail
    assert stats["counters"]["critsec_overruns"] == 1
    assert stats["critical_sections"]["expired"] == 0
    assert stats["critical_sections"]["longest"] >= 0.04


@pytest.mark.parametrize("count", [2, 3])
async def test_sessions_contending_enter_one_at_a_time(count: int) -> None:
    names = ["fax", "modem", "telex"][:count]
    log: list[str] = []
    started: list[str] = []
    all_started = asyncio.Event()

    def contender(name: str) -> Body:
        async def body(session: Line, msg: OutboundMessage) -> None:
            started.append(name)
            if len(started) == count:
                all_started.set()
            await all_started.wait()
            async with session.support.critical_section():
                log.append(f"{name}-in")
                # Each explicit yield lets the others run a step: they try to enter.
                for _ in range(3):
                    await session.support.spooler_yield()
                log.append(f"{name}-out")

        return body

    async with spooler(
        *(line(n, n.upper(), body=contender(n), inbound=False) for n in names)
    ) as sp:
        await sp.wait_ready(timeout=5)
        ids = [(await sp.submit(message(f"{n.upper()}:x"))).id for n in names]
        states = [await sp.wait_for(i, timeout=5) for i in ids]
        entries = sp.critsec.entries
    assert states == [MessageState.SENT] * count
    order = [x[: -len("-in")] for x in log if x.endswith("-in")]
    assert sorted(order) == sorted(names)
    assert log == [x for n in order for x in (f"{n}-in", f"{n}-out")]
    assert entries == count


async def test_a_nested_section_is_held_until_the_outermost_leave() -> None:
    progress: list[str] = []
    waiting: list[Callable[[], int]] = []

    async def nested(session: Line, msg: OutboundMessage) -> None:
        async with session.support.critical_section():
            progress.append("outer-in")
            async with session.support.critical_section():
                progress.append("inner-in")
                while not waiting[0]():  # until the other's next step waits at the gate
                    await asyncio.sleep(0.001)
                await session.support.spooler_yield()
                progress.append("inner-out")
            for _ in range(5):
                await asyncio.sleep(0.005)  # awaits, not yields: still held
            progress.append("outer-out")

    async def chatty(session: Line, msg: OutboundMessage) -> None:
        for i in range(200):
            progress.append(f"other-{i}")
            await asyncio.sleep(0.002)

    async with spooler(
        line("fax", "FAX", body=nested, inbound=False),
        line("smtp", "SMTP", body=chatty, inbound=False),
    ) as sp:
        waiting.append(lambda: sp.critsec.waiting)
        await sp.wait_ready(timeout=5)
        other = await sp.submit(message("SMTP:bob@example.org"))
        await _until(lambda: any(p.startswith("other") for p in progress))
        fax = await sp.submit(message("FAX:+15551234"))
        await sp.wait_for(fax.id, timeout=10)
        await sp.wait_for(other.id, timeout=10)
        entries = sp.critsec.entries
    seq = progress
    inner_in, inner_out = seq.index("inner-in"), seq.index("inner-out")
    outer_out = seq.index("outer-out")
    # The other transport was running: it got its step at the inner explicit yield...
    assert any(p.startswith("other") for p in seq[inner_in:inner_out])
    # ...and none between the inner leave and the outer one.
    assert all(not p.startswith("other") for p in seq[inner_out:outer_out])
    assert entries == 1


@pytest.mark.parametrize(("field_name", "value"), [("critsec_max", 0.0), ("critsec_grace", -1.0)])
def test_policy_refuses_a_critsec_limit_out_of_range(field_name: str, value: float) -> None:
    with pytest.raises(ValueError, match=r"policy\.critsec_max must be positive and critsec_grace"):
        Policy(**{field_name: value})
    assert Policy(critsec_grace=0.0).critsec_grace == 0.0
