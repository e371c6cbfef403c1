"""A fake clock for tests: time stands still until the test advances it."""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["FakeClock"]


class FakeClock:
    """Implements :class:`spoolbox.Clock`. ``await clock.advance(s)`` moves time on and
    wakes every sleeper whose time has come, in order, letting the loop run between."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now} sleepers={len(self._sleepers)}>"

    def now(self) -> float:
        return self._now

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float, *, settle: int = 20) -> None:
        """Move time forward by ``seconds`` and let woken tasks run ``settle`` turns."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not fut.done():
                fut.set_result(None)
            for _ in range(settle):
                await asyncio.sleep(0)
        self._now = target
        for _ in range(settle):
            await asyncio.sleep(0)
