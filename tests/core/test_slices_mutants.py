"""The slice meter's remaining decisions, each checked against an oracle the test
computes itself (issue 21): a fake ``time.perf_counter`` so that every slice length
is known exactly (the provider code "works" by moving the fake clock on), and the
watchdog driven through a fake stop event whose ``wait`` is the watchdog's tick."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import types
from collections.abc import Callable, Generator, Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from helpers import Owner, meter

from spoolbox._core import slices
from spoolbox._core.critsec import CriticalSections
from spoolbox._core.slices import SliceMeter, checkpoint


class Clock:
    """A fake ``time.perf_counter``: it reads ``t``, which only the test moves."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def perf_counter(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(slices, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


async def work(clock: Clock, *seconds: float) -> str:
    """A provider call whose steps take ``seconds`` each (on the fake clock)."""
    for i, s in enumerate(seconds):
        if i:
            await asyncio.sleep(0)
        clock.t += s
    return "done"


# -- the meter's figures ------------------------------------------------------------------


def test_repr_names_the_budget_and_counts_in_milliseconds() -> None:
    m = meter(2.0)
    m.slices, m.overruns, m.longest = 7, 2, 0.5
    assert repr(m) == "<SliceMeter budget=2000.0ms slices=7 overruns=2 longest=500.0ms>"
    m.budget, m.longest = 0.0125, 0.0456
    assert repr(m) == "<SliceMeter budget=12.5ms slices=7 overruns=2 longest=45.6ms>"


def test_a_new_meter_has_counted_nothing() -> None:
    m = meter(0.01)
    assert m.statistics() == {
        "budget": 0.01,
        "slices": 0,
        "overruns": 0,
        "longest": 0.0,
        "busy_time": 0.0,
        "stalls": 0,
        "longest_stall": 0.0,
    }
    assert m.slice_elapsed() == 0.0
    assert repr(m) == "<SliceMeter budget=10.0ms slices=0 overruns=0 longest=0.0ms>"


@pytest.mark.parametrize("budget", [0.0, -0.001])
def test_a_budget_that_is_not_positive_is_refused_by_name(budget: float) -> None:
    with pytest.raises(ValueError, match=r"^slice budget must be positive$"):
        meter(budget)


async def test_each_step_is_charged_its_exact_length(clock: Clock) -> None:
    m, owner = meter(0.5), Owner()
    assert await m.run(owner, work(clock, 0.25, 0.125, 0.5)) == "done"
    assert owner.slices == [(0.25, False), (0.125, False), (0.5, False)]  # 0.5: not over
    stats = m.statistics()
    assert stats["slices"] == 3
    assert stats["busy_time"] == 0.875
    assert stats["longest"] == 0.5
    assert stats["overruns"] == 0


async def test_a_step_longer_than_the_budget_is_an_overrun(clock: Clock) -> None:
    m, owner = meter(0.5, stall_after=10.0), Owner()
    await m.run(owner, work(clock, 0.75, 0.5, 0.25, 1.0))
    assert owner.slices == [(0.75, True), (0.5, False), (0.25, False), (1.0, True)]
    assert m.statistics()["overruns"] == 2
    assert m.statistics()["longest"] == 1.0
    assert m.statistics()["stalls"] == 0


async def test_an_exempt_owner_neither_overruns_nor_stalls(clock: Clock) -> None:
    stalls: list[tuple[str, float]] = []
    m = meter(0.5, stall_after=1.0, on_stall=lambda n, s: stalls.append((n, s)))
    flushing = Owner("flushing", exempt=True)
    await m.run(flushing, work(clock, 2.0, 0.25))
    assert flushing.slices == [(2.0, False), (0.25, False)]
    assert (m.overruns, m.stalls, stalls) == (0, 0, [])
    assert m.longest == 2.0 and m.busy_time == 2.25  # still measured


async def test_a_stall_is_a_step_of_stall_after_or_longer(clock: Clock) -> None:
    stalls: list[tuple[str, float]] = []
    m = meter(0.25, stall_after=1.0, on_stall=lambda n, s: stalls.append((n, s)))
    await m.run(Owner("hog"), work(clock, 0.5, 1.0, 3.0, 2.0))
    assert stalls == [("hog", 1.0), ("hog", 3.0), ("hog", 2.0)]
    assert m.statistics()["stalls"] == 3
    assert m.statistics()["longest_stall"] == 3.0


async def test_stall_after_defaults_to_half_a_second(clock: Clock) -> None:
    stalls: list[tuple[str, float]] = []
    m = meter(0.25, on_stall=lambda n, s: stalls.append((n, s)))
    assert m.stall_after == 0.5
    await m.run(Owner("hog"), work(clock, 0.375, 0.5))
    assert stalls == [("hog", 0.5)]
    assert m.longest_stall == 0.5


async def test_slice_spent_from_eighty_percent_of_the_budget(clock: Clock) -> None:
    seen: list[tuple[float, bool]] = []
    m = meter(1.0)

    async def looks() -> None:
        for step in (0.5, 0.25, 0.0625, 0.5):  # 0.5, 0.75, 0.8125, 1.3125
            clock.t += step
            seen.append((m.slice_elapsed(), m.slice_spent()))
        await asyncio.sleep(0)
        seen.append((m.slice_elapsed(), m.slice_spent()))  # a new step: a new slice

    await m.run(Owner(), looks())
    assert seen == [(0.5, False), (0.75, False), (0.8125, True), (1.3125, True), (0.0, False)]


async def test_slice_spent_at_exactly_eighty_percent(clock: Clock) -> None:
    seen: list[bool] = []
    m = meter(0.625)  # 80 %: exactly 0.5

    async def looks() -> None:
        clock.t += 0.5
        seen.append(m.slice_spent())

    await m.run(Owner(), looks())
    assert seen == [True]


async def test_a_nested_call_restarts_the_outer_slice_clock(clock: Clock) -> None:
    """After an inner measured step, the outer slice's elapsed time starts again (the
    inner time is the inner owner's); the outer step is still charged in full."""
    m, outer, inner = meter(10.0), Owner("outer"), Owner("inner")
    elapsed: list[float] = []

    async def inner_call() -> str:
        clock.t += 2.0
        return "inner"

    async def outer_call() -> str:
        clock.t += 1.0
        elapsed.append(m.slice_elapsed())
        got = await m.run(inner, inner_call())
        elapsed.append(m.slice_elapsed())
        clock.t += 0.5
        elapsed.append(m.slice_elapsed())
        return got

    assert await m.run(outer, outer_call()) == "inner"
    assert elapsed == [1.0, 0.0, 0.5]
    assert inner.slices == [(2.0, False)]
    assert outer.slices == [(3.5, False)]
    assert m.slice_elapsed() == 0.0


async def test_the_outer_owner_is_current_again_after_a_nested_step(clock: Clock) -> None:
    """What the watchdog reads (``_current``) names the outer owner again once the
    inner step is over, with the restarted clock."""
    m, outer, inner = meter(10.0), Owner("outer"), Owner("inner")
    seen: list[tuple[str, float]] = []

    async def inner_call() -> None:
        cur = m._current
        assert cur is not None
        seen.append((cur[0].name, cur[1]))
        clock.t += 2.0

    async def outer_call() -> None:
        clock.t += 1.0
        await m.run(inner, inner_call())
        cur = m._current
        assert cur is not None
        seen.append((cur[0].name, cur[1]))

    await m.run(outer, outer_call())
    assert seen == [("inner", 101.0), ("outer", 103.0)]
    assert m._current is None


# -- the measured awaitable under asyncio ---------------------------------------------------


async def test_exceptions_thrown_into_a_waiting_step_reach_the_provider(clock: Clock) -> None:
    m, owner = meter(10.0), Owner()
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    caught: list[str] = []

    async def waits() -> str:
        try:
            await fut
        except KeyError as exc:
            caught.append(str(exc))
            clock.t += 0.25
            await asyncio.sleep(0)
            return "recovered"
        return "no"

    task = asyncio.ensure_future(m.run(owner, waits()))
    await asyncio.sleep(0)
    fut.set_exception(KeyError("boom"))
    assert await task == "recovered"
    assert caught == ["'boom'"]
    assert owner.slices == [(0.0, False), (0.25, False), (0.0, False)]


async def test_a_step_held_at_the_critical_section_runs_once_it_reopens(clock: Clock) -> None:
    crit = CriticalSections(60.0, lambda owner, held: None, grace=60.0)
    m = SliceMeter(10.0, crit)
    holder, other = Owner("holder"), Owner("other")
    ran: list[str] = []

    async def others_work() -> str:
        ran.append("first step")
        await asyncio.sleep(0)
        ran.append("second step")
        return "other done"

    entry = await crit.enter(holder)
    task = asyncio.ensure_future(m.run(other, others_work()))
    await asyncio.sleep(0)  # queued after the task's first turn: it reached the gate
    assert crit.waiting == 1
    assert ran == []  # held at the gate before its first step
    crit.leave(entry)
    assert await task == "other done"
    assert ran == ["first step", "second step"]
    assert len(other.slices) == 2


async def test_a_step_held_at_the_gate_can_be_cancelled(clock: Clock) -> None:
    crit = CriticalSections(60.0, lambda owner, held: None, grace=60.0)
    m = SliceMeter(10.0, crit)
    holder, other = Owner("holder"), Owner("other")
    seen: list[str] = []

    async def others_work() -> None:
        try:
            seen.append("started")
            await asyncio.sleep(0)
            seen.append("not reached")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.ensure_future(m.run(other, others_work()))
    await asyncio.sleep(0)  # first step ran; the coroutine is suspended at its sleep
    entry = await crit.enter(holder)
    await asyncio.sleep(0)  # queued after the task's next turn: held at the gate
    assert crit.waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["started", "cancelled"]  # the cancel was thrown into the provider
    assert crit.leave(entry)


async def test_a_raising_nested_call_restarts_the_outer_slice_clock(clock: Clock) -> None:
    m, outer, inner = meter(10.0), Owner("outer"), Owner("inner")
    elapsed: list[float] = []

    async def inner_call() -> None:
        clock.t += 2.0
        raise ValueError("inner failed")

    async def outer_call() -> str:
        clock.t += 1.0
        try:
            await m.run(inner, inner_call())
        except ValueError:
            clock.t += 0.5
            elapsed.append(m.slice_elapsed())
        return "handled"

    assert await m.run(outer, outer_call()) == "handled"
    assert elapsed == [0.5]
    assert inner.slices == [(2.0, False)]
    assert outer.slices == [(3.5, False)]


async def test_a_cancel_between_steps_reaches_the_provider(clock: Clock) -> None:
    """Cancelled while its task waits for its next turn (after a bare yield, no future
    to cancel): the CancelledError the task throws in reaches the provider."""
    m, owner = meter(10.0), Owner()
    seen: list[str] = []

    async def provider() -> None:
        try:
            await asyncio.sleep(0)
            seen.append("resumed")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.ensure_future(m.run(owner, provider()))
    await asyncio.sleep(0)  # its first step ran: it is at its sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]
    assert len(owner.slices) == 2


async def test_a_cancel_is_not_held_at_a_closed_gate(clock: Clock) -> None:
    """A call waiting on a future is cancelled while another session holds the
    critical section: the cancel is thrown into the provider at once (it is no step
    of new work), it is not held until the section is left."""
    crit = CriticalSections(60.0, lambda owner, held: None, grace=60.0)
    m = SliceMeter(10.0, crit)
    holder, other = Owner("holder"), Owner("other")
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[tuple[str, bool]] = []

    async def provider() -> None:
        try:
            await fut
        except asyncio.CancelledError:
            seen.append(("cancelled", crit.holder is holder))
            raise

    task = asyncio.ensure_future(m.run(other, provider()))
    await asyncio.sleep(0)  # its first step ran: it waits on fut
    entry = await crit.enter(holder)
    task.cancel()
    await asyncio.sleep(0)  # queued after the task's wake-up with the CancelledError
    assert task.done() and task.cancelled()
    assert seen == [("cancelled", True)]
    assert crit.leave(entry)


async def test_the_holders_own_steps_are_not_held(clock: Clock) -> None:
    crit = CriticalSections(60.0, lambda owner, held: None, grace=60.0)
    m = SliceMeter(10.0, crit)
    holder = Owner("holder")
    entry = await crit.enter(holder)
    task = asyncio.ensure_future(m.run(holder, work(clock, 0.25)))
    await asyncio.sleep(0)  # queued after the task's first (and only) step
    assert task.done() and task.result() == "done"
    assert holder.slices == [(0.25, False)]
    assert crit.leave(entry)


async def test_a_held_step_runs_once_its_own_session_holds_the_section(clock: Clock) -> None:
    """A session's call held at the gate while another session holds the section goes
    on when the section passes to its own session (another of its calls entered it)."""
    crit = CriticalSections(60.0, lambda owner, held: None, grace=60.0)
    m = SliceMeter(10.0, crit)
    other, session = Owner("other"), Owner("session")
    held = await crit.enter(other)
    task = asyncio.ensure_future(m.run(session, work(clock, 0.25)))
    await asyncio.sleep(0)  # queued after the task's first turn: it reached the gate
    assert crit.waiting == 1
    assert crit.leave(held)  # wakes the held step (a call_soon) ...
    own = await crit.enter(session)  # ... after its own session took the section
    await asyncio.sleep(0)  # queued after the held step's wake-up
    assert task.done() and task.result() == "done"
    assert session.slices == [(0.25, False)]
    assert crit.leave(own)


def test_values_and_exceptions_sent_in_reach_the_provider_unchanged() -> None:
    """Driven directly as a generator (what any event loop does with an awaitable):
    each value sent in, and each exception thrown in, is the provider's."""

    @types.coroutine
    def suspend(tag: str) -> Generator[str, Any, Any]:
        return (yield tag)

    got: list[Any] = []

    async def provider() -> str:
        got.append(await suspend("first"))
        try:
            await suspend("second")
        except KeyError as exc:
            got.append(exc.args[0])
        got.append(await suspend("third"))
        return "finished"

    m, owner = meter(10.0), Owner()
    gen = m.run(owner, provider()).__await__()
    assert gen.send(None) == "first"
    assert gen.send("value 1") == "second"
    assert gen.throw(KeyError("thrown")) == "third"
    with pytest.raises(StopIteration) as stop:
        gen.send("value 3")
    assert stop.value.value == "finished"
    assert got == ["value 1", "thrown", "value 3"]
    assert len(owner.slices) == 4


# -- checkpoint -----------------------------------------------------------------------------


async def test_checkpoint_resumes_after_two_more_turns_of_the_loop() -> None:
    """A chain of three callbacks already queued (a timer's callback making a task
    ready, which then runs) completes before the caller resumes."""
    loop = asyncio.get_running_loop()
    order: list[str] = []
    loop.call_soon(lambda: loop.call_soon(lambda: loop.call_soon(order.append, "third hop")))
    await checkpoint()
    order.append("resumed")
    assert order == ["third hop", "resumed"]


async def test_a_cancelled_checkpoint_does_not_break_the_loop() -> None:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    task = asyncio.ensure_future(checkpoint())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await checkpoint()  # queued after the cancelled one's wake-up, so runs after it
    assert errors == []  # _wake found the future done and left it


# -- the watchdog thread -------------------------------------------------------------------


class FakeThread:
    made: ClassVar[list[FakeThread]] = []

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.started = False
        self.joins: list[Any] = []
        FakeThread.made.append(self)

    def start(self) -> None:
        self.started = True

    def join(self, timeout: float | None = None) -> None:
        self.joins.append(timeout)


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[FakeThread]:
    FakeThread.made = []
    monkeypatch.setattr(
        slices, "threading", SimpleNamespace(Thread=FakeThread, Event=threading.Event)
    )
    return FakeThread.made


@pytest.mark.parametrize(
    ("stall_after", "period"),
    [(0.5, 0.1), (0.4, 0.1), (0.2, 0.05), (0.1, 0.025), (0.08, 0.02), (0.04, 0.02)],
)
def test_the_default_watchdog_period_is_a_quarter_of_stall_after_within_limits(
    threads: list[FakeThread], stall_after: float, period: float
) -> None:
    m = meter(0.01, stall_after=stall_after)
    m.start_watchdog()
    [t] = threads
    assert t.kw["args"] == (period,)


def test_the_watchdog_thread_watches_this_meter_as_a_named_daemon(
    threads: list[FakeThread],
) -> None:
    m = meter(0.01, stall_after=0.5)
    m.start_watchdog(interval=0.3)
    [t] = threads
    assert t.kw == {
        "target": m._watch,
        "args": (0.3,),
        "name": "spoolbox-watchdog",
        "daemon": True,
    }
    assert t.started
    m.start_watchdog(interval=0.7)  # already running: nothing more
    assert threads == [t]


def test_stopping_the_watchdog_joins_it_briefly_and_allows_a_new_one(
    threads: list[FakeThread],
) -> None:
    m = meter(0.01)
    m.stop_watchdog()  # never started: nothing to join
    assert m._stop.is_set()
    m.start_watchdog(interval=0.3)
    assert not m._stop.is_set()  # cleared, or the new thread would end at once
    [first] = threads
    m.stop_watchdog()
    assert m._stop.is_set()
    assert first.joins == [2]  # bounded: a stuck thread does not hold up shutdown
    m.stop_watchdog()  # twice: nothing more to join
    assert first.joins == [2]
    m.start_watchdog(interval=0.4)
    assert not m._stop.is_set()
    assert len(threads) == 2 and threads[1].started
    assert threads[1].kw["args"] == (0.4,)


def test_the_real_watchdog_thread_ends_when_stopped() -> None:
    m = meter(0.01)
    m.start_watchdog(interval=3600.0)
    t = m._thread
    assert t is not None and t.is_alive() and t.daemon and t.name == "spoolbox-watchdog"
    m.stop_watchdog()  # wakes the thread's wait at once, an hour early
    assert not t.is_alive()
    assert m._thread is None


class Ticks:
    """A fake stop event: each ``wait`` is one watchdog tick, running the next action
    (which sets the scene the watchdog then looks at); no actions left: stop."""

    def __init__(self, *actions: Callable[[], None]) -> None:
        self.actions: Iterator[Callable[[], None]] = iter(actions)
        self.periods: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.periods.append(timeout)
        action = next(self.actions, None)
        if action is None:
            return True
        action()
        return False


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spoolbox.watchdog"]


def watch(m: SliceMeter, ticks: Ticks, period: float = 0.125) -> None:
    m._stop = ticks  # type: ignore[assignment]
    m._watch(period)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, "spoolbox.watchdog")
    return caplog


def test_the_watchdog_names_a_step_held_stall_after_or_longer_once(
    clock: Clock, logs: pytest.LogCaptureFixture
) -> None:
    m = meter(0.01, stall_after=0.5)
    hog = Owner("hog")

    def step_starts() -> None:
        m._current = (hog, clock.t)

    def later(seconds: float) -> Callable[[], None]:
        def move() -> None:
            clock.t += seconds

        return move

    ticks = Ticks(
        lambda: None,  # nothing running: nothing to say (and the watch goes on)
        step_starts,
        later(0.25),  # held 0.25 s: not yet
        later(0.25),  # held 0.5 s: named
        later(0.25),  # held 0.75 s: the same step, already named
    )
    watch(m, ticks)
    assert ticks.periods == [0.125] * 6
    assert warnings_of(logs) == [
        "transport 'hog' has held the event loop for 500 ms without yielding "
        "(slice budget 10.0 ms): it is blocking every other transport and the host "
        "application. Await I/O, call support.spooler_yield() in long loops, or use "
        "support.run_blocking() for blocking libraries."
    ]


def test_the_watchdog_names_each_stuck_step_and_not_an_exempt_one(
    clock: Clock, logs: pytest.LogCaptureFixture
) -> None:
    m = meter(0.02, stall_after=1.0)
    a, b, flushing = Owner("a"), Owner("b"), Owner("flushing", exempt=True)

    def runs(owner: Owner, held: float) -> Callable[[], None]:
        def scene() -> None:
            m._current = (owner, clock.t - held)

        return scene

    def idle() -> None:
        m._current = None

    watch(
        m,
        Ticks(
            runs(a, 1.5),
            runs(b, 2.0),
            runs(flushing, 5.0),
            idle,
            runs(a, 0.999),
            runs(a, 1.0),
        ),
    )
    messages = warnings_of(logs)
    assert [msg.split(" has held")[0] for msg in messages] == [
        "transport 'a'",
        "transport 'b'",
        "transport 'a'",
    ]
    assert [msg.split(" for ")[1].split(" ms")[0] for msg in messages] == [
        "1500",
        "2000",
        "1000",
    ]
    assert all("(slice budget 20.0 ms)" in msg for msg in messages)


def test_the_watchdog_thread_reads_the_step_in_progress(
    logs: pytest.LogCaptureFixture,
) -> None:
    """The real thread, its stop event and the real clock: a step that started an hour
    ago is named by the first tick, and stopping ends the thread."""
    m = meter(0.01, stall_after=0.5)
    named = threading.Event()

    class Flag(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            named.set()

    handler = Flag(logging.WARNING)
    logging.getLogger("spoolbox.watchdog").addHandler(handler)
    try:
        m._current = (Owner("stuck"), time.perf_counter() - 3600.0)
        m.start_watchdog(interval=0.001)
        assert named.wait(30)
    finally:
        m.stop_watchdog()
        logging.getLogger("spoolbox.watchdog").removeHandler(handler)
    assert "transport 'stuck' has held the event loop" in warnings_of(logs)[0]
