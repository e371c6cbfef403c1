"""Idle gating: background work runs when the foreground is idle.

An :class:`IdlePolicy` answers "is the foreground idle?" and lets background work
wait for it.  Flushes and critical-section holders bypass it.

* :class:`LoopLagIdle` (the embedded default) watches the host's event loop: a
  ticker measures how late it wakes up; lateness not explained by the spooler's own
  slices means the host is busy.  The host may also say so itself with
  ``foreground_busy()``.
* :class:`AlwaysIdle` is for the daemon, which instead runs at a lowered OS priority
  so the operating system gives the foreground the CPU.
* :class:`ManualIdle` is for tests and hosts that know better.
* :class:`StandbyIdle` wraps another policy for a node that stands by (the daemon's
  ``[daemon] standby_when_crowded``): while it does, no background work starts.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = ["LAG_WINDOW", "AlwaysIdle", "IdlePolicy", "LoopLagIdle", "ManualIdle", "StandbyIdle"]

#: How many recent ticks ``loop_lag_p99`` is taken over.
LAG_WINDOW = 1000


class IdlePolicy(Protocol):
    def is_idle(self) -> bool: ...

    async def wait_idle(self) -> None: ...

    def foreground_busy(self) -> contextlib.AbstractContextManager[None]: ...

    async def run(self) -> None:
        """The policy's own background task (a ticker), run by the spooler."""
        ...

    def statistics(self) -> dict[str, float | int | bool]: ...


class _Marks:
    def __init__(self) -> None:
        self.busy_marks = 0
        self._changed = asyncio.Event()

    @contextlib.contextmanager
    def foreground_busy(self) -> Iterator[None]:
        self.busy_marks += 1
        self._changed.clear()
        try:
            yield
        finally:
            self.busy_marks -= 1
            self._changed.set()


class AlwaysIdle(_Marks):
    """Never holds background work back, except while the host marks itself busy."""

    def is_idle(self) -> bool:
        return self.busy_marks == 0

    async def wait_idle(self) -> None:
        while self.busy_marks:
            self._changed.clear()
            await self._changed.wait()

    async def run(self) -> None:
        return None

    def statistics(self) -> dict[str, float | int | bool]:
        return {"idle": self.is_idle(), "busy_marks": self.busy_marks}


class ManualIdle(AlwaysIdle):
    """Idle unless told otherwise with :meth:`set_busy`."""

    def __init__(self) -> None:
        super().__init__()
        self._busy = False

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        if not busy:
            self._changed.set()
        else:
            self._changed.clear()

    def is_idle(self) -> bool:
        return not self._busy and self.busy_marks == 0

    async def wait_idle(self) -> None:
        while not self.is_idle():
            self._changed.clear()
            await self._changed.wait()


class LoopLagIdle(_Marks):
    """Idle when the host loop has woken on time for ``quiet`` seconds.

    Every ``interval`` seconds a ticker sleeps and measures how late it woke.  The
    spooler's own slice time during the interval (``own_busy()``) is subtracted, so
    the spooler's work does not make it think the host is busy: that is the
    *foreign* lag, which decides idleness.  The lag as measured (what every other
    task on the loop saw, the spooler's providers included) is reported beside it:
    ``max_loop_lag`` and ``loop_lag_p99`` over the last :data:`LAG_WINDOW` ticks.
    """

    def __init__(
        self,
        *,
        interval: float = 0.01,
        lag_threshold: float = 0.004,
        quiet: float = 0.05,
        own_busy: Callable[[], float] = lambda: 0.0,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.lag_threshold = lag_threshold
        self.quiet = quiet
        self._own_busy = own_busy
        self._last_busy = -1e9
        self.ticks = 0
        self.busy_ticks = 0
        self.max_lag = 0.0  # foreign lag: the spooler's own slices subtracted
        self.max_loop_lag = 0.0  # as measured
        self._recent: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW)

    def set_own_busy(self, own_busy: Callable[[], float]) -> None:
        self._own_busy = own_busy

    def is_idle(self) -> bool:
        return self.busy_marks == 0 and time.perf_counter() - self._last_busy >= self.quiet

    async def wait_idle(self) -> None:
        while not self.is_idle():
            await asyncio.sleep(self.interval)

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            own0 = self._own_busy()
            await asyncio.sleep(self.interval)
            lag = time.perf_counter() - t0 - self.interval
            foreign = lag - (self._own_busy() - own0)
            self.ticks += 1
            self.max_lag = max(self.max_lag, foreign)
            self.max_loop_lag = max(self.max_loop_lag, lag)
            self._recent.append(lag)
            if foreign > self.lag_threshold:
                self.busy_ticks += 1
                self._last_busy = time.perf_counter()

    def statistics(self) -> dict[str, float | int | bool]:
        return {
            "idle": self.is_idle(),
            "busy_marks": self.busy_marks,
            "ticks": self.ticks,
            "busy_ticks": self.busy_ticks,
            "max_foreign_lag": self.max_lag,
            "max_loop_lag": self.max_loop_lag,
            "loop_lag_p99": _p99(self._recent),
        }


class StandbyIdle:
    """``inner``, except that nothing is idle while the node stands by (new claims and
    mailbox polls wait; a flush, which bypasses idleness, still goes through)."""

    def __init__(self, inner: IdlePolicy, *, standing_by: bool = False) -> None:
        self.inner = inner
        self.standing_by = standing_by
        self._changed = asyncio.Event()

    def stand_by(self, on: bool) -> None:
        self.standing_by = on
        if not on:
            self._changed.set()

    def is_idle(self) -> bool:
        return not self.standing_by and self.inner.is_idle()

    async def wait_idle(self) -> None:
        while self.standing_by:
            self._changed.clear()
            await self._changed.wait()
        await self.inner.wait_idle()

    def foreground_busy(self) -> contextlib.AbstractContextManager[None]:
        return self.inner.foreground_busy()

    async def run(self) -> None:
        await self.inner.run()

    def statistics(self) -> dict[str, float | int | bool]:
        return {**self.inner.statistics(), "idle": self.is_idle(), "standby": self.standing_by}


def _p99(values: collections.abc.Iterable[float]) -> float:
    """The 99th percentile (nearest rank) of ``values``; 0.0 for none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]
