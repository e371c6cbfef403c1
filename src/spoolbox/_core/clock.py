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
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(delay))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (waiter, sleeper):
            if not t.done():
                t.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()
