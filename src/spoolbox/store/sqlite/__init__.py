"""The SQLite store: the embedded default backend (see :mod:`.store`)."""

from .store import PREFETCH_LIMIT, SQLiteStore

__all__ = ["PREFETCH_LIMIT", "SQLiteStore"]
