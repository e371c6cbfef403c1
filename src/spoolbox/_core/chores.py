"""How the spooler's background work (routing, housekeeping, a transport's outbound
lane settling its jobs) logs a store that fails it: as a transport's trouble
(:mod:`.trouble`), once per streak.

A store that cannot be reached (a PostgreSQL restart, a connection cut) fails every
round of every chore until it is back; the spooler's row says "store unavailable"
meanwhile.  A chore's first failure is one WARNING line with the store's error (no
traceback: the error is the store's, not a bug), the next ones DEBUG, the round that
works again one INFO line.  Any other exception is a bug and keeps its traceback.

Every such failure is also noted (``store_failed``: the spooler's
:class:`~.recovery.StoreOutages`), so that the outbound lanes put right, once the
store answers again, what the failure may have lost (:mod:`.recovery`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..store import LeaseLost, StoreError, UnknownMessage
from .trouble import Change, Source, Trouble, failing_line, recovered_line

__all__ = ["ChoreTrouble"]


class ChoreTrouble:
    """The trouble streak of one chore, ``name`` in its log lines; ``store_failed``
    is called at each failure of the store (the spooler's
    :class:`~.recovery.StoreOutages`)."""

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
