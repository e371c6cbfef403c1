"""The child process of an isolated transport: the provider's session, in its own loop.

Run as ``python -m spoolbox._core.hosts.isolated_child FD`` by
:class:`~spoolbox._core.hosts.isolated.IsolatedProvider`, with FD one end of a socket
pair.  It loads the provider named in the parent's :class:`~.wire.Start` frame,
serves the parent's calls (logon, submit_message, end_message, poll,
start_message, ...) and gives the provider a support object whose calls travel back
to the parent (:class:`_ChildSupport`).  It ends when the session has logged off or
the parent goes away.

What differs from an in-process session, and why: ``now()`` is the system clock
(the parent's clock may be a fake one in tests); ``slice_spent()`` is always False,
since nothing of the spooler shares this loop; ``spooler_yield()`` outside a
critical section yields this loop only (the parent's loop never waited for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from ...contract.errors import ContractViolation, InvalidObject, MessageCancelled
from ...contract.objects import OutboundMessage
from ...model import (
    EndFlags,
    FlushFlags,
    LogoffFlags,
    LogonFlags,
    Progress,
    RecipientResult,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    TransportNotifyFlags,
    ValidateFlags,
)
from ..config import load_provider_class
from ..destinations import destination_concurrency_of, destination_rate_delay_of
from ..objects import ContentMessage, InboundWriterImpl, ProfileSectionImpl
from .wire import (
    WIRE_VERSION,
    Channel,
    Ended,
    InboundResult,
    OutboundSnapshot,
    RemoteError,
    SessionFacts,
    Start,
    read_frame,
)

T = TypeVar("T")
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "spoolbox_child_message", default=None
)


class _Cancels:
    """Refs the parent cancelled (NOTIFY_CANCEL_MESSAGE), checked at every yield."""

    def __init__(self) -> None:
        self.refs: set[str] = set()

    def check(self) -> None:
        ref = _CURRENT.get()
        if ref is not None and ref in self.refs:
            raise MessageCancelled(ref)

    async def implicit_yield(self) -> None:
        await asyncio.sleep(0)
        self.check()


Callback = Callable[[], Awaitable[None] | None]


def _inbound_result(writer: InboundWriterImpl) -> InboundResult:
    """What the parent writes into its own writer for the message ``writer`` holds."""
    return InboundResult(
        content=writer.content(),
        sender=writer.sender,
        recipients=writer.recipients,
        remote_id=writer.remote_id,
        state=dict(writer.state),
        callbacks=bool(writer.commit_callbacks or writer.rollback_callbacks),
    )


class _ProfileOverPipe:
    """Writes the provider's profile section through the spooler (a ProfileWriter)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    async def profile_update(self, section: str, values: Mapping[str, Any]) -> None:
        await self._channel.call("profile_update", dict(values))


class _ChildSupport:
    """The Support of the contract, in the child: calls go to the parent's support."""

    def __init__(self, child: _Child, name: str, hostname: str) -> None:
        self._child = child
        self._name = name
        self._hostname = hostname
        self.in_critsec = 0
        self.critical = False  # the session reported CRITICAL_ERROR

    @property
    def transport_name(self) -> str:
        return self._name

    @property
    def hostname(self) -> str:
        return self._hostname

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"spoolbox.transport.{self._name}")

    def now(self) -> float:
        return time.time()

    async def spooler_yield(self) -> None:
        if self.in_critsec:
            await self._child.channel.call("spooler_yield")
        else:
            await asyncio.sleep(0)
        self._child.cancels.check()

    def slice_spent(self) -> bool:
        return False

    def spooler_notify(self, flags: SpoolerNotifyFlags, ref: str | None = None) -> None:
        f = SpoolerNotifyFlags(flags)
        if f & (SpoolerNotifyFlags.CRITSEC | SpoolerNotifyFlags.NONCRIT):
            raise ContractViolation(
                "use `async with support.critical_section():` for NOTIFY_CRITSEC/NONCRIT"
            )
        if f & SpoolerNotifyFlags.CRITICAL_ERROR:
            self.critical = True
        facts = self._child.facts() if f & SpoolerNotifyFlags.CONFIG_CHANGE else None
        self._child.channel.tell("spooler_notify", int(f), ref, facts)

    @contextlib.asynccontextmanager
    async def critical_section(self) -> AsyncIterator[None]:
        await self._child.channel.call("critsec_enter")
        self.in_critsec += 1
        try:
            yield
        finally:
            self.in_critsec -= 1
            self._child.channel.tell("critsec_leave")

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
        self._child.channel.tell(
            "modify_status_row",
            {
                "status_code": None if status_code is None else StatusCode(status_code),
                "set_bits": StatusCode(set_bits),
                "clear_bits": StatusCode(clear_bits),
                "status_string": status_string,
                "progress": progress,
                "clear_progress": clear_progress,
                "identity": identity,
                "update": update,
            },
        )

    async def status_recips(
        self, message: OutboundMessage, results: Sequence[RecipientResult]
    ) -> None:
        if not isinstance(message, ContentMessage):
            raise ContractViolation(
                f"status_recips() got {message!r}, not a message of this session"
            )
        if not message.valid:
            raise InvalidObject(f"status_recips() on {message.ref} after its call ended")
        await self._child.channel.call("status_recips", message.ref, tuple(results))

    def profile_section(self) -> ProfileSectionImpl:
        return self._child.profile

    def register_preprocessor(self, preprocess: object, **_kwargs: object) -> None:
        raise ContractViolation(
            f"transport {self._name!r}: register_preprocessor() is not available to an "
            "isolated transport (its preprocessors would run in the child, where the "
            "spooler cannot measure them); run it with isolate = false"
        )

    async def run_blocking(self, fn: Callable[..., T], /, *args: object) -> T:
        return await asyncio.to_thread(fn, *args)


class _ForwardLogs(logging.Handler):
    """Log records of the child go to the parent's loggers."""

    def __init__(self, child: _Child) -> None:
        super().__init__()
        self._child = child

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self._child.loop.call_soon_threadsafe(self._child.log_to_parent, record, text)
        except Exception:  # pragma: no cover - never let logging take the child down
            self.handleError(record)


class _Child:
    def __init__(self, start: Start, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.loop = asyncio.get_running_loop()
        self.start = start
        self.cancels = _Cancels()
        self.provider: Any = None  # loaded by logon, so that a failure is its answer
        self.session: Any = None
        self.messages: dict[str, ContentMessage] = {}
        self.writers: dict[str, InboundWriterImpl] = {}
        self.done = asyncio.Event()
        self.channel = Channel(
            reader,
            writer,
            calls={
                "logon": self.logon,
                "submit_message": self.submit_message,
                "end_message": self.end_message,
                "start_message": self.start_message,
                "inbound_done": self.inbound_done,
                "profile_reload": self.profile_reload,
                "poll": lambda: self._session().poll(),
                "idle": lambda: self._session().idle(),
                "flush_queues": lambda f: self._session().flush_queues(FlushFlags(f)),
                "transport_notify": self.transport_notify,
                "validate_state": self.validate_state,
                "logoff": self.logoff,
            },
            tells={},
            name=f"isolated transport {start.transport!r} (child)",
        )
        self.support = _ChildSupport(self, start.transport, start.hostname)
        self.profile = self._profile({})

    def _profile(self, values: Mapping[str, Any]) -> ProfileSectionImpl:
        section = f"transport:{self.start.transport}"
        return ProfileSectionImpl(_ProfileOverPipe(self.channel), section, values)

    def log_to_parent(self, record: logging.LogRecord, text: str) -> None:
        with contextlib.suppress(Exception):
            self.channel.tell("log", record.name, record.levelno, text)

    def _session(self) -> Any:
        if self.session is None:
            raise ContractViolation("the isolated session is not logged on")
        return self.session

    def facts(self) -> SessionFacts:
        s = self._session()
        return SessionFacts(
            capabilities=int(s.capabilities()),
            address_types=tuple(s.address_types()),
            options=tuple(s.register_options()),
            concurrency=max(1, int(getattr(s, "concurrency", 1))),
            status_object=dict(s.status_object()),
            destination_concurrency=destination_concurrency_of(s),
            destination_rate_delay=destination_rate_delay_of(s),
        )

    async def logon(
        self, options: Mapping[str, Any], flags: int, profile: Mapping[str, Any]
    ) -> SessionFacts:
        self.profile = self._profile(profile)
        if self.provider is None:
            self.provider = load_provider_class(self.start.provider)()
        self.session = await self.provider.logon(self.support, options, LogonFlags(flags))
        return self.facts()

    async def submit_message(self, snap: OutboundSnapshot, flags: int) -> Ended | None:
        """submit_message, and (as the spooler calls it after every submit_message that
        returned normally, unless the session reported a critical error) end_message
        at once: one round trip a message less.  None: end_message was not called."""
        msg = ContentMessage(
            snap.info, snap.recipients, snap.flags, snap.content, self.cancels.implicit_yield
        )
        self.messages[snap.ref] = msg
        token = _CURRENT.set(snap.ref)
        try:
            await self._session().submit_message(msg, SubmitFlags(flags))
        except BaseException:
            self._forget(snap.ref)
            raise
        finally:
            _CURRENT.reset(token)
        if self.support.critical:
            return None
        try:
            return Ended(await self.end_message(snap.ref), None)
        except Exception as exc:
            return Ended(None, RemoteError.of(exc))

    async def end_message(self, ref: str) -> int:
        msg = self.messages.get(ref)
        if msg is None:
            raise ContractViolation(f"end_message for {ref}, which is not being submitted")
        token = _CURRENT.set(ref)
        try:
            return int(EndFlags(await self._session().end_message(msg)))
        finally:
            _CURRENT.reset(token)
            self._forget(ref)

    def _forget(self, ref: str) -> None:
        msg = self.messages.pop(ref, None)
        if msg is not None:
            msg.valid = False
        self.cancels.refs.discard(ref)

    async def start_message(self, ref: str) -> InboundResult:
        writer = InboundWriterImpl(ref, self.cancels.implicit_yield)
        token = _CURRENT.set(ref)
        try:
            result = await self._session().start_message(writer)
            if result is not None:
                raise ContractViolation(
                    f"start_message() returned {result!r}; it must return None "
                    "(write the message through the writer)"
                )
            self.cancels.check()
        except BaseException:
            await _run(writer.rollback_callbacks)
            raise
        finally:
            _CURRENT.reset(token)
            writer.valid = False
            self.cancels.refs.discard(ref)
        out = _inbound_result(writer)
        if not out.content:
            await _run(writer.rollback_callbacks)
        elif out.callbacks or out.state:
            self.writers[ref] = writer
        return out

    async def inbound_done(self, ref: str, committed: bool) -> None:
        writer = self.writers.pop(ref, None)
        if writer is None:
            return
        if committed:
            self.profile.merge_committed(writer.state)
        await _run(writer.commit_callbacks if committed else writer.rollback_callbacks)

    async def profile_reload(self, values: Mapping[str, Any]) -> None:
        """The section as the store holds it now (the spooler read it again)."""
        self.profile.replace(values)

    async def transport_notify(self, flags: int, ref: str | None) -> None:
        f = TransportNotifyFlags(flags)
        if f & TransportNotifyFlags.CANCEL_MESSAGE and ref is not None:
            self.cancels.refs.add(ref)
        await self._session().transport_notify(f, ref)

    async def validate_state(self, flags: int) -> SessionFacts:
        await self._session().validate_state(ValidateFlags(flags))
        return self.facts()

    async def logoff(self, flags: int) -> None:
        try:
            if self.session is not None:
                await self.session.logoff(LogoffFlags(flags))
            if self.provider is not None:
                await self.provider.shutdown()
        finally:
            self.session = None
            self.loop.call_soon(self.done.set)


async def _run(callbacks: Sequence[Callback]) -> None:
    for cb in callbacks:
        res = cb()
        if asyncio.iscoroutine(res):
            await res


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    start = await read_frame(reader)
    if not isinstance(start, Start) or start.version != WIRE_VERSION:
        raise SystemExit(f"spoolbox isolated child: expected a version {WIRE_VERSION} Start frame")
    for entry in reversed(start.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    child = _Child(start, reader, writer)
    handler = _ForwardLogs(child)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(start.log_level)
    serving = asyncio.create_task(child.channel.run())
    done = asyncio.create_task(child.done.wait())
    await asyncio.wait({serving, done}, return_when=asyncio.FIRST_COMPLETED)
    root.removeHandler(handler)
    if not serving.done():
        with contextlib.suppress(Exception):
            await writer.drain()
        child.channel.close("logged off")
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        raise SystemExit("usage: python -m spoolbox._core.hosts.isolated_child FD")
    asyncio.run(_main(int(args[0])))


if __name__ == "__main__":
    main()
