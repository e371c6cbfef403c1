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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..model import FlushFlags, Progress, StatusCode, TransportNotifyFlags
from .clock import wait_event
from .runtime import Runtime, SpoolerPort

__all__ = ["FlushHandle", "FlushReport", "FlushTarget", "TransportFlushResult"]

log = logging.getLogger("spoolbox.flush")


@dataclass(slots=True)
class TransportFlushResult:
    transport: str
    uploaded: int = 0
    downloaded: int = 0
    bytes: int = 0
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0


@dataclass(slots=True)
class FlushReport:
    results: list[TransportFlushResult] = field(default_factory=list)
    cancelled: bool = False

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
    last_error: str | None
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
    ) -> None:
        self._runtime = runtime
        self._port = port
        self._hosts = list(hosts)
        self.flags = flags
        self.report = FlushReport()
        self.current: str | None = None
        self._one: asyncio.Task[TransportFlushResult] | None = None
        self._skip: set[str] = set()
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

    async def _run(self) -> FlushReport:
        try:
            for host in self._hosts:
                if host.name in self._skip:
                    self.report.results.append(TransportFlushResult(host.name, cancelled=True))
                    continue
                self.current = host.name
                self._one = asyncio.create_task(
                    _flush_one(self._runtime, self._port, host, self.flags)
                )
                try:
                    result = await self._one
                except Exception as exc:  # a spooler or store error: report it, go on
                    log.exception("flush of %r failed", host.name)
                    result = TransportFlushResult(host.name, error=f"{type(exc).__name__}: {exc}")
                    if host.shown:
                        host.set_bits(detail=f"flush failed: {result.error}")
                except asyncio.CancelledError:
                    if host.name in self._skip and not self.report.cancelled:
                        result = TransportFlushResult(host.name, cancelled=True)
                    else:
                        self.report.cancelled = True
                        self.report.results.append(TransportFlushResult(host.name, cancelled=True))
                        raise
                if host.name in self._skip:
                    result.cancelled = True
                self.report.results.append(result)
            return self.report
        finally:
            self.current = None


async def _flush_one(
    runtime: Runtime, port: SpoolerPort, host: FlushTarget, requested: FlushFlags
) -> TransportFlushResult:
    started = time.perf_counter()
    result = TransportFlushResult(host.name)
    if not host.tried_logon.is_set():
        # A flush right after the spooler opened waits for the first logon attempt.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(runtime.policy.call_timeout):
                await host.tried_logon.wait()
    if not host.online:
        result.error = host.last_error or "transport is not logged on"
        return result
    # The phases asked for that the session serves, and the other flags as they are.
    flags = requested & (host.directions | ~(FlushFlags.UPLOAD | FlushFlags.DOWNLOAD))
    # Mark the phases first: a provider that sets its *_FLUSH bits inside
    # flush_queues (as MAPI asks) must not look like one starting a flush of its own.
    host.flushing |= flags & (FlushFlags.UPLOAD | FlushFlags.DOWNLOAD)
    if not await host.flush_queues(flags):
        result.error = host.last_error
    phase: dict[str, Any] = {"text": "", "done": 0, "total": None, "bytes": 0}

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

    tick = asyncio.create_task(ticker(), name=f"{host.name}-flush-progress")
    try:
        if flags & FlushFlags.UPLOAD:
            await _upload(runtime, port, host, result, phase)
        if flags & FlushFlags.DOWNLOAD:
            await _download(runtime, host, result, phase)
    finally:
        tick.cancel()
        await asyncio.gather(tick, return_exceptions=True)
        if host.flushing & FlushFlags.UPLOAD:
            host.flushing &= ~FlushFlags.UPLOAD
            await host.notify(TransportNotifyFlags.END_OUTBOUND_FLUSH)
        if host.flushing & FlushFlags.DOWNLOAD:
            host.flushing &= ~FlushFlags.DOWNLOAD
            await host.notify(TransportNotifyFlags.END_INBOUND_FLUSH)
        if host.shown:
            host.set_bits(off=StatusCode.OUTBOUND_FLUSH | StatusCode.INBOUND_FLUSH, progress=None)
        result.seconds = time.perf_counter() - started
    return result


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
) -> None:
    await port.route_now()  # what was just submitted belongs in this flush
    now = runtime.clock.now()
    await runtime.store.retry_transport(host.name, now=now)
    port.messages_changed()
    port.forget_destinations(host.name)  # the user says "now": back-off is lifted too
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
    # The last batch may end the loop before it records its count: record it here.
    phase["done"] = host.flush_done
    phase["bytes"] = host.flush_bytes
    _publish(host, phase, "Downloaded")
    host.flushing &= ~FlushFlags.DOWNLOAD
    await host.notify(TransportNotifyFlags.END_INBOUND_FLUSH)
    host.set_bits(off=StatusCode.INBOUND_FLUSH)
