"""Administering a PostgreSQL store's database without running a spooler:
``spoolbox store migrate [--check]`` (:func:`migrate_database`)."""

from __future__ import annotations

from dataclasses import dataclass

from . import schema
from .connection import Database

__all__ = ["MigrationReport", "migrate_database"]


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """Where a database's schema stood and stands: ``applied`` are the versions this
    run migrated to; ``pending`` those a ``--check`` found still to run."""

    database: str
    before: int
    after: int
    supported: int
    applied: tuple[int, ...] = ()
    pending: tuple[int, ...] = ()


async def migrate_database(dsn: str, *, apply: bool = True) -> MigrationReport:
    """Run the pending migrations (``apply=False``: only report them); StoreError for a
    database that cannot be reached, is not a spoolbox store, or is from a newer
    spoolbox (it is left untouched)."""
    db = Database(dsn, migrate=False)
    conn = await db.connect()
    try:
        before = await schema.version_of(conn, db.where)
        ran = await schema.migrate(conn, db.where, apply=apply)
        after = await schema.version_of(conn, db.where)
    finally:
        await conn.close()
    return MigrationReport(
        database=db.where,
        before=before,
        after=after,
        supported=schema.SCHEMA_VERSION,
        applied=tuple(ran) if apply else (),
        pending=() if apply else tuple(ran),
    )
