"""The wire between the spooler and an isolated transport's child process.

Frames are a 4-byte big-endian length and a pickle of one of the frozen dataclasses
below (:data:`FRAMES`).  Either end may call the other: a :class:`Call` is answered by
a :class:`Reply` or a :class:`Failed` with the same id, a :class:`Tell` is not
answered, a :class:`Cancel` cancels a call in progress.  The first frame the parent
sends is a :class:`Start`, whose ``version`` must be :data:`WIRE_VERSION`.

Why pickle, and why it is safe here: both ends are the same spoolbox code in two
processes of the same user, joined by an anonymous socket pair that nothing else
can open; and what the child sends is only unpickled through
:class:`_Unpickler`, which resolves no class outside spoolbox's model and contract,
this module, and plain built-in values.  A child whose provider was subverted (by a
hostile server's input to a C extension, say) can therefore send the parent wrong
*values*, which the spooler checks as it checks any provider's, but no code.

:class:`Channel` runs one end: it multiplexes calls both ways over one pair of
asyncio streams and fails every call in flight when the other end goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...contract.errors import (
    ContractViolation,
    FailOneProvider,
    InvalidObject,
    MessageCancelled,
    NetworkError,
    NotMe,
    SpoolboxError,
    SubmitCancelled,
    TransportBusy,
    Unconfigured,
    WaitRetry,
)
from ...contract.objects import OutboundRecipient
from ...model import MessageInfo, SubmitFlags

__all__ = [
    "FRAMES",
    "WIRE_VERSION",
    "Call",
    "Cancel",
    "Channel",
    "ChannelClosed",
    "Ended",
    "Failed",
    "InboundResult",
    "OutboundSnapshot",
    "RemoteError",
    "RemoteFailure",
    "Reply",
    "SessionFacts",
    "Start",
    "Tell",
]

log = logging.getLogger("spoolbox.isolate")

#: Bumped whenever a frame or a call's arguments change shape.
WIRE_VERSION = 1
#: A frame longer than this ends the channel (an inbound message is at most 256 MiB).
MAX_FRAME = 512 * 1024 * 1024
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Start:
    version: int
    provider: str  # "module:Class" or an entry-point name
    transport: str
    sys_path: tuple[str, ...]
    log_level: int
    hostname: str = "localhost"  # Support.hostname in the child


@dataclass(frozen=True, slots=True)
class Call:
    id: int
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    value: Any = None


@dataclass(frozen=True, slots=True)
class Failed:
    id: int
    error: RemoteError


@dataclass(frozen=True, slots=True)
class Tell:
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Cancel:
    id: int


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the parent answers the contract's synchronous calls with."""

    capabilities: int
    address_types: tuple[str, ...]
    options: tuple[Any, ...]  # OptionSpec values
    concurrency: int
    status_object: Mapping[str, Any] = field(default_factory=dict)
    destination_concurrency: int | None = None
    destination_rate_delay: float | None = None


@dataclass(frozen=True, slots=True)
class OutboundSnapshot:
    """What a provider can read of an outbound message, shipped with submit_message."""

    ref: str
    info: MessageInfo
    recipients: tuple[OutboundRecipient, ...]
    flags: SubmitFlags
    content: bytes


@dataclass(frozen=True, slots=True)
class InboundResult:
    """What start_message wrote (``content`` empty: nothing was delivered)."""

    content: bytes
    sender: str | None
    recipients: tuple[str, ...]
    remote_id: str | None
    state: Mapping[str, Any]
    callbacks: bool  # after_commit/after_rollback callbacks wait in the child


@dataclass(frozen=True, slots=True)
class Ended:
    """What end_message answered, run in the child right after submit_message."""

    flags: int | None
    error: RemoteError | None


class RemoteFailure(SpoolboxError):
    """An exception other than the contract's, raised by a provider in its child process."""


class ChannelClosed(ConnectionError):
    """The other end of the channel went away."""


_SIMPLE: dict[str, type[SpoolboxError]] = {
    cls.__name__: cls
    for cls in (TransportBusy, NotMe, SubmitCancelled, FailOneProvider, ContractViolation)
}
_SIMPLE["InvalidObject"] = InvalidObject


@dataclass(frozen=True, slots=True)
class RemoteError:
    """An exception, as data: the contract's errors come back as themselves."""

    kind: str
    text: str
    delay: float | None = None
    missing: tuple[str, ...] = ()

    @classmethod
    def of(cls, exc: BaseException) -> RemoteError:
        if isinstance(exc, WaitRetry):
            return cls(
                type(exc).__name__ if isinstance(exc, NetworkError) else "WaitRetry",
                exc.reason,
                delay=exc.delay,
            )
        if isinstance(exc, MessageCancelled):
            return cls("MessageCancelled", exc.message_id)
        if isinstance(exc, Unconfigured):
            return cls("Unconfigured", str(exc), missing=exc.missing)
        name = type(exc).__name__
        if isinstance(exc, InvalidObject):
            name = "InvalidObject"
        elif isinstance(exc, ContractViolation):
            name = "ContractViolation"
        return cls(name, str(exc))

    def exception(self) -> BaseException:
        if self.kind == "NetworkError":
            return NetworkError(self.delay or 0.0, self.text)
        if self.kind == "WaitRetry":
            return WaitRetry(self.delay or 0.0, self.text)
        if self.kind == "MessageCancelled":
            return MessageCancelled(self.text)
        if self.kind == "Unconfigured":
            return Unconfigured(self.missing)
        simple = _SIMPLE.get(self.kind)
        if simple is not None:
            return simple(self.text)
        return RemoteFailure(f"{self.kind}: {self.text}")


#: Every frame type, for the unpickler and the tests.
FRAMES = (Start, Call, Reply, Failed, Tell, Cancel)

_ALLOWED_MODULES = ("spoolbox.model", "spoolbox.contract", __name__)
_ALLOWED_BUILTINS = frozenset(
    {
        "bool",
        "bytes",
        "bytearray",
        "complex",
        "dict",
        "float",
        "frozenset",
        "int",
        "list",
        "set",
        "str",
        "tuple",
    }
)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if module == "copyreg" and name == "_reconstructor":
            return super().find_class(module, name)
        if any(module == m or module.startswith(m + ".") for m in _ALLOWED_MODULES):
            found = super().find_class(module, name)
            if isinstance(found, type):  # a class, never a function to call
                return found
        raise pickle.UnpicklingError(
            f"a frame from the other process names {module}.{name}, which is not a "
            "spoolbox model or contract type: refused"
        )


def encode(frame: object) -> bytes:
    data = pickle.dumps(frame, protocol=5)
    return _LEN.pack(len(data)) + data


def decode(data: bytes) -> object:
    frame = _Unpickler(io.BytesIO(data)).load()
    if not isinstance(frame, FRAMES):
        raise pickle.UnpicklingError(f"not a frame: {type(frame).__name__}")
    return frame


async def read_frame(reader: asyncio.StreamReader) -> object:
    """The next frame; raises IncompleteReadError at the end of the stream."""
    head = await reader.readexactly(_LEN.size)
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise pickle.UnpicklingError(f"a frame of {size} bytes is over the {MAX_FRAME} limit")
    return decode(await reader.readexactly(size))


Handler = Callable[..., Any]


class Channel:
    """One end of the wire: calls out, serves calls in, until the other end goes."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        calls: Mapping[str, Handler],
        tells: Mapping[str, Handler],
        name: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._calls = calls
        self._tells = tells
        self._name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.frames_in = 0
        self.frames_out = 0

    def send(self, frame: object) -> None:
        if self.closed.done():
            raise ChannelClosed(f"{self._name}: {self.closed.result()}")
        self._writer.write(encode(frame))
        self.frames_out += 1

    def tell(self, method: str, *args: Any) -> None:
        self.send(Tell(method, args))

    async def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` on the other end and return its value (or raise its error)."""
        cid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            self.send(Call(cid, method, args))
            await self._writer.drain()
            return await fut
        except asyncio.CancelledError:
            if not self.closed.done():
                with contextlib.suppress(Exception):
                    self.send(Cancel(cid))
            raise
        finally:
            self._pending.pop(cid, None)

    async def run(self) -> None:
        """Read frames until the other end goes; then fail what is in flight."""
        reason = "the other process closed the channel"
        try:
            while True:
                frame = await read_frame(self._reader)
                self.frames_in += 1
                self._dispatch(frame)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except pickle.UnpicklingError as exc:
            reason = f"protocol error: {exc}"
            log.error("%s: %s", self._name, reason)
        finally:
            self.close(reason)

    def close(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(reason))
        for task in self._serving.values():
            task.cancel()
        self._writer.close()

    def _dispatch(self, frame: object) -> None:
        if isinstance(frame, Reply | Failed):
            fut = self._pending.get(frame.id)
            if fut is None or fut.done():
                return  # cancelled meanwhile
            if isinstance(frame, Reply):
                fut.set_result(frame.value)
            else:
                fut.set_exception(frame.error.exception())
        elif isinstance(frame, Tell):
            handler = self._tells.get(frame.method)
            if handler is None:
                log.error("%s: unknown notification %r", self._name, frame.method)
                return
            try:
                handler(*frame.args)
            except Exception:
                log.exception("%s: notification %s failed", self._name, frame.method)
        elif isinstance(frame, Call):
            task = asyncio.get_running_loop().create_task(self._serve(frame))
            self._serving[frame.id] = task
        elif isinstance(frame, Cancel):
            serving = self._serving.get(frame.id)
            if serving is not None:
                serving.cancel()

    async def _serve(self, call: Call) -> None:
        handler = self._calls.get(call.method)
        try:
            if handler is None:
                raise ContractViolation(f"unknown call {call.method!r}")
            result = handler(*call.args)
            if isinstance(result, Awaitable):
                result = await result
            answer: object = Reply(call.id, result)
        except asyncio.CancelledError:
            answer = Failed(call.id, RemoteError("CancelledError", "cancelled"))
        except Exception as exc:
            answer = Failed(call.id, RemoteError.of(exc))
        finally:
            self._serving.pop(call.id, None)
        with contextlib.suppress(ChannelClosed, ConnectionError):
            self.send(answer)
