"""Critical sections (NOTIFY_CRITSEC / NOTIFY_NONCRIT), as an exclusive scheduling token.

While a session holds the section:

* other sessions' provider code does not run: the slice meter stops each of their
  coroutines at its next step boundary, until the holder yields *explicitly*
  (``spooler_yield`` opens a window in which each waiting step runs once) or leaves;
* no new background work starts for anyone, the holder's own lanes included (no
  polls, idle calls, new submissions); a flush is not held back;
* the holder's implicit yields are suppressed (only its explicit yields let others in);
* ``validate_state`` on the holder answers busy.

Each waiter waits on a future of its own (:meth:`CriticalSections.changed`), so
cancelling one waiter cancels nobody else.

A maximum duration is a setting.  Held longer, the section is reported (the
``on_overrun`` callback, once per entry); held ``grace`` seconds more, it is taken
away: every entry is closed, the gate reopens, and ``on_expired`` is told which
calls entered it (the spooler cancels them).  A section its holder did not leave is
released by :meth:`CriticalSections.abandon` (the call that entered it returned) or
:meth:`CriticalSections.release` (the session logged off).

This is for real-time control of an outside resource, such as reading a modem or fax
line; it is not a lock for data.  The object does no I/O: time and timers come in
through ``now`` and ``call_later``, so tests can drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CriticalSections", "Entry"]


class _Timer(Protocol):
    def cancel(self) -> None: ...


def _loop_call_later(delay: float, callback: Callable[[], None]) -> _Timer:
    return asyncio.get_running_loop().call_later(delay, callback)


@dataclass(frozen=True, eq=False, slots=True)
class Entry:
    """One ``enter`` not yet matched by a ``leave``; ``where`` is the call it was
    made in (None: outside any provider call)."""

    owner: Any
    where: Any = None


class CriticalSections:
    """The one critical section of a spooler; re-entrant for the session holding it."""

    def __init__(
        self,
        max_duration: float,
        on_overrun: Callable[[Any, float], None],
        *,
        grace: float,
        on_expired: Callable[[Any, float, Sequence[Any]], None] | None = None,
        now: Callable[[], float] = time.perf_counter,
        call_later: Callable[[float, Callable[[], None]], _Timer] = _loop_call_later,
    ) -> None:
        self.max_duration = max_duration
        self.grace = grace
        self._on_overrun = on_overrun
        self._on_expired = on_expired
        self._now = now
        self._call_later = call_later
        self.holder: Any = None
        self._open: list[Entry] = []  # the holder's entries, oldest first
        self.window_open = False
        self._waiters: set[asyncio.Future[None]] = set()
        self._entered_at = 0.0
        self._timer: _Timer | None = None
        self.entries = 0
        self.overruns = 0
        self.expired = 0  # taken away after max_duration + grace
        self.left_open = 0  # released for a holder that did not leave (abandon/release)
        self.longest = 0.0

    def __repr__(self) -> str:
        who = getattr(self.holder, "name", None)
        return f"<CriticalSections holder={who!r} depth={self.depth} window={self.window_open}>"

    def statistics(self) -> dict[str, Any]:
        return {
            "holder": getattr(self.holder, "name", None),
            "depth": self.depth,
            "entries": self.entries,
            "overruns": self.overruns,
            "expired": self.expired,
            "left_open": self.left_open,
            "longest": self.longest,
            "waiting": self.waiting,
        }

    @property
    def active(self) -> bool:
        return self.holder is not None

    @property
    def depth(self) -> int:
        """How many entries of the holder are open (nested sections)."""
        return len(self._open)

    @property
    def waiting(self) -> int:
        """How many waiters (held steps, lanes, ``enter`` calls) wait for a change."""
        return len(self._waiters)

    def blocks(self, owner: object) -> bool:
        """Must ``owner``'s next step wait?"""
        return self.holder is not None and self.holder is not owner and not self.window_open

    def changed(self) -> asyncio.Future[None]:
        """A future of the caller's own, resolved the next time the section is released
        or a window opens.  Cancelling it affects no other waiter."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        fut.add_done_callback(self._waiters.discard)
        return fut

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def enter(self, owner: object, where: object = None) -> Entry:
        """Wait until no other session holds the section, then hold it (again)."""
        while self.holder is not None and self.holder is not owner:
            await self.changed()
        entry = Entry(owner, where)
        self._open.append(entry)
        if self.holder is owner:
            return entry
        self.holder = owner
        self.entries += 1
        self._entered_at = self._now()
        self._timer = self._call_later(self.max_duration, self._overrun)
        return entry

    def leave(self, entry: Entry) -> bool:
        """Close ``entry``; the last one open releases the section.  False if it was
        closed already (taken away, or released for its holder)."""
        if entry not in self._open:
            return False
        self._open.remove(entry)
        if not self._open:
            self._release()
        return True

    def abandon(self, owner: object, where: object) -> int:
        """Close ``owner``'s entries made in the call ``where`` (it returned without
        leaving them); the number closed."""
        mine = [e for e in self._open if e.owner is owner and e.where is where]
        return self._close(mine)

    def release(self, owner: object) -> int:
        """Close every entry ``owner`` holds (its session logged off); the number closed."""
        return self._close([e for e in self._open if e.owner is owner])

    def _close(self, entries: list[Entry]) -> int:
        if not entries:
            return 0
        self.left_open += 1
        for entry in entries:
            self.leave(entry)
        return len(entries)

    def _release(self) -> float:
        held = self._now() - self._entered_at
        self.longest = max(self.longest, held)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.holder = None
        self._open.clear()
        self._notify()
        return held

    def _overrun(self) -> None:
        self.overruns += 1
        self._on_overrun(self.holder, self._now() - self._entered_at)
        self._timer = self._call_later(self.grace, self._expire)

    def _expire(self) -> None:
        self._timer = None
        owner = self.holder
        wheres = [e.where for e in self._open]
        self.expired += 1
        held = self._release()
        if self._on_expired is not None:
            self._on_expired(owner, held, wheres)

    async def explicit_yield(self, owner: object) -> None:
        """The holder yields: every waiting step runs once, then the holder resumes."""
        self.window_open = True
        self._notify()
        try:
            # Two turns of the loop: woken waiters are scheduled behind the first.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            self.window_open = False
