"""The conditions on ``recipients.state`` written as equalities (SQLite schema version
10): SQLite evaluates ``state IN (...)`` with three values or more through a temporary
b-tree built at each run of a statement, three of them in every claim and settle.

A new store has the new conditions; a store of version 9 with queued, parked and
delivered mail opens, is upgraded in place, and holds and does what it did; the CHECK
still refuses a state that is none of the seven.  The older store is made from a
current one by undoing the change (the CHECK's text and the index as version 1 made
them, the version set back), and a store made by running the scripts of versions 1 to
9 alone is checked to have exactly that CHECK text."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from sqlite_helpers import T0, new_message, raw

from spoolbox.model import RecipientState
from spoolbox.store.base import RecipientUpdate
from spoolbox.store.sqlite import SQLiteStore, schema
from spoolbox.store.sqlite import queries as q

_OLD_EXPIRY = "WHERE state IN ('queued', 'parked', 'held')"
_HOT = {
    "insert": q.INSERT_RECIPIENT,
    "claim": q.CLAIM_RECIPIENT,
    "settle": q.UPDATE_RECIPIENT,
}


def _definitions(conn: sqlite3.Connection) -> tuple[str, str]:
    table, index = (
        conn.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (name,)).fetchone()[0]
        for name in ("recipients", "recipients_expiry")
    )
    return str(table), str(index)


def _temporary_btrees(conn: sqlite3.Connection, sql: str) -> int:
    """How many temporary b-trees the statement opens when it runs (EXPLAIN's opcodes)."""
    numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
    args = [None] * (max(numbered) if numbered else sql.count("?"))
    return sum(row[1] == "OpenEphemeral" for row in conn.execute("EXPLAIN " + sql, args))


def _version_9(path: Path) -> None:
    """The store at ``path`` as version 9 had it."""
    with raw(path) as conn:
        table, _ = _definitions(conn)
        cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE name = 'recipients'",
            (table.replace(schema.STATE_CHECK, schema.STATE_CHECK_V1),),
        )
        conn.execute(f"PRAGMA schema_version = {cookie + 1}")
        conn.execute("PRAGMA writable_schema = OFF")
        conn.execute("COMMIT")
        conn.execute("DROP INDEX recipients_expiry")
        conn.execute(f"CREATE INDEX recipients_expiry ON recipients (expires_at) {_OLD_EXPIRY}")
        conn.execute("PRAGMA user_version = 9")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_scripts_of_versions_1_to_9_made_the_check_this_version_rewrites(
    tmp_path: Path,
) -> None:
    with raw(tmp_path / "v9.db") as conn:
        for script in schema.MIGRATIONS[:9]:
            for statement in schema.split_statements(script):
                conn.execute(statement)
        table, index = _definitions(conn)
        assert schema.STATE_CHECK_V1 in table
        assert _OLD_EXPIRY in index
        assert _temporary_btrees(conn, q.UPDATE_RECIPIENT) == 3  # what version 10 removes


async def test_a_new_store_writes_recipients_without_temporary_btrees(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with SQLiteStore(path):
        pass
    with raw(path) as conn:
        table, index = _definitions(conn)
        assert schema.STATE_CHECK in table and schema.STATE_CHECK_V1 not in table
        assert "state = 'queued' OR state = 'parked' OR state = 'held'" in index
        assert {name: _temporary_btrees(conn, sql) for name, sql in _HOT.items()} == dict.fromkeys(
            _HOT, 0
        )
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_the_check_still_refuses_a_state_that_is_none_of_the_seven(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SQLiteStore(path) as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    with raw(path) as conn:
        for state in RecipientState:  # every state is accepted (and counted)
            conn.execute("UPDATE recipients SET state = ?", (state.value,))
            counted = dict(conn.execute("SELECT state, n FROM recipient_counts"))
            assert counted[state.value] == 1
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            conn.execute("UPDATE recipients SET state = 'sent'")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            conn.execute("UPDATE recipients SET state = 'Queued'")


async def test_a_store_of_version_9_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with SQLiteStore(path) as store:
        for i in (1, 2, 3):
            await store.submit(new_message(i), now=T0, lifetime=3600, routes=["x"])
        jobs = await store.claim("x", owner="old", now=T0 + 1, lease=60, limit=2)
        for job, state in zip(jobs, (RecipientState.DELIVERED, RecipientState.PARKED), strict=True):
            await store.settle(
                job.message.id,
                [RecipientUpdate(0, state)],
                owner="old",
                claim=job.claim,
                now=T0 + 2,
            )
    _version_9(path)
    async with SQLiteStore(path) as store:
        assert store.statistics()["pragmas"]["user_version"] == schema.SCHEMA_VERSION  # type: ignore[index]
        counts = await store.counts()
        assert (counts[RecipientState.DELIVERED], counts[RecipientState.PARKED]) == (1, 1)
        assert counts[RecipientState.QUEUED] == 1
        # The expiry index answers for queued and parked recipients, not delivered ones.
        expired = await store.expired(now=T0 + 3601, limit=10)
        assert sorted(r.message_id for r in expired) == ["m0002", "m0003"]
        [job] = await store.claim("x", owner="new", now=T0 + 4, lease=60)
        assert job.message.id == "m0003"
    with raw(path) as conn:
        table, index = _definitions(conn)
        assert schema.STATE_CHECK in table and schema.STATE_CHECK_V1 not in table
        assert _OLD_EXPIRY not in index
        assert _temporary_btrees(conn, q.UPDATE_RECIPIENT) == 0
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_definition_sqlite_will_not_update_keeps_its_check(tmp_path: Path) -> None:
    """A connection that may not write the schema table (SQLite's defensive mode, here
    an authorizer that denies it): the CHECK stays as it was and says the same."""
    with raw(tmp_path / "d.db") as conn:
        for script in schema.MIGRATIONS[:9]:
            for statement in schema.split_statements(script):
                conn.execute(statement)

        def deny_schema(action: int, table: str | None, *_: object) -> int:
            if action == sqlite3.SQLITE_UPDATE and table in ("sqlite_master", "sqlite_schema"):
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        conn.set_authorizer(deny_schema)
        conn.execute("BEGIN IMMEDIATE")
        assert schema._state_check_as_equalities(conn) is False
        conn.execute("COMMIT")
        conn.set_authorizer(None)
        table, _ = _definitions(conn)
        assert schema.STATE_CHECK_V1 in table
        assert conn.execute("PRAGMA writable_schema").fetchone()[0] == 0


def test_a_definition_without_the_old_check_is_left_as_it_is(tmp_path: Path) -> None:
    with raw(tmp_path / "o.db") as conn:
        conn.execute("CREATE TABLE recipients (state TEXT NOT NULL CHECK (state <> ''))")
        before, cookie = _table(conn), conn.execute("PRAGMA schema_version").fetchone()[0]
        assert schema._state_check_as_equalities(conn) is False
        assert (_table(conn), conn.execute("PRAGMA schema_version").fetchone()[0]) == (
            before,
            cookie,
        )


def _table(conn: sqlite3.Connection) -> str:
    return str(
        conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'recipients'").fetchone()[0]
    )
