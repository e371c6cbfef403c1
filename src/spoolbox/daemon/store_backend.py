"""The store the daemon opens: the profile's ``[store] backend`` made into a
:class:`~spoolbox.store.base.Store` (SQLite by default, PostgreSQL with the
``postgres`` extra).  Nothing is opened here; the spooler opens and closes it."""

from __future__ import annotations

from .._private import private_dir
from ..profile.schema import StoreSettings
from ..store import SQLiteStore, Store, StoreError

__all__ = ["describe_store", "store_from_settings"]


def store_from_settings(settings: StoreSettings) -> Store:
    """The (unopened) store of ``[store]``; StoreError when it cannot be made, saying
    what to set or install."""
    if settings.backend == "postgres":
        if settings.dsn is None:
            raise StoreError(
                '[store] backend = "postgres": the dsn could not be read from '
                f"{settings.dsn_missing}; set it there"
            )
        try:
            from ..store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                '[store] backend = "postgres" needs psycopg and psycopg-pool '
                f"({exc}): pip install 'spoolbox[postgres]'"
            ) from None
        return PostgresStore(settings.dsn)
    private_dir(settings.path.parent)
    return SQLiteStore(
        settings.path,
        synchronous=settings.synchronous,
        progress_synchronous=settings.progress_synchronous,
    )


def describe_store(settings: StoreSettings) -> str:
    """The store for messages: the SQLite file, or the database (never a password)."""
    if settings.backend == "postgres":
        if settings.dsn is None:
            return f"postgres (dsn from {settings.dsn_missing}, not set)"
        try:
            from ..store.postgres import describe
        except ImportError:
            return "postgres"
        return describe(settings.dsn)
    return str(settings.path)
