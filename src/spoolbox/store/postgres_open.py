"""The PostgreSQL store a profile's ``[store] backend = "postgres"`` names, made
without importing psycopg until it is needed: :func:`postgres_store`, for the
daemon, its listener processes and the client's offline access alike, with errors
that say what to set or to install."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import StoreError

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["postgres_store"]


def postgres_store(
    dsn: str | None,
    dsn_missing: str | None,
    *,
    pool_size: int = 8,
    migrate: bool = True,
) -> PostgresStore:
    """The (unopened) store on ``dsn``; StoreError when the DSN could not be read
    (``dsn_missing`` says from where) or the ``postgres`` extra is not installed.
    ``migrate=False``: refuse an older schema instead of upgrading it."""
    if dsn is None:
        raise StoreError(
            '[store] backend = "postgres": the dsn could not be read from '
            f"{dsn_missing}; set it there"
        )
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise StoreError(
            '[store] backend = "postgres" needs psycopg and psycopg-pool '
            f"({exc}): pip install 'spoolbox[postgres]'"
        ) from None
    return PostgresStore(dsn, pool_size=pool_size, migrate=migrate)
