"""The SQLite store's retention operations as plain synchronous functions: finding
finished messages, deleting them, deleting inbox entries.

A purge is two jobs (and so is an inbox purge, with :func:`old_inbox`):
:func:`candidates` scans for finished messages old enough in a read transaction (a
snapshot: it holds no write lock, however large the store), then :func:`purge`
deletes at most ``limit`` of them in one write transaction, deciding each one again
on its current rows with the shared rule (:func:`spoolbox.store.retention.purgeable`):
a message that changed in between is kept.  Deleting a message deletes its
recipients (the counters' triggers see each), then the message, then its content
(:func:`delete_message`, also what a settle with ``drop_finished`` does).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from ...model import MessageState, message_state
from .. import retention
from ..base import UnknownMessage
from .rows import recipient_from_row

__all__ = [
    "candidates",
    "delete_inbox",
    "delete_message",
    "old_inbox",
    "orphan_sections",
    "purge",
    "purge_inbox",
    "purge_sections",
]

# A message's finished time and the counts its queue is decided from, for the messages
# whose every recipient is finished (the state literals as the schema spells them).
_FINISHED = """
SELECT message_id,
       max(updated_at) AS finished_at,
       sum(state = 'delivered') AS delivered,
       sum(state = 'failed') AS failed
FROM recipients
GROUP BY message_id
HAVING sum(state NOT IN ('delivered', 'failed', 'cancelled')) = 0
   AND ((delivered > 0 AND finished_at < :sent)
     OR (delivered = 0 AND failed > 0 AND finished_at < :failed)
     OR (delivered = 0 AND failed = 0 AND finished_at < :cancelled))
LIMIT :limit
"""
_RECIPIENTS = "SELECT * FROM recipients WHERE message_id = ?"
_BLOB_OF = "SELECT blob_id FROM messages WHERE id = ?"
_DELETE_RECIPIENTS = "DELETE FROM recipients WHERE message_id = ?"
_DELETE_MESSAGE = "DELETE FROM messages WHERE id = ?"
_DELETE_BLOB = "DELETE FROM blobs WHERE id = ?"
_OLD_INBOX = "SELECT id FROM inbox WHERE received_at < ? LIMIT ?"
_INBOX_ENTRY = "SELECT blob_id, received_at FROM inbox WHERE id = ?"
_DELETE_INBOX = "DELETE FROM inbox WHERE id = ?"


def candidates(
    conn: sqlite3.Connection, *, finished_before: Mapping[MessageState, float], limit: int
) -> list[str]:
    """Up to ``limit`` ids of messages that look purgeable (read transaction)."""
    params = {
        "sent": finished_before.get(MessageState.SENT),
        "failed": finished_before.get(MessageState.FAILED),
        "cancelled": finished_before.get(MessageState.CANCELLED),
        "limit": limit,
    }
    return [str(row["message_id"]) for row in conn.execute(_FINISHED, params)]


def purge(
    conn: sqlite3.Connection,
    *,
    ids: Sequence[str],
    finished_before: Mapping[MessageState, float],
) -> list[str]:
    """Delete those of ``ids`` that are purgeable now (write transaction)."""
    gone: list[str] = []
    for mid in ids:
        rcpts = [recipient_from_row(r) for r in conn.execute(_RECIPIENTS, (mid,))]
        if not rcpts:
            continue  # deleted meanwhile
        state = message_state(r.state for r in rcpts)
        if not retention.purgeable(state, rcpts, finished_before):
            continue
        blob = conn.execute(_BLOB_OF, (mid,)).fetchone()
        delete_message(conn, mid, None if blob is None else int(blob["blob_id"]))
        gone.append(mid)
    return gone


def delete_message(conn: sqlite3.Connection, message_id: str, blob_id: int | None) -> None:
    """Delete a message: its recipients (the counters' triggers see each), the
    message, then its content (``blob_id``; its chunks go with it)."""
    conn.execute(_DELETE_RECIPIENTS, (message_id,))
    conn.execute(_DELETE_MESSAGE, (message_id,))
    if blob_id is not None:
        conn.execute(_DELETE_BLOB, (blob_id,))


def old_inbox(conn: sqlite3.Connection, *, received_before: float, limit: int) -> list[str]:
    """Up to ``limit`` ids of inbox entries received before ``received_before`` (read)."""
    return [str(r["id"]) for r in conn.execute(_OLD_INBOX, (received_before, limit))]


def purge_inbox(
    conn: sqlite3.Connection, *, ids: Sequence[str], received_before: float
) -> list[str]:
    """Delete those of ``ids`` still there and received before ``received_before``."""
    gone: list[str] = []
    for entry_id in ids:
        row = conn.execute(_INBOX_ENTRY, (entry_id,)).fetchone()
        if row is not None and float(row["received_at"]) < received_before:
            _delete_entry(conn, entry_id, int(row["blob_id"]))
            gone.append(entry_id)
    return gone


def delete_inbox(conn: sqlite3.Connection, *, entry_id: str) -> None:
    row = conn.execute(_INBOX_ENTRY, (entry_id,)).fetchone()
    if row is None:
        raise UnknownMessage(f"no inbox message with id {entry_id!r}")
    _delete_entry(conn, entry_id, int(row["blob_id"]))


def _delete_entry(conn: sqlite3.Connection, entry_id: str, blob_id: int) -> None:
    conn.execute(_DELETE_INBOX, (entry_id,))
    conn.execute(_DELETE_BLOB, (blob_id,))


# Profile sections named prefix + the id of a message the store does not have.
# (A range of the primary key: the sections that sort from the prefix to the prefix
# with its last character's successor.)
_ORPHAN_SECTIONS = """
SELECT DISTINCT section FROM profile
WHERE section >= :prefix AND section < :after
  AND NOT EXISTS (SELECT 1 FROM messages WHERE id = substr(section, :n + 1))
LIMIT :limit
"""
_MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = ?"
_DELETE_SECTION = "DELETE FROM profile WHERE section = ?"


def orphan_sections(conn: sqlite3.Connection, *, prefix: str, limit: int) -> list[str]:
    """Up to ``limit`` ids with a section ``prefix`` + id and no message (read)."""
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    params = {"n": len(prefix), "prefix": prefix, "after": after, "limit": limit}
    return [str(r["section"])[len(prefix) :] for r in conn.execute(_ORPHAN_SECTIONS, params)]


def purge_sections(conn: sqlite3.Connection, *, prefix: str, ids: Sequence[str]) -> list[str]:
    """Delete the sections ``prefix`` + id of those ``ids`` that are not messages
    (write transaction); returns the ids whose section went."""
    gone: list[str] = []
    for mid in dict.fromkeys(ids):
        stored = conn.execute(_MESSAGE_EXISTS, (mid,)).fetchone() is not None
        if not stored and conn.execute(_DELETE_SECTION, (prefix + mid,)).rowcount:
            gone.append(mid)
    return gone
