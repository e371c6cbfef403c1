"""PostgreSQL schema version 5: the content references of messages and inbox entries
indexed, so that deleting a content row (a settle that drops a finished message, a
purge) does not read every message and inbox entry to check the foreign keys.

A database of version 4 (made from a current one by dropping the indexes and setting
the version back) opens, is upgraded in place, and the foreign keys' look-up of a
content row then uses the index (the plan of the look-up PostgreSQL runs for them).
"""

from __future__ import annotations

import psycopg
from sqlite_helpers import T0, new_message

from spoolbox.store.postgres import SCHEMA_VERSION, PostgresStore


def _indexes(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename IN ('messages', 'inbox')"
        ).fetchall()
    return {str(r[0]) for r in rows}


def _plan(dsn: str, table: str) -> str:
    """The plan of the look-up the foreign key runs when a content row is deleted."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET enable_seqscan = off")  # a table this small: ask for the index
        rows = conn.execute(f"EXPLAIN SELECT 1 FROM ONLY {table} WHERE blob_id = 1").fetchall()
    return "\n".join(str(r[0]) for r in rows)


async def test_a_postgres_database_of_version_4_gets_the_content_indexes(pg_dsn: str) -> None:
    assert SCHEMA_VERSION >= 5
    async with PostgresStore(pg_dsn) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    assert {"messages_blob", "inbox_blob"} <= _indexes(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX messages_blob")
        conn.execute("DROP INDEX inbox_blob")
        conn.execute("UPDATE spoolbox_schema SET version = 4")
    assert "Seq Scan" in _plan(pg_dsn, "messages")  # what every delete of content did

    async with PostgresStore(pg_dsn) as store:
        assert store.statistics()["migrated"] == list(range(5, SCHEMA_VERSION + 1))
        assert [m.info.id for m in await store.list_messages(now=T0)] == ["m0001"]
    assert {"messages_blob", "inbox_blob"} <= _indexes(pg_dsn)
    assert "messages_blob" in _plan(pg_dsn, "messages")
    assert "inbox_blob" in _plan(pg_dsn, "inbox")
