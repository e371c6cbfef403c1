"""Per-destination back-off: after a temporary failure to a destination (the part of
an address after "@", or the whole address), its other recipients wait for the
retry time instead of hammering it.

One :class:`DestinationBackoff` per spooler, in memory: a restart forgets it (the
recipients' own retry times are in the store).  A delivery to a destination lifts
its back-off; so does a flush of the transport, or a retry of a message for the
destinations of its recipients (the user says "now").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ..model import Address, RecipientResult, RecipientState, destination
from ..store import ClaimedJob, RecipientUpdate
from .clock import Clock
from .policy import Policy

__all__ = [
    "DestinationBackoff",
    "Hold",
    "destination_concurrency_of",
    "destination_of",
    "destination_rate_delay_of",
]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_DELIVERED: Final = RecipientState.DELIVERED
_QUEUED: Final = RecipientState.QUEUED


def destination_of(transport: str, address: Address) -> tuple[str, str]:
    """The key of an address's destination: the transport and the domain (ASCII
    lower case), or the whole address when it has no "@" (:func:`.model.destination`)."""
    return (transport, destination(address.value))


def destination_concurrency_of(session: object) -> int | None:
    """A session's ``destination_concurrency`` (None, its default: no limit; else at
    least 1)."""
    value = getattr(session, "destination_concurrency", None)
    return None if value is None else max(1, int(value))


def destination_rate_delay_of(session: object) -> float | None:
    """A session's ``destination_rate_delay`` in seconds (None, its default, or 0:
    none)."""
    value = getattr(session, "destination_rate_delay", None)
    if value is None:
        return None
    delay = float(value)
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"destination_rate_delay must be 0 or more seconds, not {value!r}")
    return delay or None


@dataclass(frozen=True, slots=True)
class Hold:
    """A destination in back-off: until when, and the attempt that put it there (its
    status code and diagnostic, for the delivery log's "delivery temporarily
    suspended" line of each recipient held back meanwhile)."""

    until: float
    status: str
    diagnostic: str


class DestinationBackoff:
    """Which destinations are in back-off, and until when."""

    def __init__(self, policy: Policy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        #: key -> (failures, until, the deferring attempt's status and diagnostic)
        self._until: dict[tuple[str, str], tuple[int, float, str, str]] = {}

    def wait(self, transport: str, address: Address) -> Hold | None:
        """The hold of a destination in back-off (when it may be tried again, and why
        it waits), or None."""
        if not self._policy.destination_backoff:
            return None
        key = destination_of(transport, address)
        entry = self._until.get(key)
        if entry is None or entry[1] <= self._clock.now():
            return None
        return Hold(entry[1], entry[2], entry[3])

    def forget(self, transport: str) -> None:
        """Lift the back-off of every destination of ``transport``."""
        for key in [k for k in self._until if k[0] == transport]:
            del self._until[key]

    def lift(self, transport: str, address: Address) -> None:
        """Lift the back-off of one address's destination (a manual retry)."""
        self._until.pop(destination_of(transport, address), None)

    def learn(
        self,
        job: ClaimedJob,
        updates: Sequence[RecipientUpdate],
        results: Sequence[RecipientResult] = (),
    ) -> None:
        """A real attempt that deferred puts its destination in back-off until the retry
        time it planned (the transport's own delay, or the computed back-off): once per
        destination and settle, however many recipients it had there.  A destination
        that took a recipient of the same attempt is up, and so is one that deferred a
        recipient alone (``results`` marked ``recipient_only``: its ``RCPT`` answered
        ``451``, a full mailbox or greylisting, which says nothing about the others):
        it is not held back, and a back-off it was in ends."""
        if not self._policy.destination_backoff:
            return
        by_index = {r.index: r for r in job.recipients}
        alone = {r.index for r in results if r.recipient_only}
        deferred: dict[tuple[str, str], tuple[float, str, str]] = {}
        delivered: set[tuple[str, str]] = set()
        for update in updates:
            recipient = by_index.get(update.index)
            if recipient is None or not update.count_attempt:
                continue  # only real attempts teach us about a destination
            key = destination_of(job.transport, recipient.address)
            if update.state is _DELIVERED or (update.state is _QUEUED and update.index in alone):
                self._until.pop(key, None)
                delivered.add(key)
            elif (
                update.state is RecipientState.QUEUED
                and (update.status or "").startswith("4")
                and update.retry_at
                and (key not in deferred or update.retry_at > deferred[key][0])
            ):
                deferred[key] = (update.retry_at, update.status or "", update.diagnostic or "")
        for key in delivered:
            deferred.pop(key, None)
        for key, (until, status, diagnostic) in deferred.items():
            failures = self._until.get(key, (0, 0.0, "", ""))[0] + 1
            self._until[key] = (failures, until, status, diagnostic)
