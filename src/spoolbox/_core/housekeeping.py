"""Housekeeping, every ``policy.housekeeping_interval`` seconds: leases that ran out
go back to the queue, recipients past their lifetime fail (5.4.7) with a report,
finished messages and inbox entries older than the retention settings are purged
(and the stored hook verdicts their messages left behind), and the spooler's status
row gets the queue's counts.

Purging goes in batches of :data:`PURGE_BATCH` messages (or inbox entries), one
short transaction each, and yields to the event loop between them, so a store with a
large backlog to clean never holds the write lock long nor starves the transports.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ..model import RecipientState
from ..store import RecipientUpdate
from ..store.retention import Retention
from .chores import ChoreTrouble
from .hosts.hooked import HOOKS_SECTION
from .runtime import SPOOLER_ROW, Runtime

__all__ = ["PURGE_BATCH", "PURGE_INTERVAL", "PURGE_INTERVAL_MAX", "Housekeeper"]

log = logging.getLogger("spoolbox.spooler")

#: Messages (or inbox entries) deleted per purge transaction.
PURGE_BATCH = 500
#: Seconds between two purges (a purge scans for finished messages: not every round).
PURGE_INTERVAL = 300.0
#: A purge that found nothing waits twice as long for the next, up to this: its scan
#: reads every recipient (160 ms at 200,000 queued on SQLite), for nothing while the
#: queue holds mail that is not finished.  One that purged something resets it.
PURGE_INTERVAL_MAX = 3600.0


class Housekeeper:
    """The spooler's periodic chores."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        counters: Mapping[str, int],
        settle_unowned: Callable[[str, Sequence[RecipientUpdate]], Awaitable[None]],
        released: Callable[[], None],
        retention: Retention | None = None,
    ) -> None:
        self._runtime = runtime
        self._counters = counters  # the spooler's, shown beside the queue's counts
        self._settle_unowned = settle_unowned
        self._released = released  # claims went back to the queue: wake who waits
        self._retention = retention if retention is not None else Retention()
        self._next_prune = float("-inf")
        self._prune_interval = PURGE_INTERVAL
        #: Message ids whose stored hook verdicts the last purge found orphaned.
        self._orphans: list[str] = []

    async def run(self) -> None:
        """Keep house until cancelled; a failed round is logged and retried."""
        runtime = self._runtime
        trouble = ChoreTrouble("housekeeping", log, runtime.store_failed)
        while True:
            interval = runtime.policy.housekeeping_interval
            try:
                await self.once()
            except Exception as exc:
                trouble.failed(exc, f"retrying in {interval:g} s")
            else:
                trouble.ok()
            await runtime.clock.sleep(interval)

    async def once(self) -> None:
        runtime = self._runtime
        store = runtime.store
        now = runtime.clock.now()
        if await store.release_expired(now=now):
            self._released()
        expired = await store.expired(now=now, limit=500)
        by_message: dict[str, list[RecipientUpdate]] = defaultdict(list)
        for record in expired:
            last = f"; last error: {record.status} {record.diagnostic}" if record.status else ""
            by_message[record.message_id].append(
                RecipientUpdate(
                    record.index,
                    RecipientState.FAILED,
                    status="5.4.7",
                    diagnostic=f"delivery time expired after {record.attempts} attempts{last}",
                )
            )
        for mid, updates in by_message.items():
            await self._settle_unowned(mid, updates)
        if now >= self._next_prune:
            self._next_prune = now + self._prune_interval  # a failing purge waits too
            if any(await self.prune(now)):
                self._prune_interval = PURGE_INTERVAL
                self._next_prune = now + PURGE_INTERVAL
            else:  # the one after the next, later
                self._prune_interval = min(2 * self._prune_interval, PURGE_INTERVAL_MAX)
        status = runtime.status
        if status.get(SPOOLER_ROW) is not None:
            counts = await store.counts()
            status.update(
                SPOOLER_ROW,
                counters={**{str(k): v for k, v in counts.items()}, **dict(self._counters)},
            )

    async def prune(self, now: float) -> tuple[int, int]:
        """Purge what the retention settings let go at ``now``, batch by batch;
        returns (messages, inbox entries) purged."""
        store, clock = self._runtime.store, self._runtime.clock
        messages = entries = 0
        cutoffs = self._retention.cutoffs(now)
        while cutoffs:
            gone = await store.purge(finished_before=cutoffs, limit=PURGE_BATCH)
            messages += len(gone)
            if len(gone) < PURGE_BATCH:
                break
            await clock.sleep(0)  # let the transports and submitters in between
        inbox_cutoff = self._retention.inbox_cutoff(now)
        while inbox_cutoff is not None:
            removed = await store.purge_inbox(received_before=inbox_cutoff, limit=PURGE_BATCH)
            entries += len(removed)
            if len(removed) < PURGE_BATCH:
                break
            await clock.sleep(0)
        if messages or entries:
            log.info(
                "retention: purged %d finished messages and %d inbox entries", messages, entries
            )
        await self._purge_verdicts()
        return messages, entries

    async def _purge_verdicts(self) -> None:
        """Delete the stored hook verdicts of messages the store no longer has (a crash
        between a job's last settle and the dropping of its verdict leaves one) that
        were already orphaned at the purge before: a verdict written just before its
        message (a reroute's) looks orphaned for a moment."""
        store = self._runtime.store
        seen, self._orphans = self._orphans, []
        if seen:
            gone = await store.purge_sections(HOOKS_SECTION, seen)
            if gone:
                log.info(
                    "retention: deleted %d stored hook verdict(s) of messages no longer "
                    "in the store",
                    len(gone),
                )
        self._orphans = await store.orphan_sections(HOOKS_SECTION, limit=PURGE_BATCH)
