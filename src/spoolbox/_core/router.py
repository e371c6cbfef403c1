"""The router: which transport takes which recipient.

It keeps the routing table (the outbound transports in order with the address
types they serve, rebuilt when a session's types change), and routes what waits
for routing: whenever told that something changed, at least every
``policy.router_interval`` seconds (other processes submit too), and at once for
a flush.  A recipient no transport serves fails (5.4.4) with a report.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from ..model import RecipientState
from ..routing import NoRoute, Route, RouteEntry, RoutingTable
from ..store import RecipientUpdate
from .chores import ChoreTrouble
from .clock import wait_event
from .runtime import Runtime

__all__ = ["Router"]

log = logging.getLogger("spoolbox.spooler")


class Router:
    """The routing table and the routing passes of one spooler."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        entries: Callable[[], Sequence[RouteEntry]],
        wake: Callable[[str], None],
        settle_unowned: Callable[[str, Sequence[RecipientUpdate]], Awaitable[None]],
        messages_changed: Callable[[], None],
    ) -> None:
        self._runtime = runtime
        self._entries = entries  # the outbound transports in order, with their types
        self._wake = wake  # a transport has new work
        self._settle_unowned = settle_unowned  # a recipient without a route fails
        self._messages_changed = messages_changed
        self._event = asyncio.Event()
        self._lock = asyncio.Lock()  # one routing pass at a time (the loop, a flush)
        self._table: RoutingTable | None = None  # cached; see table()

    def table(self) -> RoutingTable:
        """The transports in order with the types they serve (cached until
        :meth:`invalidate`)."""
        if self._table is None:
            self._table = RoutingTable.build(self._entries())
        return self._table

    def invalidate(self) -> None:
        """A session's address types changed: build the table again when next asked."""
        self._table = None

    def changed(self) -> None:
        """Something waits for routing: route soon."""
        self._event.set()

    async def run(self) -> None:
        """Route now and then, until cancelled."""
        trouble = ChoreTrouble("routing", log, self._runtime.store_failed)
        while True:
            self._event.clear()
            interval = self._runtime.policy.router_interval
            try:
                await self.route_now()
            except Exception as exc:
                trouble.failed(exc, f"retrying within {interval:g} s")
            else:
                trouble.ok()
            await wait_event(self._runtime.clock, self._event, interval)

    async def route_now(self) -> None:
        """Route whatever waits for routing, now (a flush does this first)."""
        async with self._lock:
            await self._route_pass()

    async def _route_pass(self) -> None:
        store = self._runtime.store
        table = self.table()
        cursor: tuple[str, int] | None = None
        while True:
            records = await store.unrouted(limit=1000, after=cursor)
            if not records:
                return
            cursor = (records[-1].message_id, records[-1].index)
            assign: list[tuple[str, int, str]] = []
            failed: dict[str, list[RecipientUpdate]] = defaultdict(list)
            for record in records:
                decision = table.decide(
                    record.address.type, record.refused_by, value=record.address.value
                )
                if isinstance(decision, Route):
                    assign.append((record.message_id, record.index, decision.transport))
                elif isinstance(decision, NoRoute):
                    failed[record.message_id].append(
                        RecipientUpdate(
                            record.index,
                            RecipientState.FAILED,
                            status="5.4.4",
                            diagnostic=decision.reason,
                        )
                    )
            log.debug("router: %d recipients routed, %d without a route", len(assign), len(failed))
            if assign:
                await store.assign_routes(assign)
                self._messages_changed()
                for name in {a[2] for a in assign}:
                    self._wake(name)
            for mid, updates in failed.items():
                await self._settle_unowned(mid, updates)
