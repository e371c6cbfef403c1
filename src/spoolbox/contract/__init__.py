"""The public contract between the spooler and transport providers.

Transports import from here (and from :mod:`spoolbox.model`) only.
"""

from ..model import (
    SPI_VERSION,
    EndFlags,
    FlushFlags,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    Progress,
    RecipientResult,
    ResourceMethods,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    TransportNotifyFlags,
    ValidateFlags,
)
from .errors import (
    ContractViolation,
    FailOneProvider,
    InvalidObject,
    MessageCancelled,
    NetworkError,
    NotMe,
    SpoolboxError,
    SubmitCancelled,
    TransportBusy,
    TransportError,
    Unconfigured,
    WaitRetry,
)
from .objects import (
    MAX_INBOUND_SIZE,
    InboundWriter,
    OutboundMessage,
    OutboundRecipient,
    ProfileSection,
)
from .options import OptionError, option, read_options
from .provider import BaseTransportSession, OptionSpec, TransportProvider, TransportSession
from .support import Support

__all__ = [
    "MAX_INBOUND_SIZE",
    "SPI_VERSION",
    "BaseTransportSession",
    "ContractViolation",
    "EndFlags",
    "FailOneProvider",
    "FlushFlags",
    "InboundWriter",
    "InvalidObject",
    "LogoffFlags",
    "LogonCaps",
    "LogonFlags",
    "MessageCancelled",
    "NetworkError",
    "NotMe",
    "OptionError",
    "OptionSpec",
    "OutboundMessage",
    "OutboundRecipient",
    "ProfileSection",
    "Progress",
    "RecipientResult",
    "ResourceMethods",
    "SpoolboxError",
    "SpoolerNotifyFlags",
    "StatusCode",
    "SubmitCancelled",
    "SubmitFlags",
    "Support",
    "TransportBusy",
    "TransportError",
    "TransportNotifyFlags",
    "TransportProvider",
    "TransportSession",
    "Unconfigured",
    "ValidateFlags",
    "WaitRetry",
    "option",
    "read_options",
]
