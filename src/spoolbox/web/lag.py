"""The event loop's lag, measured: how late a timer that should fire every
:data:`INTERVAL` seconds actually runs.  The lag is what every other piece of work on
the loop waits for (a slow provider step, a large JSON answer), so it is the first
figure to look at when the daemon feels slow.  Each measure goes to ``observe``
(the histogram of :mod:`.metrics`) and into a window of the last :data:`WINDOW`
measures for the page (latest, max, p99).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["INTERVAL", "WINDOW", "LagProbe"]

INTERVAL = 0.25
WINDOW = 240  # one minute at INTERVAL


class LagProbe:
    """A task that measures the loop's lag until :meth:`stop`."""

    def __init__(self, observe: Callable[[float], None] | None = None) -> None:
        self._observe = observe
        self._window: deque[float] = deque(maxlen=WINDOW)
        self._task: asyncio.Task[None] | None = None
        self.samples = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def record(self, lag: float) -> None:
        """One measure (seconds late; never negative)."""
        lag = max(0.0, lag)
        self._window.append(lag)
        self.samples += 1
        if self._observe is not None:
            self._observe(lag)

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + INTERVAL
            await asyncio.sleep(INTERVAL)
            self.record(time.perf_counter() - due)

    def figures(self) -> dict[str, Any]:
        """``latest``, ``max`` and ``p99`` over the window, in seconds (None: no measure
        yet), and ``samples``."""
        window = sorted(self._window)
        if not window:
            return {"latest": None, "max": None, "p99": None, "samples": 0}
        return {
            "latest": self._window[-1],
            "max": window[-1],
            "p99": window[min(len(window) - 1, int(len(window) * 0.99))],
            "samples": self.samples,
        }
