"""Spooler hooks and preprocessors: the public contract (MAPI's ISpoolerHook and
RegisterPreprocessor / PreprocessMessage / RemovePreprocessInfo).

* A **preprocessor** is a pair of callables a *transport* registers at logon with
  :meth:`Support.register_preprocessor <spoolbox.contract.Support.register_preprocessor>`,
  for some address types or for all.  Before the transport gets a message (after
  routing), the spooler runs the transport's matching preprocessors in registration
  order, once per message and transport: each takes a :class:`HookMessage` and
  returns new content or None (unchanged).  Its result is *not stored*: after a crash
  it runs again from the original content, so what goes out is transformed once.
  The ``remove`` counterpart (RemovePreprocessInfo) runs after the transport is done
  with the message, to drop whatever the preprocessor kept aside.
* A **spooler hook** is an object made from an entry point of the group
  ``spoolbox.hooks`` (``HPProviderInit``), configured in the profile in order
  (``[[hooks]]``).  Its ``outbound`` method sees every outbound message before a
  transport does and answers :data:`KEEP`, :class:`Change`, :class:`Reroute` or
  :class:`Delete`; its ``inbound`` method sees every received message before it is
  committed to the inbox and answers :data:`KEEP`, :class:`FileTo` or
  :class:`Delete`.  Like provider code, both run cooperatively in the spooler's loop,
  measured by the slice meter.

Hooks and preprocessors import only this package (and what it re-exports).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email import policy as email_policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, Protocol

from ..model import Address, MessageInfo

__all__ = [
    "KEEP",
    "Change",
    "Delete",
    "FileTo",
    "HookFlags",
    "HookMessage",
    "InboundVerdict",
    "Keep",
    "OutboundVerdict",
    "PreprocessInfoRemover",
    "Preprocessor",
    "Reroute",
    "SpoolerHook",
]


class HookFlags(enum.IntFlag):
    """Which messages a hook sees (the ``ulFlags`` of HPProviderInit)."""

    NONE = 0
    INBOUND = 0x00000200  # HOOK_INBOUND
    OUTBOUND = 0x00000400  # HOOK_OUTBOUND


@dataclass(frozen=True, slots=True)
class HookMessage:
    """A message as a hook or a preprocessor sees it: read-only; answer with a verdict
    (a hook) or with new content (a preprocessor).

    Addresses are ``TYPE:value`` strings.  Outbound: ``recipients`` are the ones the
    transport ``transport`` is about to send to, ``info`` the queued message.
    Inbound: the envelope the receiving transport set (``recipients`` may be empty),
    ``info`` is None.
    """

    ref: str
    direction: HookFlags
    transport: str
    sender: str | None
    recipients: tuple[str, ...]
    content: bytes = field(repr=False)
    info: MessageInfo | None = None

    def email(self) -> EmailMessage:
        """The content parsed with the standard library (a new object on every call)."""
        parsed = BytesParser(policy=email_policy.default).parsebytes(self.content)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass(frozen=True, slots=True)
class Keep:
    """Leave the message as it is (the chain goes on)."""


#: The verdict "leave it alone".
KEEP = Keep()


@dataclass(frozen=True, slots=True)
class Change:
    """Outbound: send ``content`` instead (the chain goes on with it).  The changed
    content is stored before any transport gets it."""

    content: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.content, bytes | bytearray) or not self.content.strip():
            raise TypeError("Change(content) takes the message's new bytes, not empty")
        object.__setattr__(self, "content", bytes(self.content))


@dataclass(frozen=True, slots=True)
class Reroute:
    """Outbound: send the message to ``recipients`` instead of the ones it had (they
    are cancelled; a new message goes to these).  Ends the chain."""

    recipients: tuple[Address | str, ...]

    def __post_init__(self) -> None:
        rcpts = tuple(self.recipients)
        if not rcpts:
            raise TypeError("Reroute needs at least one recipient (use Delete to drop it)")
        object.__setattr__(self, "recipients", rcpts)


@dataclass(frozen=True, slots=True)
class Delete:
    """Do not send (outbound: the recipients fail with ``status`` and ``reason``, and
    the sender gets a report if they asked for one) or do not keep (inbound: the
    message never reaches the inbox).  Ends the chain (MAPI's HOOK_DELETE |
    HOOK_CANCEL)."""

    reason: str
    status: str = "5.7.1"


@dataclass(frozen=True, slots=True)
class FileTo:
    """Inbound: put the message into ``folder`` of the inbox (a later hook may file it
    elsewhere; Delete still wins)."""

    folder: str

    def __post_init__(self) -> None:
        if not isinstance(self.folder, str) or not self.folder.strip():
            raise TypeError("FileTo(folder) takes a non-empty folder name")


OutboundVerdict = Keep | Change | Reroute | Delete
InboundVerdict = Keep | FileTo | Delete

#: ``PreprocessMessage``: new content, or None to leave it unchanged.
Preprocessor = Callable[[HookMessage], Awaitable[bytes | None]]
#: ``RemovePreprocessInfo``: called with the message once its transport is done.
PreprocessInfoRemover = Callable[[HookMessage], Awaitable[None] | None]


class SpoolerHook(Protocol):
    """What an entry point of ``spoolbox.hooks`` makes: ``cls(options)``, where
    ``options`` is the hook's ``[hooks.options]`` table.  Define ``outbound``,
    ``inbound`` or both; the spooler calls the ones that exist.  An optional
    ``async def close()`` runs when the spooler closes."""

    def __init__(self, options: Mapping[str, Any]) -> None: ...


class OutboundHook(Protocol):
    async def outbound(self, message: HookMessage) -> OutboundVerdict: ...


class InboundHook(Protocol):
    async def inbound(self, message: HookMessage) -> InboundVerdict: ...
