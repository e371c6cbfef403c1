"""The PostgreSQL store's retention operations: deleting finished messages, old inbox
entries and one inbox entry (the store protocol's ``purge``, ``purge_inbox`` and
``delete_inbox``; the rules are :mod:`spoolbox.store.retention`'s).

Each runs in one write transaction.  The candidates are found by one aggregate
query (only messages whose every recipient is finished), then, a batch in a few
statements, each is decided again on its recipient rows locked ``FOR UPDATE`` with
the shared rule (:func:`~spoolbox.store.retention.purgeable`): a message another
node changed in between is kept.  Candidates another transaction has locked are skipped
(``SKIP LOCKED``), so several nodes purging at once neither wait for each other nor
delete twice.  Deleting a message deletes its recipients (the counters' triggers see
them), the message and its content (the chunks go with the blob row), in one
statement (:func:`delete_messages`, also what a settle with ``drop_finished`` does,
for every message of a group of settles at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from ...model import MessageState, RecipientRecord, message_state
from .. import retention
from ..base import UnknownMessage
from ..sqlite.queries import RECIPIENT_COLUMNS
from ..sqlite.rows import recipient_from_row
from .arrays import text_array

__all__ = [
    "delete_inbox",
    "delete_message",
    "delete_messages",
    "orphan_sections",
    "purge",
    "purge_inbox",
    "purge_sections",
]

Conn = AsyncConnection[DictRow]

# Messages whose every recipient is finished and whose finished time (the latest
# updated_at) is before the cutoff of the queue its recipients' states make.
_FINISHED = """
SELECT message_id
FROM recipients
GROUP BY message_id
HAVING count(*) FILTER (WHERE state NOT IN ('delivered', 'failed', 'cancelled')) = 0
   AND ((count(*) FILTER (WHERE state = 'delivered') > 0
         AND max(updated_at) < %(sent)s::double precision)
     OR (count(*) FILTER (WHERE state = 'delivered') = 0
         AND count(*) FILTER (WHERE state = 'failed') > 0
         AND max(updated_at) < %(failed)s::double precision)
     OR (count(*) FILTER (WHERE state IN ('delivered', 'failed')) = 0
         AND max(updated_at) < %(cancelled)s::double precision))
LIMIT %(limit)s
"""
#: The candidates another transaction is not at (a node purging, a settle deleting).
_LOCK_MESSAGES = (
    "SELECT id FROM messages WHERE id = ANY(%s::text[]) ORDER BY id FOR UPDATE SKIP LOCKED"
)
#: The recipients of the locked candidates, locked too, to decide each again.
_RECIPIENTS_OF = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ANY(%s::text[]) "
    "ORDER BY message_id, idx FOR UPDATE"
)
#: A message, its recipients and its content in one statement (the chunks go with the
#: blob row; the foreign keys are checked at its end, when all are gone).
_DELETE_MESSAGES = """
WITH r AS (DELETE FROM recipients WHERE message_id = ANY(%(ids)s::text[])),
     m AS (DELETE FROM messages WHERE id = ANY(%(ids)s::text[]) RETURNING blob_id)
DELETE FROM blobs WHERE id IN (SELECT blob_id FROM m)
"""
_DELETE_BLOB = "DELETE FROM blobs WHERE id = %s"
_OLD_INBOX = "SELECT id, blob_id FROM inbox WHERE received_at < %s LIMIT %s FOR UPDATE SKIP LOCKED"
_INBOX_FOR_UPDATE = "SELECT blob_id FROM inbox WHERE id = %s FOR UPDATE"
_DELETE_INBOX = "DELETE FROM inbox WHERE id = %s"


async def purge(
    conn: Conn, *, finished_before: Mapping[MessageState, float], limit: int
) -> list[str]:
    """Delete up to ``limit`` purgeable messages; their ids."""
    params = {
        "sent": finished_before.get(MessageState.SENT),
        "failed": finished_before.get(MessageState.FAILED),
        "cancelled": finished_before.get(MessageState.CANCELLED),
        "limit": limit,
    }
    cur = await conn.execute(_FINISHED, params)
    ids = [str(row["message_id"]) for row in await cur.fetchall()]
    if not ids:
        return []
    # Four statements a batch, whatever its size (three a message before: 0.7 ms a
    # message purged, round trips mostly; docs/benchmarks.md, session 20).
    cur = await conn.execute(_LOCK_MESSAGES, (text_array(ids),))
    locked = [str(row["id"]) for row in await cur.fetchall()]  # others: deleted meanwhile
    if not locked:
        return []
    cur = await conn.execute(_RECIPIENTS_OF, (text_array(locked),))
    by_message: dict[str, list[RecipientRecord]] = {}
    for row in await cur.fetchall():
        r = recipient_from_row(row)
        by_message.setdefault(r.message_id, []).append(r)
    gone = [
        mid
        for mid in ids
        if (rcpts := by_message.get(mid))
        and retention.purgeable(message_state(r.state for r in rcpts), rcpts, finished_before)
    ]
    if gone:
        await delete_messages(conn, gone)
    return gone


async def delete_message(conn: Conn, message_id: str) -> None:
    """Delete a message: its recipients, the message and its content."""
    await delete_messages(conn, [message_id])


async def delete_messages(conn: Conn, message_ids: Sequence[str]) -> None:
    """Delete messages, their recipients and their contents, in one statement (the
    counters' trigger runs once for them all)."""
    await conn.execute(_DELETE_MESSAGES, {"ids": text_array(message_ids)})


async def purge_inbox(conn: Conn, *, received_before: float, limit: int) -> list[str]:
    """Delete up to ``limit`` inbox entries received before ``received_before``."""
    cur = await conn.execute(_OLD_INBOX, (received_before, limit))
    gone: list[str] = []
    for row in await cur.fetchall():
        entry_id = str(row["id"])
        await conn.execute(_DELETE_INBOX, (entry_id,))
        await conn.execute(_DELETE_BLOB, (int(row["blob_id"]),))
        gone.append(entry_id)
    return gone


async def delete_inbox(conn: Conn, *, entry_id: str) -> None:
    """Delete one inbox entry; UnknownMessage if there is none with that id."""
    cur = await conn.execute(_INBOX_FOR_UPDATE, (entry_id,))
    row = await cur.fetchone()
    if row is None:
        raise UnknownMessage(f"no inbox message with id {entry_id!r}")
    await conn.execute(_DELETE_INBOX, (entry_id,))
    await conn.execute(_DELETE_BLOB, (int(row["blob_id"]),))


#: Profile sections named prefix + the id of a message the store does not have.
_ORPHAN_SECTIONS = """
SELECT DISTINCT section FROM profile
WHERE left(section, %(n)s) = %(prefix)s
  AND NOT EXISTS (SELECT 1 FROM messages WHERE id = substr(section, %(n)s + 1))
LIMIT %(limit)s
"""
#: Those of the given sections whose message is not stored (now, in this transaction).
_DELETE_SECTIONS = """
DELETE FROM profile WHERE section = ANY(%(sections)s::text[])
  AND NOT EXISTS (SELECT 1 FROM messages WHERE id = substr(section, %(n)s + 1))
RETURNING section
"""


async def orphan_sections(conn: Conn, *, prefix: str, limit: int) -> list[str]:
    """Up to ``limit`` ids with a section ``prefix`` + id and no message."""
    params = {"n": len(prefix), "prefix": prefix, "limit": limit}
    cur = await conn.execute(_ORPHAN_SECTIONS, params)
    return [str(row["section"])[len(prefix) :] for row in await cur.fetchall()]


async def purge_sections(conn: Conn, *, prefix: str, ids: Sequence[str]) -> list[str]:
    """Delete the sections ``prefix`` + id of those ``ids`` that are not messages;
    returns the ids whose section went, in the order of ``ids``."""
    wanted = list(dict.fromkeys(ids))
    params = {"n": len(prefix), "sections": text_array([prefix + m for m in wanted])}
    cur = await conn.execute(_DELETE_SECTIONS, params)
    deleted = {str(row["section"])[len(prefix) :] for row in await cur.fetchall()}
    return [m for m in wanted if m in deleted]
