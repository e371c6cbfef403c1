"""Housekeeping, every ``policy.housekeeping_interval`` seconds: leases that ran out
go back to the queue, recipients past their lifetime fail (5.4.7) with a report,
and the spooler's status row gets the queue's counts.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ..model import RecipientState
from ..store import RecipientUpdate
from .runtime import SPOOLER_ROW, Runtime

__all__ = ["Housekeeper"]

log = logging.getLogger("spoolbox.spooler")


class Housekeeper:
    """The spooler's periodic chores."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        counters: Mapping[str, int],
        settle_unowned: Callable[[str, Sequence[RecipientUpdate]], Awaitable[None]],
        released: Callable[[], None],
    ) -> None:
        self._runtime = runtime
        self._counters = counters  # the spooler's, shown beside the queue's counts
        self._settle_unowned = settle_unowned
        self._released = released  # claims went back to the queue: wake who waits

    async def run(self) -> None:
        """Keep house until cancelled; a failed round is logged and retried."""
        runtime = self._runtime
        while True:
            try:
                await self.once()
            except Exception:
                log.exception("housekeeping failed; retrying")
            await runtime.clock.sleep(runtime.policy.housekeeping_interval)

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
        status = runtime.status
        if status.get(SPOOLER_ROW) is not None:
            counts = await store.counts()
            status.update(
                SPOOLER_ROW,
                counters={**{str(k): v for k, v in counts.items()}, **dict(self._counters)},
            )
