"""The slice meter, driven directly: a coroutine the test writes is run through
SliceMeter.run, and what the meter charges to its owner is checked by counting steps
(no timing thresholds: a budget of a nanosecond or of an hour makes "overran" certain
either way)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from helpers import Owner, meter

from spoolbox._core.slices import SliceMeter, checkpoint

HOUR = 3600.0
NANO = 1e-9


async def steps(n: int, result: str = "done") -> str:
    """A provider call that gives the loop back ``n`` times: n + 1 steps."""
    for _ in range(n):
        await asyncio.sleep(0)
    return result


async def test_every_step_is_a_slice_charged_to_its_owner() -> None:
    m, owner = meter(HOUR), Owner()
    assert await m.run(owner, steps(4)) == "done"
    assert len(owner.slices) == 5
    assert [overran for _, overran in owner.slices] == [False] * 5
    stats = m.statistics()
    assert stats["slices"] == 5
    assert stats["overruns"] == 0
    assert stats["budget"] == HOUR
    assert stats["stalls"] == 0
    assert stats["busy_time"] == pytest.approx(sum(s for s, _ in owner.slices))
    assert stats["longest"] == max(s for s, _ in owner.slices)
    assert m.slices == 5 and m.overruns == 0


async def test_steps_over_the_budget_are_overruns_unless_the_owner_is_exempt() -> None:
    m = meter(NANO)
    hog, flushing = Owner("hog"), Owner("flushing", exempt=True)
    await m.run(hog, steps(2))
    await m.run(flushing, steps(2))
    assert [overran for _, overran in hog.slices] == [True] * 3
    assert [overran for _, overran in flushing.slices] == [False] * 3
    assert m.statistics()["overruns"] == 3
    assert m.statistics()["slices"] == 6


async def test_a_nested_measured_call_is_charged_step_by_step_to_each_owner() -> None:
    m, outer, inner = meter(HOUR), Owner("outer"), Owner("inner")

    async def outer_call() -> str:
        await asyncio.sleep(0)
        got = await m.run(inner, steps(2, "inner"))
        await asyncio.sleep(0)
        return got

    assert await m.run(outer, outer_call()) == "inner"
    assert len(inner.slices) == 3
    assert len(outer.slices) >= 3
    assert m.statistics()["slices"] == len(inner.slices) + len(outer.slices)
    assert m.slice_elapsed() == 0.0  # no step in progress once it all returned


async def test_slice_spent_and_elapsed_inside_a_step() -> None:
    seen: list[tuple[bool, bool]] = []

    async def look(m: SliceMeter) -> None:
        seen.append((m.slice_spent(), m.slice_elapsed() > 0.0))

    await meter(HOUR).run(Owner(), look(m := meter(HOUR)))  # another meter: nothing runs in it
    await m.run(Owner(), look(m))
    await (tiny := meter(NANO)).run(Owner(), look(tiny))
    assert seen == [(False, False), (False, True), (True, True)]


async def test_exceptions_and_cancellation_go_through_the_meter() -> None:
    m, owner = meter(HOUR), Owner()

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("provider bug")

    with pytest.raises(ValueError, match="provider bug"):
        await m.run(owner, fails())
    assert len(owner.slices) == 2  # the step that raised is charged too

    cleaned = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    task = asyncio.ensure_future(m.run(owner, hangs()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()  # the cancel was thrown into the provider's coroutine


async def test_a_value_sent_back_reaches_the_provider() -> None:
    m = meter(HOUR)
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def waits() -> int:
        return await fut + 1

    task = asyncio.ensure_future(m.run(Owner(), waits()))
    await asyncio.sleep(0)
    fut.set_result(41)
    assert await task == 42


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slice budget must be positive"):
        meter(0.0)


async def test_checkpoint_lets_everything_already_waiting_run_first() -> None:
    order: list[str] = []

    async def other() -> None:
        order.append("other")

    task = asyncio.ensure_future(other())
    await checkpoint()
    order.append("after checkpoint")
    await task
    assert order == ["other", "after checkpoint"]


async def test_the_watchdog_names_a_step_that_holds_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[tuple[str, float]] = []
    seen = threading.Event()
    caplog.set_level(logging.WARNING, "spoolbox.watchdog")

    async def blocks() -> None:
        # Holds the loop (no await) until the watchdog thread has reported it.
        seen.wait(10)

    def on_stall(name: str, held: float) -> None:
        # Called when the step ends (in the loop's thread), so it cannot end the wait.
        stalls.append((name, held))

    class Reported(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.set()  # the watchdog thread's report, while the step still blocks

    handler = Reported(logging.WARNING)
    logging.getLogger("spoolbox.watchdog").addHandler(handler)
    m = meter(0.001, stall_after=0.01, on_stall=on_stall)
    m.start_watchdog(interval=0.005)
    try:
        await m.run(Owner("blocker"), blocks())
    finally:
        m.stop_watchdog()
        logging.getLogger("spoolbox.watchdog").removeHandler(handler)
    assert seen.is_set()
    assert [name for name, _ in stalls] == ["blocker"]  # once per stuck step
    assert stalls[0][1] >= 0.01
    assert m.statistics()["stalls"] == 1
    assert any("'blocker' has held the event loop" in r.getMessage() for r in caplog.records)
