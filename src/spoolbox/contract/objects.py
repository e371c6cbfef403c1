"""The objects the spooler hands a provider, as protocols.

* :class:`OutboundMessage` is the message between ``submit_message`` and
  ``end_message`` (MAPI's lpMessage with its recipient table restricted to the rows
  this transport is responsible for).
* :class:`InboundWriter` is the new inbox message inside ``start_message``.
* :class:`ProfileSection` is the provider's durable settings and state
  (OpenProfileSection).

Their async methods yield to the spooler on their own when the caller's slice is
spent (the *implicit yields* of the original): a simple provider that reads its
content, iterates its recipients and writes its inbound message through them is a
good citizen without a single explicit ``spooler_yield``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Any, Protocol

from spoolbox._quick import quick_init

from ..model import Address, MessageInfo, SubmitFlags

__all__ = [
    "InboundWriter",
    "OutboundMessage",
    "OutboundRecipient",
    "ProfileSection",
]


@quick_init
@dataclass(frozen=True, slots=True)
class OutboundRecipient:
    """A recipient this transport is responsible for. ``index`` identifies it in results."""

    index: int
    address: Address
    attempts: int = 0  # earlier attempts on this recipient
    #: RFC 3461 ORCPT as given with it ("rfc822;bob@example.org"), or None: the smtp
    #: transport passes it on to a next hop that offers DSN.
    original: str | None = None

    @property
    def type(self) -> str:
        return self.address.type

    @property
    def value(self) -> str:
        return self.address.value


class OutboundMessage(Protocol):
    """The message a transport is sending. Valid until ``end_message`` returns."""

    @property
    def ref(self) -> str:
        """The message reference (our MAPI lpulMsgRef): the message id."""
        ...

    @property
    def info(self) -> MessageInfo: ...

    @property
    def sender(self) -> Address | None: ...

    @property
    def recipients(self) -> tuple[OutboundRecipient, ...]:
        """Only the recipients this transport is responsible for."""
        ...

    @property
    def flags(self) -> SubmitFlags: ...

    @property
    def size(self) -> int: ...

    async def content(self) -> bytes:
        """The RFC 5322 bytes, whole (use :meth:`iter_content` for large messages)."""
        ...

    def iter_content(self, chunk_size: int = 65536) -> AsyncIterator[bytes]: ...

    async def email(self) -> EmailMessage:
        """The content parsed with the standard library (once, then cached)."""
        ...

    def iter_recipients(self) -> AsyncIterator[OutboundRecipient]: ...

    def iter_attachments(self) -> AsyncIterator[Message]: ...


#: The largest inbound message the spooler takes (bytes): ``InboundWriter.write``
#: past it raises ContractViolation.  An inbound transport that can learn a message's
#: size first should skip larger ones rather than fail on them again and again.
MAX_INBOUND_SIZE = 256 * 1024 * 1024


class InboundWriter(Protocol):
    """The inbox message being filled in ``start_message``.

    It is committed when ``start_message`` returns normally having written content;
    if the call raises, is cancelled, or writes nothing, nothing is delivered.
    """

    @property
    def ref(self) -> str: ...

    async def write(self, data: bytes) -> None: ...

    def set_envelope(
        self, *, sender: str | None = None, recipients: tuple[str, ...] = ()
    ) -> None: ...

    def set_remote_id(self, remote_id: str) -> None:
        """Where it came from on the remote side (IMAP UID, POP3 UIDL), for the record."""
        ...

    def set_state(self, key: str, value: Any) -> None:
        """A profile-section value committed in the same transaction as the message
        (an IMAP UID watermark, say), so a crash keeps both or neither."""
        ...

    def after_commit(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``callback`` once the message is durably in the inbox (and only then):
        the place to delete or move the source item (MAPI: delete only after save)."""
        ...

    def after_rollback(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``callback`` if this message will not be in the inbox after all: its
        commit failed, or ``start_message`` raised, was cancelled or wrote nothing
        after registering it.  The place to offer the source item again (an IMAP
        session puts the UID back in its queue).  Callbacks of one batch run in
        message order."""
        ...

    @property
    def size(self) -> int: ...


class ProfileSection(Protocol):
    """The provider's own durable settings and state (OpenProfileSection(NULL))."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def snapshot(self) -> Mapping[str, Any]: ...

    async def update(self, values: Mapping[str, Any]) -> None:
        """Merge and commit durably now (a value of None deletes the key)."""
        ...
