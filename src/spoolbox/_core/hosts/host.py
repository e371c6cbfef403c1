"""The supervision of one transport session: log on (and on again after a failure),
run the session's lanes under a TaskGroup it owns, stop them, log off.

A :class:`TransportHost` is a :class:`~.base.HostBase` (the session's state, the
gated provider call, the status row, failure counting) with its parts: the
outbound lane (:mod:`.outbound`), the inbound and idle lanes (:mod:`.inbound`) and
the support object (:mod:`.support`).  A failed logon is retried with backoff; a
session that fails critically soon after each logon waits twice as long each time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ...contract.errors import ContractViolation, TransportBusy, Unconfigured
from ...model import (
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    StatusCode,
    TransportNotifyFlags,
    ValidateFlags,
)
from ..clock import wait_event
from ..config import TransportConfig
from ..destinations import destination_concurrency_of, destination_rate_delay_of
from ..lifecycle import SessionLifecycle
from ..objects import ProfileSectionImpl
from ..rate import RateLimit
from ..runtime import Runtime, SpoolerPort
from ..trouble import Source, Trouble
from .base import HostBase, log
from .inbound import InboundLane, run_idle_lane
from .isolated import IsolatedProvider, IsolatedSession
from .outbound import OutboundLane
from .support import SupportImpl

__all__ = ["TransportHost"]


class TransportHost(HostBase):
    """One transport session, supervised: see the module's docstring."""

    def __init__(
        self, runtime: Runtime, port: SpoolerPort, entry: TransportConfig, provider: Any
    ) -> None:
        super().__init__(runtime, port, entry, provider)
        self.outbound = OutboundLane(self)
        self.inbound = InboundLane(self)
        self.support = SupportImpl(self, self.outbound)

    @property
    def inflight(self) -> int:
        """Messages claimed and not settled yet, those waiting for a lane included."""
        return self.outbound.inflight

    @property
    def rate_hold(self) -> tuple[float, RateLimit] | None:
        """While ``max_rate`` holds ready mail back: when there is room, and the limit."""
        return self.outbound.rate_hold

    @property
    def destination_hold(self) -> str | None:
        """Why claimed mail waits for its destination's ``destination_concurrency`` or
        ``destination_rate_delay`` (None: none does)."""
        return self.outbound.destination_hold()

    def __repr__(self) -> str:
        return (
            f"<TransportHost {self.name} {self.lifecycle.phase} inflight={self.inflight} "
            f"failures={self.consecutive_failures}>"
        )

    # -- logon ----------------------------------------------------------------------------
    async def logon(self) -> None:
        runtime = self.runtime
        self.lifecycle = SessionLifecycle(self.name)
        # A new support object: a dead session's stays dead.
        self.support = SupportImpl(self, self.outbound)
        self.critical_error = False
        if self.trouble.by(Source.PROVIDER):
            # The FAILURE a provider set belonged to its session: the new one starts
            # clean, and sets it again (and the spooler warns again) if it still fails.
            log.debug("transport %r: logging on again; its peer's state is unknown", self.name)
            self.trouble = Trouble()
        flags = self.entry.logon_flags | LogonFlags.NO_INBOUND | LogonFlags.NO_OUTBOUND
        section = f"transport:{self.name}"
        self.profile = ProfileSectionImpl(
            runtime.store, section, await runtime.store.profile_get(section)
        )
        session = await self.call(
            "logon", self.provider.logon(self.support, self.entry.options, flags)
        )
        for method in ("address_types", "submit_message", "end_message", "transport_notify"):
            if not callable(getattr(session, method, None)):
                raise ContractViolation(
                    f"logon() of {self.display()} returned {session!r}, which has no "
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
        self.destination_concurrency = destination_concurrency_of(session)
        try:
            self.destination_rate_delay = destination_rate_delay_of(session)
        except (TypeError, ValueError) as exc:
            raise ContractViolation(str(exc)) from None
        if not self.shown:
            self.row()
            self.set_bits(detail="provider did not create its status row in logon()")
        begin = TransportNotifyFlags.NONE
        if self.entry.inbound:
            begin |= TransportNotifyFlags.BEGIN_INBOUND
        if self.entry.outbound:
            begin |= TransportNotifyFlags.BEGIN_OUTBOUND
        if begin:
            await self.call("transport_notify", session.transport_notify(begin, None))
        self.lifecycle.begin()
        on = StatusCode.AVAILABLE
        if self.entry.inbound:
            on |= StatusCode.INBOUND_ENABLED
        if self.entry.outbound:
            on |= StatusCode.OUTBOUND_ENABLED
        self.set_bits(on=on, off=StatusCode.FAILURE | StatusCode.OFFLINE, detail=None)
        self.consecutive_failures = 0

    async def end_and_logoff(self, *, hurry: bool = False) -> None:
        session = self.session
        if session is None:
            return
        try:
            if self.lifecycle.running:
                end = TransportNotifyFlags.NONE
                if self.entry.inbound:
                    end |= TransportNotifyFlags.END_INBOUND
                if self.entry.outbound:
                    end |= TransportNotifyFlags.END_OUTBOUND
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
            if self.shown:
                self.set_bits(
                    off=StatusCode.AVAILABLE
                    | StatusCode.INBOUND_ENABLED
                    | StatusCode.OUTBOUND_ENABLED
                    | StatusCode.INBOUND_ACTIVE
                    | StatusCode.OUTBOUND_ACTIVE,
                    on=StatusCode.OFFLINE,
                )

    def _release_critsec_at_logoff(self) -> None:
        if self.runtime.critsec.release(self):
            self.critsec_left_open("logoff", "the session ended while it held the critical section")

    # -- the supervisor -----------------------------------------------------------------------
    async def run(self) -> None:
        """Log on, run the lanes, and log on again after a failure, until stopped."""
        runtime = self.runtime
        delay = runtime.policy.relogon_delay
        while not self.stopping:
            try:
                await self.logon()
                self.tried_logon.set()
                self.trouble_ok(Source.LOGON)
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
                self.trouble_failed(Source.LOGON, text, f"retrying in {delay:g} s")
                self.row()
                self.set_bits(
                    on=StatusCode.FAILURE | StatusCode.OFFLINE,
                    off=StatusCode.AVAILABLE,
                    detail=text,
                    status_string=text,
                )
                await wait_event(runtime.clock, self.stop_event, delay)
                delay = min(delay * 2, runtime.policy.failure_backoff_cap)
                continue
            began = runtime.clock.now()
            self.port.routing_changed()
            renewer: asyncio.Task[None] | None = None
            usage: asyncio.Task[None] | None = None
            try:
                async with asyncio.TaskGroup() as tg:
                    lanes: list[asyncio.Task[None]] = []
                    if self.entry.outbound:
                        renewer = tg.create_task(self.outbound.renew(), name=f"{self.name}-leases")
                        for i in range(self.concurrency):
                            lanes.append(
                                tg.create_task(
                                    self.outbound.run_worker(), name=f"{self.name}-out-{i}"
                                )
                            )
                    if self.entry.inbound:
                        lanes.append(tg.create_task(self.inbound.run(), name=f"{self.name}-in"))
                    if self.caps & LogonCaps.SP_IDLE:
                        lanes.append(tg.create_task(run_idle_lane(self), name=f"{self.name}-idle"))
                    if isinstance(self.session, IsolatedSession):
                        usage = tg.create_task(
                            self._child_usage(self.session), name=f"{self.name}-usage"
                        )
                    await self.stop_event.wait()
                    # Lanes see the stop flag and finish the message in hand; after the
                    # grace period whatever is left is cancelled (its claims go back to
                    # the queue when the spooler releases its leases).
                    pending: set[asyncio.Task[None]] = set()
                    if lanes:  # (none for a transport neither outbound nor inbound)
                        grace = runtime.policy.shutdown_grace
                        _, pending = await asyncio.wait(lanes, timeout=grace)
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
                self.set_bits(
                    on=StatusCode.FAILURE, detail=f"internal error: {group.exceptions[0]!r}"
                )
            await self.outbound.give_back()
            await self.end_and_logoff()
            self.port.routing_changed()
            if (
                not self.critical_error
                or runtime.clock.now() - began >= runtime.policy.failure_backoff_cap
            ):
                delay = runtime.policy.relogon_delay
            if not self.stopping:
                self.stop_event.clear()
                await asyncio.sleep(0)
                await wait_event(runtime.clock, self.stop_event, delay)
                if self.critical_error:
                    # A session that dies soon after each logon (an isolated transport
                    # whose child crashes): each restart waits twice as long.
                    delay = min(delay * 2, runtime.policy.failure_backoff_cap)

    async def _child_usage(self, session: IsolatedSession) -> None:
        """An isolated session's child process: its pid, CPU time and resident set in
        the row's counters, refreshed every ``policy.progress_interval`` seconds."""
        runtime = self.runtime
        started = self.provider.started if isinstance(self.provider, IsolatedProvider) else 1
        while not self.stop_event.is_set():
            use = session.usage()  # two small reads of /proc
            self.counters["child_pid"] = use.pid
            self.counters["child_cpu_ms"] = round(use.cpu_seconds * 1000)
            self.counters["child_rss_kb"] = use.rss_bytes // 1024
            self.counters["child_restarts"] = max(0, started - 1)
            if self.shown:
                runtime.status.update(self.name, counters=dict(self.counters))
            await wait_event(
                runtime.clock, self.stop_event, max(runtime.policy.progress_interval, 0.5)
            )

    async def stop(self) -> None:
        """Ask the lanes to finish (in-flight work ends normally), then log off."""
        self.stopping = True
        self.stop_event.set()
        self.wake.set()
        self.newmail.set()
        self.recovered.set()

    # -- what the spooler, a flush and the tests ask of a session ---------------------------
    def cancel(self, ref: str) -> bool:
        """Cancel a message this session holds (see :meth:`OutboundLane.cancel`)."""
        return self.outbound.cancel(ref)

    async def poll(self) -> int:
        return await self.inbound.poll()

    async def receive_batch(
        self, limit: int | None = None, *, flush: bool = False
    ) -> tuple[int, bool]:
        return await self.inbound.receive_batch(limit, flush=flush)

    async def receive_one(self) -> bool:
        """StartMessage once; True if a message was committed to the inbox."""
        committed, _more = await self.inbound.receive_batch(1)
        return committed > 0

    async def validate_state(self, flags: ValidateFlags) -> str:
        if self.runtime.critsec.holder is self:
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

    def statistics(self) -> dict[str, Any]:
        """This session's part of :meth:`Spooler.statistics`."""
        return {
            "phase": str(self.lifecycle.phase),
            "counters": dict(self.counters),
            "longest_slice": self.longest_slice,
            "consecutive_failures": self.consecutive_failures,
            "inflight": self.inflight,
            "logons": self.logons,
            "last_error": self.last_error,
        }

    def status_object(self) -> Mapping[str, Any]:
        session = self.require_session()
        obj = self.call_sync("status_object", session.status_object)
        row = self.row().to_dict()
        row.update(dict(obj))
        return row
