"""The objects handed to providers, with their implicit yields.

:class:`OutboundMessageImpl` (inside submit/end; :class:`ContentMessage` in an
isolated transport's child), :class:`InboundWriterImpl` (inside start_message) and
:class:`ProfileSectionImpl`.  Every async method ends in the
session's *implicit yield*: if the current slice has spent its budget, control goes
back to the loop (unless the session holds a critical section), and a cancelled
message raises :class:`~spoolbox.contract.MessageCancelled`.  Objects die when their
call ends (MAPI's MakeInvalid): using one afterwards raises
:class:`~spoolbox.contract.InvalidObject`, which names the provider's mistake.
"""

from __future__ import annotations

import copy
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from email import policy as email_policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any, Protocol

from ..contract.errors import ContractViolation, InvalidObject
from ..contract.objects import MAX_INBOUND_SIZE, OutboundRecipient
from ..model import Address, MessageInfo, SubmitFlags
from ..store import ClaimedJob, Store

__all__ = [
    "ContentMessage",
    "InboundWriterImpl",
    "OutboundMessageImpl",
    "ProfileSectionImpl",
    "ProfileWriter",
]

YieldFn = Callable[[], Awaitable[None]]


class _OutboundView:
    """What an outbound message answers from its info, recipients and content; a
    subclass says where the content comes from (:meth:`content`, :meth:`iter_content`)."""

    def __init__(
        self,
        info: MessageInfo,
        recipients: tuple[OutboundRecipient, ...],
        flags: SubmitFlags,
        implicit_yield: YieldFn,
    ) -> None:
        self._info = info
        self._recipients = recipients
        self._flags = flags
        self._yield = implicit_yield
        self._email: EmailMessage | None = None
        self.valid = True

    def _check(self) -> None:
        if not self.valid:
            raise InvalidObject(
                f"message {self.ref} was used after end_message returned (or after its call "
                f"failed); a transport must not keep message objects"
            )

    @property
    def ref(self) -> str:
        return self._info.id

    @property
    def info(self) -> MessageInfo:
        return self._info

    @property
    def sender(self) -> Address | None:
        return self._info.sender

    @property
    def recipients(self) -> tuple[OutboundRecipient, ...]:
        return self._recipients

    @property
    def flags(self) -> SubmitFlags:
        return self._flags

    @property
    def size(self) -> int:
        return self._info.size

    async def content(self) -> bytes:
        raise NotImplementedError

    def iter_content(self, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def email(self) -> EmailMessage:
        if self._email is None:
            data = await self.content()
            parsed = BytesParser(policy=email_policy.default).parsebytes(data)
            assert isinstance(parsed, EmailMessage)
            self._email = parsed
            await self._yield()
        return self._email

    async def iter_recipients(self) -> AsyncIterator[OutboundRecipient]:
        self._check()
        for r in self._recipients:
            yield r
            await self._yield()

    async def iter_attachments(self) -> AsyncIterator[Message]:
        msg = await self.email()
        for part in msg.iter_attachments():
            self._check()
            yield part
            await self._yield()


class OutboundMessageImpl(_OutboundView):
    """The message of a claimed job; its content is read from the store."""

    def __init__(
        self,
        job: ClaimedJob,
        store: Store,
        implicit_yield: YieldFn,
        flags: SubmitFlags,
        *,
        content: bytes | None = None,
    ) -> None:
        super().__init__(
            job.message if content is None else replace(job.message, size=len(content)),
            tuple(
                OutboundRecipient(r.index, r.address, r.attempts, r.original)
                for r in job.recipients
            ),
            flags,
            implicit_yield,
        )
        self._job = job
        self._store = store
        # ``content``: what hooks and preprocessors made of it; else prefetched by the
        # claim, if small, or read from the store when asked for.
        self._replaced = content is not None
        self._content: bytes | None = content if content is not None else job.content
        self.reported: set[int] = set()
        self.cancelled = False
        # The store refused a settle of it (its lease was taken over): the claim that
        # holds the recipients now settles and counts them, not this one.
        self.refused = False

    def __repr__(self) -> str:
        return (
            f"<OutboundMessage {self.ref} to {len(self._recipients)} via {self._job.transport}"
            f"{' cancelled' if self.cancelled else ''}{'' if self.valid else ' (invalid)'}>"
        )

    @property
    def job(self) -> ClaimedJob:
        return self._job

    def pending(self) -> list[tuple[int, int]]:
        """(index, attempts) of recipients without a result yet."""
        return [(r.index, r.attempts) for r in self._recipients if r.index not in self.reported]

    async def content(self) -> bytes:
        self._check()
        if self._content is None:
            self._content = await self._store.read_content(self.ref)
        await self._yield()
        return self._content

    async def iter_content(self, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        self._check()
        if self._replaced and self._content is not None:
            chunks = _chunks(self._content, chunk_size)
        else:
            chunks = self._store.iter_content(self.ref, chunk_size=chunk_size)
        async for chunk in chunks:
            self._check()
            yield chunk
            await self._yield()


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class ContentMessage(_OutboundView):
    """A message whose whole content is at hand (an isolated transport's child)."""

    def __init__(
        self,
        info: MessageInfo,
        recipients: tuple[OutboundRecipient, ...],
        flags: SubmitFlags,
        content: bytes,
        implicit_yield: YieldFn,
    ) -> None:
        super().__init__(info, recipients, flags, implicit_yield)
        self._data = content

    def __repr__(self) -> str:
        return f"<OutboundMessage {self.ref} to {len(self._recipients)} (isolated)>"

    async def content(self) -> bytes:
        self._check()
        await self._yield()
        return self._data

    async def iter_content(self, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        self._check()
        for start in range(0, len(self._data), chunk_size):
            self._check()
            yield self._data[start : start + chunk_size]
            await self._yield()


class InboundWriterImpl:
    def __init__(self, ref: str, implicit_yield: YieldFn, max_size: int = MAX_INBOUND_SIZE):
        self._ref = ref
        self._yield = implicit_yield
        self._data = io.BytesIO()  # one buffer: content() hands it over without a copy
        self._size = 0
        self._max = max_size
        self.sender: str | None = None
        self.recipients: tuple[str, ...] = ()
        self.remote_id: str | None = None
        self.state: dict[str, Any] = {}
        self.commit_callbacks: list[Callable[[], Awaitable[None] | None]] = []
        self.rollback_callbacks: list[Callable[[], Awaitable[None] | None]] = []
        self.cancelled = False
        self.valid = True

    def __repr__(self) -> str:
        return f"<InboundWriter {self._ref} {self._size} bytes>"

    def _check(self) -> None:
        if not self.valid:
            raise InvalidObject(
                f"inbound message {self._ref} was used after start_message returned"
            )

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        self._check()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ContractViolation(f"write() takes bytes, not {type(data).__name__}")
        if self._size + len(data) > self._max:
            raise ContractViolation(
                f"inbound message {self._ref} exceeds the size limit of {self._max} bytes"
            )
        self._size += self._data.write(data)
        await self._yield()

    def set_envelope(self, *, sender: str | None = None, recipients: tuple[str, ...] = ()) -> None:
        self._check()
        self.sender = sender
        self.recipients = tuple(recipients)

    def set_remote_id(self, remote_id: str) -> None:
        self._check()
        self.remote_id = remote_id

    def set_state(self, key: str, value: Any) -> None:
        self._check()
        self.state[key] = copy.deepcopy(value)

    def after_commit(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        self._check()
        self.commit_callbacks.append(callback)

    def after_rollback(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        self._check()
        self.rollback_callbacks.append(callback)

    def content(self) -> bytes:
        return self._data.getvalue()


class ProfileWriter(Protocol):
    """Where a profile section is written through to: the store, or (in an isolated
    transport's child) the pipe to the spooler."""

    async def profile_update(self, section: str, values: Mapping[str, Any]) -> None: ...


class ProfileSectionImpl:
    """A provider's durable key/value section, cached in memory, written through."""

    def __init__(self, store: ProfileWriter, section: str, values: Mapping[str, Any]) -> None:
        self._store = store
        self._section = section
        self._values = dict(values)

    def __repr__(self) -> str:
        return f"<ProfileSection {self._section} keys={sorted(self._values)}>"

    @property
    def section(self) -> str:
        return self._section

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self._values.get(key, default))

    def snapshot(self) -> Mapping[str, Any]:
        return copy.deepcopy(self._values)

    async def update(self, values: Mapping[str, Any]) -> None:
        await self._store.profile_update(self._section, values)
        self.merge_committed(values)

    def replace(self, values: Mapping[str, Any]) -> None:
        """Take in the whole section as the store holds it now (another node wrote it
        while this one did not hold the mailbox's lease)."""
        self._values = copy.deepcopy(dict(values))

    def merge_committed(self, values: Mapping[str, Any]) -> None:
        """Take in ``values`` already written to the store (None deletes a key)."""
        for k, v in values.items():
            if v is None:
                self._values.pop(k, None)
            else:
                self._values[k] = copy.deepcopy(v)
