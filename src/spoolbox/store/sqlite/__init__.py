"""The SQLite store, the embedded default backend: :class:`SQLiteStore` (the async
face, :mod:`.store`) over its thread (:mod:`.worker`), one open file
(:mod:`.connection`), the operations as plain functions (:mod:`.transactions`), the
rows (:mod:`.rows`), the tables (:mod:`.schema`) and their queries (:mod:`.queries`).
"""

from .connection import StoreFile
from .store import SQLiteStore

__all__ = ["SQLiteStore", "StoreFile"]
