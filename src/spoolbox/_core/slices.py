"""Slices: every step of provider code is measured, gated and, if too long, named.

A provider runs from one ``await`` to the next: that is a *slice*.  The spooler runs
each provider call through :meth:`SliceMeter.run`, which wraps the coroutine in an
awaitable that drives it step by step (``send``/``throw``), so it can

* time every step with :func:`time.perf_counter` and charge it to the session,
  naming a session whose step overran the slice budget (status row, statistics and
  a log line with the provider's name and the slice length);
* hold a step back while another session is in a critical section
  (:mod:`.critsec`), which is how "others make no progress except at the holder's
  explicit yields" is enforced rather than hoped for; the time a step is held there
  is not charged to its call's timeout (:mod:`.deadline`);
* tell the implicit-yield points how long the current slice has run.

A step that never ends (a provider that blocks the loop) cannot be measured after
the fact, so a watchdog *thread* looks at the step in progress and logs, while it is
still blocking, which provider holds the loop and for how long.  This is the only
thread the scheduler owns; it reads two attributes and writes a log line.

A *stall* (a step of ``stall_after`` seconds or more) is counted and handed to
``on_stall`` when the step ends, with its whole length: the watchdog sees a stall
while it happens, but only its end says how long it was.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, Protocol, TypeVar

from .critsec import CriticalSections
from .deadline import paused

__all__ = ["SliceMeter", "SliceOwner", "checkpoint"]

T = TypeVar("T")
log = logging.getLogger("spoolbox.watchdog")


async def checkpoint() -> None:
    """Give the loop back so that *everything already waiting runs first*.

    ``asyncio.sleep(0)`` puts the caller back at the end of the ready queue, but a task
    whose timer fired is only made ready by a callback that runs after it, so it would
    wait two or three more of the caller's steps.  This resumes the caller one turn
    later (a callback that schedules the wake-up), so a task woken by a timer in the
    meantime (the host's own work) runs before the spooler's next step.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.call_soon(loop.call_soon, _wake, fut)
    await fut


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SliceOwner(Protocol):
    """Who a slice is charged to (a transport session host)."""

    @property
    def name(self) -> str: ...

    @property
    def exempt_from_budget(self) -> bool:
        """True while flushing: the flush regime lets a transport keep the CPU."""
        ...

    def record_slice(self, seconds: float, overran: bool) -> None: ...


class _Measured(Generic[T]):
    __slots__ = ("_coro", "_meter", "_owner")

    def __init__(self, coro: Coroutine[Any, Any, T], owner: SliceOwner, meter: SliceMeter):
        self._coro = coro
        self._owner = owner
        self._meter = meter

    def __await__(self) -> Generator[Any, Any, T]:
        it = self._coro.__await__()
        meter = self._meter
        owner = self._owner
        send: Any = None
        throw: BaseException | None = None
        critsec = meter.critsec
        while True:
            # (``holder`` first: nobody holds a critical section nearly always.)
            if throw is None and critsec.holder is not None and critsec.blocks(owner):
                # Held at the gate: the call's own timeout does not run meanwhile.
                with paused():
                    while critsec.blocks(owner):
                        try:
                            yield from critsec.changed().__await__()
                        except GeneratorExit:
                            self._coro.close()
                            raise
                        except BaseException as gate_exc:
                            throw = gate_exc
                            break
            start = time.perf_counter()
            prev = meter._current
            meter._current = (owner, start)
            try:
                if throw is not None:
                    pending, throw = throw, None
                    yielded = it.throw(pending)
                else:
                    yielded = it.send(send)
            except StopIteration as stop:
                meter._finish(owner, start, prev)
                return stop.value  # type: ignore[no-any-return]
            except BaseException:
                meter._finish(owner, start, prev)
                raise
            meter._finish(owner, start, prev)
            try:
                send = yield yielded
            except GeneratorExit:
                self._coro.close()
                raise
            except BaseException as resume_exc:
                throw = resume_exc


class SliceMeter:
    """Measures and gates provider slices; owns the watchdog thread."""

    def __init__(
        self,
        budget: float,
        critsec: CriticalSections,
        *,
        stall_after: float = 0.5,
        on_stall: Callable[[str, float], None] | None = None,
    ) -> None:
        if budget <= 0:
            raise ValueError("slice budget must be positive")
        self.budget = budget
        self.critsec = critsec
        self.stall_after = stall_after
        self._on_stall = on_stall
        self._current: tuple[SliceOwner, float] | None = None
        self.slices = 0
        self.overruns = 0
        self.busy_time = 0.0  # total seconds spent in provider steps
        self.longest = 0.0
        self.stalls = 0  # steps that ran stall_after or longer, counted when they end
        self.longest_stall = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observers: list[Callable[[str, float], None]] = []

    def __repr__(self) -> str:
        return (
            f"<SliceMeter budget={self.budget * 1000:.1f}ms slices={self.slices} "
            f"overruns={self.overruns} longest={self.longest * 1000:.1f}ms>"
        )

    def statistics(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "slices": self.slices,
            "overruns": self.overruns,
            "longest": self.longest,
            "busy_time": self.busy_time,
            "stalls": self.stalls,
            "longest_stall": self.longest_stall,
        }

    def add_observer(self, callback: Callable[[str, float], None]) -> Callable[[], None]:
        """Call ``callback(session name, seconds)`` after every slice (the web page's
        slice histogram); returns a function that removes it.  It runs in the loop,
        on the hot path: it must be quick and must not raise."""
        self._observers.append(callback)

        def remove() -> None:
            if callback in self._observers:
                self._observers.remove(callback)

        return remove

    def run(self, owner: SliceOwner, coro: Coroutine[Any, Any, T]) -> _Measured[T]:
        return _Measured(coro, owner, self)

    def slice_elapsed(self) -> float:
        cur = self._current
        return 0.0 if cur is None else time.perf_counter() - cur[1]

    def slice_spent(self) -> bool:
        """True from 80 % of the budget on: yielding then keeps a slice inside it."""
        return self.slice_elapsed() >= self.budget * 0.8

    def _finish(
        self, owner: SliceOwner, start: float, prev: tuple[SliceOwner, float] | None
    ) -> None:
        took = time.perf_counter() - start
        self._current = prev
        if prev is not None:
            # A nested measured call: the outer slice goes on; restart its clock so
            # the inner time is not charged twice.
            self._current = (prev[0], time.perf_counter())
        self.slices += 1
        self.busy_time += took
        if took > self.longest:
            self.longest = took
        overran = False
        if took > self.budget or took >= self.stall_after:  # rare: asked only then
            exempt = owner.exempt_from_budget
            overran = took > self.budget and not exempt
            if overran:
                self.overruns += 1
            if took >= self.stall_after and not exempt:
                self._stalled(owner, took)
        owner.record_slice(took, overran)
        for observe in self._observers:
            observe(owner.name, took)

    def _stalled(self, owner: SliceOwner, took: float) -> None:
        """A stall ended: count it and report its whole length (in the loop's thread)."""
        self.stalls += 1
        self.longest_stall = max(self.longest_stall, took)
        if self._on_stall is not None:
            self._on_stall(owner.name, took)

    # -- the watchdog thread ------------------------------------------------------------
    def start_watchdog(self, interval: float | None = None) -> None:
        if self._thread is not None:
            return
        period = interval if interval is not None else max(0.02, min(0.1, self.stall_after / 4))
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(period,), name="spoolbox-watchdog", daemon=True
        )
        self._thread.start()

    def stop_watchdog(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _watch(self, period: float) -> None:
        reported: tuple[SliceOwner, float] | None = None
        while not self._stop.wait(period):
            cur = self._current
            if cur is None or cur is reported:
                continue
            owner, start = cur
            held = time.perf_counter() - start
            if held >= self.stall_after and not owner.exempt_from_budget:
                reported = cur
                log.warning(
                    "%s%r has held the event loop for %.0f ms without yielding "
                    "(slice budget %.1f ms): it is blocking every other transport and "
                    "the host application. Await I/O, call support.spooler_yield() in "
                    "long loops, or use support.run_blocking() for blocking libraries.",
                    getattr(owner, "kind", "transport "),  # a hook's name says "hook:"
                    owner.name,
                    held * 1000,
                    self.budget * 1000,
                )
