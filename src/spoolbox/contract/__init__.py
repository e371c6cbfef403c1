"""The public contract between the spooler and transport providers.

Transports import from here (and from :mod:`spoolbox.model`) only.

The flags and errors are imported with the package; the objects, options, provider,
support and hook names when first used (PEP 562), so that reading a profile (which needs
the option checks and the errors) does not import the provider machinery and logging.
"""

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .hooks import (
        KEEP,
        Change,
        Delete,
        FileTo,
        HookFlags,
        HookMessage,
        Keep,
        PreprocessInfoRemover,
        Preprocessor,
        Reroute,
        SpoolerHook,
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
    "KEEP",
    "MAX_INBOUND_SIZE",
    "SPI_VERSION",
    "BaseTransportSession",
    "Change",
    "ContractViolation",
    "Delete",
    "EndFlags",
    "FailOneProvider",
    "FileTo",
    "FlushFlags",
    "HookFlags",
    "HookMessage",
    "InboundWriter",
    "InvalidObject",
    "Keep",
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
    "PreprocessInfoRemover",
    "Preprocessor",
    "ProfileSection",
    "Progress",
    "RecipientResult",
    "Reroute",
    "ResourceMethods",
    "SpoolboxError",
    "SpoolerHook",
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

_WHERE = {
    **dict.fromkeys(
        (
            "KEEP",
            "Change",
            "Delete",
            "FileTo",
            "HookFlags",
            "HookMessage",
            "Keep",
            "PreprocessInfoRemover",
            "Preprocessor",
            "Reroute",
            "SpoolerHook",
        ),
        ".hooks",
    ),
    "MAX_INBOUND_SIZE": ".objects",
    "InboundWriter": ".objects",
    "OutboundMessage": ".objects",
    "OutboundRecipient": ".objects",
    "ProfileSection": ".objects",
    "OptionError": ".options",
    "option": ".options",
    "read_options": ".options",
    "BaseTransportSession": ".provider",
    "OptionSpec": ".provider",
    "TransportProvider": ".provider",
    "TransportSession": ".provider",
    "Support": ".support",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
