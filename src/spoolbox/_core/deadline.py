"""The deadline of one provider call (``policy.call_timeout``), as the critical section sees it.

:meth:`TransportHost.call` runs each provider call as a :class:`CallDeadline` (``with
CallDeadline(call, limit, watch):``): when the call runs longer than ``limit`` its task is
cancelled and the block raises :class:`TimeoutError`, as :func:`asyncio.timeout` would.
While it runs it is the *current call* of the task that runs it, so that

* time spent waiting for another session's critical section is not charged to the
  call: :func:`paused` stops the clock of every call the task is in, and starts it
  again, with what was left, when the wait ends;
* the critical section knows which call entered it (:func:`current`), so a section
  still held when that call returns is found, and a section held past
  ``critsec_max`` plus ``critsec_grace`` can cancel the call that holds it
  (:meth:`CallDeadline.cut`).

Only the task that runs the call sees it: a task the provider creates during a call
inherits the context but not the call.

The calls of one host share one timer, a :class:`DeadlineWatch`: a call only notes its
deadline, and the timer is moved only when a deadline comes before it.  A relay makes
a call a message and the deadline is minutes away, so almost every call ends without
touching a timer (``asyncio.timeout`` made and cancelled one a call: docs/benchmarks.md,
"Issue 17: the call and reply timers").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
from collections.abc import Iterator
from types import TracebackType

__all__ = ["CallDeadline", "DeadlineWatch", "current", "paused"]

_CURRENT: contextvars.ContextVar[CallDeadline | None] = contextvars.ContextVar(
    "spoolbox_call_deadline", default=None
)


class DeadlineWatch:
    """One timer for the open calls of a host: it fires no later than the earliest
    deadline it was told of, expires the calls whose deadline has passed and sets
    itself for the next one (if any call is still open)."""

    __slots__ = ("_at", "_handle", "_loop", "calls")

    def __init__(self) -> None:
        self.calls: set[CallDeadline] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    def need(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        """Fire no later than ``when`` (loop time)."""
        if when >= self._at and loop is self._loop:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._loop = loop
        self._at = when
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        self._at = math.inf
        now = loop.time()
        nxt = math.inf
        for call in list(self.calls):
            when = call._when
            if when is None:
                continue  # paused
            if when <= now:
                call._expire()
            elif when < nxt:
                nxt = when
        if nxt < math.inf:
            self.need(nxt, loop)


class CallDeadline:
    """The timeout of one running provider call: pausable, and cut short with a reason.

    A synchronous context manager around the call's ``await`` (entering it needs no
    await): the call's task is cancelled when the deadline passes, and the cancellation
    comes out of the block as :class:`TimeoutError` (unless something else cancelled
    the task too), the rules of :class:`asyncio.Timeout`.
    """

    __slots__ = (
        "_cancelling",
        "_expired",
        "_limit",
        "_loop",
        "_paused",
        "_remaining",
        "_task",
        "_token",
        "_watch",
        "_when",
        "call",
        "cut_reason",
        "open",
        "outer",
    )

    def __init__(self, call: str, limit: float, watch: DeadlineWatch) -> None:
        self.call = call
        self.outer: CallDeadline | None = None
        self.open = False
        self.cut_reason: str | None = None
        if not limit > 0:
            raise ValueError(f"a call's time limit must be above 0 s, not {limit!r}")
        self._watch = watch
        self._limit = limit
        self._when: float | None = None  # loop time, from __enter__ on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False
        self._paused = 0
        self._remaining: float | None = None
        self._token: contextvars.Token[CallDeadline | None] | None = None

    def __repr__(self) -> str:
        state = "open" if self.open else "closed"
        return f"<CallDeadline {self.call}() {state} paused={self._paused}>"

    def __enter__(self) -> CallDeadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a provider call runs in a task")
        if self._task is not None:
            raise RuntimeError(f"{self!r} was entered already")
        self._loop = loop
        self._task = task
        self._cancelling = task.cancelling()
        self._when = when = loop.time() + self._limit
        outer = _CURRENT.get()  # current(), with the task already at hand
        self.outer = outer if outer is not None and outer.open and outer._task is task else None
        self.open = True
        self._token = _CURRENT.set(self)
        self._watch.calls.add(self)
        self._watch.need(when, loop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open = False
        self._watch.calls.discard(self)
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        if self._expired:
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _expire(self) -> None:
        """The deadline passed (the watch says): cancel the call's task, once."""
        if not self.open or self._expired:
            return
        self._expired = True
        self._when = None
        assert self._task is not None
        self._task.cancel()

    def when(self) -> float | None:
        """The loop time the call is cancelled at (None while paused or ended)."""
        return self._when if self._live() else None

    def expired(self) -> bool:
        """Whether the deadline passed (or the call was cut) and the task was cancelled."""
        return self._expired

    def _live(self) -> bool:
        return self.open and not self._expired

    def _set(self, when: float | None) -> None:
        self._when = when
        if when is not None:
            assert self._loop is not None
            self._watch.need(when, self._loop)

    def pause(self) -> None:
        """Stop the clock (nested pauses count; the first one stops it)."""
        self._paused += 1
        if self._paused > 1 or not self._live():
            return
        assert self._loop is not None
        when = self._when
        self._remaining = None if when is None else max(0.0, when - self._loop.time())
        self._when = None

    def resume(self) -> None:
        """Start the clock again with the time that was left (the last resume does)."""
        self._paused -= 1
        if self._paused > 0 or not self._live() or self._remaining is None:
            return
        assert self._loop is not None
        if self._loop.is_closed():  # a coroutine discarded after its loop: nothing to time
            return
        self._set(self._loop.time() + self._remaining)

    def cut(self, reason: str) -> None:
        """End the call now: its deadline passes at once (or when its pause ends)."""
        if not self._live():
            return
        self.cut_reason = reason
        if self._paused:
            self._remaining = 0.0
        else:
            assert self._loop is not None
            self._set(self._loop.time())


def current() -> CallDeadline | None:
    """The innermost provider call the running task is in, if any."""
    deadline = _CURRENT.get()
    if deadline is None or not deadline.open or deadline._task is not asyncio.current_task():
        return None
    return deadline


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Stop the clock of every call this task is in, for the duration of the block."""
    chain: list[CallDeadline] = []
    deadline = current()
    while deadline is not None:
        chain.append(deadline)
        deadline.pause()
        deadline = deadline.outer
    try:
        yield
    finally:
        for deadline in chain:
            deadline.resume()
