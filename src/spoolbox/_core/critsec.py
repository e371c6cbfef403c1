"""Critical sections (NOTIFY_CRITSEC / NOTIFY_NONCRIT), as an exclusive scheduling token.

While a session holds the section:

* other sessions' provider code does not run: the slice meter stops each of their
  coroutines at its next step boundary, until the holder yields *explicitly*
  (``spooler_yield`` opens a window in which each waiting step runs once) or leaves;
* no new background work starts for anyone, the holder's own lanes included (no
  polls, idle calls, new submissions); a flush is not held back;
* the holder's implicit yields are suppressed (only its explicit yields let others in);
* ``validate_state`` on the holder answers busy.

A maximum duration is a setting; holding longer is reported (log, status row,
statistics) once per entry.  This is for real-time control of an outside resource,
such as reading a modem or fax line; it is not a lock for data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["CriticalSections"]

log = logging.getLogger("spoolbox.scheduler")


class CriticalSections:
    def __init__(self, max_duration: float, on_overrun: Callable[[Any, float], None]) -> None:
        self.max_duration = max_duration
        self._on_overrun = on_overrun
        self.holder: Any = None
        self.depth = 0
        self.window_open = False
        self._changed: asyncio.Future[None] | None = None
        self._entered_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.entries = 0
        self.overruns = 0
        self.longest = 0.0

    def __repr__(self) -> str:
        who = getattr(self.holder, "name", None)
        return f"<CriticalSections holder={who!r} depth={self.depth} window={self.window_open}>"

    def statistics(self) -> dict[str, Any]:
        return {
            "holder": getattr(self.holder, "name", None),
            "entries": self.entries,
            "overruns": self.overruns,
            "longest": self.longest,
        }

    @property
    def active(self) -> bool:
        return self.holder is not None

    def blocks(self, owner: object) -> bool:
        """Must ``owner``'s next step wait?"""
        return self.holder is not None and self.holder is not owner and not self.window_open

    def changed(self) -> asyncio.Future[None]:
        """A future resolved the next time the section is released or a window opens."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    async def enter(self, owner: object) -> None:
        while self.holder is not None and self.holder is not owner:
            await self.changed()
        if self.holder is owner:
            self.depth += 1
            return
        self.holder = owner
        self.depth = 1
        self.entries += 1
        self._entered_at = time.perf_counter()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.max_duration, self._overrun, owner)

    def leave(self, owner: object) -> None:
        if self.holder is not owner:
            return
        self.depth -= 1
        if self.depth > 0:
            return
        held = time.perf_counter() - self._entered_at
        self.longest = max(self.longest, held)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.holder = None
        self._notify()

    def _overrun(self, owner: object) -> None:
        if self.holder is owner:
            self.overruns += 1
            self._on_overrun(owner, time.perf_counter() - self._entered_at)

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
