"""The spooler's side of one transport session.

A :class:`TransportHost` logs its session on (and on again after a failure), keeps
the session's status row, runs its *lanes* (outbound workers, the inbound lane, the
idle lane) under a TaskGroup it owns, measures and gates every provider call through
the slice meter, and turns what the provider does into store updates.  It also
implements the session's support object (:class:`SupportImpl`): the provider's only
door into the spooler.

Failure policy: an exception from a provider call is the provider's failure, never
the spooler's.  It is counted; its recipients are retried with backoff; after
``failure_threshold`` consecutive failures the row shows STATUS_FAILURE and the
session pauses (doubling up to a cap) before it is given work again.  Other
sessions are not affected.  A failed logon is retried the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from ...contract.errors import (
    ContractViolation,
    InvalidObject,
    MessageCancelled,
    NetworkError,
    NotMe,
    SubmitCancelled,
    TransportBusy,
    Unconfigured,
    WaitRetry,
)
from ...contract.objects import OutboundMessage
from ...contract.provider import TransportSession
from ...model import (
    EndFlags,
    FlushFlags,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    Outcome,
    Progress,
    RecipientResult,
    RecipientState,
    ResourceType,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    TransportNotifyFlags,
    ValidateFlags,
    new_message_id,
)
from ...status import StatusRow
from ...store import ClaimedJob, InboundMessage, LeaseLost, RecipientUpdate
from .. import deadline
from ..clock import wait_event
from ..config import TransportConfig
from ..lifecycle import Phase, SessionLifecycle
from ..objects import InboundWriterImpl, OutboundMessageImpl, ProfileSectionImpl
from ..policy import PARKED_NOTE, SubmitOutcome, plan_after_submit, plan_result
from ..slices import checkpoint
from .isolated import IsolatedProvider, IsolatedSession

if TYPE_CHECKING:
    from ..spooler import Spooler

__all__ = ["SupportImpl", "TransportHost"]

T = TypeVar("T")
log = logging.getLogger("spoolbox.transport")

#: A batch of inbound messages is committed once it holds this many bytes (they are
#: in memory until their commit), whatever ``policy.inbound_commit_batch`` says.
INBOUND_COMMIT_BYTES = 8 * 1024 * 1024
S = StatusCode
N = TransportNotifyFlags

#: The message (outbound or inbound) the current task is working on, for cancellation.
_CURRENT: contextvars.ContextVar[OutboundMessageImpl | InboundWriterImpl | None] = (
    contextvars.ContextVar("spoolbox_current_message", default=None)
)


class TransportHost:
    def __init__(self, spooler: Spooler, entry: TransportConfig, provider: Any) -> None:
        self.spooler = spooler
        self.entry = entry
        self.name = entry.name
        self.provider = provider
        self.session: TransportSession | None = None
        self.lifecycle = SessionLifecycle(entry.name)
        self.support = SupportImpl(self)
        self.caps = LogonCaps.NONE
        self._types: frozenset[str] | None = None
        self.concurrency = 1
        self.profile: ProfileSectionImpl | None = None
        self.flushing = FlushFlags.NONE
        self.wake = asyncio.Event()
        self.newmail = asyncio.Event()
        self.recovered = asyncio.Event()
        self.job_done = asyncio.Event()
        self.tried_logon = asyncio.Event()  # set after each logon attempt, good or bad
        self.inbound_lock = asyncio.Lock()
        self._claim_lock = asyncio.Lock()  # one outbound lane waits for work at a time
        self._ready: collections.deque[ClaimedJob] = collections.deque()  # claimed, not started
        self._held: dict[str, ClaimedJob] = {}  # claimed, not settled (leases renewed)
        self.active: dict[str, OutboundMessageImpl | InboundWriterImpl] = {}
        self.cancelled_refs: set[str] = set()  # cancelled while claimed, not started
        self.lease_lost: set[str] = set()  # another spooler holds them now: hands off
        self.sending = 0  # messages inside submit_message / end_message right now
        self.critical_error = False
        self.stopping = False
        self._stop = asyncio.Event()
        self._cooldown_until = 0.0
        self._last_overrun_log = 0.0
        self.counters: dict[str, int] = {
            "submitted": 0,
            "delivered": 0,
            "failed": 0,
            "deferred": 0,
            "received": 0,
            "errors": 0,
            "slices": 0,
            "slow_slices": 0,
        }
        self.consecutive_failures = 0
        self.longest_slice = 0.0
        self.last_error: str | None = None
        self.logons = 0
        self.flush_done = 0  # messages finished while an upload flush is on
        self.flush_bytes = 0

    @property
    def types(self) -> frozenset[str] | None:
        """The address types the session serves; None while it is not logged on."""
        return self._types

    @types.setter
    def types(self, value: frozenset[str] | None) -> None:
        if value != self._types:
            self._types = value
            self.spooler._table = None  # the routing table changes with it

    @property
    def inflight(self) -> int:
        """Messages claimed and not settled yet, those waiting for a lane included."""
        return len(self._held)

    def __repr__(self) -> str:
        return (
            f"<TransportHost {self.name} {self.lifecycle.phase} inflight={self.inflight} "
            f"failures={self.consecutive_failures}>"
        )

    # -- SliceOwner -------------------------------------------------------------------
    @property
    def exempt_from_budget(self) -> bool:
        return bool(self.flushing)

    def record_slice(self, seconds: float, overran: bool) -> None:
        self.counters["slices"] += 1
        if seconds > self.longest_slice:
            self.longest_slice = seconds
        if not overran:
            return
        self.counters["slow_slices"] += 1
        budget = self.spooler.meter.budget
        detail = (
            f"slow: a slice ran {seconds * 1000:.1f} ms, over the {budget * 1000:.1f} ms "
            f"budget ({self.counters['slow_slices']} so far); see docs/providers.md#slices"
        )
        if self.name in self.spooler.status:
            self.spooler.status.update(self.name, detail=detail, counters=dict(self.counters))
        now = time.monotonic()
        if now - self._last_overrun_log >= 1.0:
            self._last_overrun_log = now
            log.warning(
                "transport %r overran its slice: %.1f ms without yielding (budget %.1f ms)",
                self.name,
                seconds * 1000,
                budget * 1000,
            )

    # -- calling the provider ---------------------------------------------------------
    async def call(self, name: str, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self.lifecycle.check(name)
        except ContractViolation:
            coro.close()
            raise
        limit = self.spooler.policy.call_timeout
        tracked: deadline.CallDeadline | None = None
        try:
            async with asyncio.timeout(limit) as timeout:
                with deadline.tracking(name, timeout) as tracked:
                    result = await self.spooler.meter.run(self, coro)
        except TimeoutError:
            if tracked is not None and tracked.cut_reason is not None:
                raise TimeoutError(
                    f"{name}() of transport {self.name!r} was cancelled: {tracked.cut_reason}"
                ) from None
            raise TimeoutError(
                f"{name}() of transport {self.name!r} ran longer than {limit:g} s and was "
                "cancelled (policy.call_timeout; time waiting for another session's "
                "critical section not counted)"
            ) from None
        finally:
            if tracked is not None and self.spooler.critsec.abandon(self, tracked):
                self._critsec_left_open(
                    name, f"{name}() returned without leaving the critical section it entered"
                )
        self.lifecycle.done(name)
        return result

    def call_sync(self, name: str, fn: Callable[[], T]) -> T:
        self.lifecycle.check(name)
        start = time.perf_counter()
        try:
            return fn()
        finally:
            took = time.perf_counter() - start
            self.record_slice(took, took > self.spooler.meter.budget and not self.flushing)
            self.lifecycle.done(name)

    def _require_session(self) -> TransportSession:
        if self.session is None:
            raise ContractViolation(f"transport {self.name!r} is not logged on")
        return self.session

    # -- status row ---------------------------------------------------------------------
    def _row(self) -> StatusRow:
        row = self.spooler.status.get(self.name)
        if row is None:
            row = self.spooler.status.put(
                StatusRow(
                    name=self.name,
                    resource_type=ResourceType.TRANSPORT_PROVIDER,
                    provider_display=self._display(),
                )
            )
        return row

    def _display(self) -> str:
        if isinstance(self.provider, IsolatedProvider):
            return self.provider.display
        cls = type(self.provider) if self.provider is not None else None
        return str(getattr(cls, "display_name", getattr(cls, "__name__", "transport")))

    def set_bits(self, on: StatusCode = S.NONE, off: StatusCode = S.NONE, **cols: Any) -> None:
        row = self._row()
        code = (row.status_code | on) & ~off
        self.spooler.status.update(
            self.name, status_code=code, counters=dict(self.counters), **cols
        )

    def bump(self, counter: str, by: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + by
        if self.name in self.spooler.status:
            self.spooler.status.update(self.name, counters=dict(self.counters))

    # -- failures -------------------------------------------------------------------------
    def call_failed(self, call: str, exc: BaseException) -> None:
        self.consecutive_failures += 1
        self.counters["errors"] += 1
        text = f"{call} raised {type(exc).__name__}: {exc}"
        if isinstance(exc, ContractViolation):
            text = f"contract violation in {call}: {exc}"
        self.last_error = text
        log.warning("transport %r: %s", self.name, text, exc_info=not isinstance(exc, WaitRetry))
        policy = self.spooler.policy
        if self.consecutive_failures >= policy.failure_threshold:
            over = self.consecutive_failures - policy.failure_threshold
            pause = min(policy.failure_backoff_cap, policy.failure_backoff * 2 ** min(over, 30))
            self._cooldown_until = self.spooler.clock.now() + pause
            self.recovered.clear()
            self.set_bits(on=S.FAILURE, detail=f"{text} (paused {pause:.0f} s)")
        else:
            self.set_bits(detail=text)

    def _critsec_left_open(self, call: str, what: str) -> None:
        """The spooler released a section this session did not leave: a contract
        violation, recorded like the others (log, row, ``errors``, statistics)."""
        self.spooler.counters["critsec_left_open"] += 1
        self.call_failed(
            call,
            ContractViolation(
                f"{what}; the spooler released it (leave it before the call returns: "
                "async with support.critical_section())"
            ),
        )

    def critsec_expired(self, held: float, calls: Sequence[object]) -> None:
        """The section was taken away after ``critsec_max`` plus ``critsec_grace``:
        cancel the calls that entered it, show the failure on the row."""
        policy = self.spooler.policy
        cut = [c for c in calls if isinstance(c, deadline.CallDeadline) and c.open]
        text = (
            f"held the critical section {held:.2f} s, over policy.critsec_max "
            f"({policy.critsec_max:g} s) plus critsec_grace ({policy.critsec_grace:g} s): "
            "the spooler took it away"
        )
        if cut:
            text += " and cancelled " + ", ".join(f"{c.call}()" for c in cut)
        for c in cut:
            c.cut(text)
        self.last_error = text
        log.error("transport %r %s", self.name, text)
        self.set_bits(on=S.FAILURE, detail=text)

    def call_ok(self) -> None:
        if self.consecutive_failures or (self._row().status_code & S.FAILURE):
            self.consecutive_failures = 0
            self._cooldown_until = 0.0
            if not self.critical_error:
                self.set_bits(off=S.FAILURE)

    # -- gates ------------------------------------------------------------------------
    async def background_gate(self, direction: FlushFlags = FlushFlags.NONE) -> None:
        """Wait until this session may start background work (a flush of
        ``direction`` lets it through at once)."""
        sp = self.spooler
        cs = sp.critsec
        while not (self.stopping or self.critical_error):
            flushing = bool(self.flushing & direction)
            if cs.active and not flushing:
                await self._critsec_changed_or_stop()
                continue
            now = sp.clock.now()
            if self._cooldown_until > now and not flushing:
                await wait_event(sp.clock, self.recovered, self._cooldown_until - now)
                self.recovered.clear()
                continue
            if flushing:
                return
            if not sp.idle.is_idle():
                # Re-check now and then: a flush may start meanwhile.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await sp.idle.wait_idle()
                continue
            return

    async def _critsec_changed_or_stop(self) -> None:
        """Wait until the critical section changes or this session is told to stop."""
        changed = self.spooler.critsec.changed()
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((changed, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()  # its own future: no other waiter is touched
            stop.cancel()

    async def implicit_yield(self) -> None:
        sp = self.spooler
        if sp.critsec.holder is not self and sp.meter.slice_spent():
            await checkpoint()
        self.check_cancelled()

    def check_cancelled(self) -> None:
        cur = _CURRENT.get()
        if cur is not None and cur.cancelled:
            raise MessageCancelled(cur.ref)

    # -- logon ----------------------------------------------------------------------------
    async def logon(self) -> None:
        sp = self.spooler
        self.lifecycle = SessionLifecycle(self.name)
        self.support = SupportImpl(self)  # a dead session's support object stays dead
        self.critical_error = False
        flags = self.entry.logon_flags | LogonFlags.NO_INBOUND | LogonFlags.NO_OUTBOUND
        section = f"transport:{self.name}"
        self.profile = ProfileSectionImpl(sp.store, section, await sp.store.profile_get(section))
        session = await self.call(
            "logon", self.provider.logon(self.support, self.entry.options, flags)
        )
        for method in ("address_types", "submit_message", "end_message", "transport_notify"):
            if not callable(getattr(session, method, None)):
                raise ContractViolation(
                    f"logon() of {self._display()} returned {session!r}, which has no "
                    f"{method}(): not a TransportSession"
                )
        self.session = session
        self.logons += 1
        caps = self.call_sync("capabilities", session.capabilities)
        if not isinstance(caps, int):
            raise ContractViolation(f"capabilities() returned {caps!r}, not LogonCaps")
        self.caps = LogonCaps(caps)
        types = self.call_sync("address_types", session.address_types)
        if isinstance(types, str) or not all(isinstance(t, str) for t in types):
            raise ContractViolation(
                f"address_types() must return a collection of strings, not {types!r}"
            )
        self.types = frozenset(t.upper() for t in types)
        self.call_sync("register_options", session.register_options)
        self.concurrency = max(1, int(getattr(session, "concurrency", 1)))
        if self.name not in sp.status:
            self._row()
            self.set_bits(detail="provider did not create its status row in logon()")
        begin = N.NONE
        if self.entry.inbound:
            begin |= N.BEGIN_INBOUND
        if self.entry.outbound:
            begin |= N.BEGIN_OUTBOUND
        if begin:
            await self.call("transport_notify", session.transport_notify(begin, None))
        self.lifecycle.begin()
        on = S.AVAILABLE
        if self.entry.inbound:
            on |= S.INBOUND_ENABLED
        if self.entry.outbound:
            on |= S.OUTBOUND_ENABLED
        self.set_bits(on=on, off=S.FAILURE | S.OFFLINE, detail=None)
        self.consecutive_failures = 0

    async def end_and_logoff(self, *, hurry: bool = False) -> None:
        session = self.session
        if session is None:
            return
        try:
            if self.lifecycle.running:
                end = N.NONE
                if self.entry.inbound:
                    end |= N.END_INBOUND
                if self.entry.outbound:
                    end |= N.END_OUTBOUND
                if end:
                    await self.call("transport_notify", session.transport_notify(end, None))
                self.lifecycle.end()
            await self.call(
                "logoff", session.logoff(LogoffFlags.HURRY if hurry else LogoffFlags.NORMAL)
            )
        except Exception as exc:
            self.last_error = f"logoff failed: {type(exc).__name__}: {exc}"
            log.warning("transport %r: %s", self.name, self.last_error)
        finally:
            self.lifecycle.logged_off()
            self.session = None
            self.types = None
            self._release_critsec_at_logoff()
            if self.name in self.spooler.status:
                self.set_bits(
                    off=S.AVAILABLE
                    | S.INBOUND_ENABLED
                    | S.OUTBOUND_ENABLED
                    | S.INBOUND_ACTIVE
                    | S.OUTBOUND_ACTIVE,
                    on=S.OFFLINE,
                )

    def _release_critsec_at_logoff(self) -> None:
        if self.spooler.critsec.release(self):
            self._critsec_left_open(
                "logoff", "the session ended while it held the critical section"
            )

    # -- the supervisor -----------------------------------------------------------------------
    async def run(self) -> None:
        """Log on, run the lanes, and log on again after a failure, until stopped."""
        sp = self.spooler
        delay = sp.policy.relogon_delay
        while not self.stopping:
            try:
                await self.logon()
                self.tried_logon.set()
            except Exception as exc:
                self.tried_logon.set()
                self.lifecycle.fail()
                self.session = None
                self.types = None
                self._release_critsec_at_logoff()
                if isinstance(exc, Unconfigured):
                    text = f"not configured: {exc}"
                else:
                    text = f"logon failed: {type(exc).__name__}: {exc}"
                self.last_error = text
                self.counters["errors"] += 1
                log.warning("transport %r: %s (retrying in %.0f s)", self.name, text, delay)
                self._row()
                self.set_bits(on=S.FAILURE | S.OFFLINE, off=S.AVAILABLE, detail=text)
                await wait_event(sp.clock, self._stop, delay)
                delay = min(delay * 2, sp.policy.failure_backoff_cap)
                continue
            began = sp.clock.now()
            sp.routing_changed()
            renewer: asyncio.Task[None] | None = None
            usage: asyncio.Task[None] | None = None
            try:
                async with asyncio.TaskGroup() as tg:
                    lanes: list[asyncio.Task[None]] = []
                    if self.entry.outbound:
                        renewer = tg.create_task(self._renew(), name=f"{self.name}-leases")
                        for i in range(self.concurrency):
                            lanes.append(
                                tg.create_task(self._outbound_worker(), name=f"{self.name}-out-{i}")
                            )
                    if self.entry.inbound:
                        lanes.append(tg.create_task(self._inbound_lane(), name=f"{self.name}-in"))
                    if self.caps & LogonCaps.SP_IDLE:
                        lanes.append(tg.create_task(self._idle_lane(), name=f"{self.name}-idle"))
                    if isinstance(self.session, IsolatedSession):
                        usage = tg.create_task(
                            self._child_usage(self.session), name=f"{self.name}-usage"
                        )
                    await self._stop.wait()
                    # Lanes see the stop flag and finish the message in hand; after the
                    # grace period whatever is left is cancelled (its claims go back to
                    # the queue when the spooler releases its leases).
                    _, pending = await asyncio.wait(lanes, timeout=sp.policy.shutdown_grace)
                    for task in pending:
                        task.cancel()
                    if pending:
                        await asyncio.wait(pending)
                    if renewer is not None:
                        renewer.cancel()
                    if usage is not None:
                        usage.cancel()
            except* Exception as group:  # a spooler bug, not the provider's fault
                for lane_exc in group.exceptions:
                    log.error("transport %r lane crashed", self.name, exc_info=lane_exc)
                self.set_bits(on=S.FAILURE, detail=f"internal error: {group.exceptions[0]!r}")
            await self._give_back_ready()
            # Jobs of lanes cancelled after the grace period: the spooler releases
            # their leases; this session no longer renews them.
            self._held.clear()
            await self.end_and_logoff()
            sp.routing_changed()
            if not self.critical_error or sp.clock.now() - began >= sp.policy.failure_backoff_cap:
                delay = sp.policy.relogon_delay
            if not self.stopping:
                self._stop.clear()
                await asyncio.sleep(0)
                await wait_event(sp.clock, self._stop, delay)
                if self.critical_error:
                    # A session that dies soon after each logon (an isolated transport
                    # whose child crashes): each restart waits twice as long.
                    delay = min(delay * 2, sp.policy.failure_backoff_cap)

    async def _child_usage(self, session: IsolatedSession) -> None:
        """An isolated session's child process: its pid, CPU time and resident set in
        the row's counters, refreshed every ``policy.progress_interval`` seconds."""
        sp = self.spooler
        started = self.provider.started if isinstance(self.provider, IsolatedProvider) else 1
        while not self._stop.is_set():
            use = session.usage()  # two small reads of /proc
            self.counters["child_pid"] = use.pid
            self.counters["child_cpu_ms"] = round(use.cpu_seconds * 1000)
            self.counters["child_rss_kb"] = use.rss_bytes // 1024
            self.counters["child_restarts"] = max(0, started - 1)
            if self.name in sp.status:
                sp.status.update(self.name, counters=dict(self.counters))
            await wait_event(sp.clock, self._stop, max(sp.policy.progress_interval, 0.5))

    async def stop(self) -> None:
        """Ask the lanes to finish (in-flight work ends normally), then log off."""
        self.stopping = True
        self._stop.set()
        self.wake.set()
        self.newmail.set()
        self.recovered.set()

    def fail_critically(self, text: str) -> None:
        self.critical_error = True
        self.lifecycle.fail()
        self.last_error = text
        self.set_bits(on=S.FAILURE, detail=text)
        self._stop.set()
        self.wake.set()
        self.newmail.set()

    # -- outbound --------------------------------------------------------------------------------
    async def _outbound_worker(self) -> None:
        sp = self.spooler
        while not (self.stopping or self.critical_error):
            # Only one lane at a time waits for work and claims: an idle session with
            # ten lanes makes one claim per wake-up, not ten.  A claim takes a batch;
            # what the claiming lane does not start itself waits in ``_ready`` for the
            # next free lane, so one store round trip feeds several lanes.
            async with self._claim_lock:
                if not self._ready:
                    jobs = await self._wait_for_jobs(sp.policy.claim_batch)
                    if not jobs:
                        return
                    # Held (in flight) from the claim until settled, so a flush does
                    # not see "nothing left" while jobs still wait for a lane.
                    for claimed in jobs:
                        self._held[claimed.message.id] = claimed
                    self._ready.extend(jobs)
                job = self._ready.popleft()
            try:
                await self._process(job)
            finally:
                self._held.pop(job.message.id, None)
            # Between messages the foreground always gets its turn, however short each
            # message was (one slice per message at most).
            await checkpoint()

    async def _give_back_ready(self) -> None:
        """Jobs claimed but not started (the session is ending): back to the queue now,
        instead of when their leases run out."""
        sp = self.spooler
        while self._ready:
            job = self._ready.popleft()
            self._held.pop(job.message.id, None)
            with contextlib.suppress(Exception):
                await sp.store.settle(
                    job.message.id,
                    [RecipientUpdate(r.index, RecipientState.QUEUED) for r in job.recipients],
                    owner=sp.owner,
                    now=sp.clock.now(),
                )
                sp.messages_changed()

    async def _wait_for_jobs(self, limit: int) -> list[ClaimedJob]:
        """Claim work, waiting for it (woken by routing, a retry time, a flush); an
        empty list means the session is stopping."""
        sp = self.spooler
        while not (self.stopping or self.critical_error):
            await self.background_gate(FlushFlags.UPLOAD)
            if self.stopping or self.critical_error:
                break
            self.wake.clear()
            try:
                jobs = await sp.store.claim(
                    self.name,
                    owner=sp.owner,
                    now=sp.clock.now(),
                    lease=sp.policy.lease,
                    limit=limit,
                    # A flush makes deferred mail ready once (retry_transport) instead
                    # of ignoring retry times, so a failure during it is not retried hot.
                    ignore_retry=False,
                )
            except Exception as exc:
                log.error("transport %r: claim failed: %s", self.name, exc)
                await wait_event(sp.clock, self._stop, sp.policy.failure_backoff)
                continue
            if jobs:
                sp.messages_changed()
                return jobs
            try:
                nxt = await sp.store.next_ready_at(self.name)
            except Exception:
                nxt = None
            timeout = sp.policy.router_interval * 5
            if nxt is not None:
                timeout = min(timeout, max(0.0, nxt - sp.clock.now()))
            await wait_event(sp.clock, self.wake, timeout)
        return []

    async def _process(self, job: ClaimedJob) -> None:
        sp = self.spooler
        session = self._require_session()
        mid = job.message.id
        if mid in self.lease_lost:
            # Its lease ran out while it waited here, and another spooler has it now.
            self.lease_lost.discard(mid)
            self.cancelled_refs.discard(mid)
            self.job_done.set()
            return
        if mid in self.cancelled_refs:
            # Cancelled by the user while it waited in this lane's batch.
            self.cancelled_refs.discard(mid)
            await sp.settle(
                job,
                [
                    RecipientUpdate(
                        r.index, RecipientState.CANCELLED, diagnostic="cancelled by user"
                    )
                    for r in job.recipients
                ],
            )
            self.job_done.set()
            return
        # Recipients whose destination is in back-off wait for it without an attempt.
        waiting = [
            (r, until)
            for r in job.recipients
            if (until := sp.destination_wait(self.name, r.address)) is not None
        ]
        if waiting:
            await sp.settle(
                replace(job, recipients=tuple(r for r, _ in waiting)),
                [
                    RecipientUpdate(r.index, RecipientState.QUEUED, retry_at=until)
                    for r, until in waiting
                ],
            )
            held = {r.index for r, _ in waiting}
            job = replace(job, recipients=tuple(r for r in job.recipients if r.index not in held))
            if not job.recipients:
                self.job_done.set()
                return
        deferred = any(r.diagnostic == PARKED_NOTE for r in job.recipients)
        flags = SubmitFlags.BEGIN_DEFERRED if deferred else SubmitFlags.NONE
        msg = OutboundMessageImpl(job, sp.store, self.implicit_yield, flags)
        self.active[mid] = msg
        self.sending += 1
        self.counters["submitted"] += 1
        self.set_bits(on=S.OUTBOUND_ACTIVE)
        token = _CURRENT.set(msg)
        outcome = SubmitOutcome.END_SENT
        delay: float | None = None
        reason = ""
        try:
            try:
                await self.call("submit_message", session.submit_message(msg, flags))
            except TransportBusy:
                outcome = SubmitOutcome.BUSY
            except NotMe:
                outcome = SubmitOutcome.NOT_ME
            except WaitRetry as exc:
                outcome, delay, reason = SubmitOutcome.WAIT, exc.delay, str(exc)
                if isinstance(exc, NetworkError):  # the network is down: count it
                    self.call_failed("submit_message", exc)
            except SubmitCancelled:
                outcome = SubmitOutcome.CANCEL
            except MessageCancelled:
                outcome = SubmitOutcome.USER_CANCELLED
            except Exception as exc:
                outcome, reason = SubmitOutcome.ERROR, f"{type(exc).__name__}: {exc}"
                self.call_failed("submit_message", exc)
            else:
                self.lifecycle.submitted(mid)
                if self.critical_error:
                    outcome, reason = SubmitOutcome.ERROR, "transport reported a critical error"
                else:
                    try:
                        self.lifecycle.check_end(mid)
                        end = await self.call("end_message", session.end_message(msg))
                        if not isinstance(end, int):
                            raise ContractViolation(f"end_message() returned {end!r}, not EndFlags")
                        outcome = SubmitOutcome.from_end_flags(EndFlags(end))
                        self.call_ok()
                    except MessageCancelled:
                        outcome = SubmitOutcome.USER_CANCELLED
                    except Exception as exc:
                        outcome, reason = SubmitOutcome.ERROR, f"{type(exc).__name__}: {exc}"
                        self.call_failed("end_message", exc)
            if msg.cancelled:
                outcome = SubmitOutcome.USER_CANCELLED
        finally:
            _CURRENT.reset(token)
            msg.valid = False
            self.active.pop(mid, None)
            self.sending -= 1
            if self.sending == 0:
                self.set_bits(off=S.OUTBOUND_ACTIVE)
        updates = plan_after_submit(
            outcome,
            pending=msg.pending(),
            transport=self.name,
            policy=sp.policy,
            now=sp.clock.now(),
            expires_at=job.message.expires_at,
            delay=delay,
            reason=reason,
            begin_deferred=bool(flags & SubmitFlags.BEGIN_DEFERRED),
            rng=sp.rng,
        )
        if mid in self.lease_lost:
            # Cancelled because another spooler took it over: its results are not ours
            # to write (the store would refuse them); the other spooler finishes it.
            self.lease_lost.discard(mid)
            updates = []
        if updates:
            await sp.settle(job, updates)
            if outcome in (SubmitOutcome.END_SENT, SubmitOutcome.NOT_ME):
                sp.routing_changed()
            if outcome is SubmitOutcome.END_RESEND_NOW:
                self.wake.set()
        if self.flushing & FlushFlags.UPLOAD:
            self.flush_done += 1
            self.flush_bytes += job.message.size
        self.job_done.set()

    async def _renew(self) -> None:
        """Renew the leases of every job this session holds (claimed, not settled)."""
        sp = self.spooler
        period = sp.policy.lease / 3
        while True:
            await sp.clock.sleep(period)
            for mid, job in list(self._held.items()):
                try:
                    renewed = await sp.store.renew(job, now=sp.clock.now(), lease=sp.policy.lease)
                except LeaseLost as exc:
                    # Another spooler has the message now (this one stalled past the
                    # lease): stop working on it, say so once, stop renewing it.
                    if self._held.pop(mid, None) is None:
                        continue  # finished meanwhile: nothing left to stop
                    self.lease_lost.add(mid)
                    log.error(
                        "transport %r lost its lease on %s (%s): another spooler took it "
                        "over; the transport is told to cancel it",
                        self.name,
                        mid,
                        exc,
                    )
                    self.cancel(mid)
                    continue
                except Exception as exc:
                    log.warning("transport %r: lease renewal failed: %s", self.name, exc)
                    continue
                if mid in self._held:
                    self._held[mid] = renewed

    async def status_recips(
        self, message: OutboundMessage, results: Sequence[RecipientResult]
    ) -> None:
        if not isinstance(message, OutboundMessageImpl) or message.job.transport != self.name:
            raise ContractViolation(
                f"status_recips() got {message!r}, which is not a message of {self.name!r}"
            )
        if not message.valid:
            raise InvalidObject(f"status_recips() on {message.ref} after its call ended")
        mine = {r.index: r for r in message.recipients}
        seen: set[int] = set()
        for res in results:
            if not isinstance(res, RecipientResult):
                raise ContractViolation(f"status_recips() takes RecipientResult, not {res!r}")
            if res.index not in mine:
                raise ContractViolation(
                    f"recipient #{res.index} of {message.ref} is not one of {self.name!r}'s "
                    f"(its recipients: {sorted(mine)})"
                )
            if res.index in message.reported or res.index in seen:
                raise ContractViolation(
                    f"recipient #{res.index} of {message.ref} was already reported"
                )
            seen.add(res.index)
        sp = self.spooler
        now = sp.clock.now()
        updates = [
            plan_result(
                r,
                attempts=mine[r.index].attempts,
                policy=sp.policy,
                now=now,
                expires_at=message.info.expires_at,
                rng=sp.rng,
            )
            for r in results
        ]
        await sp.settle(message.job, updates, results=results)
        message.reported |= seen
        for r in results:
            key = {Outcome.DELIVERED: "delivered", Outcome.FAILED: "failed"}.get(
                r.outcome, "deferred"
            )
            self.counters[key] += 1
        if self.name in self.spooler.status:
            self.spooler.status.update(self.name, counters=dict(self.counters))

    def cancel(self, ref: str) -> bool:
        """NOTIFY_CANCEL_MESSAGE for a message this session is working on; a message
        claimed but not started yet is remembered and cancelled when its turn comes."""
        msg = self.active.get(ref)
        if msg is None or self.session is None:
            self.cancelled_refs.add(ref)
            return False
        msg.cancelled = True
        session = self.session

        async def notify() -> None:
            try:
                await self.call("transport_notify", session.transport_notify(N.CANCEL_MESSAGE, ref))
            except Exception as exc:
                self.call_failed("transport_notify", exc)

        self.spooler.spawn(notify(), name=f"{self.name}-cancel-{ref}")
        return True

    # -- inbound -----------------------------------------------------------------------------
    async def _inbound_lane(self) -> None:
        sp = self.spooler
        poll = bool(self.caps & LogonCaps.SP_POLL)
        next_poll = sp.clock.now()
        while not (self.stopping or self.critical_error):
            timeout = max(0.0, next_poll - sp.clock.now()) if poll else None
            notified = await wait_event(sp.clock, self.newmail, timeout)
            self.newmail.clear()
            if self.stopping or self.critical_error:
                return
            await self.background_gate()
            if self.stopping or self.critical_error:
                return
            if self.flushing & FlushFlags.DOWNLOAD:
                # A download flush is taking everything already: look again after it
                # (at the next poll time), without spinning.
                next_poll = sp.clock.now() + sp.policy.poll_interval
                if not poll:
                    self.newmail.set()  # the notification is not lost: retried then
                    await wait_event(sp.clock, self._stop, sp.policy.progress_interval)
                continue
            if poll and not notified:
                next_poll = sp.clock.now() + sp.policy.poll_interval
                count = await self.poll()
            else:
                # NEWMAIL says "something is waiting", not how much: take messages
                # until a start_message delivers nothing (bounded per wake-up).
                count = sp.policy.inbound_batch
            left = max(0, count)
            while left > 0:
                got, more = await self.receive_batch(left)
                left -= got
                if not got or not more:
                    break
                await checkpoint()
                await self.background_gate()
                if self.stopping or self.critical_error:
                    return

    async def poll(self) -> int:
        session = self._require_session()
        try:
            n = await self.call("poll", session.poll())
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ContractViolation(f"poll() returned {n!r}, not an int >= 0")
            self.call_ok()
            return n
        except Exception as exc:
            self.call_failed("poll", exc)
            return 0

    async def receive_one(self) -> bool:
        """StartMessage once; True if a message was committed to the inbox."""
        committed, _more = await self.receive_batch(1)
        return committed > 0

    def inbound_may_continue(self, *, flush: bool) -> bool:
        """Whether a batch being collected may take one more message: not when the
        session stops, when another session holds the critical section, and for the
        background lane not when a download flush wants the session or the
        foreground is busy (the batch is committed and the lane waits at its gate)."""
        sp = self.spooler
        if self.stopping or self.critical_error or self.session is None:
            return False
        if sp.critsec.active and sp.critsec.holder is not self:
            return False
        if flush:
            row = sp.status.get(self.name)
            return row is not None and bool(row.status_code & S.INBOUND_FLUSH)
        return not (self.flushing & FlushFlags.DOWNLOAD) and sp.idle.is_idle()

    async def receive_batch(
        self, limit: int | None = None, *, flush: bool = False
    ) -> tuple[int, bool]:
        """StartMessage up to ``limit`` times (at most ``policy.inbound_commit_batch``
        for an ``SP_INBOUND_BATCH`` session, else once), then commit what was
        delivered in one store transaction.

        Collecting stops early when a call delivers nothing, at
        :data:`INBOUND_COMMIT_BYTES` held in memory, or when
        :meth:`inbound_may_continue` says so.  Returns ``(committed, more)``:
        the messages now in the inbox, and False when a call delivered nothing (or
        failed), i.e. there is no point calling again now."""
        sp = self.spooler
        self._require_session()
        cap = sp.policy.inbound_commit_batch if self.caps & LogonCaps.SP_INBOUND_BATCH else 1
        n = cap if limit is None else max(1, min(limit, cap))
        async with self.inbound_lock:
            batch: list[tuple[InboundWriterImpl, float]] = []
            held = 0
            more = True
            # INBOUND_ACTIVE while the batch is collected (one status update per batch).
            self.set_bits(on=S.INBOUND_ACTIVE)
            try:
                while True:
                    writer = await self._start_inbound()
                    if writer is None:
                        more = False
                        break
                    batch.append((writer, sp.clock.now()))
                    held += writer.size
                    if len(batch) >= n or held >= INBOUND_COMMIT_BYTES:
                        break
                    if not self.inbound_may_continue(flush=flush):
                        break
                    await checkpoint()  # the loop's other work runs between provider calls
                    if not self.inbound_may_continue(flush=flush):
                        break
            finally:
                self.set_bits(off=S.INBOUND_ACTIVE)
            if not batch:
                return 0, more
            committed = await self._commit_inbound(batch)
            return committed, more and committed > 0

    async def _start_inbound(self) -> InboundWriterImpl | None:
        """One start_message; the writer if it delivered a message (not committed yet)."""
        session = self._require_session()
        writer = InboundWriterImpl(new_message_id(), self.implicit_yield)
        self.active[writer.ref] = writer
        token = _CURRENT.set(writer)
        ok = False
        try:
            result: object = await self.call(
                "start_message",
                session.start_message(writer),
            )
            if result is not None:
                raise ContractViolation(
                    f"start_message() returned {result!r}; it must return None "
                    "(write the message through the writer)"
                )
            if writer.cancelled:
                raise MessageCancelled(writer.ref)
            self.call_ok()
            ok = True
        except MessageCancelled:
            pass
        except Exception as exc:
            self.call_failed("start_message", exc)
        finally:
            _CURRENT.reset(token)
            writer.valid = False
            self.active.pop(writer.ref, None)
        if ok and writer.size > 0:
            return writer
        # Nothing of it is delivered: the provider may offer its source item again.
        await self._run_callbacks(writer.rollback_callbacks, "after_rollback callback")
        return None

    async def _run_callbacks(
        self, callbacks: Sequence[Callable[[], Awaitable[None] | None]], what: str
    ) -> None:
        for cb in callbacks:
            try:
                res = cb()
                if asyncio.iscoroutine(res):
                    await self.spooler.meter.run(self, res)
            except Exception as exc:
                self.call_failed(what, exc)

    async def _commit_inbound(self, batch: Sequence[tuple[InboundWriterImpl, float]]) -> int:
        """Commit the delivered messages in one transaction (all or nothing), then
        counters, progress and the after_commit callbacks in message order; on a
        failure, the after_rollback callbacks in message order."""
        sp = self.spooler
        section = self.profile.section if self.profile else f"transport:{self.name}"
        # The provider's state of the whole batch, merged in message order (the last
        # value of a key wins, None deletes): written once, with the last message, in
        # the same transaction as all of them.
        state: dict[str, Any] = {}
        for writer, _received_at in batch:
            state.update(writer.state)
        last = len(batch) - 1
        items = [
            (
                InboundMessage(
                    transport=self.name,
                    content=writer.content(),
                    sender=writer.sender,
                    recipients=writer.recipients,
                    received_at=received_at,
                    remote_id=writer.remote_id,
                ),
                {section: state} if state and i == last else None,
            )
            for i, (writer, received_at) in enumerate(batch)
        ]
        try:
            if len(items) == 1:
                message, updates = items[0]
                entries = [await sp.store.deliver_inbound(message, profile_updates=updates)]
            else:
                entries = await sp.store.deliver_inbound_many(items)
        except Exception as exc:
            # Not committed: the provider keeps its source items (no after_commit) and
            # hears so through after_rollback, so it offers them again.
            log.error(
                "transport %r: committing %d inbound message(s) failed: %s",
                self.name,
                len(items),
                exc,
            )
            self.set_bits(detail=f"inbox commit failed: {exc}")
            self.counters["errors"] += 1
            for writer, _received_at in batch:
                await self._run_callbacks(writer.rollback_callbacks, "after_rollback callback")
            return 0
        if self.profile is not None and state:
            self.profile._merged(state)
        self.bump("received", len(entries))
        if self.flushing & FlushFlags.DOWNLOAD:
            self.flush_done += len(entries)
            self.flush_bytes += sum(entry.size for entry in entries)
        sp.received(entries)
        # Still under the inbound lock, so no start_message can hand out the
        # source items again before the callbacks have removed them.
        for writer, _received_at in batch:
            await self._run_callbacks(writer.commit_callbacks, "after_commit callback")
        return len(entries)

    # -- idle ------------------------------------------------------------------------------------
    async def _idle_lane(self) -> None:
        sp = self.spooler
        session = self._require_session()
        while not (self.stopping or self.critical_error):
            await wait_event(sp.clock, self._stop, sp.policy.idle_interval)
            if self.stopping or self.critical_error:
                return
            await self.background_gate()
            if sp.critsec.active or self.stopping or self.critical_error:
                continue
            try:
                await self.call("idle", session.idle())
                self.call_ok()
            except Exception as exc:
                self.call_failed("idle", exc)

    # -- flush and validate ----------------------------------------------------------------
    async def flush_queues(self, flags: FlushFlags) -> bool:
        session = self._require_session()
        try:
            await self.call("flush_queues", session.flush_queues(flags))
            return True
        except Exception as exc:
            self.call_failed("flush_queues", exc)
            return False

    async def notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        session = self._require_session()
        try:
            await self.call("transport_notify", session.transport_notify(flags, ref))
        except Exception as exc:
            self.call_failed("transport_notify", exc)

    async def validate_state(self, flags: ValidateFlags) -> str:
        if self.spooler.critsec.holder is self:
            return "busy"
        session = self.session
        if session is None or not self.lifecycle.running:
            return "offline"
        try:
            await self.call("validate_state", session.validate_state(flags))
        except TransportBusy:
            return "busy"
        except Exception as exc:
            self.call_failed("validate_state", exc)
            return "error"
        if flags & ValidateFlags.CONFIG_CHANGED:
            self.requery_types()
        return "ok"

    def requery_types(self) -> None:
        session = self.session
        if session is None:
            return
        types = self.call_sync("address_types", session.address_types)
        if isinstance(types, str) or not all(isinstance(t, str) for t in types):
            self.call_failed(
                "address_types",
                ContractViolation(f"address_types() must return strings, not {types!r}"),
            )
            return
        self.types = frozenset(t.upper() for t in types)
        self.spooler.routing_changed()

    def status_object(self) -> Mapping[str, Any]:
        session = self._require_session()
        obj = self.call_sync("status_object", session.status_object)
        row = self._row().to_dict()
        row.update(dict(obj))
        return row


class SupportImpl:
    """IMAPISupport for one session; see :class:`spoolbox.contract.Support`."""

    def __init__(self, host: TransportHost) -> None:
        self._host = host
        self._lifecycle = host.lifecycle  # the session this object belongs to

    def __repr__(self) -> str:
        return f"<Support for {self._host.name}>"

    @property
    def transport_name(self) -> str:
        return self._host.name

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"spoolbox.transport.{self._host.name}")

    def now(self) -> float:
        return self._host.spooler.clock.now()

    def _alive(self, what: str) -> None:
        if self._lifecycle.phase is Phase.LOGGED_OFF or self._lifecycle is not self._host.lifecycle:
            raise InvalidObject(
                f"{what}() called by {self._host.name!r} after logoff: the support object is dead"
            )

    async def spooler_yield(self) -> None:
        self._alive("spooler_yield")
        host = self._host
        cs = host.spooler.critsec
        if cs.holder is host:
            await cs.explicit_yield(host)
        else:
            await checkpoint()
        host.check_cancelled()

    def slice_spent(self) -> bool:
        return self._host.spooler.meter.slice_spent()

    def spooler_notify(self, flags: SpoolerNotifyFlags, ref: str | None = None) -> None:
        self._alive("spooler_notify")
        host = self._host
        sp = host.spooler
        f = SpoolerNotifyFlags(flags)
        if f & (SpoolerNotifyFlags.CRITSEC | SpoolerNotifyFlags.NONCRIT):
            raise ContractViolation(
                "use `async with support.critical_section():` for NOTIFY_CRITSEC/NONCRIT"
            )
        if f & SpoolerNotifyFlags.CRITICAL_ERROR and f & SpoolerNotifyFlags.SENTDEFERRED:
            raise ContractViolation("CRITICAL_ERROR and SENTDEFERRED are mutually exclusive")
        if f & SpoolerNotifyFlags.NEWMAIL:
            if host.lifecycle.running and host.entry.inbound:
                host.newmail.set()
            else:
                log.info("transport %r: NEWMAIL ignored (inbound not enabled)", host.name)
        if f & SpoolerNotifyFlags.READYTOSEND:
            host.consecutive_failures = 0
            host._cooldown_until = 0.0
            host.recovered.set()
            host.wake.set()
            if not host.critical_error and host.name in sp.status:
                host.set_bits(off=S.FAILURE)
        if f & SpoolerNotifyFlags.SENTDEFERRED:
            sp.spawn(sp.unpark(host, ref), name=f"{host.name}-unpark")
        if f & SpoolerNotifyFlags.CONFIG_CHANGE:
            host.requery_types()
        if f & SpoolerNotifyFlags.CRITICAL_ERROR:
            host.fail_critically(f"transport reported a critical error{': ' + ref if ref else ''}")

    @contextlib.asynccontextmanager
    async def critical_section(self) -> AsyncIterator[None]:
        self._alive("critical_section")
        host = self._host
        cs = host.spooler.critsec
        # Waiting for another session's section is not charged to the call's timeout.
        with deadline.paused():
            entry = await cs.enter(host, deadline.current())
        try:
            yield
        finally:
            cs.leave(entry)

    def modify_status_row(
        self,
        *,
        status_code: StatusCode | None = None,
        set_bits: StatusCode = StatusCode.NONE,
        clear_bits: StatusCode = StatusCode.NONE,
        status_string: str | None = None,
        progress: Progress | None = None,
        clear_progress: bool = False,
        identity: str | None = None,
        update: bool = True,
    ) -> None:
        self._alive("modify_status_row")
        host = self._host
        table = host.spooler.status
        if not update or host.name not in table:
            table.put(
                StatusRow(
                    name=host.name,
                    resource_type=ResourceType.TRANSPORT_PROVIDER,
                    provider_display=host._display(),
                    status_code=StatusCode(status_code or 0),
                    status_string=status_string,
                    progress=progress,
                    identity=identity,
                    counters=dict(host.counters),
                )
            )
            old_code = StatusCode.NONE
            row = table[host.name]
        else:
            row = table[host.name]
            old_code = row.status_code
        code = row.status_code if status_code is None else StatusCode(status_code)
        code = (code | set_bits) & ~clear_bits
        changes: dict[str, Any] = {"status_code": code}
        if status_string is not None:
            changes["status_string"] = status_string
        if progress is not None:
            changes["progress"] = progress
        elif clear_progress:
            changes["progress"] = None
        if identity is not None:
            changes["identity"] = identity
        table.update(host.name, **changes)
        host.spooler.flush_bits_changed(host, old_code, code)

    async def status_recips(
        self, message: OutboundMessage, results: Sequence[RecipientResult]
    ) -> None:
        self._alive("status_recips")
        await self._host.status_recips(message, results)

    def profile_section(self) -> ProfileSectionImpl:
        self._alive("profile_section")
        if self._host.profile is None:
            raise ContractViolation("profile_section() before logon")
        return self._host.profile

    async def run_blocking(self, fn: Callable[..., T], /, *args: object) -> T:
        self._alive("run_blocking")
        return await asyncio.to_thread(fn, *args)
