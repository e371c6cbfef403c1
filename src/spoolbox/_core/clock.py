"""Time, behind one small interface so tests can drive it with a fake clock.

The spooler reads wall time (``now``: queue times, retry times, leases) and sleeps
through a :class:`Clock`.  Slice lengths and loop lag are *not* clock time: they are
measured with :func:`time.perf_counter`, because they measure the real CPU.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "wait_event"]


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "<SystemClock>"


async def wait_event(clock: Clock, event: asyncio.Event, delay: float | None) -> bool:
    """Wait until ``event`` is set or ``delay`` clock-seconds pass; True if set."""
    if event.is_set():
        return True
    if delay is None:
        await event.wait()
        return True
    if delay <= 0:
        return False
    # The time to wake at, read now: the sleeper starts at the loop's next turn, and
    # the clock may have moved by then (a test's fake clock advanced meanwhile).
    until = clock.now() + delay
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(_sleep_until(clock, until))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (waiter, sleeper):
            if not t.done():
                t.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()


async def _sleep_until(clock: Clock, until: float) -> None:
    await clock.sleep(until - clock.now())
