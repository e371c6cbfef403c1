"""PostgreSQL schema version 6: the inbox's arrival time indexed, so that the
retention's look-up of old inbox entries (``purge_inbox``, every few minutes) does not
read the whole inbox when none is old enough.

A database of version 5 (made from a current one by dropping the index and setting
the version back) opens, is upgraded in place, and the look-up then uses the index
(the plan of the statement ``purge_inbox`` runs).
"""

from __future__ import annotations

import psycopg
from sqlite_helpers import T0

from spoolbox.store.postgres import SCHEMA_VERSION, PostgresStore
from spoolbox.store.postgres import purge as pg_purge


def _plan(dsn: str) -> str:
    """The plan of ``purge_inbox``'s look-up of entries received before a cutoff."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET enable_seqscan = off")  # a table this small: ask for the index
        sql = pg_purge._OLD_INBOX.replace("%s", "{}").format(T0, 500)
        rows = conn.execute(f"EXPLAIN {sql}").fetchall()
    return "\n".join(str(r[0]) for r in rows)


def _indexes(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'inbox'")
        return {str(r[0]) for r in rows.fetchall()}


async def test_a_postgres_database_of_version_5_gets_the_inbox_index(pg_dsn: str) -> None:
    assert SCHEMA_VERSION >= 6
    assert "inbox_received" in _indexes(pg_dsn)
    assert "inbox_received" in _plan(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX inbox_received")
        conn.execute("UPDATE spoolbox_schema SET version = 5")
    assert "Seq Scan" in _plan(pg_dsn)  # what every purge of the inbox did

    async with PostgresStore(pg_dsn) as store:
        assert store.statistics()["migrated"] == list(range(6, SCHEMA_VERSION + 1))
        assert await store.purge_inbox(received_before=T0, limit=10) == []
    assert "inbox_received" in _indexes(pg_dsn)
    assert "inbox_received" in _plan(pg_dsn)
