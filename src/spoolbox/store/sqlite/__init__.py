"""The SQLite store, the embedded default backend: :class:`SQLiteStore` (the async
face, :mod:`.store`) over its thread (:mod:`.worker`), one open file
(:mod:`.connection`), the operations as plain functions (:mod:`.transactions`), the
rows (:mod:`.rows`), the tables (:mod:`.schema`) and their queries (:mod:`.queries`).
"""

from typing import TYPE_CHECKING, Any

from .connection import StoreFile

if TYPE_CHECKING:
    from .store import SQLiteStore

__all__ = ["SQLiteStore", "StoreFile"]


def __getattr__(name: str) -> Any:
    # The async face is imported when first named: the plain transactions (what an
    # offline ``spoolbox send`` runs) need neither it nor asyncio.
    if name == "SQLiteStore":
        from .store import SQLiteStore

        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
