"""``wait_event``: a wait for an event or a time.  The time is read when the wait is
asked for: the sleeper starts only at the loop's next turn, and a test's fake clock
may be advanced before it does (CI saw two max_rate tests wait a whole window more
under load)."""

from __future__ import annotations

import asyncio

from spoolbox._core.clock import wait_event
from spoolbox.testing import FakeClock


async def test_a_wait_ends_at_its_time_when_the_clock_moves_before_its_sleeper_starts() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    waiting = asyncio.ensure_future(wait_event(clock, event, 5.0))
    await asyncio.sleep(0)  # the wait has begun; its sleeper is scheduled, not started
    assert not waiting.done()
    await clock.advance(10.0)  # past its time before the sleeper ever ran
    assert waiting.done() and waiting.result() is False


async def test_a_wait_ends_at_its_time_not_before() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    waiting = asyncio.ensure_future(wait_event(clock, event, 5.0))
    await asyncio.sleep(0)  # asked for at the clock's start
    await clock.advance(4.9)
    assert not waiting.done()
    await clock.advance(0.2)
    assert waiting.done() and waiting.result() is False


async def test_the_event_ends_the_wait_first() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    waiting = asyncio.ensure_future(wait_event(clock, event, 5.0))
    await asyncio.sleep(0)
    event.set()
    assert await asyncio.wait_for(waiting, 1) is True
    assert clock.sleepers == 0  # the sleeper was cancelled
