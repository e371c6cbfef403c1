"""spoolbox: a durable message spooler for Python, on the model of the MAPI spooler.

Clients drop messages into a store; the spooler routes every recipient to a
transport provider by its address type; providers run cooperatively in the
background, yield to the spooler, and report through a live status table; a user can
flush the send and receive queues at any time and watch the progress.

The public API is what this module exports (pinned by ``tests/test_public_api.py``).
Scripts send mail with :func:`send` and :func:`send_message` (docs/scripts.md).
Transport providers import from :mod:`spoolbox.contract`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core.clock import Clock, SystemClock
    from ._core.config import (
        ENTRY_POINT_GROUP,
        HookConfig,
        SpoolerConfig,
        TransportConfig,
        load_provider_class,
    )
    from ._core.flush import FlushHandle, FlushReport, TransportFlushResult
    from ._core.idle import AlwaysIdle, IdlePolicy, LoopLagIdle, ManualIdle
    from ._core.policy import Policy
    from ._core.rate import RateLimit
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
    from .store import (
        InboxEntry,
        MemoryStore,
        SQLiteStore,
        Store,
        StoreError,
        StoreFull,
        UnknownMessage,
    )


__version__ = "0.1.0.dev0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Address",
    "AddressError",
    "AlwaysIdle",
    "Clock",
    "FlushHandle",
    "FlushReport",
    "HookConfig",
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
    "RateLimit",
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
    "StoreFull",
    "SubscriberDropped",
    "SystemClock",
    "TransportConfig",
    "TransportFlushResult",
    "UnknownMessage",
    "__version__",
    "load_provider_class",
    "send",
    "send_message",
]

#: Where each public name lives: imported on first use (PEP 562), so that
#: ``import spoolbox`` (and the ``spoolbox`` command's start) stays cheap.
_WHERE = {
    "Clock": "._core.clock",
    "SystemClock": "._core.clock",
    "ENTRY_POINT_GROUP": "._core.config",
    "HookConfig": "._core.config",
    "SpoolerConfig": "._core.config",
    "TransportConfig": "._core.config",
    "load_provider_class": "._core.config",
    "FlushHandle": "._core.flush",
    "FlushReport": "._core.flush",
    "TransportFlushResult": "._core.flush",
    "AlwaysIdle": "._core.idle",
    "IdlePolicy": "._core.idle",
    "LoopLagIdle": "._core.idle",
    "ManualIdle": "._core.idle",
    "Policy": "._core.policy",
    "RateLimit": "._core.rate",
    "Spooler": "._core.spooler",
    **dict.fromkeys(
        (
            "Address",
            "AddressError",
            "MessageError",
            "MessageInfo",
            "MessageState",
            "NewMessage",
            "Notify",
            "Priority",
            "RecipientRecord",
            "RecipientState",
        ),
        ".model",
    ),
    **dict.fromkeys(("StatusChange", "StatusRow", "StatusTable", "SubscriberDropped"), ".status"),
    **dict.fromkeys(
        (
            "InboxEntry",
            "MemoryStore",
            "SQLiteStore",
            "Store",
            "StoreError",
            "StoreFull",
            "UnknownMessage",
        ),
        ".store",
    ),
    # Sending from a script (synchronous; through the daemon or into the store).  Not
    # in the TYPE_CHECKING block above: api/ imports this module (no import circle).
    "send": ".api.sending",
    "send_message": ".api.sending",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'spoolbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
