"""The deadline of one provider call (``policy.call_timeout``), as the critical section sees it.

:meth:`TransportHost.call` runs each provider call under :func:`asyncio.timeout`.
:func:`tracking` makes that call's timeout the *current call* of the task that runs
it, so that

* time spent waiting for another session's critical section is not charged to the
  call: :func:`paused` stops the clock of every call the task is in, and starts it
  again, with what was left, when the wait ends;
* the critical section knows which call entered it (:func:`current`), so a section
  still held when that call returns is found, and a section held past
  ``critsec_max`` plus ``critsec_grace`` can cancel the call that holds it
  (:meth:`CallDeadline.cut`).

Only the task that runs the call sees it: a task the provider creates during a call
inherits the context but not the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["CallDeadline", "current", "paused", "tracking"]

_CURRENT: contextvars.ContextVar[CallDeadline | None] = contextvars.ContextVar(
    "spoolbox_call_deadline", default=None
)


class CallDeadline:
    """The timeout of one running provider call: pausable, and cut short with a reason."""

    __slots__ = (
        "_paused",
        "_remaining",
        "_task",
        "_timeout",
        "call",
        "cut_reason",
        "open",
        "outer",
    )

    def __init__(
        self, call: str, timeout: asyncio.Timeout, outer: CallDeadline | None = None
    ) -> None:
        self.call = call
        self.outer = outer
        self.open = True
        self.cut_reason: str | None = None
        self._timeout = timeout
        self._task = asyncio.current_task()
        self._paused = 0
        self._remaining: float | None = None

    def __repr__(self) -> str:
        state = "open" if self.open else "closed"
        return f"<CallDeadline {self.call}() {state} paused={self._paused}>"

    def _live(self) -> bool:
        return self.open and not self._timeout.expired()

    def pause(self) -> None:
        """Stop the clock (nested pauses count; the first one stops it)."""
        self._paused += 1
        if self._paused > 1 or not self._live():
            return
        when = self._timeout.when()
        loop = asyncio.get_running_loop()
        self._remaining = None if when is None else max(0.0, when - loop.time())
        self._timeout.reschedule(None)

    def resume(self) -> None:
        """Start the clock again with the time that was left (the last resume does)."""
        self._paused -= 1
        if self._paused > 0 or not self._live() or self._remaining is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a coroutine discarded outside its loop: nothing to time
            return
        self._timeout.reschedule(loop.time() + self._remaining)

    def cut(self, reason: str) -> None:
        """End the call now: its timeout fires at once (or when its pause ends)."""
        if not self._live():
            return
        self.cut_reason = reason
        if self._paused:
            self._remaining = 0.0
        else:
            self._timeout.reschedule(asyncio.get_running_loop().time())


def current() -> CallDeadline | None:
    """The innermost provider call the running task is in, if any."""
    deadline = _CURRENT.get()
    if deadline is None or not deadline.open or deadline._task is not asyncio.current_task():
        return None
    return deadline


@contextlib.contextmanager
def tracking(call: str, timeout: asyncio.Timeout) -> Iterator[CallDeadline]:
    """Make ``timeout`` (already entered) the current call of this task while it runs."""
    deadline = CallDeadline(call, timeout, current())
    token = _CURRENT.set(deadline)
    try:
        yield deadline
    finally:
        deadline.open = False
        _CURRENT.reset(token)


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
