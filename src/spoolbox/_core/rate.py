"""A transport's send rate: at most N messages in any window of a given length.

A mail provider limits how fast it takes mail (Amazon SES "14 messages a second",
Gmail's SMTP "2,000 a day", an SMS gateway "1 a second"); mail sent faster is refused
with a temporary error and comes back later, after a retry delay, and a provider
that sees it often may block the account.  ``[[transports]] max_rate = "14/s"`` (as
Postfix's ``destination_rate_delay`` and KumoMTA's ``max_message_rate``) keeps the
spooler under the limit instead: a transport's lanes claim no more messages than the
window has room for, and the rest stays queued, untouched, until there is room.

:class:`RateLimit` is the value (parsed from the profile).  The window itself is the
store's when the store keeps send windows (``ClusterStore.take_sends``: the memory,
SQLite and PostgreSQL stores), one for every node on the store and kept across
restarts; the lane records there the sends of what it claims.  For a store that
keeps none, :class:`SendWindow` is the
pure bookkeeping of one transport in one process: the times of its last N sends,
oldest first, so that the (N+1)th waits until the oldest is a window old.  This is
exact ("at most N in ANY window"), which a token bucket is not (it lets up to 2N
through across the turn of a window).  A message counts when a worker starts it, not
when it is claimed: a batch claimed ahead of busy workers starts later, and counting
its claim would let the next window's messages start beside it.  No I/O and no clock
of its own: the caller passes ``now``.  :class:`RateWindows` keeps one window per
transport for the spooler's life, so a transport's session restarted (a failed
logon, a reload) does not start its count again.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

__all__ = ["MAX_COUNT", "RateLimit", "RateWindows", "SendWindow", "seconds_text", "window_name"]

#: The largest N of ``N/period`` (the window keeps one time per message).
MAX_COUNT = 1_000_000

_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]+(?:\.[0-9]*)?)?\s*([a-z]+)\s*")
_EXPECTED = (
    'expected "N/period": at most N messages in any period, e.g. "14/s", "100/m", '
    '"2000/d", "1/250ms" or "30/5m" (units ms, s, m, h, d)'
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` messages in any ``period`` seconds."""

    count: int
    period: float

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"the count must be 1 to {MAX_COUNT:,}, not {self.count}")
        if not 0 < self.period <= 366 * 86400:
            raise ValueError(
                f"the period must be more than 0 s and at most a year, not {self.period:g} s"
            )

    @classmethod
    def parse(cls, text: object) -> RateLimit:
        """``"14/s"``, ``"2000/d"``, ``"1/250ms"``, ``"30/5m"``; ValueError saying what
        was expected."""
        if not isinstance(text, str):
            raise ValueError(f"{_EXPECTED}, not {text!r}")
        m = _RATE.fullmatch(text.lower())
        if m is None or m.group(3) not in _UNITS:
            raise ValueError(f"{_EXPECTED}, not {text!r}")
        count = int(m.group(1))
        period = float(m.group(2) or 1) * _UNITS[m.group(3)]
        try:
            return cls(count, period)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None

    def __str__(self) -> str:
        return f"{self.count}/{_period_text(self.period)}"

    @property
    def period_text(self) -> str:
        """The period as a line says it: ``1 s``, ``5 s``, ``5 min``, ``1 d``, ``250 ms``."""
        text = _period_text(self.period)
        if text.endswith("ms"):
            return f"{text[:-2]} ms"
        number, unit = text[:-1] or "1", text[-1]
        return f"{number} {'min' if unit == 'm' else unit}"


def _period_text(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n}{unit}"
    return f"{seconds * 1000:g}ms"


class SendWindow:
    """The sends of one transport within the last period (their times, oldest first)."""

    __slots__ = ("_sent", "limit")

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._sent: collections.deque[float] = collections.deque()

    def _expire(self, now: float) -> None:
        # A send counts until ``at + period``, the very sum next_at gives (``at <=
        # now - period`` rounds differently).
        period = self.limit.period
        sent = self._sent
        while sent and sent[0] + period <= now:
            sent.popleft()

    def room(self, now: float) -> int:
        """How many messages may start now."""
        self._expire(now)
        return max(0, self.limit.count - len(self._sent))

    def used(self, now: float) -> int:
        """How many messages started within the last period."""
        self._expire(now)
        return len(self._sent)

    def next_at(self, now: float) -> float:
        """When the next message may start (``now`` if there is room)."""
        self._expire(now)
        if len(self._sent) < self.limit.count:
            return now
        # The window is full: the send that makes room is the one count-th from the end.
        return self._sent[len(self._sent) - self.limit.count] + self.limit.period

    def take(self, now: float, n: int = 1) -> None:
        """``n`` messages start now (the caller asked :meth:`room` first)."""
        self._sent.extend([now] * n)

    def resized(self, limit: RateLimit) -> SendWindow:
        """The same sends under a new limit (a reload changed ``max_rate``)."""
        new = SendWindow(limit)
        new._sent.extend(self._sent)
        return new


class RateWindows:
    """One :class:`SendWindow` per transport with a ``max_rate``, for the spooler's
    life (a session that restarts keeps its transport's window)."""

    __slots__ = ("_windows",)

    def __init__(self) -> None:
        self._windows: dict[str, SendWindow] = {}

    def window(self, transport: str, limit: RateLimit | None) -> SendWindow | None:
        """The transport's window under ``limit`` (None: no limit)."""
        if limit is None:
            self._windows.pop(transport, None)
            return None
        window = self._windows.get(transport)
        if window is None:
            window = self._windows[transport] = SendWindow(limit)
        elif window.limit != limit:
            window = self._windows[transport] = window.resized(limit)
        return window


def seconds_text(seconds: float) -> str:
    """A wait in plain seconds: ``0.4 s``, ``12.5 s``; ``3,600 s``, not ``3.6e+03 s`` (a
    daily window's)."""
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:,.0f} s"


def window_name(transport: str) -> str:
    """The name of a transport's window in the store (``ClusterStore.take_sends``)."""
    return f"transport:{transport}"
