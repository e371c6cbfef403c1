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
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = [
    "ClaimedJob",
    "InboundMessage",
    "InboxEntry",
    "LeaseLost",
    "MemoryStore",
    "RecipientUpdate",
    "SQLiteStore",
    "Store",
    "StoreError",
    "UnknownMessage",
]
