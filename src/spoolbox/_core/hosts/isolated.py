"""Isolated transports: a session that runs in a child process (``isolate = true``).

:class:`IsolatedProvider` stands in for the real provider in the spooler.  Its
``logon`` starts a child process (:mod:`.isolated_child`) joined by a socket pair,
logs the real provider on there, and returns an :class:`IsolatedSession`, an
ordinary :class:`~spoolbox.contract.TransportSession` whose every call travels over
the pipe (:mod:`.wire`), while the child's calls on its support object come back and
are made on the real support object here.  The spooler's loop only ever awaits
the pipe, so a provider that never yields, crashes in a C extension or leaks memory
stalls or kills its child, not the spooler.

When the child dies, the calls in flight fail with :class:`ChildDied` (a temporary
error: their recipients are retried with back-off), and the session reports a
critical error with the reason, so the host logs it off and on again, which starts
a new child (with the host's back-off for sessions that die).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

from ...contract.errors import ContractViolation, SpoolboxError
from ...contract.objects import InboundWriter, OutboundMessage
from ...contract.provider import OptionSpec
from ...contract.support import Support
from ...model import (
    EndFlags,
    FlushFlags,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    RecipientResult,
    SpoolerNotifyFlags,
    SubmitFlags,
    TransportNotifyFlags,
    ValidateFlags,
)
from .wire import (
    WIRE_VERSION,
    Channel,
    Ended,
    InboundResult,
    OutboundSnapshot,
    SessionFacts,
    Start,
)

__all__ = ["ChildDied", "ChildUsage", "IsolatedProvider", "IsolatedSession", "child_usage"]

log = logging.getLogger("spoolbox.isolate")

#: How long a child may take to log off before it is killed.
LOGOFF_GRACE = 5.0


class ChildDied(SpoolboxError):
    """The child process of an isolated transport ended during the call."""


@dataclass(frozen=True, slots=True)
class ChildUsage:
    """A child process's resources, from /proc (zero where /proc is not there)."""

    pid: int
    cpu_seconds: float
    rss_bytes: int


def child_usage(pid: int) -> ChildUsage:
    """CPU time (user + system) and resident set of process ``pid``, from /proc."""
    cpu = 0.0
    rss = 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # Fields after the command name (in parentheses, which may hold spaces).
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    return ChildUsage(pid, cpu, rss)


def provider_spec(spec: str | type) -> str:
    """How the child finds the provider: an entry-point name or ``module:Class``."""
    if isinstance(spec, str):
        return spec
    if "<locals>" in spec.__qualname__:
        raise ContractViolation(
            f"{spec.__qualname__} is defined inside a function: an isolated transport's "
            "provider must be importable as module:Class"
        )
    return f"{spec.__module__}:{spec.__qualname__}"


class IsolatedProvider:
    """The provider of an isolated transport: one child process per logon."""

    display_name: ClassVar[str] = "isolated transport"

    def __init__(self, spec: str | type) -> None:
        self.spec = spec
        self.started = 0  # children started (logons attempted)
        shown = getattr(spec, "display_name", None) if isinstance(spec, type) else spec
        self.display = f"{shown or provider_spec(spec)} (isolated)"

    def __repr__(self) -> str:
        return f"<IsolatedProvider {self.spec!r} children={self.started}>"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> IsolatedSession:
        spec = provider_spec(self.spec)
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "spoolbox._core.hosts.isolated_child",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.started += 1
        reader, writer = await asyncio.open_connection(sock=ours)
        session = IsolatedSession(support, proc, reader, writer)
        level = logging.getLogger(f"spoolbox.transport.{support.transport_name}")
        session.channel.send(
            Start(
                WIRE_VERSION,
                spec,
                support.transport_name,
                tuple(sys.path),
                level.getEffectiveLevel(),
                support.hostname,
            )
        )
        try:
            facts = await session.channel.call(
                "logon", dict(config), int(flags), dict(support.profile_section().snapshot())
            )
        except BaseException as exc:
            if isinstance(exc, ConnectionError):
                # The child closed its end: it is exiting. Let asyncio reap it first:
                # a kill now would reap it inside Popen.send_signal (its poll()), and
                # asyncio's watcher would then report status 255, not the real one.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await proc.wait()
            await session.end(kill=True)
            if isinstance(exc, ConnectionError):
                raise ChildDied(
                    f"the child process of {support.transport_name!r} ended during logon: "
                    f"{session.exit_reason()}"
                ) from None
            raise
        session.learn(facts)
        session.logged_on = True
        return session

    async def shutdown(self) -> None:
        return None  # each child shuts its provider down when its session logs off


class IsolatedSession:
    """A TransportSession whose provider code runs in a child process."""

    def __init__(
        self,
        support: Support,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._support = support
        self.proc = proc
        self.pid = proc.pid
        self._facts = SessionFacts(0, (), (), 1)
        self._messages: dict[str, OutboundMessage] = {}
        self._ended: dict[str, Ended] = {}  # end_message already run in the child
        self._writers: dict[str, InboundWriter] = {}
        self._critsecs: list[AbstractAsyncContextManager[None]] = []
        # Leaving runs as a task (a tell has no await); the loop keeps only a weak
        # reference to a task, so these are held until they end.
        self._leaving: set[asyncio.Task[None]] = set()
        self._logging_off = False
        self.logged_on = False  # set once the child's logon has answered
        self.channel = Channel(
            reader,
            writer,
            calls={
                "status_recips": self._status_recips,
                "profile_update": self._profile_update,
                "critsec_enter": self._critsec_enter,
                "spooler_yield": support.spooler_yield,
            },
            tells={
                "modify_status_row": self._modify_status_row,
                "spooler_notify": self._spooler_notify,
                "critsec_leave": self._critsec_leave,
                "log": _log,
            },
            name=f"isolated transport {support.transport_name!r}",
        )
        self._reading = asyncio.get_running_loop().create_task(self._read())

    def __repr__(self) -> str:
        return f"<IsolatedSession {self._support.transport_name} pid={self.pid}>"

    @property
    def concurrency(self) -> int:
        return self._facts.concurrency

    @property
    def destination_concurrency(self) -> int | None:
        return self._facts.destination_concurrency

    @property
    def destination_rate_delay(self) -> float | None:
        return self._facts.destination_rate_delay

    def learn(self, facts: SessionFacts) -> None:
        self._facts = facts

    def usage(self) -> ChildUsage:
        return child_usage(self.pid)

    def exit_reason(self) -> str:
        code = self.proc.returncode
        if code is None:
            return f"process {self.pid} closed its pipe"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"process {self.pid} was killed by {signal.Signals(-code).name}"
        return f"process {self.pid} exited with status {code}"

    async def _read(self) -> None:
        await self.channel.run()
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            async with asyncio.timeout(1.0):
                await self.proc.wait()
        if self._logging_off or not self.logged_on:
            return  # an expected end, or a failed logon (which says so itself)
        reason = f"isolated transport {self.exit_reason()}"
        log.error("transport %r: %s", self._support.transport_name, reason)
        self._release_critsecs()
        with contextlib.suppress(SpoolboxError):
            self._support.spooler_notify(SpoolerNotifyFlags.CRITICAL_ERROR, reason)

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await self.channel.call(method, *args)
        except ConnectionError:  # ChannelClosed, or the socket reset under a write
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                async with asyncio.timeout(1.0):
                    await self.proc.wait()
            raise ChildDied(
                f"{method}(): the child process of {self._support.transport_name!r} ended: "
                f"{self.exit_reason()}"
            ) from None

    async def end(self, *, kill: bool = False) -> None:
        """Make sure the child is gone (killed if ``kill`` or if it lingers)."""
        self._logging_off = True
        if kill and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        try:
            async with asyncio.timeout(LOGOFF_GRACE):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        self.channel.close("logged off")
        self._release_critsecs()
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading

    # -- the contract's synchronous calls: answered from what the child said ---------------
    def capabilities(self) -> LogonCaps:
        return LogonCaps(self._facts.capabilities)

    def address_types(self) -> Collection[str]:
        return self._facts.address_types

    def register_options(self) -> Sequence[OptionSpec]:
        return tuple(o for o in self._facts.options if isinstance(o, OptionSpec))

    def status_object(self) -> Mapping[str, Any]:
        usage = self.usage()
        return {
            **self._facts.status_object,
            "child_pid": usage.pid,
            "child_cpu_seconds": usage.cpu_seconds,
            "child_rss_bytes": usage.rss_bytes,
        }

    # -- the contract's async calls: over the pipe -----------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await self._call("transport_notify", int(flags), ref)

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        snap = OutboundSnapshot(
            ref=message.ref,
            info=message.info,
            recipients=message.recipients,
            flags=message.flags,
            content=await message.content(),
        )
        self._messages[message.ref] = message
        try:
            ended = await self._call("submit_message", snap, int(flags))
        except BaseException:
            self._messages.pop(message.ref, None)
            raise
        if isinstance(ended, Ended):
            self._ended[message.ref] = ended

    async def end_message(self, message: OutboundMessage) -> EndFlags:
        try:
            ended = self._ended.pop(message.ref, None)
            if ended is None:
                return EndFlags(await self._call("end_message", message.ref))
            if ended.error is not None:
                raise ended.error.exception()
            return EndFlags(ended.flags or 0)
        finally:
            self._messages.pop(message.ref, None)

    async def poll(self) -> int:
        n = await self._call("poll")
        if isinstance(n, bool) or not isinstance(n, int):
            raise ContractViolation(f"poll() returned {n!r}, not an int >= 0")
        return n

    async def start_message(self, message: InboundWriter) -> None:
        got = await self._call("start_message", message.ref)
        if not isinstance(got, InboundResult):
            raise ContractViolation(f"start_message() in the child answered {got!r}")
        if got.content:
            await message.write(got.content)
            message.set_envelope(sender=got.sender, recipients=got.recipients)
            if got.remote_id is not None:
                message.set_remote_id(got.remote_id)
            for key, value in got.state.items():
                message.set_state(key, value)
        if got.content and (got.callbacks or got.state):
            ref = message.ref

            async def committed() -> None:
                await self._call("inbound_done", ref, True)

            async def rolled_back() -> None:
                await self._call("inbound_done", ref, False)

            message.after_commit(committed)
            message.after_rollback(rolled_back)

    async def profile_reloaded(self, values: Mapping[str, Any]) -> None:
        """The spooler read the profile section again: the child's copy too."""
        await self._call("profile_reload", dict(values))

    async def idle(self) -> None:
        await self._call("idle")

    async def flush_queues(self, flags: FlushFlags) -> None:
        await self._call("flush_queues", int(flags))

    async def validate_state(self, flags: ValidateFlags) -> None:
        self.learn(await self._call("validate_state", int(flags)))

    async def logoff(self, flags: LogoffFlags) -> None:
        self._logging_off = True
        clean = False
        try:
            if not self.channel.closed.done():
                with contextlib.suppress(ChildDied):
                    await self._call("logoff", int(flags))
                    clean = True
        finally:
            # A child that did not log off (it died, or the call was cancelled at the
            # end of the shutdown grace) is killed rather than waited for.
            await self.end(kill=not clean)

    # -- the child's calls on its support object ----------------------------------------
    async def _status_recips(self, ref: str, results: Sequence[RecipientResult]) -> None:
        message = self._messages.get(ref)
        if message is None:
            raise ContractViolation(f"status_recips() for {ref}, which is not being submitted")
        await self._support.status_recips(message, results)

    async def _profile_update(self, values: Mapping[str, Any]) -> None:
        await self._support.profile_section().update(values)

    async def _critsec_enter(self) -> None:
        cm = self._support.critical_section()
        await cm.__aenter__()
        self._critsecs.append(cm)

    def _critsec_leave(self) -> None:
        if self._critsecs:
            cm = self._critsecs.pop()
            task = asyncio.get_running_loop().create_task(_leave(cm))
            self._leaving.add(task)
            task.add_done_callback(self._leaving.discard)

    def _release_critsecs(self) -> None:
        while self._critsecs:
            self._critsec_leave()

    def _modify_status_row(self, changes: Mapping[str, Any]) -> None:
        self._support.modify_status_row(**changes)

    def _spooler_notify(self, flags: int, ref: str | None, facts: SessionFacts | None) -> None:
        if facts is not None:
            self.learn(facts)
        self._support.spooler_notify(SpoolerNotifyFlags(flags), ref)


async def _leave(cm: AbstractAsyncContextManager[None]) -> None:
    await cm.__aexit__(None, None, None)


def _log(name: str, level: int, text: str) -> None:
    logging.getLogger(name).log(level, "%s", text)
