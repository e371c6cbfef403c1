"""Spooler.wait_for under a fake clock: it wakes on the spooler's own changes to a
message (no real-time polling), and on the clock for changes made by time alone."""

from __future__ import annotations

import asyncio

from helpers import SLOW_TIMERS, message, spooler, transport

from spoolbox import MessageState
from spoolbox.testing import Act, FakeClock, Script


async def test_wait_for_wakes_on_a_claim_and_a_result_without_time_passing() -> None:
    clock = FakeClock()
    script = Script(("SMTP",), submit=[Act.HANG])
    async with spooler(transport("smtp", script), clock=clock, policy=SLOW_TIMERS) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        start = clock.now()
        assert await sp.wait_for(info.id, [MessageState.ACTIVE], timeout=5) is MessageState.ACTIVE
        waiter = asyncio.create_task(sp.wait_for(info.id, timeout=5))
        await asyncio.sleep(0)
        await sp.cancel(info.id)  # the hung transport gets MessageCancelled
        assert await waiter is MessageState.CANCELLED
        assert clock.now() == start  # nothing but the spooler's own events woke it


async def test_wait_for_wakes_on_hold_and_release() -> None:
    clock = FakeClock()
    script = Script(("SMTP",), raise_in={"logon"})  # never logs on: nothing is claimed
    async with spooler(transport("smtp", script), clock=clock, policy=SLOW_TIMERS) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        waiter = asyncio.create_task(sp.wait_for(info.id, [MessageState.HOLD], timeout=5))
        await asyncio.sleep(0)
        await sp.hold(info.id)
        assert await waiter is MessageState.HOLD
        waiter = asyncio.create_task(sp.wait_for(info.id, [MessageState.QUEUED], timeout=5))
        await asyncio.sleep(0)
        await sp.release(info.id)
        assert await waiter is MessageState.QUEUED


async def test_wait_for_follows_the_clock_past_a_retry_time() -> None:
    clock = FakeClock()
    # Fails once (retry in retry_base = 10 s), then hangs in the transport's hands.
    script = Script(("SMTP",), submit=[Act.FAIL_TEMP, Act.HANG])
    async with spooler(transport("smtp", script), clock=clock, policy=SLOW_TIMERS) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await sp.wait_for(info.id, [MessageState.DEFERRED], timeout=5)
        waiter = asyncio.create_task(sp.wait_for(info.id, [MessageState.ACTIVE], timeout=5))
        await clock.advance(SLOW_TIMERS.retry_base + 1)
        assert await waiter is MessageState.ACTIVE
        await sp.cancel(info.id)
