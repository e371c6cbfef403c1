"""The room each destination has in one outbound lane: how many of its jobs are under
way against the session's ``destination_concurrency``, when its
``destination_rate_delay`` ends, which destinations a claim passes over, and the
texts that say why mail waits for its destination.

Decisions only: the lane (:mod:`.outbound`) keeps the claimed jobs and does what these
say (wakes a worker, changes the status row).  A destination is the domain of an
address (:func:`spoolbox.model.destination`); a job's destinations are its
recipients'.  With a rate delay, one job at a time goes to each destination (as
Postfix's rate delay makes its concurrency 1), the next that many seconds after the
end of the one before.
"""

from __future__ import annotations

import collections
from collections.abc import Collection
from typing import Protocol

from ...model import destination
from ...store import ClaimedJob
from ..clock import Clock
from ..rate import seconds_text

__all__ = ["DestinationRoom"]

#: After a claim that passed over full destinations and found nothing, the next one
#: passing over the same waits this many times as long as it took (so that such
#: claims, which read past the full destinations' queue, take a twentieth of the time
#: at most), and a second at most.
_PASS_OVER_SHARE = 20.0
_PASS_OVER_PAUSE = 1.0


class Limits(Protocol):
    """Where the limits come from: the session's, as its host keeps them (they change
    at each logon)."""

    destination_concurrency: int | None
    destination_rate_delay: float | None


def _job_destinations(job: ClaimedJob) -> frozenset[str]:
    """The destinations of a job's recipients."""
    return frozenset(destination(r.address.value) for r in job.recipients)


def _messages(n: int) -> str:
    """``1 message``, ``2 messages``."""
    return f"{n} message" if n == 1 else f"{n} messages"


class DestinationRoom:
    """Per-destination counts and rests of one lane (module doc)."""

    def __init__(self, limits: Limits, clock: Clock) -> None:
        self._limits = limits
        self._clock = clock
        # The destinations of the jobs started and not finished: how many jobs each.
        self._started: collections.Counter[str] = collections.Counter()
        # With a rate delay: when each destination a job ended for may have its next
        # started (the clock's time; the past ones forgotten when looked at).
        self._rested: dict[str, float] = {}
        # The destinations with as many jobs started as the concurrency allows.
        self.at_limit: set[str] = set()
        # The full destinations of the last claim, if it found nothing, and when a
        # claim passing over the same may look again.
        self._passed_over: frozenset[str] = frozenset()
        self._pass_again = float("-inf")

    # -- the limits ------------------------------------------------------------------
    def limit(self) -> int | None:
        """How many jobs to one destination may be under way at once (None: no
        limit): the ``destination_concurrency``, or one with a rate delay."""
        limits = self._limits
        return 1 if limits.destination_rate_delay else limits.destination_concurrency

    def _room(self, job: ClaimedJob, limit: int, now: float) -> bool:
        """Whether each destination of ``job`` has room for one more job now: fewer
        than ``limit`` under way, and its rate delay over."""
        started, rested = self._started, self._rested
        return all(started[d] < limit and rested.get(d, now) <= now for d in _job_destinations(job))

    # -- which claimed job goes ------------------------------------------------------
    def take(self, ready: collections.deque[ClaimedJob]) -> ClaimedJob | None:
        """The next of the claimed jobs ``ready`` that a worker may start, removed from
        it (None: none): the first, or, with a limit, the first whose destinations
        have room."""
        limit = self.limit()
        if limit is None or not ready:
            return ready.popleft() if ready else None
        now = self._clock.now()
        for i, job in enumerate(ready):
            if self._room(job, limit, now):
                del ready[i]
                return job
        return None

    def can_start(self, ready: Collection[ClaimedJob]) -> bool:
        """Whether one of the claimed jobs ``ready`` may start now."""
        limit = self.limit()
        if limit is None:
            return bool(ready)
        now = self._clock.now()
        return any(self._room(j, limit, now) for j in ready)

    def start(self, job: ClaimedJob) -> tuple[frozenset[str], bool]:
        """A worker starts ``job``: its destinations count one more.  Returns them (for
        :meth:`finish`) and whether a destination reached the concurrency (the set
        :attr:`at_limit` grew; not said under a rate delay, where every destination
        is at its one)."""
        limit = self.limit()
        if limit is None:
            return frozenset(), False
        destinations = _job_destinations(job)
        self._started.update(destinations)
        if self._limits.destination_rate_delay:
            return destinations, False
        reached = {d for d in destinations if self._started[d] >= limit} - self.at_limit
        self.at_limit |= reached
        return destinations, bool(reached)

    def finish(self, destinations: frozenset[str]) -> tuple[bool, bool]:
        """A started job is done: its destinations count one less, and rest from now
        with a rate delay.  Returns whether a destination that was full has room
        again (a worker waiting for work should look: a job of it may wait, claimed,
        or its queue may be claimed again), and whether :attr:`at_limit` shrank."""
        limit = self.limit()
        delay = self._limits.destination_rate_delay
        if delay and destinations:
            until = self._clock.now() + delay
            self._rested.update(dict.fromkeys(destinations, until))
        freed = shrank = False
        for d in destinations:
            was = self._started[d]
            if was <= 1:
                del self._started[d]
            else:
                self._started[d] = was - 1
            if limit is not None and was >= limit:
                freed = True
                if was == limit and d in self.at_limit:
                    self.at_limit.discard(d)
                    shrank = True
        return freed, shrank

    # -- what a claim passes over ----------------------------------------------------
    def full(self, ready: Collection[ClaimedJob]) -> frozenset[str]:
        """The destinations a claim passes over: those whose started jobs and claimed
        ones (``ready``) make the limit, and those resting (none without a limit)."""
        limit = self.limit()
        if limit is None:
            return frozenset()
        counts = collections.Counter(self._started)
        for job in ready:
            counts.update(_job_destinations(job))
        found = {d for d, n in counts.items() if n >= limit}
        found.update(self.resting())
        return frozenset(found)

    def resting(self) -> dict[str, float]:
        """The destinations in their rate delay now, and when each ends (those over
        are forgotten)."""
        if self._rested:
            now = self._clock.now()
            self._rested = {d: t for d, t in self._rested.items() if t > now}
        return self._rested

    def rest_bound(self, timeout: float) -> float:
        """``timeout``, or less: until the first rate delay ends (a job of it may
        wait, claimed, or its queue be claimed again then)."""
        resting = self.resting()
        if not resting:
            return timeout
        return min(timeout, min(resting.values()) - self._clock.now())

    def pass_over_pause(self, full: frozenset[str]) -> float | None:
        """How long before a claim passing over ``full`` may look again (None: now):
        the last one passing over the same found nothing a moment ago."""
        if full and full == self._passed_over:
            wait = self._pass_again - self._clock.now()
            if wait > 0:
                return wait
        return None

    def claimed(self, full: frozenset[str], found: bool, began: float) -> None:
        """A claim that passed over ``full`` (begun at ``began``) found jobs or not:
        if not, the next one passing over the same waits twenty times as long as
        this one took, a second at most, for new mail (each submit would look)."""
        if full and not found:
            self._passed_over = full
            now = self._clock.now()
            self._pass_again = now + min(_PASS_OVER_PAUSE, _PASS_OVER_SHARE * (now - began))
        else:
            self._passed_over = frozenset()

    # -- why mail waits --------------------------------------------------------------
    def why_full(self, where: str, limit: int) -> tuple[str, str] | None:
        """Why destination ``where`` has no room for another job now, and when it
        will (None: it has room)."""
        delay = self._limits.destination_rate_delay
        if delay:
            every = seconds_text(delay)
            reason = f"{where} gets one message every {every}, its destination_rate_delay"
            if self._started[where]:
                return reason, f"{every} after the one under way"
            now = self._clock.now()
            rest = self._rested.get(where, now) - now
            return None if rest <= 0 else (reason, f"in {seconds_text(rest)}")
        if self._started[where] < limit:
            return None
        return (
            f"{where} has {_messages(limit)} under way, its destination_concurrency",
            "when one of them is done",
        )

    def job_wait(self, ready: Collection[ClaimedJob], message_id: str, index: int) -> str | None:
        """Why recipient ``index`` of ``message_id``, claimed (among ``ready``), is
        not being sent: its job waits for a full or resting destination (None: it
        does not, or it is not among them)."""
        limit = self.limit()
        if limit is None:
            return None
        for job in ready:
            if job.message.id != message_id or all(r.index != index for r in job.recipients):
                continue
            for d in sorted(_job_destinations(job)):
                why = self.why_full(d, limit)
                if why is not None:
                    return f"{why[0]}; claimed, it goes {why[1]}"
        return None

    def queued_wait(self, value: str) -> str | None:
        """Why a queued recipient of address value ``value`` is not claimed now: its
        destination is full or resting (None: it has room, or no limit)."""
        limit = self.limit()
        if limit is None:
            return None
        why = self.why_full(destination(value), limit)
        if why is None:
            return None
        if self._limits.destination_rate_delay:
            return f"{why[0]}; queued, the next one goes {why[1]}"
        return f"{why[0]}; queued behind them"

    def hold(self, ready: Collection[ClaimedJob]) -> str | None:
        """Why claimed mail (``ready``) waits for its destination (None: none does):
        ``slow.test gets one message every 2 s, its destination_rate_delay; the next
        one goes in 1.2 s``, the first such destination by name, and how many more."""
        limit = self.limit()
        if limit is None:
            return None
        why: dict[str, tuple[str, str]] = {}
        for job in ready:
            for d in _job_destinations(job):
                if d not in why and (full := self.why_full(d, limit)) is not None:
                    why[d] = full
        if not why:
            return None
        first = min(why)
        text = f"{why[first][0]}; the next one goes {why[first][1]}"
        if len(why) > 1:
            more = len(why) - 1
            text += f"; and {more} other destination{'s' if more > 1 else ''} the same way"
        return text

    def at_limit_text(self) -> str | None:
        """What the status row says of the destinations at their concurrency
        (``example.org has 20 messages under way (destination_concurrency): the mail
        to other domains goes first``), None when none is."""
        limit = self.limit()
        if not self.at_limit or limit is None:
            return None
        names = sorted(self.at_limit)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        has = "has" if len(names) == 1 else "each have"
        return (
            f"{shown} {has} {_messages(limit)} under way (destination_concurrency): "
            "the mail to other domains goes first"
        )
