"""Flush: send and receive now, one transport at a time, in transport order.

The user's Send/Receive (reference §7).  For each transport in order: call its
``flush_queues``, then for the upload phase set STATUS_OUTBOUND_FLUSH, make its
deferred mail ready (as ``postqueue -f`` does), let its lane run without idle
gating or slice budget until nothing is left that it can take now, and clear the
bit; then the download phase likewise with STATUS_INBOUND_FLUSH and
``start_message`` until a call delivers nothing.  Progress (done/total, bytes, a
line of text) is written to the transport's status row at least every
``policy.progress_interval`` seconds (0.2 by default: 5 times a second).

A flush can be cancelled as a whole (cancel the task awaiting it, or
:meth:`FlushHandle.cancel`) or for one transport (:meth:`FlushHandle.cancel` with a
name): that transport gets its END_*_FLUSH notification, its bits are cleared, and
the flush moves on to the next one.  Nothing queued is touched by a cancel.

What a flush achieved is counted from the recipients' results, not from status
bits: every recipient update a session settles while its upload phase runs counts
as delivered, deferred (queued again, parked or held) or failed
(:func:`count_outcomes`); after each transport the messages still queued for it
(claimable whatever their retry time, plus those still in the session's hands) are
counted too.  A flush has a deadline (``policy.flush_deadline`` unless the caller
gives one): when it passes, the transport under way is ended as a cancel ends it,
the ones after it are not started, and the report says ``timed_out``; mail stays
queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Generator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..model import FlushFlags, Progress, RecipientState, StatusCode, TransportNotifyFlags
from ..store import RecipientUpdate
from .clock import wait_event
from .rate import RateLimit, seconds_text
from .runtime import Runtime, SpoolerPort

__all__ = [
    "OUTCOMES",
    "FlushHandle",
    "FlushReport",
    "FlushTarget",
    "TransportFlushResult",
    "count_outcomes",
    "outcome_of_update",
    "outcome_totals",
]

log = logging.getLogger("spoolbox.flush")


#: The outcomes a flush counts, per recipient.
OUTCOMES = ("delivered", "deferred", "failed")

#: A recipient's new state as a flush outcome (CANCELLED, by the user, is none).
_OUTCOME_OF_STATE: dict[RecipientState, str] = {
    RecipientState.DELIVERED: "delivered",
    RecipientState.FAILED: "failed",
    RecipientState.QUEUED: "deferred",
    RecipientState.PARKED: "deferred",
    RecipientState.HELD: "deferred",
}


def outcome_of_update(update: RecipientUpdate) -> str | None:
    """What a recipient update counts as in a flush: ``delivered``, ``deferred``,
    ``failed``, or None (cancelled, or handed to another transport: the recipient is
    counted by the transport that takes it)."""
    if not update.keep_route:
        return None
    return _OUTCOME_OF_STATE.get(update.state)


def count_outcomes(
    tally: MutableMapping[tuple[str, int], str],
    message_id: str,
    updates: Sequence[RecipientUpdate],
) -> None:
    """Note ``updates``' outcomes (of ``message_id``'s recipients) in ``tally``: the last
    one of each recipient counts (deferred, then resent and delivered: delivered)."""
    for update in updates:
        key = outcome_of_update(update)
        if key is None:
            tally.pop((message_id, update.index), None)
        else:
            tally[message_id, update.index] = key


def outcome_totals(tally: Mapping[tuple[str, int], str]) -> dict[str, int]:
    """How many recipients in ``tally`` ended with each of :data:`OUTCOMES`."""
    totals = dict.fromkeys(OUTCOMES, 0)
    for key in tally.values():
        totals[key] += 1
    return totals


@dataclass(slots=True)
class TransportFlushResult:
    """One transport's part of a flush.  ``uploaded``/``downloaded``: messages the
    phases finished; ``delivered``/``deferred``/``failed``: recipients' outcomes in the
    upload phase; ``queued``: messages still queued for the transport afterwards."""

    transport: str
    uploaded: int = 0
    downloaded: int = 0
    bytes: int = 0
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    queued: int = 0
    timed_out: bool = False
    #: Why what is still queued was not sent, when the flush knows: the transport's
    #: ``max_rate`` window is full (``max_rate 3/h reached; room again in 3,588 s``),
    #: or a destination's ``destination_rate_delay`` or ``destination_concurrency``
    #: holds its claimed mail (``slow.test gets one message every 2 s, its
    #: destination_rate_delay; the next one goes in 1.2 s``).
    held: str | None = None


@dataclass(slots=True)
class FlushReport:
    results: list[TransportFlushResult] = field(default_factory=list)
    cancelled: bool = False
    #: The flush deadline passed before every transport was done.
    timed_out: bool = False

    def total(self, key: str) -> int:
        """The sum of one count (``delivered``, ``queued``, ...) over the transports."""
        return sum(int(getattr(r, key)) for r in self.results)

    def for_transport(self, name: str) -> TransportFlushResult:
        for r in self.results:
            if r.transport == name:
                return r
        raise KeyError(name)


class FlushTarget(Protocol):
    """What a flush reads and does of a transport session (a transport host)."""

    name: str
    #: The phases of a flush under way: the lanes run without idle gating or budget.
    flushing: FlushFlags
    flush_done: int  # messages finished while a flush is on
    flush_bytes: int
    #: (message id, recipient index) -> outcome, while the upload phase is on
    flush_outcomes: dict[tuple[str, int], str]
    last_error: str | None
    counters: dict[str, int]  # "errors": the calls that failed, among others
    tried_logon: asyncio.Event  # set after each logon attempt
    job_done: asyncio.Event  # set when an outbound job is settled
    wake: asyncio.Event  # wakes the outbound lane

    @property
    def online(self) -> bool: ...  # logged on, between BEGIN and END

    @property
    def serving(self) -> bool: ...  # logged on and not told to stop

    @property
    def shown(self) -> bool: ...  # has a status row

    @property
    def directions(self) -> FlushFlags: ...  # UPLOAD and/or DOWNLOAD it serves

    @property
    def polls(self) -> bool: ...  # LOGON_SP_POLL

    @property
    def inflight(self) -> int: ...  # claimed, not settled

    @property
    def rate_hold(self) -> tuple[float, RateLimit] | None: ...  # max_rate: room at, limit

    @property
    def destination_hold(self) -> str | None: ...  # claimed mail waiting for its domain

    def has_bit(self, bit: StatusCode) -> bool: ...

    def set_bits(
        self, on: StatusCode = StatusCode.NONE, off: StatusCode = StatusCode.NONE, **cols: Any
    ) -> None: ...

    async def flush_queues(self, flags: FlushFlags) -> bool: ...

    async def notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None: ...

    async def poll(self) -> int: ...

    async def receive_batch(
        self, limit: int | None = None, *, flush: bool = False
    ) -> tuple[int, bool]: ...


class FlushHandle:
    """A running flush. Await it (or :meth:`wait`) for the :class:`FlushReport`."""

    def __init__(
        self,
        runtime: Runtime,
        port: SpoolerPort,
        hosts: Sequence[FlushTarget],
        flags: FlushFlags,
        *,
        deadline: float | None = None,
    ) -> None:
        self._runtime = runtime
        self._port = port
        self._hosts = list(hosts)
        self.flags = flags
        #: Seconds the flush may take (None: no limit); the policy's unless given.
        self.deadline = runtime.policy.flush_deadline if deadline is None else deadline
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"a flush deadline must be positive, not {self.deadline}")
        self.report = FlushReport()
        self.current: str | None = None
        self._one: asyncio.Task[None] | None = None
        self._skip: set[str] = set()
        self._ends_at: float | None = None  # the deadline on the runtime's clock
        self._task = port.spawn(self._run(), name="flush")

    def __repr__(self) -> str:
        return f"<FlushHandle {self.flags!r} current={self.current} done={self._task.done()}>"

    @property
    def transports(self) -> list[str]:
        return [h.name for h in self._hosts]

    def done(self) -> bool:
        return self._task.done()

    def cancel(self, transport: str | None = None) -> None:
        """Cancel the whole flush, or only ``transport``'s part of it."""
        if transport is None:
            self.report.cancelled = True
            self._task.cancel()
            return
        self._skip.add(transport)
        if self.current == transport and self._one is not None:
            self._one.cancel()

    async def wait(self) -> FlushReport:
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.done() and not self._task.cancelled():
                raise
            if self._task.cancelled():
                return self.report
            self.cancel()  # the waiter was cancelled: cancel the flush with it
            await asyncio.gather(self._task, return_exceptions=True)
            raise

    def __await__(self) -> Generator[Any, None, FlushReport]:
        return self.wait().__await__()

    async def _expire(self, deadline: float) -> None:
        """The deadline: end the transport under way and start no other."""
        await self._runtime.clock.sleep(deadline)
        self.report.timed_out = True
        # Not a second cancel into a part already ending (a user's cancel of it): that
        # would cut its END_*_FLUSH notifications short.
        if self._one is not None and not self._one.cancelling():
            self._one.cancel()

    async def _run(self) -> FlushReport:
        timer = (
            None
            if self.deadline is None
            else asyncio.create_task(self._expire(self.deadline), name="flush-deadline")
        )
        self._ends_at = None if self.deadline is None else self._runtime.clock.now() + self.deadline
        try:
            for host in self._hosts:
                result = TransportFlushResult(host.name)
                if self.report.timed_out:
                    result.timed_out = True
                elif host.name in self._skip:
                    result.cancelled = True
                else:
                    await self._flush(host, result)
                await self._count_queued(host, result)
                self.report.results.append(result)
            return self.report
        finally:
            self.current = None
            if timer is not None:
                timer.cancel()
                await asyncio.gather(timer, return_exceptions=True)

    async def _flush(self, host: FlushTarget, result: TransportFlushResult) -> None:
        """One transport's part, into ``result`` (partly filled if it is cut short)."""
        self.current = host.name
        self._one = asyncio.create_task(
            _flush_one(self._runtime, self._port, host, self.flags, result, self._ends_at)
        )
        try:
            await self._one
        except Exception as exc:  # a spooler or store error: report it, go on
            log.exception("flush of %r failed", host.name)
            result.error = f"{type(exc).__name__}: {exc}"
            if host.shown:
                host.set_bits(detail=f"flush failed: {result.error}")
        except asyncio.CancelledError:
            if self.report.cancelled or not (host.name in self._skip or self.report.timed_out):
                self.report.cancelled = True
                result.cancelled = True
                self.report.results.append(result)
                raise
            result.timed_out = host.name not in self._skip
        finally:
            self._one = None
        if host.name in self._skip:
            result.cancelled = True

    async def _count_queued(self, host: FlushTarget, result: TransportFlushResult) -> None:
        """The messages still queued for ``host`` after its part (upload flushes only)."""
        if not (self.flags & host.directions & FlushFlags.UPLOAD):
            return
        store = self._runtime.store
        try:
            waiting = await store.count_claimable(
                host.name, now=self._runtime.clock.now(), ignore_retry=True
            )
        except Exception as exc:
            log.warning("flush of %r: cannot count what is still queued: %s", host.name, exc)
            return
        result.queued = waiting + host.inflight
        if result.queued and result.held is None:
            result.held = _rate_held(host, self._runtime.clock.now()) or host.destination_hold


async def _flush_one(
    runtime: Runtime,
    port: SpoolerPort,
    host: FlushTarget,
    requested: FlushFlags,
    result: TransportFlushResult,
    ends_at: float | None = None,
) -> None:
    started = time.perf_counter()
    host.flush_outcomes.clear()  # counted afresh while this upload phase is on
    # Afresh too: a part cut short before its upload phase began uploaded nothing
    # (not what an earlier flush of this transport counted).
    host.flush_done = 0
    if not host.tried_logon.is_set():
        # A flush right after the spooler opened waits for the first logon attempt.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(runtime.policy.call_timeout):
                await host.tried_logon.wait()
    if not host.online:
        result.error = host.last_error or "transport is not logged on"
        result.seconds = time.perf_counter() - started
        return
    # The phases asked for that the session serves, and the other flags as they are.
    flags = requested & (host.directions | ~(FlushFlags.UPLOAD | FlushFlags.DOWNLOAD))
    # Mark the phases first: a provider that sets its *_FLUSH bits inside
    # flush_queues (as MAPI asks) must not look like one starting a flush of its own.
    host.flushing |= flags & (FlushFlags.UPLOAD | FlushFlags.DOWNLOAD)
    # Until a phase begins (the provider may take its time to hear BEGIN_*_FLUSH).
    phase: dict[str, Any] = {"text": "Starting", "done": 0, "total": None, "bytes": 0}

    async def ticker() -> None:
        while True:
            elapsed = time.perf_counter() - started
            total = phase["total"]
            done = int(phase["done"] or 0)
            text = f"{phase['text']} {done}" + (f" of {total}" if total is not None else "")
            host.set_bits(
                progress=Progress(
                    done=done,
                    total=total if isinstance(total, int) else None,
                    bytes_done=int(phase["bytes"] or 0),
                    text=f"{text} ({elapsed:.1f} s)",
                )
            )
            await asyncio.sleep(runtime.policy.progress_interval)

    tick: asyncio.Task[None] | None = None
    try:  # a cancel (the user's, the deadline's) anywhere here still ends the phases
        if not await host.flush_queues(flags):
            result.error = host.last_error
        tick = asyncio.create_task(ticker(), name=f"{host.name}-flush-progress")
        if flags & FlushFlags.UPLOAD:
            await _upload(runtime, port, host, result, phase, ends_at)
        if flags & FlushFlags.DOWNLOAD:
            await _download(runtime, host, result, phase)
    finally:
        if tick is not None:
            tick.cancel()
            await asyncio.gather(tick, return_exceptions=True)
        # Cut short: end the phases this part announced, and only those (a flush the
        # provider started may be under way in the other direction); a session that
        # logged off meanwhile (the spooler closing) hears nothing more.
        if host.flushing & flags & FlushFlags.UPLOAD:
            result.uploaded = host.flush_done  # what it did so far
            host.flushing &= ~FlushFlags.UPLOAD
            if host.online:
                await host.notify(TransportNotifyFlags.END_OUTBOUND_FLUSH)
        if host.flushing & flags & FlushFlags.DOWNLOAD:
            host.flushing &= ~FlushFlags.DOWNLOAD
            if host.online:
                await host.notify(TransportNotifyFlags.END_INBOUND_FLUSH)
        if host.shown:
            host.set_bits(off=_status_bits(flags), progress=None)
        result.seconds = time.perf_counter() - started
        if flags & FlushFlags.UPLOAD:
            totals = outcome_totals(host.flush_outcomes)
            result.delivered = totals["delivered"]
            result.deferred = totals["deferred"]
            result.failed = totals["failed"]


def _rate_held(host: FlushTarget, now: float) -> str | None:
    """``max_rate 3/h reached; room again in 3,588 s`` while the transport's window
    holds ready mail back, else None."""
    hold = host.rate_hold
    if hold is None:
        return None
    return f"max_rate {hold[1]} reached; room again in {seconds_text(max(0.0, hold[0] - now))}"


def _status_bits(flags: FlushFlags) -> StatusCode:
    """The ``*_FLUSH`` status bits of the phases in ``flags``."""
    bits = StatusCode.NONE
    if flags & FlushFlags.UPLOAD:
        bits |= StatusCode.OUTBOUND_FLUSH
    if flags & FlushFlags.DOWNLOAD:
        bits |= StatusCode.INBOUND_FLUSH
    return bits


def _publish(host: FlushTarget, phase: dict[str, Any], verb: str) -> None:
    """The final count of a phase, so watchers see where it ended."""
    total = phase["total"]
    done = int(phase["done"] or 0)
    host.set_bits(
        progress=Progress(
            done=done,
            total=max(done, int(total)) if isinstance(total, int) else done,
            bytes_done=int(phase["bytes"] or 0),
            text=f"{verb} {done}",
        )
    )


async def _upload(
    runtime: Runtime,
    port: SpoolerPort,
    host: FlushTarget,
    result: TransportFlushResult,
    phase: dict[str, Any],
    ends_at: float | None = None,
) -> None:
    await port.route_now()  # what was just submitted belongs in this flush
    # The user says "now": back-off is lifted too, before the messages are made ready
    # (a lane that claims one of them must not find its destination still held back).
    port.forget_destinations(host.name)
    now = runtime.clock.now()
    await runtime.store.retry_transport(host.name, now=now)
    port.messages_changed()
    host.flush_done = 0
    host.flush_bytes = 0
    host.flushing |= FlushFlags.UPLOAD
    host.set_bits(on=StatusCode.OUTBOUND_FLUSH)
    await host.notify(TransportNotifyFlags.BEGIN_OUTBOUND_FLUSH)
    phase.update(text="Uploading", done=0, bytes=0)
    phase["total"] = await runtime.store.count_claimable(host.name, now=now, ignore_retry=False)
    host.wake.set()
    while host.serving:
        host.job_done.clear()
        remaining = await runtime.store.count_claimable(
            host.name, now=runtime.clock.now(), ignore_retry=False
        )
        phase["done"] = host.flush_done
        phase["bytes"] = host.flush_bytes
        phase["total"] = max(int(phase["total"] or 0), host.flush_done + remaining + host.inflight)
        if remaining == 0 and host.inflight == 0:
            break
        if not host.has_bit(StatusCode.OUTBOUND_FLUSH):
            break  # the transport ended the flush by clearing its bit
        hold = host.rate_hold
        if hold is not None and host.inflight == 0 and ends_at is not None and hold[0] > ends_at:
            # max_rate holds the rest back past the flush's deadline: waiting for it
            # would only run the deadline out (a "3/h" window); say why, and end here.
            result.held = _rate_held(host, runtime.clock.now())
            break
        host.wake.set()
        await wait_event(runtime.clock, host.job_done, runtime.policy.progress_interval)
    result.uploaded = host.flush_done
    result.bytes += host.flush_bytes
    phase["done"] = host.flush_done
    phase["bytes"] = host.flush_bytes
    _publish(host, phase, "Uploaded")
    host.flushing &= ~FlushFlags.UPLOAD
    await host.notify(TransportNotifyFlags.END_OUTBOUND_FLUSH)
    host.set_bits(off=StatusCode.OUTBOUND_FLUSH)


async def _download(
    runtime: Runtime, host: FlushTarget, result: TransportFlushResult, phase: dict[str, Any]
) -> None:
    host.flush_done = 0
    host.flush_bytes = 0
    host.flushing |= FlushFlags.DOWNLOAD
    host.set_bits(on=StatusCode.INBOUND_FLUSH)
    await host.notify(TransportNotifyFlags.BEGIN_INBOUND_FLUSH)
    phase.update(text="Downloading", done=0, bytes=0, total=None)
    errors = host.counters.get("errors", 0)
    if host.polls:
        phase["total"] = await host.poll()
    while host.serving and host.has_bit(StatusCode.INBOUND_FLUSH):
        if runtime.critsec.active and runtime.critsec.holder is not host:
            await runtime.critsec.changed()
            continue
        got, more = await host.receive_batch(flush=True)
        if not got or not more:
            break
        phase["done"] = host.flush_done
        phase["bytes"] = host.flush_bytes
        if phase["total"] is not None and host.flush_done > int(phase["total"]):
            phase["total"] = host.flush_done
    result.downloaded = host.flush_done
    result.bytes += host.flush_bytes
    if result.error is None and host.counters.get("errors", 0) > errors:
        # A poll or start_message failed (or a batch's commit): the download stopped
        # there, which is not "nothing to fetch".
        result.error = host.last_error or "the download failed"
    # The last batch may end the loop before it records its count: record it here.
    phase["done"] = host.flush_done
    phase["bytes"] = host.flush_bytes
    _publish(host, phase, "Downloaded")
    host.flushing &= ~FlushFlags.DOWNLOAD
    await host.notify(TransportNotifyFlags.END_INBOUND_FLUSH)
    host.set_bits(off=StatusCode.INBOUND_FLUSH)
