"""What every part of a transport host shares: the session's state, the gated and
measured provider call, the status row, failure counting and the background gate.

:class:`HostBase` is the floor the lanes (:mod:`.outbound`, :mod:`.inbound`) and
the support object (:mod:`.support`) stand on; :class:`~.host.TransportHost`
adds the supervision (logon, restarts, logoff) on top.

Failure policy: an exception from a provider call is the provider's failure, never
the spooler's.  It is counted; after ``failure_threshold`` consecutive failures the
row shows STATUS_FAILURE and the session pauses (doubling up to a cap) before it is
given work again.  Other sessions are not affected.

Trouble (:mod:`..trouble`): failed logons, failing calls and a FAILURE the provider
sets on its own row (the SMTP transport when it cannot connect or log in to its
smart host) are logged once per change of state, not once per retry: a WARNING when
a streak starts, an INFO when it ends.  A FAILURE the provider set stays until the
provider clears it (a call that returns does not clear it) or its session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, TypeVar

from ...contract.errors import ContractViolation, MessageCancelled, WaitRetry
from ...contract.provider import TransportSession
from ...model import (
    FlushFlags,
    LogonCaps,
    ResourceType,
    StatusCode,
    TransportNotifyFlags,
)
from ...status import StatusRow
from ...store import StoreError
from .. import deadline
from ..clock import wait_event
from ..config import TransportConfig
from ..lifecycle import SessionLifecycle
from ..objects import InboundWriterImpl, OutboundMessageImpl, ProfileSectionImpl
from ..runtime import Runtime, SpoolerPort
from ..slices import checkpoint
from ..trouble import Change, Source, Trouble, failing_line, recovered_line
from .isolated import IsolatedProvider

__all__ = ["CURRENT_MESSAGE", "OVERRUN_LOG_INTERVAL", "HostBase", "log"]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_RECOVERED: Final = Change.RECOVERED


T = TypeVar("T")
log = logging.getLogger("spoolbox.transport")
#: Seconds between two "overran its slice" lines (DEBUG) of one session.
OVERRUN_LOG_INTERVAL = 60.0
#: Bits tested on every message, as ints.
_UPLOAD: Final = int(FlushFlags.UPLOAD)
_FAILURE: Final = int(StatusCode.FAILURE)

#: The message (outbound or inbound) the current task is working on, for cancellation.
CURRENT_MESSAGE: contextvars.ContextVar[OutboundMessageImpl | InboundWriterImpl | None] = (
    contextvars.ContextVar("spoolbox_current_message", default=None)
)


class HostBase:
    """One transport session's state and the calls every lane makes."""

    def __init__(
        self, runtime: Runtime, port: SpoolerPort, entry: TransportConfig, provider: Any
    ) -> None:
        self.runtime = runtime
        self.port = port
        self.entry = entry
        self.name = entry.name
        self.provider = provider
        self.session: TransportSession | None = None
        self.lifecycle = SessionLifecycle(entry.name)
        self.caps = LogonCaps.NONE
        self._types: frozenset[str] | None = None
        self.concurrency = 1
        #: How many of its messages to one destination (the domain) the session may
        #: have at once (None: no limit of its own; see ``destination_concurrency``
        #: in :mod:`spoolbox.contract.provider`).
        self.destination_concurrency: int | None = None
        #: The least time between two of its messages to one destination (None:
        #: none; see ``destination_rate_delay`` in :mod:`spoolbox.contract.provider`).
        self.destination_rate_delay: float | None = None
        self.profile: ProfileSectionImpl | None = None
        self.flushing = FlushFlags.NONE
        self.wake = asyncio.Event()
        self.newmail = asyncio.Event()
        self.recovered = asyncio.Event()
        self.job_done = asyncio.Event()
        self.tried_logon = asyncio.Event()  # set after each logon attempt, good or bad
        self.stop_event = asyncio.Event()  # the lanes are to finish
        self.active: dict[str, OutboundMessageImpl | InboundWriterImpl] = {}
        self.critical_error = False
        self.stopping = False
        self._cooldown_until = 0.0
        self._last_overrun_log = -OVERRUN_LOG_INTERVAL
        self._calls = deadline.DeadlineWatch()  # the timer of the provider calls' deadlines
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
        self.trouble = Trouble()  # failing to log on, connect or call: see .trouble
        self.longest_slice = 0.0
        self.last_error: str | None = None
        self.logons = 0
        self.flush_done = 0  # messages finished while a flush is on
        self.flush_bytes = 0
        self.flush_outcomes: dict[tuple[str, int], str] = {}  # a flush's upload: outcomes

    @property
    def types(self) -> frozenset[str] | None:
        """The address types the session serves; None while it is not logged on."""
        return self._types

    @types.setter
    def types(self, value: frozenset[str] | None) -> None:
        if value != self._types:
            self._types = value
            self.port.types_changed()  # the routing table changes with it

    # -- what a flush reads ---------------------------------------------------------------
    @property
    def online(self) -> bool:
        """Logged on, between BEGIN and END."""
        return self.session is not None and self.lifecycle.running

    @property
    def serving(self) -> bool:
        """Logged on and not told to stop."""
        return not self.stopping and self.session is not None

    @property
    def directions(self) -> FlushFlags:
        """UPLOAD for an outbound session, DOWNLOAD for an inbound one."""
        flags = FlushFlags.NONE
        if self.entry.outbound:
            flags |= FlushFlags.UPLOAD
        if self.entry.inbound:
            flags |= FlushFlags.DOWNLOAD
        return flags

    @property
    def polls(self) -> bool:
        return bool(self.caps & LogonCaps.SP_POLL)

    @property
    def shown(self) -> bool:
        """The session has a row in the status table."""
        return self.name in self.runtime.status

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
        budget = self.runtime.meter.budget
        detail = (
            # Two decimals: a slice just over the budget does not read "5.0 ms, over 5.0".
            f"slow: a slice ran {seconds * 1000:.2f} ms, over the {budget * 1000:.1f} ms "
            f"budget ({self.counters['slow_slices']} so far); see docs/providers.md#slices"
        )
        if self.shown:
            self.runtime.status.update(self.name, detail=detail, counters=dict(self.counters))
        # Internal noise for a user: DEBUG, at most one line a minute per session (the
        # watchdog's WARNING names a provider that really blocks the loop).
        now = time.monotonic()
        if now - self._last_overrun_log >= OVERRUN_LOG_INTERVAL and log.isEnabledFor(logging.DEBUG):
            self._last_overrun_log = now
            log.debug(
                "transport %r overran its slice: %.1f ms without yielding (budget %.1f ms; "
                "%d overruns so far)",
                self.name,
                seconds * 1000,
                budget * 1000,
                self.counters["slow_slices"],
            )

    # -- calling the provider ---------------------------------------------------------
    async def call(self, name: str, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self.lifecycle.check(name)
        except ContractViolation:
            coro.close()
            raise
        limit = self.runtime.policy.call_timeout
        tracked = deadline.CallDeadline(name, limit, self._calls)
        try:
            with tracked:
                result = await self.runtime.meter.run(self, coro)
        except TimeoutError:
            if tracked.cut_reason is not None:
                raise TimeoutError(
                    f"{name}() of transport {self.name!r} was cancelled: {tracked.cut_reason}"
                ) from None
            raise TimeoutError(
                f"{name}() of transport {self.name!r} ran longer than {limit:g} s and was "
                "cancelled (policy.call_timeout; time waiting for another session's "
                "critical section not counted)"
            ) from None
        finally:
            if self.runtime.critsec.abandon(self, tracked):
                self.critsec_left_open(
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
            self.record_slice(took, took > self.runtime.meter.budget and not self.flushing)
            self.lifecycle.done(name)

    def require_session(self) -> TransportSession:
        if self.session is None:
            raise ContractViolation(f"transport {self.name!r} is not logged on")
        return self.session

    # -- status row ---------------------------------------------------------------------
    def row(self) -> StatusRow:
        """The session's status row, made now if the provider has not made it."""
        row = self.runtime.status.get(self.name)
        if row is None:
            row = self.runtime.status.put(
                StatusRow(
                    name=self.name,
                    resource_type=ResourceType.TRANSPORT_PROVIDER,
                    provider_display=self.display(),
                )
            )
        return row

    def display(self) -> str:
        if isinstance(self.provider, IsolatedProvider):
            return self.provider.display
        cls = type(self.provider) if self.provider is not None else None
        return str(getattr(cls, "display_name", getattr(cls, "__name__", "transport")))

    def has_bit(self, bit: StatusCode) -> bool:
        row = self.runtime.status.get(self.name)
        return row is not None and bool(int(row.status_code) & int(bit))  # ints: see set_bits

    @property
    def uploading(self) -> bool:
        """An upload flush is under way (``flushing`` has UPLOAD): asked once or twice a
        message, as an int (an IntFlag operator makes a member each time)."""
        return bool(int(self.flushing) & _UPLOAD)

    def set_bits(
        self, on: StatusCode = StatusCode.NONE, off: StatusCode = StatusCode.NONE, **cols: Any
    ) -> None:
        row = self.row()
        bits = (int(row.status_code) | int(on)) & ~int(off)  # ints: see modify_status_row
        code = row.status_code if bits == int(row.status_code) else StatusCode(bits)
        self.runtime.status.update(
            self.name, status_code=code, counters=dict(self.counters), **cols
        )

    def bump(self, counter: str, by: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + by
        if self.shown:
            self.runtime.status.update(self.name, counters=dict(self.counters))

    def flush_bits_changed(self, old: StatusCode, new: StatusCode) -> None:
        """A provider set a *_FLUSH bit itself: it asks for a flush of its own."""
        started = new & ~old
        flags = FlushFlags.NONE
        if started & StatusCode.OUTBOUND_FLUSH and not self.flushing & FlushFlags.UPLOAD:
            flags |= FlushFlags.UPLOAD
        if started & StatusCode.INBOUND_FLUSH and not self.flushing & FlushFlags.DOWNLOAD:
            flags |= FlushFlags.DOWNLOAD
        if flags and self.lifecycle.running:
            self.port.flush_requested(self.name, flags)

    # -- failures -------------------------------------------------------------------------
    def trouble_failed(
        self, source: Source, reason: str, retry: str = "", *, exc: BaseException | None = None
    ) -> None:
        """A failure of ``source``: a WARNING if it starts a streak, else DEBUG."""
        self.trouble, change = self.trouble.failed(source, reason)
        line = failing_line(self.name, reason, retry)
        if change is Change.STARTED:
            log.warning("%s", line, exc_info=exc)
        else:
            log.debug("%s (%d failures in a row)", line, self.trouble.failures)

    def trouble_ok(self, source: Source) -> None:
        """A success of ``source``: an INFO if it ends a streak of that source."""
        failures = self.trouble.failures
        self.trouble, change = self.trouble.succeeded(source)
        if change is _RECOVERED:
            log.info("%s", recovered_line(self.name, failures))

    def provider_failure(self, failing: bool, reason: str) -> None:
        """The provider set (or cleared) FAILURE on its own row."""
        if failing:
            self.trouble_failed(Source.PROVIDER, reason)
        else:
            self.trouble_ok(Source.PROVIDER)

    def call_failed(self, call: str, exc: BaseException) -> None:
        self.counters["errors"] += 1
        text = f"{call} raised {type(exc).__name__}: {exc}"
        if isinstance(exc, ContractViolation):
            text = f"contract violation in {call}: {exc}"
        self.last_error = text
        if isinstance(exc, StoreError):
            # The spooler's own store failed inside the call (the settle a report of
            # results makes): not the provider's failure, so no pause of the
            # transport; the outage shows on the spooler's row, and the job is
            # claimed again when its lease ends.  Its text says all: no traceback.
            self.trouble_failed(Source.CALL, text)
            self.set_bits(detail=text)
            return
        self.consecutive_failures += 1
        policy = self.runtime.policy
        pause: float | None = None
        if self.consecutive_failures >= policy.failure_threshold:
            over = self.consecutive_failures - policy.failure_threshold
            pause = min(policy.failure_backoff_cap, policy.failure_backoff * 2 ** min(over, 30))
        self.trouble_failed(
            Source.CALL,
            text,
            f"paused {pause:.0f} s" if pause is not None else "",
            exc=None if isinstance(exc, WaitRetry) else exc,
        )
        if pause is not None:
            self._cooldown_until = self.runtime.clock.now() + pause
            self.recovered.clear()
            self.set_bits(on=StatusCode.FAILURE, detail=f"{text} (paused {pause:.0f} s)")
        else:
            self.set_bits(detail=text)

    def call_ok(self) -> None:
        self.trouble_ok(Source.CALL)
        if self.consecutive_failures or int(self.row().status_code) & _FAILURE:
            self.consecutive_failures = 0
            self._cooldown_until = 0.0
            if self._may_clear_failure():
                self.set_bits(off=StatusCode.FAILURE)

    def _may_clear_failure(self) -> bool:
        """Not after a critical error, nor over a FAILURE the provider set itself."""
        return not self.critical_error and not self.trouble.by(Source.PROVIDER)

    def ready_to_send(self) -> None:
        """READYTOSEND: the failures are forgotten and the lanes woken."""
        self.consecutive_failures = 0
        self._cooldown_until = 0.0
        self.recovered.set()
        self.wake.set()
        if self._may_clear_failure() and self.shown:
            self.set_bits(off=StatusCode.FAILURE)

    def fail_critically(self, text: str) -> None:
        self.critical_error = True
        self.lifecycle.fail()
        self.last_error = text
        self.set_bits(on=StatusCode.FAILURE, detail=text)
        self.stop_event.set()
        self.wake.set()
        self.newmail.set()

    def critsec_left_open(self, call: str, what: str) -> None:
        """The spooler released a section this session did not leave: a contract
        violation, recorded like the others (log, row, ``errors``, statistics)."""
        self.port.count("critsec_left_open")
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
        policy = self.runtime.policy
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
        self.set_bits(on=StatusCode.FAILURE, detail=text)

    # -- gates ------------------------------------------------------------------------
    def gate_open(self) -> bool:
        """Whether :meth:`background_gate` would let background work through now."""
        runtime = self.runtime
        return not (
            self.stopping
            or self.critical_error
            or runtime.critsec.active
            or self._cooldown_until > runtime.clock.now()
            or not runtime.idle.is_idle()
        )

    async def background_gate(self, direction: FlushFlags = FlushFlags.NONE) -> None:
        """Wait until this session may start background work (a flush of
        ``direction`` lets it through at once)."""
        runtime = self.runtime
        critsec = runtime.critsec
        while not (self.stopping or self.critical_error):
            flushing = bool(self.flushing & direction)
            if critsec.active and not flushing:
                await self._critsec_changed_or_stop()
                continue
            now = runtime.clock.now()
            if self._cooldown_until > now and not flushing:
                await wait_event(runtime.clock, self.recovered, self._cooldown_until - now)
                self.recovered.clear()
                continue
            if flushing:
                return
            if not runtime.idle.is_idle():
                # Re-check now and then: a flush may start meanwhile.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await runtime.idle.wait_idle()
                continue
            return

    async def _critsec_changed_or_stop(self) -> None:
        """Wait until the critical section changes or this session is told to stop."""
        changed = self.runtime.critsec.changed()
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait((changed, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()  # its own future: no other waiter is touched
            stop.cancel()

    async def implicit_yield(self) -> None:
        runtime = self.runtime
        if runtime.critsec.holder is not self and runtime.meter.slice_spent():
            await checkpoint()
        self.check_cancelled()

    def check_cancelled(self) -> None:
        current = CURRENT_MESSAGE.get()
        if current is not None and current.cancelled:
            raise MessageCancelled(current.ref)

    # -- calls of any lane ---------------------------------------------------------------
    async def notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        """TransportNotify to the session; nothing if it has logged off (a flush or a
        cancel that raced its logoff has no one left to tell)."""
        session = self.session
        if session is None:
            return
        try:
            await self.call("transport_notify", session.transport_notify(flags, ref))
        except Exception as exc:
            self.call_failed("transport_notify", exc)

    async def flush_queues(self, flags: FlushFlags) -> bool:
        session = self.require_session()
        try:
            await self.call("flush_queues", session.flush_queues(flags))
            return True
        except Exception as exc:
            self.call_failed("flush_queues", exc)
            return False

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
        self.port.routing_changed()
