"""How the spooler's background work (routing, housekeeping, a transport's outbound
lane settling its jobs) logs a store that fails it: as a transport's trouble
(:mod:`.trouble`), once per streak.

A store that cannot be reached (a PostgreSQL restart, a connection cut) fails every
round of every chore until it is back; the spooler's row says "store unavailable"
meanwhile.  A chore's first failure is one WARNING line with the store's error (no
traceback: the error is the store's, not a bug), the next ones DEBUG, the round that
works again one INFO line.  Any other exception is a bug and keeps its traceback.

Every such failure is also noted in the spooler's :class:`StoreOutages`: when the
store fails, claims may be left leased to this node that nothing in it holds (a
claim committed whose answer was lost, a settle the server's crash undid), and the
outbound lanes return them to the queue once the store answers again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..store import LeaseLost, StoreError, UnknownMessage
from .trouble import Change, Source, Trouble, failing_line, recovered_line

__all__ = ["ChoreTrouble", "StoreOutages"]


class StoreOutages:
    """The store's failures as this spooler saw them, for its outbound lanes.

    After a failure, recipients may be leased to this node that no lane of it holds:
    a claim the server committed whose answer the cut connection lost, or the settle
    of a delivered job that the server's crash undid (progress commits without
    waiting for the disk).  Left alone they would wait for their lease to end (two
    minutes by default).  ``count`` tells a lane that there was a failure since it
    last looked; ``leased_until`` bounds the leases of every claim made before the
    last one (its time plus the lease), so that a lane returns to the queue, before
    its next claim, what the node leased until then and the lane does not hold
    (:meth:`~spoolbox.store.Store.release_lost_claims`)."""

    __slots__ = ("count", "leased_until")

    def __init__(self) -> None:
        self.count = 0
        self.leased_until = float("-inf")

    def noted(self, now: float, lease: float) -> None:
        """A store call failed at ``now``; claims are leased for ``lease``."""
        self.count += 1
        self.leased_until = max(self.leased_until, now + lease)


class ChoreTrouble:
    """The trouble streak of one chore, ``name`` in its log lines; ``store_failed``
    is called at each failure of the store (the spooler's :class:`StoreOutages`)."""

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        store_failed: Callable[[], None] | None = None,
    ) -> None:
        self._name = name
        self._log = log
        self._store_failed = store_failed
        self._trouble = Trouble()

    @property
    def failing(self) -> bool:
        return self._trouble.failing

    def failed(self, exc: Exception, retry: str) -> None:
        """A round raised ``exc``; the chore retries as ``retry`` says."""
        if not isinstance(exc, StoreError):
            self._log.error("%s failed; %s", self._name, retry, exc_info=exc)
            return
        if self._store_failed is not None and not isinstance(exc, (LeaseLost, UnknownMessage)):
            self._store_failed()  # (those two are the store's answers, not its failure)
        self._trouble, change = self._trouble.failed(Source.CALL, str(exc))
        line = failing_line(self._name, f"the store failed: {exc}", retry)
        if change is Change.STARTED:
            self._log.warning("%s", line)
        else:
            self._log.debug("%s (%d failures in a row)", line, self._trouble.failures)

    def ok(self) -> None:
        """A round worked."""
        if not self._trouble.failing:
            return  # (the common case, once a message in a transport's lane)
        failures = self._trouble.failures
        self._trouble, change = self._trouble.succeeded(Source.CALL)
        if change is Change.RECOVERED:
            self._log.info("%s", recovered_line(self._name, failures, "working again"))
