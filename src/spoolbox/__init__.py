"""spoolbox: a durable message spooler for Python, on the model of the MAPI spooler.

Clients drop messages into a store; the spooler routes every recipient to a
transport provider by its address type; providers run cooperatively in the
background, yield to the spooler, and report through a live status table; a user can
flush the send and receive queues at any time and watch the progress.

The public API is what this module exports (pinned by ``tests/test_public_api.py``).
Transport providers import from :mod:`spoolbox.contract`.
"""

from ._core.clock import Clock, SystemClock
from ._core.config import ENTRY_POINT_GROUP, SpoolerConfig, TransportConfig, load_provider_class
from ._core.flush import FlushHandle, FlushReport, TransportFlushResult
from ._core.idle import AlwaysIdle, IdlePolicy, LoopLagIdle, ManualIdle
from ._core.policy import Policy
from ._core.spooler import Spooler
from .model import (
    Address,
    AddressError,
    MessageError,
    MessageInfo,
    MessageState,
    NewMessage,
    Notify,
    Priority,
    RecipientRecord,
    RecipientState,
)
from .status import StatusChange, StatusRow, StatusTable, SubscriberDropped
from .store import InboxEntry, MemoryStore, SQLiteStore, Store, StoreError, UnknownMessage

__version__ = "0.1.0.dev0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Address",
    "AddressError",
    "AlwaysIdle",
    "Clock",
    "FlushHandle",
    "FlushReport",
    "IdlePolicy",
    "InboxEntry",
    "LoopLagIdle",
    "ManualIdle",
    "MemoryStore",
    "MessageError",
    "MessageInfo",
    "MessageState",
    "NewMessage",
    "Notify",
    "Policy",
    "Priority",
    "RecipientRecord",
    "RecipientState",
    "SQLiteStore",
    "Spooler",
    "SpoolerConfig",
    "StatusChange",
    "StatusRow",
    "StatusTable",
    "Store",
    "StoreError",
    "SubscriberDropped",
    "SystemClock",
    "TransportConfig",
    "TransportFlushResult",
    "UnknownMessage",
    "__version__",
    "load_provider_class",
]
