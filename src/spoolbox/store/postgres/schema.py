"""The PostgreSQL store's schema: its tables, their versions, and migrating a database.

The tables mirror the SQLite store's (:mod:`spoolbox.store.sqlite.schema` describes
their shape) with the same encodings (:mod:`spoolbox.store.sqlite.rows`: addresses as
text, lists and maps as JSON text, flags as 0/1), so both backends build their values
with one set of row functions.  What differs:

* ``recipients.seq`` (an identity column) orders recipients that became ready at the
  same time in the order they were written (SQLite's rowid does that for it), so the
  claim is first in, first out within a priority.
* ``recipient_counts`` is kept by *statement* triggers over transition tables (one
  upsert per statement, not two per row), in shards: each server backend adds to the
  rows of its own shard (``pg_backend_pid() % COUNT_SHARDS``), so concurrent nodes do
  not queue up on seven counter rows; ``counts()`` adds the shards up.
* ``spoolbox_schema`` holds the schema version (SQLite keeps it in ``user_version``).
* Version 2 adds what several nodes share, as SQLite's version 4 does: ``nodes``,
  ``flush_requests`` with ``flush_progress``, and ``leases``.
* Version 3 adds ``recipients.claim`` (the fencing token, as SQLite's version 5
  does), taken for each claim from the sequence ``recipient_claims``.
* Version 4 writes the counters' trigger functions in PL/pgSQL with their upsert in
  each (the SQL function they called, planned at every call, is dropped).
* Version 5 indexes ``messages.blob_id`` and ``inbox.blob_id`` (the foreign keys'
  look-up when a content row is deleted).
* Version 6 indexes ``inbox.received_at`` (the retention's look-up of old entries),
  as SQLite's ``inbox_received``.
* Version 7 adds ``messages.return_content``, RFC 3461's RET, as SQLite's version 7
  does: a BOOLEAN (true FULL, false HDRS, NULL the report kind's default, as every
  message stored before it), the one flag not kept as 0/1 (the row functions write it
  as a bool, which SQLite keeps as 1/0).
* Version 8 adds ``rate_sends``, the sends of each ``max_rate`` window that every
  node counts against (``spoolbox.store.cluster``'s send rates), as SQLite's
  version 8 does.
* Version 9 adds ``recipients.original``, RFC 3461's ORCPT given with a recipient, as
  SQLite's version 9 does (TEXT, NULL when none was: adding it rewrites nothing).

``MIGRATIONS[n]`` upgrades a database at version ``n`` to ``n + 1`` (a new database is
at version 0).  :func:`migrate` runs the pending ones, each in its own transaction
under an advisory lock, so nodes starting together migrate once; a database at a
newer version than :data:`SCHEMA_VERSION` is refused untouched.  A released migration
is never edited: a change to the schema is a new script appended to the list.
"""

from __future__ import annotations

from typing import Final

from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from ..base import StoreError

__all__ = ["CHUNK_SIZE", "COUNT_SHARDS", "MIGRATIONS", "SCHEMA_VERSION", "migrate", "version_of"]

#: Content is stored in rows of this many bytes (the last row of a blob may be shorter).
CHUNK_SIZE: Final = 256 * 1024

#: Recipient counters per state are kept in this many shards.
COUNT_SHARDS: Final = 16

#: ``pg_advisory_xact_lock`` key that serialises migrations ("SPBX").
MIGRATION_LOCK: Final = 0x53504258

_STATES = "'queued', 'active', 'parked', 'held', 'delivered', 'failed', 'cancelled'"

_V1 = f"""
CREATE TABLE spoolbox_schema (
    version INTEGER NOT NULL
);
INSERT INTO spoolbox_schema (version) VALUES (0);

CREATE TABLE blobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    size BIGINT NOT NULL,
    chunks INTEGER NOT NULL
);

CREATE TABLE blob_chunks (
    blob_id BIGINT NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (blob_id, seq)
);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    fingerprint BYTEA NOT NULL,
    sender TEXT,
    priority SMALLINT NOT NULL,
    submitted_at DOUBLE PRECISION NOT NULL,
    send_at DOUBLE PRECISION,
    expires_at DOUBLE PRECISION NOT NULL,
    notify INTEGER NOT NULL,
    is_report SMALLINT NOT NULL,
    envelope_id TEXT,
    size BIGINT NOT NULL,
    subject TEXT NOT NULL,
    held SMALLINT NOT NULL DEFAULT 0,
    blob_id BIGINT NOT NULL REFERENCES blobs (id)
);

CREATE TABLE recipients (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    address TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({_STATES})),
    route TEXT,
    refused_by TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    status TEXT,
    diagnostic TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    first_failed_at DOUBLE PRECISION,
    priority SMALLINT NOT NULL,
    send_at DOUBLE PRECISION NOT NULL,
    ready_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    delay_warned SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, idx)
);

CREATE INDEX recipients_ready ON recipients (route, priority DESC, ready_at, seq)
    WHERE state = 'queued';
CREATE INDEX recipients_flush ON recipients (route, priority DESC, send_at, seq)
    WHERE state = 'queued';
CREATE INDEX recipients_lease ON recipients (lease_until) WHERE state = 'active';
CREATE INDEX recipients_owner ON recipients (owner) WHERE state = 'active';
CREATE INDEX recipients_parked ON recipients (route) WHERE state = 'parked';
CREATE INDEX recipients_expiry ON recipients (expires_at)
    WHERE state IN ('queued', 'parked', 'held');
CREATE INDEX recipients_unrouted ON recipients (message_id, idx)
    WHERE state = 'queued' AND route IS NULL;

CREATE TABLE recipient_counts (
    state TEXT NOT NULL,
    shard INTEGER NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (state, shard)
);

CREATE FUNCTION spoolbox_count(states TEXT[], deltas BIGINT[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO recipient_counts AS c (state, shard, n)
    SELECT s, pg_backend_pid() % {COUNT_SHARDS}, sum(d)
    FROM unnest(states, deltas) AS x (s, d)
    GROUP BY s HAVING sum(d) <> 0
    ORDER BY s
    ON CONFLICT (state, shard) DO UPDATE SET n = c.n + excluded.n
$$;

CREATE FUNCTION spoolbox_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM spoolbox_count(array_agg(state), array_agg(1::bigint)) FROM new_rows;
    RETURN NULL;
END $$;

CREATE FUNCTION spoolbox_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM spoolbox_count(array_agg(s), array_agg(d)) FROM (
        SELECT state AS s, -1::bigint AS d FROM old_rows
        UNION ALL SELECT state, 1::bigint FROM new_rows
    ) AS changes;
    RETURN NULL;
END $$;

CREATE FUNCTION spoolbox_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM spoolbox_count(array_agg(state), array_agg(-1::bigint)) FROM old_rows;
    RETURN NULL;
END $$;

CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION spoolbox_count_insert();
CREATE TRIGGER recipients_count_update AFTER UPDATE ON recipients
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION spoolbox_count_update();
CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION spoolbox_count_delete();

CREATE TABLE inbox (
    id TEXT PRIMARY KEY,
    transport TEXT NOT NULL,
    sender TEXT,
    recipients TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    size BIGINT NOT NULL,
    subject TEXT NOT NULL,
    remote_id TEXT,
    meta TEXT NOT NULL DEFAULT '{{}}',
    blob_id BIGINT NOT NULL REFERENCES blobs (id)
);

CREATE TABLE profile (
    section TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (section, key)
);
"""

# Several nodes on one store (issue 16): each node's record and status rows, the flush
# requests every node runs with each node's part, and named leases (an inbound mailbox
# fetched by one node at a time).  See spoolbox.store.cluster.
_V2 = """
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL,
    running SMALLINT NOT NULL,
    rows TEXT NOT NULL
);

CREATE TABLE flush_requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transport TEXT,
    upload SMALLINT NOT NULL,
    download SMALLINT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    deadline_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE flush_progress (
    request_id BIGINT NOT NULL REFERENCES flush_requests (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    done SMALLINT NOT NULL,
    report TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, node)
);

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL
);
"""

# Fencing by claim (issue 16): each recipient keeps the token of the claim that took
# it last, a value of the sequence ``recipient_claims`` (one per claim statement); a
# settle or renewal must bring the current one (spoolbox.store.rules.check_settle).
_V3 = """
ALTER TABLE recipients ADD COLUMN claim BIGINT NOT NULL DEFAULT 0;
CREATE SEQUENCE recipient_claims;
"""

# The counters' triggers in PL/pgSQL with the upsert written in each (version 4):
# PL/pgSQL keeps a statement's plan for the session, where the SQL function
# ``spoolbox_count`` they called was planned again at every call (half of the
# server's CPU in a drain went into the counters: bench/pg_store_ops.py).


def _upsert(changes: str) -> str:
    """The counters' upsert of ``changes`` (a query of (state, delta) rows)."""
    return f"""
    INSERT INTO recipient_counts AS c (state, shard, n)
    SELECT s, pg_backend_pid() % {COUNT_SHARDS}, sum(d) FROM ({changes}) AS x (s, d)
    GROUP BY s HAVING sum(d) <> 0
    ORDER BY s
    ON CONFLICT (state, shard) DO UPDATE SET n = c.n + excluded.n;"""


_V4 = f"""
CREATE OR REPLACE FUNCTION spoolbox_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{_upsert("SELECT state, count(*) FROM new_rows GROUP BY state")}
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION spoolbox_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{
    _upsert(
        "SELECT state, -1::bigint FROM old_rows UNION ALL SELECT state, 1::bigint FROM new_rows"
    )
}
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION spoolbox_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{_upsert("SELECT state, -count(*) FROM old_rows GROUP BY state")}
    RETURN NULL;
END $$;

DROP FUNCTION IF EXISTS spoolbox_count(TEXT[], BIGINT[]);
"""

# The messages' and inbox entries' content references indexed (version 5): deleting a
# content row makes PostgreSQL look for rows that still point to it (the foreign
# keys), which without these indexes read the whole of both tables, once per
# message a settle deleted (SQLite's schema has had them from the start).
_V5 = """
CREATE INDEX IF NOT EXISTS messages_blob ON messages (blob_id);
CREATE INDEX IF NOT EXISTS inbox_blob ON inbox (blob_id);
"""

# The inbox's arrival time indexed (version 6): the retention's look-up of entries
# older than the cutoff (every five minutes, a batch at a time) read the whole inbox
# when none was old enough (SQLite's schema has had the index from the start).
_V6 = """
CREATE INDEX IF NOT EXISTS inbox_received ON inbox (received_at);
"""

# How much of the message a delivery report returns, kept with the message (version
# 7): RFC 3461's RET, true FULL, false HDRS, NULL the report kind's default (every
# message stored before it).  A column that may be NULL and has no default: adding it
# rewrites nothing (the existing rows read NULL).
_V7 = """
ALTER TABLE messages ADD COLUMN IF NOT EXISTS return_content BOOLEAN;
"""

# The sends of each transport's max_rate window (version 8), shared by every node:
# ``n`` messages started at ``at`` under the limit ``name``.  A node records its sends
# with the window's advisory lock held (take_sends), and forgets those a period old.
_V8 = """
CREATE TABLE IF NOT EXISTS rate_sends (
    name TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    n INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_sends_name_at ON rate_sends (name, at);
"""

#: ``MIGRATIONS[n]`` upgrades a database at schema version ``n`` to ``n + 1``.
# A recipient's original address (RFC 3461 ORCPT), NULL when none was given.
_V9 = """
ALTER TABLE recipients ADD COLUMN IF NOT EXISTS original TEXT;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9)

#: The newest schema version this code reads and writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

#: Tables of ours: a database holding one of them without ``spoolbox_schema`` is not ours.
_OUR_TABLES = ("messages", "recipients", "blobs", "inbox", "profile", "recipient_counts")


async def version_of(conn: AsyncConnection[DictRow], where: str) -> int:
    """The schema version of the database (0: none yet); StoreError for a database
    that holds tables named like ours but no spoolbox schema, or a newer schema."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_class c "
        "WHERE c.relkind = 'r' AND c.relname = ANY(%s) "
        "AND pg_table_is_visible(c.oid)",
        (["spoolbox_schema", *_OUR_TABLES],),
    )
    found = {str(row["relname"]) for row in await cur.fetchall()}
    if "spoolbox_schema" not in found:
        if found:
            raise StoreError(
                f"the database {where} has tables named like spoolbox's "
                f"({', '.join(sorted(found))}) but no spoolbox schema: it is not a spoolbox "
                "store; it was left untouched (use an empty database, or another schema "
                "with search_path in the dsn)"
            )
        return 0
    cur = await conn.execute("SELECT version FROM spoolbox_schema")
    row = await cur.fetchone()
    version = int(row["version"]) if row is not None else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database {where} has store schema version {version}, but this spoolbox "
            f"supports versions up to {SCHEMA_VERSION}: it was written by a newer spoolbox; "
            "upgrade spoolbox to use it (the database was left untouched)"
        )
    return version


async def migrate(conn: AsyncConnection[DictRow], where: str, *, apply: bool = True) -> list[int]:
    """Run the pending migrations (each in one transaction, under an advisory lock);
    returns the versions reached, in order ([] when the schema is current).  With
    ``apply=False`` only reports which would run.  ``conn`` must not be inside a
    transaction."""
    done: list[int] = []
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # Read again under the lock: another node may have migrated meanwhile.
            version = await version_of(conn, where)
            if version >= SCHEMA_VERSION:
                return done
            if not apply:
                return list(range(version + 1, SCHEMA_VERSION + 1))
            await conn.execute(sql.SQL(MIGRATIONS[version]))
            await conn.execute("UPDATE spoolbox_schema SET version = %s", (version + 1,))
        done.append(version + 1)
