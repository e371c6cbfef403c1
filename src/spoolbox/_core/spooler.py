"""The Spooler: owns the store connection, the status table, the scheduler and the
transport hosts, and is what a host application (or the daemon) opens.

::

    async with Spooler.open(config) as spooler:
        info = await spooler.submit(NewMessage(...))
        report = await spooler.flush()

Structured concurrency: every task the spooler starts lives in its TaskGroup (the
router, housekeeping, the idle policy's ticker, one supervisor per transport, flushes
and short notifications); leaving the ``async with`` stops them all, lets in-flight
work finish for ``policy.shutdown_grace`` seconds, logs every session off, shuts the
providers down and returns unfinished claims to the queue.

The Spooler is a facade: the routing is :mod:`.router`'s, the settlement and the
reports :mod:`.settlement`'s, the per-destination back-off :mod:`.destinations`',
the periodic chores :mod:`.housekeeping`'s, and each transport session is a
:class:`~.hosts.host.TransportHost`, which sees the spooler only through
:mod:`.runtime` (the services it reads and the calls back it may make).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ..model import (
    Address,
    FlushFlags,
    MessageInfo,
    MessageState,
    NewMessage,
    RecipientRecord,
    RecipientResult,
    RecipientState,
    ResourceType,
    StatusCode,
    TransportNotifyFlags,
    ValidateFlags,
)
from ..routing import Route, RouteEntry, RoutingTable
from ..status import StatusRow, StatusTable, Subscriber
from ..store import ClaimedJob, InboxEntry, MemoryStore, RecipientUpdate, Store, UnknownMessage
from . import handoff
from .clock import Clock, SystemClock, wait_event
from .config import SpoolerConfig, load_provider_class, unloadable_provider
from .critsec import CriticalSections
from .destinations import DestinationBackoff, Hold
from .flush import FlushHandle, FlushReport
from .hooks import HookChain
from .hosts.host import TransportHost
from .hosts.isolated import IsolatedProvider
from .housekeeping import Housekeeper
from .idle import IdlePolicy, LoopLagIdle
from .node import NodeSettings, node_of, start_node
from .policy import Policy
from .rate import RateWindows
from .router import Router
from .runtime import SPOOLER_ROW, Runtime
from .settlement import Settlement
from .slices import SliceMeter

__all__ = ["Spooler"]

T = TypeVar("T")
log = logging.getLogger("spoolbox.spooler")
#: :meth:`Spooler.wait_for` reads the state again at least this often, in clock
#: seconds, besides whenever this spooler changed a message: a state also changes
#: with time alone (a retry time passing turns *deferred* into *queued*) and with
#: the work of other processes on a shared store, neither of which raises an event.
_RECHECK = 0.25


class Spooler:
    """The MAPI spooler, in an asyncio event loop. Open it with :meth:`open`."""

    def __init__(
        self,
        config: SpoolerConfig | None = None,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        idle: IdlePolicy | None = None,
        close_store: bool | None = None,
        rng: random.Random | None = None,
        rates: RateWindows | None = None,
    ) -> None:
        self.config = config or SpoolerConfig()
        self.policy: Policy = self.config.policy
        self.store: Store = store if store is not None else MemoryStore()
        self._close_store = close_store if close_store is not None else store is None
        self.clock: Clock = clock or SystemClock()
        self.status = StatusTable(self.clock.now)
        self.critsec = CriticalSections(
            self.policy.critsec_max,
            self._critsec_overrun,
            grace=self.policy.critsec_grace,
            on_expired=self._critsec_expired,
        )
        self.meter = SliceMeter(
            self.policy.slice_budget,
            self.critsec,
            stall_after=self.policy.watchdog_stall,
            on_stall=self._stalled,
        )
        if idle is None:
            lag = LoopLagIdle()
            lag.set_own_busy(lambda: self.meter.busy_time)
            idle = lag
        self.idle: IdlePolicy = idle
        self.owner = self.config.node
        self.rng = rng or random.Random()
        self.hosts: list[TransportHost] = []
        self._providers: dict[type, Any] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._changed = asyncio.Event()  # some message's recipients changed state
        self._received_event = asyncio.Event()
        self._started = False
        self._as_node: tuple[NodeSettings | None] | None = None  # see as_node()
        self._closing = False
        self._started_at = 0.0
        self.counters: dict[str, int] = defaultdict(int)
        self._stalls: list[tuple[str, float]] = []
        self._spawned: list[asyncio.Task[Any]] = []
        self._runtime = Runtime(
            policy=self.policy,
            clock=self.clock,
            store=self.store,
            status=self.status,
            meter=self.meter,
            critsec=self.critsec,
            idle=self.idle,
            owner=self.owner,
            rng=self.rng,
            hostname=self.config.hostname,
            hooks=HookChain(
                self.config.hooks,
                status=self.status,
                meter=self.meter,
                call_timeout=self.policy.call_timeout,
            )
            if self.config.hooks
            else None,
            rates=rates if rates is not None else RateWindows(),
        )
        self._destinations = DestinationBackoff(self.policy, self.clock)
        self._settlement = Settlement(
            self._runtime,
            self.config,
            counters=self.counters,
            destinations=self._destinations,
            messages_changed=self.messages_changed,
            routing_changed=self.routing_changed,
        )
        self._routing = Router(
            self._runtime,
            entries=self._route_entries,
            wake=lambda name: self.host(name).wake.set(),
            settle_unowned=self._settlement.settle_unowned,
            messages_changed=self.messages_changed,
        )
        self._housekeeper = Housekeeper(
            self._runtime,
            counters=self.counters,
            settle_unowned=self._settlement.settle_unowned,
            released=self._released,
            retention=self.config.retention,
        )

    @property
    def rates(self) -> RateWindows:
        """Each transport's sends within its ``max_rate`` window (see ``rates`` of
        :meth:`open`)."""
        return self._runtime.rates

    def __repr__(self) -> str:
        return (
            f"<Spooler node={self.owner!r} transports={[h.name for h in self.hosts]} "
            f"started={self._started}>"
        )

    @classmethod
    def open(
        cls,
        config: SpoolerConfig | None = None,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        idle: IdlePolicy | None = None,
        close_store: bool | None = None,
        rng: random.Random | None = None,
        rates: RateWindows | None = None,
    ) -> Spooler:
        """A spooler to use as ``async with Spooler.open(config) as spooler:``.
        ``rates``: the ``max_rate`` windows of the spooler this one replaces (a
        daemon's reload), so that a transport's sends before it still count."""
        return cls(
            config,
            store=store,
            clock=clock,
            idle=idle,
            close_store=close_store,
            rng=rng,
            rates=rates,
        )

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Spooler:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def as_node(self, settings: NodeSettings | None = None) -> None:
        """Run as a node of a shared store (the daemon and its workers): its record and
        rows in the store, its part of the flushes other nodes record, the leases of
        inbound mailboxes.  Called before :meth:`start`, which starts the node before
        any transport logs on, so that no batch is ever fetched outside a mailbox's
        lease.  Nothing happens on a store that is not shared (a
        :class:`~spoolbox.store.cluster.ClusterStore`)."""
        if self._started:
            raise RuntimeError("as_node() must come before start()")
        self._as_node = (settings,)

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("spooler already started")
        self._started = True
        self._started_at = self.clock.now()
        await self.store.open()
        try:
            released = await self.store.release_owner(self.owner)
            if released:
                log.info("returned %d recipients left active by an earlier run", released)
            self.status.put(
                StatusRow(
                    name=SPOOLER_ROW,
                    resource_type=ResourceType.SPOOLER,
                    provider_display="spoolbox spooler",
                    status_code=StatusCode.AVAILABLE,
                )
            )
            if self._runtime.hooks is not None:
                self._runtime.hooks.start()
            for entry in self.config.transports:
                if entry.isolate:
                    # Its own child process per session, which loads the provider:
                    # none of the provider's code runs here.
                    self.hosts.append(
                        TransportHost(self._runtime, self, entry, IsolatedProvider(entry.provider))
                    )
                    continue
                try:
                    cls = load_provider_class(entry.provider)
                except Exception as exc:
                    # One unloadable provider must not stop the others: its logon fails
                    # (and is retried) with the reason in its status row.
                    log.error("transport %r: %s", entry.name, exc)
                    cls = unloadable_provider(str(exc))
                if cls not in self._providers:
                    self._providers[cls] = cls()  # XPProviderInit: one provider object per class
                self.hosts.append(TransportHost(self._runtime, self, entry, self._providers[cls]))
            known = [h.name for h in self.hosts]
            # Queued for a transport that is gone, or whose profile now says it serves
            # other address types or other domains, or that a transport for a closer
            # domain now takes: routed again (a reload that changed ``address_types`` or
            # ``domains`` applies to the mail already queued, as Postfix resolves
            # deferred mail again).
            limited = _route_checks(self.config.declared_routes())
            moved = await (  # (a store written before `limited` works without domains)
                self.store.reroute_missing(known, limited=limited)
                if limited
                else self.store.reroute_missing(known)
            )
            if moved:
                log.info(
                    "%d queued recipient%s routed again: their transport is no longer "
                    "configured, or no longer serves their address type or domain, or a "
                    "transport for their domain comes first now",
                    moved,
                    "" if moved == 1 else "s",
                )
        except BaseException:
            await self._close_store_now()
            raise
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self.meter.start_watchdog()
        self.spawn(self.idle.run(), name="idle-policy")
        self.spawn(self._routing.run(), name="router")
        self.spawn(self._housekeeper.run(), name="housekeeping")
        if self._as_node is not None:
            start_node(self, self.store, self._as_node[0])
        for host in self.hosts:
            self.spawn(host.run(), name=f"transport-{host.name}")

    async def aclose(self) -> None:
        if not self._started or self._closing:
            return
        self._closing = True
        tg = self._tg
        try:
            for host in self.hosts:
                await host.stop()
            deadline = time.monotonic() + self.policy.shutdown_grace
            while any(h.session is not None for h in self.hosts):
                if time.monotonic() >= deadline:
                    log.warning("shutdown grace over; cancelling transports still busy")
                    break
                await asyncio.sleep(0.01)
            if tg is not None:
                for task in list(self._tasks()):
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await tg.__aexit__(None, None, None)
            for provider in self._providers.values():
                try:
                    await provider.shutdown()
                except Exception as exc:
                    log.warning("provider %r: shutdown failed: %s", provider, exc)
            if self._runtime.hooks is not None:
                await self._runtime.hooks.close()
            with contextlib.suppress(Exception):
                await self.store.release_owner(self.owner)
        finally:
            self.meter.stop_watchdog()
            await self._close_store_now()

    async def _close_store_now(self) -> None:
        if self._close_store:
            with contextlib.suppress(Exception):
                await self.store.close()

    def _tasks(self) -> list[asyncio.Task[Any]]:
        return [t for t in self._spawned if not t.done()]

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start a task owned by the spooler's TaskGroup."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the spooler is not running")
        task = self._tg.create_task(self._guard(coro, name), name=name)
        # A task cancelled before its first step never awaits ``coro``: close it then.
        task.add_done_callback(lambda _t: coro.close())
        self._spawned = [t for t in self._spawned if not t.done()]
        self._spawned.append(task)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, T], name: str) -> T:
        """A spooler task never takes the others down with it: log, and end it."""
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("spooler task %s failed", name)
            raise asyncio.CancelledError() from None

    # -- the client side ------------------------------------------------------------------
    async def submit(self, message: NewMessage) -> MessageInfo:
        """Commit ``message`` durably and queue it; returns once it is committed."""
        # Route in the same transaction where the decision is already clear; what must
        # wait or fail (no route) is left to the router.
        routes = self.routing_table().routes_at_submit(
            (a.type, a.value) for a in message.recipients
        )
        # Claimed in the same transaction when a lane of its transport waits for work.
        info = await handoff.submit(self._runtime, self.host, message, routes)
        log.debug(
            "message %s queued: %d bytes, recipients %s, routes %s",
            info.id,
            info.size,
            [str(a) for a in message.recipients],
            routes,
        )
        self._queued(1, routes)
        return info

    async def submit_many(self, messages: Iterable[NewMessage]) -> list[MessageInfo]:
        """Commit all of ``messages`` durably in one transaction, or none of them, and
        queue them; returns their infos, in order, once committed.

        For many messages at once (a newsletter, an import): one fsync for the lot
        instead of one per :meth:`submit` call.  Idempotent per message, as
        :meth:`submit`, so a call that failed (or whose caller crashed) can simply be
        made again.  A message the store refuses (its id is already used by a
        different message) fails the whole call with StoreError naming it.  The lot is
        one transaction: while it is written, the store does nothing else, so keep
        calls to a few thousand messages."""
        batch = list(messages)
        if not batch:
            return []
        table = self.routing_table()
        routes = [table.routes_at_submit((a.type, a.value) for a in m.recipients) for m in batch]
        infos = await self.store.submit_many(
            batch, now=self.clock.now(), lifetime=self.policy.lifetime, routes=routes
        )
        log.debug("%d messages queued in one transaction: %s ...", len(infos), infos[0].id)
        self._queued(len(batch), [r for rs in routes for r in rs])
        return infos

    def _queued(self, count: int, routes: Sequence[str | None]) -> None:
        """``count`` messages committed here, their recipients' submit-time routes."""
        self.submitted_elsewhere(
            count, {r for r in routes if r is not None}, unrouted=None in routes
        )

    def submitted_elsewhere(self, count: int, transports: Iterable[str], *, unrouted: bool) -> None:
        """``count`` messages were committed to this spooler's store by someone else (a
        listener process), routed to ``transports``; ``unrouted``: some recipients wait
        for the router.  Wakes what has new work, as :meth:`submit` does."""
        self.counters["submitted"] += count
        if unrouted:
            self.routing_changed()
        for name in transports:
            with contextlib.suppress(KeyError):
                self.host(name).wake.set()

    def start_flush(
        self,
        *,
        upload: bool = True,
        download: bool = True,
        transport: str | None = None,
        force: bool = True,
        deadline: float | None = None,
    ) -> FlushHandle:
        """Start a flush and return its handle (await it for the report); ``deadline``:
        seconds it may take, ``policy.flush_deadline`` if None."""
        flags = FlushFlags.NONE
        if upload:
            flags |= FlushFlags.UPLOAD
        if download:
            flags |= FlushFlags.DOWNLOAD
        if force:
            flags |= FlushFlags.FORCE
        hosts = self.hosts if transport is None else [self.host(transport)]
        return FlushHandle(self._runtime, self, hosts, flags, deadline=deadline)

    async def flush(
        self,
        *,
        upload: bool = True,
        download: bool = True,
        transport: str | None = None,
        deadline: float | None = None,
    ) -> FlushReport:
        """Flush and wait.  Cancelling the caller cancels the flush."""
        return await self.start_flush(
            upload=upload, download=download, transport=transport, deadline=deadline
        )

    def host(self, name: str) -> TransportHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no transport named {name!r} (configured: {[h.name for h in self.hosts]})")

    async def cancel(self, message_id: str) -> MessageState:
        """Cancel every unfinished recipient; ones in a transport's hands are cancelled
        through it (NOTIFY_CANCEL_MESSAGE and MessageCancelled at its next yield)."""
        before = await self.store.recipients(message_id)
        parked = {
            r.route for r in before if r.state is RecipientState.PARKED and r.route is not None
        }
        active = await self.store.cancel(message_id)
        await self._settlement.log_user_cancel(message_id, before)
        for name in parked:
            # The transport accepted and deferred it: withdraw it (reference §8.5).
            with contextlib.suppress(KeyError):
                host = self.host(name)
                if host.session is not None and host.lifecycle.running:
                    await host.notify(
                        TransportNotifyFlags.ABORT_DEFERRED | TransportNotifyFlags.CANCEL_MESSAGE,
                        message_id,
                    )
        for route in {r.route for r in active}:
            if route is not None:
                with contextlib.suppress(KeyError):
                    self.host(route).cancel(message_id)
        self.messages_changed()
        return await self.store.state_of(message_id, now=self.clock.now())

    async def hold(self, message_id: str) -> MessageInfo:
        info = await self.store.hold(message_id)
        self.messages_changed()
        return info

    async def release(self, message_id: str) -> MessageInfo:
        info = await self.store.release(message_id, now=self.clock.now())
        self.messages_changed()
        self._wake_all()
        return info

    async def retry(self, message_id: str) -> int:
        """Make the message's waiting recipients ready now, their destinations' back-off
        lifted too (a retry means now); returns how many were waiting."""
        for r in await self.store.recipients(message_id):
            if r.state is RecipientState.QUEUED and r.route is not None:
                self._destinations.lift(r.route, r.address)
        n = await self.store.retry_now(message_id, now=self.clock.now())
        self.messages_changed()
        self._wake_all()
        return n

    async def validate_state(
        self, flags: ValidateFlags = ValidateFlags.NONE, transport: str | None = None
    ) -> dict[str, str]:
        """ValidateState on every transport (or one); ``busy`` for a critical-section holder."""
        hosts = self.hosts if transport is None else [self.host(transport)]
        return {h.name: await h.validate_state(flags) for h in hosts}

    def foreground_busy(self) -> contextlib.AbstractContextManager[None]:
        """``with spooler.foreground_busy():`` holds background work back meanwhile."""
        return self.idle.foreground_busy()

    def subscribe(self, *, maxsize: int = 1000, name: str = "subscriber") -> Subscriber:
        return self.status.subscribe(maxsize=maxsize, name=name)

    async def wait_for(
        self,
        message_id: str,
        states: Sequence[MessageState] | None = None,
        *,
        timeout: float | None = None,
    ) -> MessageState:
        """Wait until the message is in one of ``states`` (default: finished).

        Wakes when this spooler changes a message (a claim, a result, a cancel, a
        hold...), and otherwise reads the state again every quarter second of the
        spooler's clock (time alone and other processes change states too); under a
        fake clock, only when the test moves time on.  A message its settle deleted
        (``[store] keep_sent = 0``) is SENT when only sent messages are deleted at
        once; else UnknownMessage says it may have finished and not been kept."""
        wanted = set(states or (MessageState.SENT, MessageState.FAILED, MessageState.CANCELLED))
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                try:
                    st = await self.store.state_of(message_id, now=self.clock.now())
                except UnknownMessage as exc:  # finished and deleted at once, perhaps
                    st = self._vanished(exc, wanted)
                if st in wanted:
                    return st
                await wait_event(self.clock, self._changed, _RECHECK)

    def _vanished(self, exc: UnknownMessage, wanted: set[MessageState]) -> MessageState:
        """The queue of a message no longer in the store, when only one finished queue
        is deleted at once (``[store] keep_sent = 0``: SENT, not kept) and it is one
        of ``wanted``; else UnknownMessage saying it may have finished."""
        retention = self.config.retention
        state = retention.vanished()
        if state is not None and state in wanted:
            return state
        raise retention.missing(exc)

    async def wait_ready(self, *, timeout: float | None = None) -> dict[str, bool]:
        """Wait until every transport has tried to log on; name -> logged on."""
        async with asyncio.timeout(timeout):
            for h in self.hosts:
                await h.tried_logon.wait()
        return {h.name: h.session is not None for h in self.hosts}

    async def wait_inbox(self, count: int, *, timeout: float | None = None) -> list[InboxEntry]:
        """Wait until the inbox holds at least ``count`` messages; returns the first ones."""
        async with asyncio.timeout(timeout):
            while True:
                self._received_event.clear()
                entries = await self.store.list_inbox(limit=count)
                if len(entries) >= count:
                    return entries
                await wait_event(self.clock, self._received_event, _RECHECK)

    def statistics(self) -> dict[str, Any]:
        return {
            "node": self.owner,
            "counters": dict(self.counters),
            "scheduler": self.meter.statistics(),
            "critical_sections": self.critsec.statistics(),
            "idle": self.idle.statistics(),
            "status": self.status.statistics(),
            "transports": {h.name: h.statistics() for h in self.hosts},
            "stalls": list(self._stalls),
        }

    # -- routing, settlement, back-off (and what hosts call: see runtime.SpoolerPort) ------
    def routing_table(self) -> RoutingTable:
        """The transports in order with the types they serve (cached: a host drops the
        cache whenever its address types change, see :meth:`types_changed`)."""
        return self._routing.table()

    def _route_entries(self) -> list[RouteEntry]:
        entries = []
        for h in self.hosts:
            if not h.entry.outbound:
                continue
            types = h.types
            if types is None and h.entry.address_types is not None:
                types = frozenset(t.upper() for t in h.entry.address_types)
            entries.append(RouteEntry(h.name, types, h.entry.domains))
        return entries

    def routing_changed(self) -> None:
        self._routing.changed()

    def types_changed(self) -> None:
        self._routing.invalidate()

    def messages_changed(self) -> None:
        """Some recipients changed state (in this process): wakes :meth:`wait_for`."""
        self._changed.set()

    def store_failed(self) -> None:
        """A store call outside the spooler's own chores failed (the node's presence):
        noted for the lanes' recovery (:class:`~._core.recovery.StoreOutages`)."""
        self._runtime.store_failed()

    def _released(self) -> None:
        """Expired claims went back to the queue."""
        self.messages_changed()
        self._wake_all()

    def _wake_all(self) -> None:
        for h in self.hosts:
            h.wake.set()
        self.routing_changed()

    async def route_now(self) -> None:
        """Route whatever waits for routing, now (a flush does this first)."""
        await self._routing.route_now()

    async def settle(
        self,
        job: ClaimedJob,
        updates: Sequence[RecipientUpdate],
        *,
        results: Sequence[RecipientResult] = (),
    ) -> bool:
        return await self._settlement.settle(job, updates, results=results)

    def destination_wait(self, transport: str, address: Address) -> Hold | None:
        """A destination in back-off: when it may be tried again, and why; or None."""
        return self._destinations.wait(transport, address)

    def forget_destinations(self, transport: str) -> None:
        self._destinations.forget(transport)

    async def flush_asked(self, transport: str) -> bool:
        presence = node_of(self)
        return presence is not None and await presence.flush_asked(transport)

    # -- internal: events from hosts -------------------------------------------------------
    def received(self, entries: Sequence[InboxEntry]) -> None:
        """Inbound messages were committed (one status update per batch)."""
        self.counters["received"] += len(entries)
        if SPOOLER_ROW in self.status:
            self.status.update(SPOOLER_ROW, counters=dict(self.counters))
        self._received_event.set()

    async def unpark(self, transport: str, ref: str | None) -> None:
        n = await self.store.unpark(transport, ref, now=self.clock.now())
        if n:
            self.messages_changed()
            self.host(transport).wake.set()

    def flush_requested(self, transport: str, flags: FlushFlags) -> None:
        """A provider set a *_FLUSH bit itself: it asks for a flush of its own."""
        if not self._closing:
            log.info("transport %r asked for a flush (%s)", transport, flags)
            FlushHandle(self._runtime, self, [self.host(transport)], flags | FlushFlags.NO_UI)

    def count(self, counter: str) -> None:
        self.counters[counter] += 1

    def _critsec_overrun(self, owner: Any, held: float) -> None:
        name = getattr(owner, "name", "?")
        text = (
            f"held a critical section for {held:.2f} s, over the {self.policy.critsec_max:.2f} s "
            "maximum: other transports are stopped meanwhile; it is taken away after "
            f"{self.policy.critsec_grace:g} s more"
        )
        log.warning("transport %r %s", name, text)
        if name in self.status:
            self.status.update(name, detail=text)
        self.counters["critsec_overruns"] += 1

    def _critsec_expired(self, owner: Any, held: float, calls: Sequence[Any]) -> None:
        self.counters["critsec_expired"] += 1
        if isinstance(owner, TransportHost):
            owner.critsec_expired(held, calls)

    def _stalled(self, name: str, held: float) -> None:
        # Called by the slice meter when the stall ends, with its whole length.
        self._stalls.append((name, held))
        del self._stalls[:-100]


def _route_checks(table: RoutingTable) -> dict[str, Callable[[RecipientRecord], bool]]:
    """For :meth:`Store.reroute_missing`: by transport, whether a recipient queued for
    it stays there.  It stays while the transport serves its address (the types its
    profile declares, its ``domains``) and, when some transport is limited to
    domains, no such transport other than its own takes the address before it (the
    table's decision, as at submit: one added for the recipient's domain, or for a
    closer one, takes what was queued for the smart host or for the parent domain),
    leaving out the transports that declined the recipient (its ``refused_by``: one
    that declined it would decline it again, at every start).
    A transport whose types are known only at logon, without domains, is not checked.
    """
    by_domain = any(e.domains is not None for e in table.entries)
    checks: dict[str, Callable[[RecipientRecord], bool]] = {}
    for entry in table.entries:
        serves = _route_check(entry)
        if by_domain and entry.address_types is not None:
            checks[entry.name] = functools.partial(_still_routed, table, entry.name, serves)
        elif entry.domains is not None or (entry.address_types is not None and not entry.wildcard):
            checks[entry.name] = serves
    return checks


def _still_routed(
    table: RoutingTable,
    name: str,
    serves: Callable[[RecipientRecord], bool],
    recipient: RecipientRecord,
) -> bool:
    if not serves(recipient):
        return False
    address = recipient.address
    decision = table.decide(address.type, recipient.refused_by, address.value)
    if not isinstance(decision, Route) or decision.transport == name:
        return True
    # Only a transport limited to the address's domain takes it over: one without
    # domains decided first may be one that declined it at routing (the router asks
    # it again, and it would decline again at every start).
    return table.entry(decision.transport).domains is None


def _route_check(entry: RouteEntry) -> Callable[[RecipientRecord], bool]:
    """Whether ``entry`` still takes a recipient queued for it, by the address types
    its profile declares (any, if it declares none) and its ``domains``
    (:meth:`Store.reroute_missing`)."""
    if entry.address_types is None:
        return lambda r: entry.serves_domain(r.address.value)
    return lambda r: entry.serves(r.address.type, r.address.value)
