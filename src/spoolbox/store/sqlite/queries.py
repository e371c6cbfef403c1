"""The SQL of every query the SQLite store runs (the tables are in :mod:`.schema`).

The queries keep the literal ``state = '...'`` terms the partial indexes are declared
with: SQLite uses a partial index only when the query repeats its condition.  The
hot ones (claims, counts, lease and expiry scans) name their index, and a test
(``test_hot_queries_do_not_scan_the_queue``) reads each one's query plan.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Final

# -- columns ------------------------------------------------------------------------

MESSAGE_COLUMNS = (
    "id, fingerprint, sender, priority, submitted_at, send_at, expires_at, notify, "
    "is_report, envelope_id, return_content, size, subject, held, blob_id"
)

RECIPIENT_COLUMNS = (
    "message_id, idx, address, state, route, refused_by, attempts, retry_at, status, "
    "diagnostic, updated_at, first_failed_at, owner, lease_until, delay_warned, claim, "
    "original"
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
    "expires_at, notify, is_report, envelope_id, return_content, size, subject, held, "
    "blob_id) VALUES (:id, :fingerprint, :sender, :priority, :submitted_at, :send_at, "
    ":expires_at, :notify, :is_report, :envelope_id, :return_content, :size, :subject, 0, "
    ":blob_id)"
)
SET_HELD = "UPDATE messages SET held = ? WHERE id = ?"

INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, idx, address, state, route, updated_at, priority, "
    "send_at, ready_at, expires_at, original) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_RECIPIENTS = f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? ORDER BY idx"
SELECT_RECIPIENT = f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? AND idx = ?"
SELECT_READINESS = "SELECT state, ready_at FROM recipients WHERE message_id = ?"
SELECT_STATES = "SELECT idx, state FROM recipients WHERE message_id = ?"
#: Writes every mutable field of one recipient; ``ready_at`` follows ``retry_at``.
#: Numbered parameters, :func:`~.rows.recipient_values` (a tuple binds in
#: about half the time of a mapping's fifteen names, once a settled recipient).
UPDATE_RECIPIENT = (
    "UPDATE recipients SET state = ?3, route = ?4, refused_by = ?5, attempts = ?6, "
    "retry_at = ?7, ready_at = max(send_at, ?7), status = ?8, diagnostic = ?9, "
    "updated_at = ?10, first_failed_at = ?11, delay_warned = ?12, owner = ?13, "
    "lease_until = ?14, claim = coalesce(?15, claim) WHERE message_id = ?1 AND idx = ?2"
)
#: A claim: a QUEUED recipient (read in the same transaction) becomes ACTIVE under
#: its owner's lease and the claim's token; nothing else of the row changes.
CLAIM_RECIPIENT = (
    "UPDATE recipients SET state = 'active', updated_at = ?, owner = ?, lease_until = ?, "
    "claim = ? WHERE message_id = ? AND idx = ?"
)
RENEW_LEASE = (
    "UPDATE recipients SET lease_until = ? "
    "WHERE message_id = ? AND idx = ? AND state = 'active' AND owner = ? AND claim = ?"
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
#: :data:`CLAIM_READY` passing over the recipients of some destinations
#: (``skip_destinations``): ``{window}`` rows of the queue at most (a subquery with a
#: ``LIMIT`` is not flattened into a query with a ``WHERE``: the filter stays above
#: the window, and the scan stops where the caller stops reading), from the oldest
#: ready (``{order}`` empty) or the newest (``DESC``); ``{skipped}`` is
#: :func:`skipped`'s condition.
CLAIM_PASSING = (
    "SELECT message_id FROM (SELECT message_id, address FROM recipients "
    "INDEXED BY recipients_ready WHERE state = 'queued' AND route = ? AND priority = ? "
    "AND {ready} <= ? ORDER BY ready_at {order} LIMIT ?) WHERE NOT ({skipped})"
)


_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
#: Up to this many destinations, :func:`skipped` matches each with ``LIKE`` (0.08-0.14
#: us a row and destination); more are looked up in an ``IN`` list by the
#: destination computed in SQL (:data:`DESTINATION`, 0.6-0.8 us a row for 17 to
#: 20,000 of them; ``bench/pass_over.py --per-row``), as an ``OR`` of many terms is
#: slower and, past 500 of them, deeper than SQLite's expression depth (1,000).
LIKE_MOST: Final = 16
#: A recipient's destination (:func:`spoolbox.model.destination`) from its stored
#: ``TYPE:value`` address: the value when it has no "@"; else the text after the
#: first "@" when it has no other, or after the last one (``rtrim`` by every other
#: character leaves the text up to it), with ``lower``, which folds ASCII letters
#: only, as the destination does.
DESTINATION: Final = (
    "CASE WHEN instr(address, '@') = 0 THEN substr(address, instr(address, ':') + 1) "
    "WHEN instr(substr(address, instr(address, '@') + 1), '@') = 0 "
    "THEN lower(substr(address, instr(address, '@') + 1)) "
    "ELSE lower(replace(address, rtrim(address, replace(address, '@', '')), '')) END"
)


def skipped(destinations: Sequence[str], most: int) -> tuple[str, list[str]]:
    """The condition (and its parameters, ``most`` at most: SQLite's limit of
    them) true of a ``TYPE:value`` address whose destination
    (:func:`spoolbox.model.destination`) is one of ``destinations``.  Up to
    :data:`LIKE_MOST` of them: a domain after the last "@" by ``LIKE``, which folds
    ASCII letters only, as the destination does (a destination with an ASCII capital
    is no domain's), and a value without "@" as it is; more: :data:`DESTINATION` in
    a list of them (the first ``most`` only: the jobs of the others that a claim
    brings wait in the lane for their room)."""
    if len(destinations) > LIKE_MOST:
        names = list(destinations[:most])
        return f"{DESTINATION} IN ({', '.join('?' * len(names))})", names
    terms: list[str] = []
    args: list[str] = []
    for d in destinations:
        if d == d.translate(_ASCII_LOWER):
            terms.append("address LIKE ? ESCAPE '\\'")
            args.append("%@" + d.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"))
        terms.append("(instr(address, '@') = 0 AND substr(address, instr(address, ':') + 1) = ?)")
        args.append(d)
    return " OR ".join(terms) or "0", args


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
#: Every ACTIVE recipient is in recipients_lease: a node's are picked from those.
SELECT_LEASED_BY = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_lease "
    "WHERE state = 'active' AND owner = ?"
)
#: An owner's claims of one transport leased until a bound (release_lost_claims:
#: those it still holds are kept).
SELECT_LOST_CLAIMS = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_lease "
    "WHERE state = 'active' AND lease_until <= ? AND owner = ? AND route = ?"
)

# -- expiry and deferral ------------------------------------------------------------

#: The condition of ``recipients_expiry`` written as the index writes it: SQLite uses a
#: partial index for a query whose WHERE has that same condition.
SELECT_EXPIRED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients INDEXED BY recipients_expiry "
    "WHERE (state = 'queued' OR state = 'parked' OR state = 'held') AND expires_at <= ? "
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
