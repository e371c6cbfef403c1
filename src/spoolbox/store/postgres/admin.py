"""Administering a PostgreSQL store's database without running a spooler:
``spoolbox store migrate [--check]`` (:func:`migrate_database`) and ``spoolbox store
compact`` (:func:`vacuum_database`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from ..base import StoreError
from . import schema
from .connection import Database

__all__ = ["MigrationReport", "VacuumReport", "migrate_database", "vacuum_database"]


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


#: The store's tables (what ``VACUUM`` and the sizes cover).
TABLES = (
    "spoolbox_schema",
    "blobs",
    "blob_chunks",
    "messages",
    "recipients",
    "recipient_counts",
    "inbox",
    "profile",
    "nodes",
    "flush_requests",
    "flush_progress",
    "leases",
)


@dataclass(frozen=True, slots=True)
class VacuumReport:
    """The store's tables' size on disk (with their indexes and TOAST) before and
    after a ``VACUUM (ANALYZE)``, and how long it took."""

    database: str
    before: int
    after: int
    seconds: float


async def _tables_size(conn: Any) -> int:
    cur = await conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) AS size FROM pg_class c "
        "WHERE c.relkind = 'r' AND c.relname = ANY(%s) "
        "AND c.relnamespace = current_schema()::regnamespace",
        (list(TABLES),),
    )
    row = await cur.fetchone()
    return int(row["size"]) if row is not None else 0


async def vacuum_database(dsn: str, *, apply: bool = True) -> VacuumReport:
    """``VACUUM (ANALYZE)`` the store's tables (``apply=False``: only their size).  A
    plain VACUUM takes no lock that stops the nodes: it makes dead rows' room
    reusable and gives back empty pages at a table's end; autovacuum does the same on
    its own schedule.  StoreError for a database that cannot be reached or is not a
    spoolbox store."""
    db = Database(dsn, migrate=False)
    conn = await db.connect()
    try:
        await schema.version_of(conn, db.where)  # a spoolbox store, or StoreError
        await conn.set_autocommit(True)  # VACUUM runs outside a transaction
        before = await _tables_size(conn)
        t0 = time.monotonic()
        if apply:
            await conn.execute("VACUUM (ANALYZE) " + ", ".join(TABLES))
        seconds = time.monotonic() - t0
        after = await _tables_size(conn) if apply else before
    except psycopg.Error as exc:
        raise StoreError(f"{db.where}: VACUUM failed: {exc}") from None
    finally:
        await conn.close()
    return VacuumReport(db.where, before, after, seconds)
