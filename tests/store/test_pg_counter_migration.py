"""PostgreSQL schema version 4: the recipient counters' triggers in PL/pgSQL.

A database of version 3 (its trigger functions calling the SQL function
``spoolbox_count``, made from a current one by putting those back and setting the
version back) with messages in several states opens, is upgraded in place, and its
counters stay equal to the recipients' states through every kind of write after the
upgrade (insert, a claim's update, a settle, a delete with the message).
"""

from __future__ import annotations

import psycopg
from sqlite_helpers import T0, new_message

from spoolbox.model import MessageState, RecipientState
from spoolbox.store.base import RecipientUpdate
from spoolbox.store.postgres import SCHEMA_VERSION, PostgresStore
from spoolbox.store.postgres import schema as pg_schema

_R = RecipientState


def _version_3_functions() -> str:
    """The counters' functions as version 1 made them (unchanged up to version 3)."""
    v1 = pg_schema.MIGRATIONS[0]
    start = v1.index("CREATE FUNCTION spoolbox_count(")
    end = v1.index("CREATE TRIGGER recipients_count_insert")
    return v1[start:end].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


def _states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


def _language(dsn: str, name: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
            "WHERE p.proname = %s",
            (name,),
        ).fetchone()
    return "" if row is None else str(row[0])


async def _counted(store: PostgresStore, dsn: str) -> None:
    counts = {str(s): n for s, n in (await store.counts()).items() if n}
    assert counts == _states(dsn)


async def test_a_postgres_database_of_version_3_is_upgraded_and_counts_stay_right(
    pg_dsn: str,
) -> None:
    assert SCHEMA_VERSION >= 4
    async with PostgresStore(pg_dsn) as store:
        for i in range(1, 4):
            message = new_message(i, "X:bob", "X:carol")
            await store.submit(message, now=T0, lifetime=3600, routes=["x", "x"])
        [job] = await store.claim("x", owner="old", now=T0 + 1, lease=60)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_version_3_functions())  # type: ignore[arg-type]
        conn.execute("UPDATE spoolbox_schema SET version = 3")
    assert _language(pg_dsn, "spoolbox_count") == "sql"

    async with PostgresStore(pg_dsn) as store:
        assert store.statistics()["migrated"] == list(range(4, SCHEMA_VERSION + 1))
        assert _language(pg_dsn, "spoolbox_count_update") == "plpgsql"
        assert _language(pg_dsn, "spoolbox_count") == ""  # dropped
        await _counted(store, pg_dsn)  # what version 3 counted is kept
        assert (await store.counts())[_R.ACTIVE] == 2
        # Every kind of write after the upgrade keeps the counters true.
        await store.submit(new_message(4), now=T0 + 2, lifetime=3600, routes=["x"])
        await _counted(store, pg_dsn)
        await store.settle(
            job.message.id,
            [RecipientUpdate(0, _R.DELIVERED), RecipientUpdate(1, _R.FAILED, status="5.1.1")],
            owner="old",
            now=T0 + 3,
            claim=job.claim,
        )
        await _counted(store, pg_dsn)
        jobs = await store.claim("x", owner="new", now=T0 + 4, lease=60, limit=10)
        await _counted(store, pg_dsn)
        for j in jobs:  # kept for no time: deleted by the settle that finishes them
            await store.settle(
                j.message.id,
                [RecipientUpdate(r.index, _R.DELIVERED) for r in j.recipients],
                owner="new",
                now=T0 + 5,
                claim=j.claim,
                drop_finished=frozenset({MessageState.SENT}),
            )
        await _counted(store, pg_dsn)
        counts = await store.counts()
        assert counts[_R.QUEUED] == counts[_R.ACTIVE] == 0
        assert counts[_R.DELIVERED] == 1 and counts[_R.FAILED] == 1  # the first message's
