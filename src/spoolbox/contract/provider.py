"""TransportProvider and TransportSession: IXPProvider and IXPLogon, with Python names.

Call order (the grammar the spooler follows, and enforces on itself)::

    provider = ProviderClass()                         # XPProviderInit
    session  = await provider.logon(support, config, flags)       # TransportLogon
    session.capabilities()                             # the LOGON_SP_* output flags
    session.address_types()                            # AddressTypes
    session.register_options()                         # RegisterOptions
    (the row: created in logon with support.modify_status_row(update=False))
    await session.transport_notify(BEGIN_INBOUND | BEGIN_OUTBOUND)
    steady state, in any order, one outbound message at a time per session unless
    ``concurrency`` says more:
        await session.submit_message(msg, flags)  ->  await session.end_message(msg)
        await session.poll()  ->  await session.start_message(writer)
        await session.idle()
        await session.flush_queues(flags)
        await session.validate_state(flags)
        await session.transport_notify(BEGIN/END_*_FLUSH | CANCEL_MESSAGE | ABORT_DEFERRED)
        session.status_object()
    await session.transport_notify(END_INBOUND | END_OUTBOUND)
    await session.logoff(flags)                        # TransportLogoff
    await provider.shutdown()                          # Shutdown, after all its sessions

``end_message`` follows every ``submit_message`` that returned normally, and only
those; ``submit_message`` raising a :mod:`~spoolbox.contract.errors` result means no
``end_message``.  ``poll`` and ``idle`` are called only when the session asked for
them (``LogonCaps.SP_POLL`` / ``SP_IDLE``), never inside a critical section, and
``poll`` never after END_INBOUND.  After a CRITICAL_ERROR notify the spooler calls
nothing but ``logoff``.

:class:`BaseTransportSession` gives every method a sensible default, so a provider
overrides only what it does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

from ..model import (
    EndFlags,
    FlushFlags,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    SubmitFlags,
    TransportNotifyFlags,
    ValidateFlags,
)
from .errors import NotMe
from .objects import InboundWriter, OutboundMessage
from .support import Support

__all__ = [
    "BaseTransportSession",
    "OptionSpec",
    "TransportProvider",
    "TransportSession",
]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_SENT: Final = EndFlags.SENT


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """RegisterOptions: an option a recipient or message of ``address_type`` may carry."""

    name: str
    address_type: str
    per: str = "recipient"  # "recipient" (OPTION_TYPE_RECIPIENT) or "message"
    default: Any = None
    description: str = ""


@runtime_checkable
class TransportSession(Protocol):
    """One logon of a transport provider (IXPLogon)."""

    def capabilities(self) -> LogonCaps: ...

    def address_types(self) -> Collection[str]:
        """The address types served (``*`` = any, empty = dispatch nothing by type)."""
        ...

    def register_options(self) -> Sequence[OptionSpec]: ...

    async def transport_notify(
        self, flags: TransportNotifyFlags, ref: str | None = None
    ) -> None: ...

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None: ...

    async def end_message(self, message: OutboundMessage) -> EndFlags: ...

    async def poll(self) -> int: ...

    async def start_message(self, message: InboundWriter) -> None: ...

    async def idle(self) -> None: ...

    async def flush_queues(self, flags: FlushFlags) -> None: ...

    async def validate_state(self, flags: ValidateFlags) -> None: ...

    def status_object(self) -> Mapping[str, Any]: ...

    async def logoff(self, flags: LogoffFlags) -> None: ...


@runtime_checkable
class TransportProvider(Protocol):
    """A transport provider class, found through the ``spoolbox.transports`` entry points.

    ``display_name`` is PR_PROVIDER_DISPLAY; instantiating the class is XPProviderInit.
    """

    display_name: ClassVar[str]

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> TransportSession: ...

    async def shutdown(self) -> None: ...


class BaseTransportSession:
    """Defaults for every TransportSession method; subclass and override.

    ``ADDRESS_TYPES`` and ``CAPABILITIES`` give the static answers; ``concurrency``
    is how many messages the spooler may have in this session at once (1, as in the
    original, unless the transport can pipeline).  ``destination_concurrency``, when
    not None, is how many of them may be for one destination at once (the domain
    after the last "@", or the whole address: :func:`spoolbox.model.destination`):
    a transport that connects to each domain's own servers sets it, so that a long
    queue for one domain leaves its other connections to the mail for other
    domains; a message for a destination at its limit waits, claimed, and the
    spooler claims the mail behind it instead.  ``destination_rate_delay``, when
    more than 0, is the least time in seconds between the end of one message to a
    destination and the start of the next (one at a time to each, as Postfix's
    ``default_destination_rate_delay``): for receivers that take mail from one
    sender only so fast.  The default ``submit_message``
    answers not-me, so a session that does not send never gets messages.
    """

    ADDRESS_TYPES: ClassVar[Collection[str]] = ()
    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.NONE
    concurrency: int = 1
    destination_concurrency: int | None = None
    destination_rate_delay: float | None = None

    def __init__(self, support: Support) -> None:
        self.support = support
        self.inbound = False
        self.outbound = False

    def capabilities(self) -> LogonCaps:
        return self.CAPABILITIES

    def address_types(self) -> Collection[str]:
        return self.ADDRESS_TYPES

    def register_options(self) -> Sequence[OptionSpec]:
        return ()

    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        f = TransportNotifyFlags
        if flags & f.BEGIN_INBOUND:
            self.inbound = True
        if flags & f.END_INBOUND:
            self.inbound = False
        if flags & f.BEGIN_OUTBOUND:
            self.outbound = True
        if flags & f.END_OUTBOUND:
            self.outbound = False

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        raise NotMe()

    async def end_message(self, message: OutboundMessage) -> EndFlags:
        return _SENT

    async def poll(self) -> int:
        return 0

    async def start_message(self, message: InboundWriter) -> None:
        return None

    async def idle(self) -> None:
        return None

    async def flush_queues(self, flags: FlushFlags) -> None:
        return None

    async def validate_state(self, flags: ValidateFlags) -> None:
        return None

    def status_object(self) -> Mapping[str, Any]:
        return {}

    async def logoff(self, flags: LogoffFlags) -> None:
        return None
