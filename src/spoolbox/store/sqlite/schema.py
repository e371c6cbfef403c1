"""The SQLite store's schema: its tables, their versions, and opening a store file.

:func:`connect` opens a store file with care.  Before it writes anything it checks
that the file is a SQLite database, a spoolbox store and not from a newer schema; if
not it raises :class:`~spoolbox.store.base.StoreError` naming the file and leaves it
as it was.  A file that exists but holds no spoolbox schema (an empty file, an empty
database) is refused too: a new store is made whole under a temporary name, schema
included, and linked into place, so a store file without its schema was never made
by spoolbox.  Then it switches to WAL and runs the pending migrations, each in one
transaction.  A new store file is created mode 0600, and SQLite gives its ``-wal``
and ``-shm`` files the mode of the database (as the store does its ``-lock`` file,
:mod:`.writelock`); an existing store that other users could read is made 0600 (with
those files) when it is opened, with a warning.

The schema version lives in ``PRAGMA user_version``.  ``MIGRATIONS[n]`` is the SQL
script that upgrades a database at version ``n`` to version ``n + 1``, so a new file
(version 0) runs them all and :data:`SCHEMA_VERSION` is ``len(MIGRATIONS)``.  A
released migration is never edited: a change to the schema is a new script appended
to the list.  Each script is split into statements with :func:`split_statements` and
run in one transaction together with the version bump, and with the Python step that
follows it, if it has one (``_AFTER_SCRIPT``: version 10 rewrites a CHECK in a table's
definition, which no SQL statement can).

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
* Version 3 indexes ``messages.blob_id`` and ``inbox.blob_id`` (deleting content
  checks its foreign keys: without them each deletion scanned the table) and
  ``inbox.received_at`` (the inbox purge).
* Version 4 adds what several nodes share (:mod:`spoolbox.store.cluster`):
  ``nodes`` (each node's record and status rows as JSON), ``flush_requests`` with
  ``flush_progress`` (each node's part), and ``leases`` (named leases: an inbound
  mailbox fetched by one node at a time).
* Version 5 adds ``recipients.claim``, the token of the claim that took the
  recipient last (a fencing token): a claim's token is one more than the largest of
  its recipients', and a settle or renewal of an ACTIVE recipient must bring it.
* Version 6 drops ``recipients_owner``: one index fewer written by every claim and
  settle; ``release_owner`` reads the ACTIVE recipients through ``recipients_lease``.
* Version 7 adds ``messages.return_content``, RFC 3461's RET: 1 (FULL: the whole
  message in a report), 0 (HDRS: its header only), NULL (the report kind's default,
  as every message stored before it).
* Version 8 adds ``rate_sends``, the sends of each ``max_rate`` window, shared by
  every process on the store.
* Version 9 adds ``recipients.original``, RFC 3461's ORCPT as given with the
  recipient (``rfc822;bob@example.org``, its xtext decoded), NULL when none was (every
  recipient stored before it).
* Version 10 writes two conditions on ``recipients.state`` (the column's CHECK and
  ``recipients_expiry``'s) as equalities joined by OR instead of ``IN (...)`` lists,
  which SQLite evaluates through a temporary b-tree made at each run of a statement:
  the same rows, fewer instructions in every insert, claim and settle.

The queries are in :mod:`.queries`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..base import StoreError
from .writelock import lock_path

__all__ = [
    "APPLICATION_ID",
    "CHUNK_SIZE",
    "MIGRATIONS",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "STATE_CHECK",
    "STATE_CHECK_V1",
    "WAL_SIZE_LIMIT",
    "connect",
    "split_statements",
]


#: ``PRAGMA application_id`` of a spoolbox store ("SPBX"): tells our files from others.
APPLICATION_ID = 0x53504258

#: Content is stored in rows of this many bytes (the last row of a blob may be shorter).
CHUNK_SIZE = 256 * 1024

#: The page size of a new store file.  Every commit writes each page it changed whole
#: to the WAL, and a relayed message changes a page or so of each of a dozen tables
#: and indexes in little more than a few rows: 1 KiB pages write about a third of the
#: bytes 4 KiB pages do (docs/benchmarks.md, "Issue 17: bytes written per message");
#: large content costs more CPU in them (overflow chains of 1 KiB pages).  A store
#: keeps the page size it was made with.
PAGE_SIZE = 1024

#: The WAL is checkpointed when it holds this many bytes of pages (SQLite's default of
#: 1,000 pages, at the 4 KiB pages of the stores made before PAGE_SIZE).
WAL_CHECKPOINT_BYTES = 4000 * 1024

#: The WAL file is cut back to this size when a checkpoint lets the log start over.
#: It grows past WAL_CHECKPOINT_BYTES only while a reader holds an old snapshot (a long
#: queue listing, a large message read in chunks) during a burst of writes; without a
#: limit it would keep that size for as long as the store is open.
WAL_SIZE_LIMIT = 4 * WAL_CHECKPOINT_BYTES

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

# Retention: deleting a blob checks that no message or inbox entry still uses it (a
# foreign key), a scan of the table without these indexes; the inbox purge finds old
# entries by arrival.
_V3 = """
CREATE INDEX messages_blob ON messages (blob_id);
CREATE INDEX inbox_blob ON inbox (blob_id);
CREATE INDEX inbox_received ON inbox (received_at);
"""

# Several nodes on one store (issue 16): each node's record and status rows, the
# flush requests every node runs with each node's part, and named leases (an inbound
# mailbox fetched by one node at a time).  See spoolbox.store.cluster.
_V4 = """
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    lease_until REAL NOT NULL,
    running INTEGER NOT NULL,
    rows TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE flush_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    transport TEXT,
    upload INTEGER NOT NULL,
    download INTEGER NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at REAL NOT NULL,
    deadline_at REAL NOT NULL
);

CREATE TABLE flush_progress (
    request_id INTEGER NOT NULL REFERENCES flush_requests (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    done INTEGER NOT NULL,
    report TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (request_id, node)
) WITHOUT ROWID;

CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    lease_until REAL NOT NULL
) WITHOUT ROWID;
"""

# Fencing by claim (issue 16): each recipient keeps the token of the claim that took
# it last; a claim's token is one more than the largest of its recipients', so a
# settle or renewal from an earlier claim (even by the same node) is refused.
_V5 = """
ALTER TABLE recipients ADD COLUMN claim INTEGER NOT NULL DEFAULT 0;
"""

# Fewer pages written per message (issue 17): the index of ACTIVE recipients by owner
# was written at every claim and every settle for the sake of release_owner (a node's
# start, a dead worker), which now reads the ACTIVE recipients through recipients_lease
# (as many as are in flight) and picks the owner's.
_V6 = """
DROP INDEX IF EXISTS recipients_owner;
"""

# How much of the message a delivery report returns (RFC 3461 RET), kept with the
# message: 1 FULL, 0 HDRS, NULL the report kind's default (every older message).
_V7 = """
ALTER TABLE messages ADD COLUMN return_content INTEGER;
"""

# The sends of each transport's max_rate window (spoolbox.store.cluster's send rates),
# shared by every process on the store and kept across their restarts: ``n``
# messages started at ``at`` under the limit ``name``.
_V8 = """
CREATE TABLE rate_sends (
    name TEXT NOT NULL,
    at REAL NOT NULL,
    n INTEGER NOT NULL
);
CREATE INDEX rate_sends_name_at ON rate_sends (name, at);
"""

# A recipient's original address (RFC 3461 ORCPT), NULL when none was given: reports
# name it and the smtp transport passes it on.  Adding a column that may be NULL
# rewrites no row.
_V9 = """
ALTER TABLE recipients ADD COLUMN original TEXT;
"""

# Cheaper writes of recipients (issue 17).  SQLite evaluates ``state IN (...)`` with
# three values or more through a temporary b-tree that it builds each time the
# statement runs.  The CHECK on ``recipients.state`` and the condition of the partial
# index ``recipients_expiry`` made three of them in every claim and every settle of a
# recipient (a fifth of the instructions of each; docs/benchmarks.md, "Session 40").
# The same conditions written as equalities joined by OR are a few comparisons.  The
# index is made again here; the CHECK, which ALTER TABLE cannot change, is rewritten
# in the table's definition by :func:`_state_check_as_equalities`, run in the same
# transaction after this script.
_V10 = """
DROP INDEX recipients_expiry;
CREATE INDEX recipients_expiry ON recipients (expires_at)
    WHERE state = 'queued' OR state = 'parked' OR state = 'held';
"""

#: The CHECK on ``recipients.state`` as version 1 wrote it, and as version 10 does.
STATE_CHECK_V1: Final = (
    "state IN ('queued', 'active', 'parked', 'held', 'delivered', 'failed', 'cancelled')"
)
STATE_CHECK: Final = (
    "state = 'queued' OR state = 'active' OR state = 'parked' OR state = 'held' "
    "OR state = 'delivered' OR state = 'failed' OR state = 'cancelled'"
)


def _state_check_as_equalities(conn: sqlite3.Connection) -> bool:
    """Version 10's second step: the CHECK on ``recipients.state`` written as
    :data:`STATE_CHECK` in the table's definition, by SQLite's documented procedure
    for changing a CHECK constraint (``writable_schema``, the definition updated, the
    schema cookie incremented, in the migration's transaction).  The rows are not
    touched: the two conditions accept the same values, and every row satisfies the
    new one as it did the old.  A definition without version 1's CHECK text is left as
    it is, and so is one SQLite refuses to update (a connection in defensive mode):
    the old CHECK says the same, only at a higher cost.  True when it was rewritten."""
    row = conn.execute(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'recipients'"
    ).fetchone()
    if row is None or STATE_CHECK_V1 not in row[0]:
        return False
    cookie = int(conn.execute("PRAGMA schema_version").fetchone()[0])
    conn.execute("PRAGMA writable_schema = ON")
    try:
        conn.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = 'recipients'",
            (row[0].replace(STATE_CHECK_V1, STATE_CHECK),),
        )
    except sqlite3.DatabaseError:
        return False
    else:
        conn.execute(f"PRAGMA schema_version = {cookie + 1}")
    finally:
        conn.execute("PRAGMA writable_schema = OFF")
    return True


MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10)

#: Python steps of a migration, run after its script in the same transaction, by the
#: index of the script in MIGRATIONS.
_AFTER_SCRIPT: Final[dict[int, Callable[[sqlite3.Connection], object]]] = {
    9: _state_check_as_equalities
}

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


# -- opening a store file -------------------------------------------------------------


def connect(path: str, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """The store at ``path`` opened for writing (created if missing), checked, in WAL
    mode at ``synchronous``, migrated; rows come as :class:`sqlite3.Row`.  Its busy
    timeout is 0: the caller waits for another process's lock itself.  Raises
    StoreError naming the file."""
    read_only = _read_only_reason(Path(path))
    if read_only is not None:
        raise StoreError(f"cannot open the store {path} for writing: {read_only}")
    _create_if_missing(Path(path))
    try:
        # mode=rw: never fall back silently to a read-only connection, which would
        # refuse every write for the life of the store; and never create the file
        # (_create_if_missing made it, schema included).
        uri = "file:" + urllib.parse.quote(os.fspath(path)) + "?mode=rw"
        conn = sqlite3.connect(
            uri, timeout=busy_timeout, isolation_level=None, check_same_thread=True, uri=True
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {path}: {exc}") from exc
    try:
        _prepare(conn, path, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def pragmas(conn: sqlite3.Connection) -> dict[str, object]:
    """The settings an open store runs with (for ``statistics()``)."""
    return {
        "journal_mode": str(conn.execute("PRAGMA journal_mode").fetchone()[0]),
        "synchronous": int(conn.execute("PRAGMA synchronous").fetchone()[0]),
        "foreign_keys": int(conn.execute("PRAGMA foreign_keys").fetchone()[0]),
        "user_version": int(conn.execute("PRAGMA user_version").fetchone()[0]),
    }


def _create_if_missing(path: Path) -> None:
    """A new store at ``path``, if there is none: built whole under a temporary name
    (mode 0600, every migration run) and linked into place, so that no process ever
    sees a store file of ours without its schema.  If another process links its own
    first, that one is used."""
    if os.path.lexists(path):
        return
    _refuse_an_orphaned_log(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(os.fspath(tmp), isolation_level=None)
            try:
                # WAL from the start (it is kept in the file): switching a linked
                # store to WAL would need a lock that a second process opening it
                # at the same moment can refuse at once ("database is locked").
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before the first page
                conn.execute("PRAGMA journal_mode = WAL")
                # Checkpointed after each migration: the WAL holds one migration's
                # pages, not every one's (a new store fits a small file system).
                _migrate(conn, checkpoint=True)
            finally:
                conn.close()
            try:
                os.link(tmp, path)
            except FileExistsError:
                return  # another process created it meanwhile: open theirs
            _fsync_directory(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot create the store {path}: {exc}") from exc


# A write-ahead log holds at least its 32-byte header and one frame when it holds
# changes; an empty or header-only log left behind holds none.
_WAL_HEADER_BYTES: Final = 32


def _refuse_an_orphaned_log(path: Path) -> None:
    """Refuse to create a store at ``path`` where the ``-wal`` of a store that was
    there is left with changes in it: SQLite would replay that log into the new, empty
    file and bring back part of the removed store, possibly corrupt (the pages already
    checkpointed into the removed file would be missing)."""
    wal = Path(f"{path}-wal")
    try:
        size = wal.stat().st_size
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot create the store {path}: cannot look at {wal}: {exc}") from exc
    if size <= _WAL_HEADER_BYTES:
        return
    raise StoreError(
        f"the store {path} is missing but its write-ahead log {wal} ({size} bytes) is "
        "still there: the store file was removed or moved while it was open (a daemon "
        "may still be writing to the log). A new store was not created: SQLite would "
        "replay that log into it and bring back part of the old store, possibly "
        f"corrupt. Put the store file back at {path}; or, to start with an empty "
        f"store, move {wal} and {path}-shm out of the way (they hold only part of the "
        "old store)"
    )


def _prepare(conn: sqlite3.Connection, path: str, synchronous: str) -> None:
    # 1. Read-only checks: nothing is written to a file we would refuse.
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        objects = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{path} is not a SQLite database or is corrupt ({exc}); it was left untouched"
        ) from exc
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has store schema version {version}, but this spoolbox supports "
            f"versions up to {SCHEMA_VERSION}: it was written by a newer spoolbox; "
            "upgrade spoolbox to open it (the file was left untouched)"
        )
    if (version == 0 and objects > 0) or (version > 0 and app_id != APPLICATION_ID):
        raise StoreError(
            f"{path} is a SQLite database but not a spoolbox store "
            f"(application id {app_id:#x}, user version {version}); "
            "it was left untouched"
        )
    if version == 0:
        what = "an empty file" if os.path.getsize(path) == 0 else "an empty SQLite database"
        raise StoreError(
            f"{path} exists but holds no spoolbox store ({what}, not made by spoolbox); "
            "it was left untouched: remove it, or set [store] path to another file, "
            "for spoolbox to create a new store"
        )
    _make_private(Path(path))
    # 2. Settings, then migrations (each one transaction).
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        # The WAL is checkpointed at the same size whatever the page size (SQLite's
        # default is 1,000 pages: 4 MiB of 4 KiB pages, 1 MiB of 1 KiB ones).
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_BYTES // page_size}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        _migrate(conn)
        # From here on, waits for another process's lock are the caller's.
        conn.execute("PRAGMA busy_timeout = 0")
        conn.row_factory = sqlite3.Row
    except sqlite3.Error as exc:
        raise StoreError(f"cannot prepare the store {path}: {exc}") from exc


def _migrate(conn: sqlite3.Connection, *, checkpoint: bool = False) -> None:
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated.
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                return
            for statement in split_statements(MIGRATIONS[version]):
                conn.execute(statement)
            step = _AFTER_SCRIPT.get(version)
            if step is not None:
                step(conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
            if checkpoint:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _fsync_directory(directory: Path) -> None:
    """Make a new name in ``directory`` durable."""
    fd = os.open(directory if str(directory) else ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private(path: Path) -> None:
    """Mode 0600 for the store and its -wal, -shm and -lock files, if other users could
    read or write them (a store made by an older spoolbox): queued mail is in them (the
    -lock file holds nothing, but another user's lock on it would hold up writers).
    They are beside the file ``path`` resolves to (a store reached through a symlink)."""
    real = os.path.realpath(path)
    for p in (Path(real), Path(f"{real}-wal"), Path(f"{real}-shm"), Path(lock_path(real))):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            import logging  # rare (a store made by an older spoolbox): not at import

            log = logging.getLogger("spoolbox.store")
            try:
                os.chmod(p, 0o600)
            except OSError as exc:
                log.warning("%s is mode %04o; cannot make it 0600: %s", p, st.st_mode & 0o7777, exc)
                continue
            log.warning(
                "%s was mode %04o (other users could read queued mail): made it 0600",
                p,
                st.st_mode & 0o7777,
            )


def _read_only_reason(path: Path) -> str | None:
    """Why the store at ``path`` could not be written, if we can tell up front."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"the file system holding {directory} is mounted read-only"
    except OSError:
        return None
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable by this user"
    if not os.access(directory, os.W_OK):
        return f"the directory {directory} is not writable (SQLite needs its -wal/-shm files)"
    return None
