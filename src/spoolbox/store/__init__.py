"""Durable storage: the Store protocol and its backends."""

from .base import (
    ClaimedJob,
    InboundMessage,
    InboxEntry,
    LeaseLost,
    RecipientUpdate,
    Store,
    StoreError,
    UnknownMessage,
)
from .cluster import ClusterStore, FlushProgress, FlushRequest, LeaseHeld, NodeRecord, NodeState
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
    "UnknownMessage",
]
