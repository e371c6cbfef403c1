"""The SQLite store's schema: its migrations and the SQL of every query it runs.

The schema version lives in ``PRAGMA user_version``.  ``MIGRATIONS[n]`` is the SQL
script that upgrades a database at version ``n`` to version ``n + 1``, so a new file
(version 0) runs them all and :data:`SCHEMA_VERSION` is ``len(MIGRATIONS)``.  A
released migration is never edited: a change to the schema is a new script appended
to the list.  Each script is split into statements with :func:`split_statements` and
run in one transaction together with the version bump.

Shape of the data (the domain classes in :mod:`spoolbox.model` do not follow it):

* ``blobs`` / ``blob_chunks``: message and inbox content, stored once, in rows of at
  most :data:`CHUNK_SIZE` bytes so it can be streamed without loading it whole.
* ``messages``: one envelope per message; ``fingerprint`` is a digest of the whole
  submission, so a resubmission with the same id is recognised (or refused) without
  reading the content back.
* ``recipients``: one row per recipient, the unit of work.  Priority, send-at time
  and expiry are copied from the message, and ``ready_at = max(send_at, retry_at)``
  is kept with every write, so the claim is a range scan of the partial index
  ``recipients_ready (route, priority, ready_at) WHERE state = 'queued'``.
  ``owner`` / ``lease_until`` are set exactly while the recipient is ACTIVE.
* ``recipient_counts``: recipients per state, kept by triggers in the same
  transaction as every change, so ``counts()`` reads seven rows.
* ``inbox`` and ``profile`` (provider state, JSON values keyed by section and key).

The queries below keep the literal ``state = '...'`` terms the partial indexes are
declared with: SQLite uses a partial index only when the query repeats its condition.
"""

from __future__ import annotations

import sqlite3

__all__ = [
    "APPLICATION_ID",
    "CHUNK_SIZE",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "split_statements",
]

#: ``PRAGMA application_id`` of a spoolbox store ("SPBX"): tells our files from others.
APPLICATION_ID = 0x53504258

#: Content is stored in rows of this many bytes (the last row of a blob may be shorter).
CHUNK_SIZE = 256 * 1024

_V1 = """
CREATE TABLE blobs (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    chunks INTEGER NOT NULL
);

CREATE TABLE blob_chunks (
    blob_id INTEGER NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (blob_id, seq)
);

CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    sender TEXT,
    priority INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    send_at REAL,
    expires_at REAL NOT NULL,
    notify INTEGER NOT NULL,
    is_report INTEGER NOT NULL,
    envelope_id TEXT,
    size INTEGER NOT NULL,
    subject TEXT NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    blob_id INTEGER NOT NULL REFERENCES blobs (id)
);

CREATE TABLE recipients (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL CHECK (
        state IN ('queued', 'active', 'parked', 'held', 'delivered', 'failed', 'cancelled')
    ),
    route TEXT,
    refused_by TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_at REAL NOT NULL DEFAULT 0,
    status TEXT,
    diagnostic TEXT,
    updated_at REAL NOT NULL,
    first_failed_at REAL,
    priority INTEGER NOT NULL,
    send_at REAL NOT NULL,
    ready_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    owner TEXT,
    lease_until REAL,
    PRIMARY KEY (message_id, idx)
);

CREATE INDEX recipients_ready ON recipients (route, priority, ready_at)
    WHERE state = 'queued';
CREATE INDEX recipients_lease ON recipients (lease_until) WHERE state = 'active';
CREATE INDEX recipients_owner ON recipients (owner) WHERE state = 'active';
CREATE INDEX recipients_parked ON recipients (route) WHERE state = 'parked';
CREATE INDEX recipients_expiry ON recipients (expires_at)
    WHERE state IN ('queued', 'parked', 'held');

CREATE TABLE recipient_counts (
    state TEXT PRIMARY KEY,
    n INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO recipient_counts (state, n) VALUES
    ('queued', 0), ('active', 0), ('parked', 0), ('held', 0),
    ('delivered', 0), ('failed', 0), ('cancelled', 0);

CREATE TRIGGER recipients_count_insert AFTER INSERT ON recipients
BEGIN
    UPDATE recipient_counts SET n = n + 1 WHERE state = NEW.state;
END;

CREATE TRIGGER recipients_count_update AFTER UPDATE OF state ON recipients
WHEN OLD.state IS NOT NEW.state
BEGIN
    UPDATE recipient_counts SET n = n - 1 WHERE state = OLD.state;
    UPDATE recipient_counts SET n = n + 1 WHERE state = NEW.state;
END;

CREATE TRIGGER recipients_count_delete AFTER DELETE ON recipients
BEGIN
    UPDATE recipient_counts SET n = n - 1 WHERE state = OLD.state;
END;

CREATE TABLE inbox (
    id TEXT PRIMARY KEY,
    transport TEXT NOT NULL,
    sender TEXT,
    recipients TEXT NOT NULL,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    subject TEXT NOT NULL,
    remote_id TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    blob_id INTEGER NOT NULL REFERENCES blobs (id)
);

CREATE TABLE profile (
    section TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (section, key)
) WITHOUT ROWID;

PRAGMA application_id = 1397768792;
"""

#: ``MIGRATIONS[n]`` upgrades a database at schema version ``n`` to ``n + 1``.
_V2 = """
ALTER TABLE recipients ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0;
CREATE INDEX recipients_unrouted ON recipients (message_id, idx)
    WHERE state = 'queued' AND route IS NULL;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2)

#: The newest schema version this code reads and writes.
SCHEMA_VERSION = len(MIGRATIONS)


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (trigger bodies stay whole).

    Statements must end at the end of a line.  Raises ValueError on a trailing
    incomplete statement, so a broken migration fails before it touches a file.
    """
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement at the end of a script: {buf.strip()!r}")
    return out


# -- columns ------------------------------------------------------------------------

MESSAGE_COLUMNS = (
    "id, fingerprint, sender, priority, submitted_at, send_at, expires_at, notify, "
    "is_report, envelope_id, size, subject, held, blob_id"
)

RECIPIENT_COLUMNS = (
    "message_id, idx, address, state, route, refused_by, attempts, retry_at, status, "
    "diagnostic, updated_at, first_failed_at, owner, lease_until, delay_warned"
)

INBOX_COLUMNS = (
    "id, transport, sender, recipients, received_at, size, subject, remote_id, meta, blob_id"
)

# -- content ------------------------------------------------------------------------

INSERT_BLOB = "INSERT INTO blobs (size, chunks) VALUES (?, ?)"
INSERT_CHUNK = "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (?, ?, ?)"
SELECT_BLOB = "SELECT size, chunks FROM blobs WHERE id = ?"
SELECT_CHUNK = "SELECT data FROM blob_chunks WHERE blob_id = ? AND seq = ?"
SELECT_CHUNKS = "SELECT data FROM blob_chunks WHERE blob_id = ? ORDER BY seq"

# -- messages and recipients --------------------------------------------------------

SELECT_MESSAGE = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?"
SELECT_MESSAGES_AFTER = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?"
INSERT_MESSAGE = (
    "INSERT INTO messages (id, fingerprint, sender, priority, submitted_at, send_at, "
    "expires_at, notify, is_report, envelope_id, size, subject, held, blob_id) "
    "VALUES (:id, :fingerprint, :sender, :priority, :submitted_at, :send_at, :expires_at, "
    ":notify, :is_report, :envelope_id, :size, :subject, 0, :blob_id)"
)
SET_HELD = "UPDATE messages SET held = ? WHERE id = ?"

INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, idx, address, state, route, updated_at, priority, "
    "send_at, ready_at, expires_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)"
)
SELECT_RECIPIENTS = f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? ORDER BY idx"
SELECT_RECIPIENT = f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? AND idx = ?"
SELECT_READINESS = "SELECT state, ready_at FROM recipients WHERE message_id = ?"
#: Writes every mutable field of one recipient; ``ready_at`` follows ``retry_at``.
UPDATE_RECIPIENT = (
    "UPDATE recipients SET state = :state, route = :route, refused_by = :refused_by, "
    "attempts = :attempts, retry_at = :retry_at, ready_at = max(send_at, :retry_at), "
    "status = :status, diagnostic = :diagnostic, updated_at = :updated_at, "
    "first_failed_at = :first_failed_at, owner = :owner, lease_until = :lease_until, "
    "delay_warned = :delay_warned "
    "WHERE message_id = :message_id AND idx = :idx"
)
RENEW_LEASE = (
    "UPDATE recipients SET lease_until = ? "
    "WHERE message_id = ? AND idx = ? AND state = 'active' AND owner = ?"
)

# -- routing ------------------------------------------------------------------------

SELECT_UNROUTED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_unrouted "
    "WHERE state = 'queued' AND route IS NULL "
    "AND (message_id, idx) > (?, ?) ORDER BY message_id, idx LIMIT ?"
)
SELECT_ROUTED_QUEUED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = 'queued' AND route IS NOT NULL"
)
SELECT_ROUTED_PARKED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE state = 'parked' AND route IS NOT NULL"
)
ASSIGN_ROUTE = (
    "UPDATE recipients SET route = ? WHERE message_id = ? AND idx = ? AND state = 'queued'"
)

# -- claims (one query per priority: an equality on priority keeps ready_at a range) --

#: Ready recipients of one transport and priority, oldest ready first.
CLAIM_READY = (
    "SELECT message_id FROM recipients INDEXED BY recipients_ready "
    "WHERE state = 'queued' AND route = ? AND priority = ? AND ready_at <= ? "
    "ORDER BY ready_at"
)
#: The same for a flush: the retry time is ignored, the send-at time never.
CLAIM_FLUSH = (
    "SELECT message_id FROM recipients INDEXED BY recipients_ready "
    "WHERE state = 'queued' AND route = ? AND priority = ? AND send_at <= ? "
    "ORDER BY ready_at"
)
CLAIMABLE_OF_MESSAGE = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE message_id = ? AND state = 'queued' AND route = ? AND ready_at <= ? ORDER BY idx"
)
CLAIMABLE_OF_MESSAGE_FLUSH = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE message_id = ? AND state = 'queued' AND route = ? AND send_at <= ? ORDER BY idx"
)
COUNT_READY = (
    "SELECT count(DISTINCT message_id) FROM recipients INDEXED BY recipients_ready "
    "WHERE state = 'queued' AND route = ? AND priority = ? AND ready_at <= ?"
)
COUNT_FLUSH = (
    "SELECT count(DISTINCT message_id) FROM recipients INDEXED BY recipients_ready "
    "WHERE state = 'queued' AND route = ? AND priority = ? AND send_at <= ?"
)
#: The smallest ready time of one transport and priority (an index seek).
NEXT_READY = (
    "SELECT min(ready_at) FROM recipients INDEXED BY recipients_ready "
    "WHERE state = 'queued' AND route = ? AND priority = ?"
)

#: QUEUED recipients of one transport still waiting for their retry time (a flush).
SELECT_RETRYING = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_ready "
    "WHERE state = 'queued' AND route = ? AND retry_at > ?"
)

# -- leases -------------------------------------------------------------------------

SELECT_LEASE_EXPIRED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_lease "
    "WHERE state = 'active' AND lease_until < ?"
)
SELECT_LEASED_BY = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_owner "
    "WHERE state = 'active' AND owner = ?"
)

# -- expiry and deferral ------------------------------------------------------------

SELECT_EXPIRED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_expiry "
    "WHERE state IN ('queued', 'parked', 'held') AND expires_at <= ? "
    "ORDER BY expires_at LIMIT ?"
)
SELECT_PARKED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_parked "
    "WHERE state = 'parked' AND route = ?"
)
SELECT_PARKED_OF_MESSAGE = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE message_id = ? AND state = 'parked' AND route = ?"
)

# -- counters -----------------------------------------------------------------------

SELECT_COUNTS = "SELECT state, n FROM recipient_counts"

# -- inbox and profile --------------------------------------------------------------

INSERT_INBOX = (
    "INSERT INTO inbox (id, transport, sender, recipients, received_at, size, subject, "
    "remote_id, meta, blob_id) VALUES (:id, :transport, :sender, :recipients, :received_at, "
    ":size, :subject, :remote_id, :meta, :blob_id)"
)
SELECT_INBOX_ENTRY = f"SELECT {INBOX_COLUMNS} FROM inbox WHERE id = ?"
SELECT_INBOX_AFTER = f"SELECT {INBOX_COLUMNS} FROM inbox WHERE id > ? ORDER BY id LIMIT ?"
SELECT_PROFILE = "SELECT key, value FROM profile WHERE section = ?"
UPSERT_PROFILE = (
    "INSERT INTO profile (section, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (section, key) DO UPDATE SET value = excluded.value"
)
DELETE_PROFILE = "DELETE FROM profile WHERE section = ? AND key = ?"
