"""Pure value types of spoolbox: addresses, flags, states, messages, results.

Imports nothing else of the package.
"""

from .address import Address, AddressError, destination, smtp_value_error
from .flags import (
    SPI_VERSION,
    EndFlags,
    FlushFlags,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    Priority,
    ResourceMethods,
    ResourceType,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    TransportNotifyFlags,
    ValidateFlags,
)
from .hostname import default_hostname, is_hostname
from .message import (
    MAX_RECIPIENTS,
    MessageError,
    MessageInfo,
    MessageSummary,
    NewMessage,
    Notify,
    RecipientRecord,
    header_text,
    new_message_id,
    subject_of,
)
from .progress import Progress
from .results import Outcome, RecipientResult, ResultError
from .states import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    MessageState,
    RecipientState,
    check_transition,
    message_state,
)

__all__ = [
    "MAX_RECIPIENTS",
    "SPI_VERSION",
    "TERMINAL",
    "TRANSITIONS",
    "Address",
    "AddressError",
    "EndFlags",
    "FlushFlags",
    "IllegalTransition",
    "LogoffFlags",
    "LogonCaps",
    "LogonFlags",
    "MessageError",
    "MessageInfo",
    "MessageState",
    "MessageSummary",
    "NewMessage",
    "Notify",
    "Outcome",
    "Priority",
    "Progress",
    "RecipientRecord",
    "RecipientResult",
    "RecipientState",
    "ResourceMethods",
    "ResourceType",
    "ResultError",
    "SpoolerNotifyFlags",
    "StatusCode",
    "SubmitFlags",
    "TransportNotifyFlags",
    "ValidateFlags",
    "check_transition",
    "default_hostname",
    "destination",
    "header_text",
    "is_hostname",
    "message_state",
    "new_message_id",
    "smtp_value_error",
    "subject_of",
]
