"""Durable storage: the Store protocol and its backends.

The backends are imported when first named (``spoolbox.store.SQLiteStore``), not with
the package: the SQLite store's async face pulls in asyncio, which a command that only
commits one message (``spoolbox send`` with no daemon) does not need.
"""

from typing import TYPE_CHECKING, Any

from .base import (
    ClaimedJob,
    InboundMessage,
    InboxEntry,
    LeaseLost,
    RecipientUpdate,
    Store,
    StoreError,
    StoreFull,
    UnknownMessage,
)
from .cluster import ClusterStore, FlushProgress, FlushRequest, LeaseHeld, NodeRecord, NodeState

if TYPE_CHECKING:
    from .memory import MemoryStore
    from .sqlite import SQLiteStore

__all__ = [
    "ClaimedJob",
    "ClusterStore",
    "FlushProgress",
    "FlushRequest",
    "InboundMessage",
    "InboxEntry",
    "LeaseHeld",
    "LeaseLost",
    "MemoryStore",
    "NodeRecord",
    "NodeState",
    "RecipientUpdate",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreFull",
    "UnknownMessage",
]


def __getattr__(name: str) -> Any:
    if name == "MemoryStore":
        from .memory import MemoryStore

        return MemoryStore
    if name == "SQLiteStore":
        from .sqlite import SQLiteStore

        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
