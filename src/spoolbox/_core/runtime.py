"""What a transport host and a flush may use of the spooler, and nothing more.

:class:`Runtime` is the services they read (the clock, the store, the status table,
the policy, the slice meter, the critical sections, the idle policy, this node's
name and the random source of retry jitter): one frozen value, built once by the
:class:`~spoolbox._core.spooler.Spooler`.  :class:`SpoolerPort` is the few calls
back into the spooler (settle a result, say that something changed, ask for a
flush...).  Hosts and flushes import this module, never ``spooler.py``: the
spooler sits above them, and only it knows its own insides.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..model import Address, FlushFlags, RecipientResult
from ..status import StatusTable
from ..store import ClaimedJob, InboxEntry, RecipientUpdate, Store
from .clock import Clock
from .critsec import CriticalSections
from .destinations import Hold
from .hooks import HookChain
from .idle import IdlePolicy
from .policy import Policy
from .rate import RateWindows
from .recovery import StoreOutages
from .slices import SliceMeter

__all__ = ["SPOOLER_ROW", "Runtime", "SpoolerPort"]

T = TypeVar("T")

#: The name of the spooler's own row in the status table (and the transport name
#: of the reports it puts into the inbox).
SPOOLER_ROW = "spooler"


@dataclass(frozen=True, slots=True)
class Runtime:
    """The spooler's services, as hosts and flushes read them."""

    policy: Policy
    clock: Clock
    store: Store
    status: StatusTable
    meter: SliceMeter
    critsec: CriticalSections
    idle: IdlePolicy
    owner: str  # this spooler's node name: the owner of its claims
    rng: random.Random  # retry jitter
    hostname: str = "localhost"  # SpoolerConfig.hostname: EHLO, Reporting-MTA, ...
    hooks: HookChain | None = None  # the profile's [[hooks]], None when there are none
    outages: StoreOutages = field(default_factory=StoreOutages)
    #: Each transport's sends within its ``max_rate`` window (kept across sessions).
    rates: RateWindows = field(default_factory=RateWindows)

    def store_failed(self) -> None:
        """A store call failed (:class:`~.recovery.StoreOutages`)."""
        self.outages.noted(self.clock.now(), self.policy.lease)


class SpoolerPort(Protocol):
    """The calls a host or a flush makes back into the spooler."""

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run ``coro`` as a task of the spooler's TaskGroup."""
        ...

    async def settle(
        self,
        job: ClaimedJob,
        updates: Sequence[RecipientUpdate],
        *,
        results: Sequence[RecipientResult] = (),
    ) -> bool:
        """Write a claimed job's recipient updates, with the reports they call for;
        False if the store refused them because the job's lease was taken over (then
        nothing was written, and the outcomes are not this spooler's to count)."""
        ...

    def destination_wait(self, transport: str, address: Address) -> Hold | None:
        """A destination in back-off: when it may be tried again, and why; or None."""
        ...

    def forget_destinations(self, transport: str) -> None:
        """Lift the back-off of every destination of ``transport`` (a flush)."""
        ...

    async def flush_asked(self, transport: str) -> bool:
        """Whether another node asked for a flush of ``transport`` that this spooler
        had not heard of yet (heard now: its back-off is lifted)."""
        ...

    def messages_changed(self) -> None:
        """Some recipients changed state."""
        ...

    def routing_changed(self) -> None:
        """Something waits for the router (or a session came or went)."""
        ...

    def types_changed(self) -> None:
        """A session's address types changed: the routing table is stale."""
        ...

    async def route_now(self) -> None:
        """Route whatever waits for routing, now."""
        ...

    def received(self, entries: Sequence[InboxEntry]) -> None:
        """Inbound messages were committed."""
        ...

    async def unpark(self, transport: str, ref: str | None) -> None:
        """SENTDEFERRED: the transport's parked mail (or one message) may go again."""
        ...

    def flush_requested(self, transport: str, flags: FlushFlags) -> None:
        """A provider set a *_FLUSH bit itself: start a flush of it alone."""
        ...

    def count(self, counter: str) -> None:
        """Add one to the spooler's counter ``counter``."""
        ...
