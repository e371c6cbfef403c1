"""The SQL of every query the PostgreSQL store runs (the tables are in :mod:`.schema`).

Placeholders are psycopg's (``%s``, ``%(name)s``).  The queries keep the literal
``state = '...'`` terms the partial indexes are declared with, so the planner can use
them.  Rows that a write transaction reads and then rewrites are read ``FOR UPDATE``
(in ``(message_id, idx)`` order where several are read at once, so two nodes lock
them in the same order); claims and lease releases read ``FOR UPDATE SKIP LOCKED``, so
nodes claiming at once take different recipients instead of waiting for each other.
"""

from __future__ import annotations

# The columns are the SQLite store's: one set of row functions reads both.
from ...model import Priority
from ..sqlite.queries import INBOX_COLUMNS, MESSAGE_COLUMNS, RECIPIENT_COLUMNS

# -- content ------------------------------------------------------------------------

INSERT_BLOB = "INSERT INTO blobs (size, chunks) VALUES (%s, %s) RETURNING id"
INSERT_CHUNK = "INSERT INTO blob_chunks (blob_id, seq, data) VALUES (%s, %s, %s)"
SELECT_BLOB = "SELECT size, chunks FROM blobs WHERE id = %s"
SELECT_CHUNK = "SELECT data FROM blob_chunks WHERE blob_id = %s AND seq = %s"
SELECT_CHUNKS = "SELECT data FROM blob_chunks WHERE blob_id = %s ORDER BY seq"

# -- messages and recipients --------------------------------------------------------

SELECT_MESSAGE = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = %s"
SELECT_MESSAGE_FOR_UPDATE = f"{SELECT_MESSAGE} FOR UPDATE"
SELECT_MESSAGE_FOR_SHARE = f"{SELECT_MESSAGE} FOR SHARE"
#: Messages with their content's chunks (``chunk``) where ``size <= prefetch`` (else
#: one row, ``chunk`` NULL): a claim's messages in one statement.  The chunks are read
#: per message (``LATERAL``, kept apart by its ``ORDER BY``) through the content's
#: primary key: as a plain join, the planner hashed the whole ``blob_chunks`` table
#: for every claim once the queue was a few thousand messages deep.
SELECT_MESSAGES_WITH_CONTENT = (
    "SELECT "
    + ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))
    + ", c.data AS chunk FROM messages AS m LEFT JOIN LATERAL (SELECT data, seq "
    "FROM blob_chunks WHERE blob_id = m.blob_id AND m.size <= %(prefetch)s ORDER BY seq) "
    "AS c ON true WHERE m.id = ANY(%(ids)s::text[]) ORDER BY m.id, c.seq"
)
SELECT_MESSAGES_AFTER = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id > %s ORDER BY id LIMIT %s"
SET_HELD = "UPDATE messages SET held = %s WHERE id = %s"
#: A whole submission in one statement: the content (``blobs``, ``blob_chunks``: one
#: array element per chunk), the message (its row's columns but ``blob_id``), its
#: recipients (one array element each) and the wake-ups (``payloads``, sent on
#: commit), the last two only if the message row was new.
#: Returns the content's id and whether the message was inserted (``inserted`` 0:
#: the id exists; the caller deletes the content again and compares).
INSERT_SUBMISSION = (
    "WITH b AS (INSERT INTO blobs (size, chunks) VALUES (%(content_size)s, %(chunks)s) "
    "RETURNING id), "
    "c AS (INSERT INTO blob_chunks (blob_id, seq, data) SELECT b.id, u.n - 1, u.data "
    "FROM b, unnest(%(data)b::bytea[]) WITH ORDINALITY AS u(data, n)), "
    "m AS (INSERT INTO messages (id, fingerprint, sender, priority, submitted_at, send_at, "
    "expires_at, notify, is_report, envelope_id, return_content, size, subject, held, "
    "blob_id) VALUES (%(id)s, %(fingerprint)s, %(sender)s, %(priority)s, %(submitted_at)s, "
    "%(send_at)s, %(expires_at)s, %(notify)s, %(is_report)s, %(envelope_id)s, "
    "%(return_content)s, %(size)s, %(subject)s, 0, (SELECT id FROM b)) "
    "ON CONFLICT (id) DO NOTHING RETURNING id), "
    "r AS (INSERT INTO recipients (message_id, idx, address, state, route, updated_at, "
    "priority, send_at, ready_at, expires_at, original) SELECT m.id, u.n - 1, u.address, "
    "'queued', u.route, %(now)s, %(priority)s, %(ready_at)s, %(ready_at)s, %(expires_at)s, "
    "u.original FROM m, unnest(%(addresses)s::text[], %(routes)s::text[], "
    "%(originals)s::text[]) WITH ORDINALITY AS u(address, route, original, n) ORDER BY u.n), "
    "w AS (SELECT pg_notify(%(channel)s, p) FROM m, unnest(%(payloads)s::text[]) AS p) "
    "SELECT b.id AS blob_id, (SELECT count(*) FROM m) AS inserted, "
    "(SELECT count(*) FROM w) AS notified FROM b"
)
#: After :data:`INSERT_SUBMISSION` in the same transaction: its content row deleted
#: again when the message was not inserted (the id was taken): the row the statement
#: just made (this session's last value of the blobs' identity) if the message with
#: the id does not point to it.  Deletes nothing when the message went in.
#: ``currval`` is volatile: compared row by row it made the delete read every content
#: row on every submission; taken once (a sub-select), it is the key of one look-up.
DROP_UNUSED_CONTENT = (
    "DELETE FROM blobs WHERE id = (SELECT currval(pg_get_serial_sequence('blobs', 'id'))) "
    "AND id IS DISTINCT FROM (SELECT blob_id FROM messages WHERE id = %(id)s)"
)
SELECT_RECIPIENTS = f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = %s ORDER BY idx"
SELECT_RECIPIENTS_FOR_UPDATE = f"{SELECT_RECIPIENTS} FOR UPDATE"
SELECT_RECIPIENT_FOR_UPDATE = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = %s AND idx = %s FOR UPDATE"
)
SELECT_READINESS = "SELECT state, ready_at FROM recipients WHERE message_id = %s"
#: Writes every mutable field of one recipient; ``ready_at`` follows ``retry_at``.
UPDATE_RECIPIENT = (
    "UPDATE recipients SET state = %(state)s, route = %(route)s, "
    "refused_by = %(refused_by)s, attempts = %(attempts)s, retry_at = %(retry_at)s, "
    "ready_at = greatest(send_at, %(retry_at)s), status = %(status)s, "
    "diagnostic = %(diagnostic)s, updated_at = %(updated_at)s, "
    "first_failed_at = %(first_failed_at)s, owner = %(owner)s, "
    "lease_until = %(lease_until)s, delay_warned = %(delay_warned)s, "
    "claim = coalesce(%(claim)s, claim) "
    "WHERE message_id = %(message_id)s AND idx = %(idx)s"
)
#: :data:`UPDATE_RECIPIENT` for many recipients in one statement (a group of
#: settles): one array per column (:func:`recipient_arrays`), so the statement's
#: counter trigger runs once for the group instead of once per recipient.
UPDATE_RECIPIENTS = (
    "UPDATE recipients AS r SET state = v.state, route = v.route, "
    "refused_by = v.refused_by, attempts = v.attempts, retry_at = v.retry_at, "
    "ready_at = greatest(r.send_at, v.retry_at), status = v.status, "
    "diagnostic = v.diagnostic, updated_at = v.updated_at, "
    "first_failed_at = v.first_failed_at, owner = v.owner, "
    "lease_until = v.lease_until, delay_warned = v.delay_warned, "
    "claim = coalesce(v.claim, r.claim) "
    "FROM unnest(%(message_id)s::text[], %(idx)s::integer[], %(state)s::text[], "
    "%(route)s::text[], %(refused_by)s::text[], %(attempts)s::integer[], "
    "%(retry_at)s::double precision[], %(status)s::text[], %(diagnostic)s::text[], "
    "%(updated_at)s::double precision[], %(first_failed_at)s::double precision[], "
    "%(owner)s::text[], %(lease_until)s::double precision[], "
    "%(delay_warned)s::smallint[], %(claim)s::bigint[]) "
    "AS v(message_id, idx, state, route, refused_by, attempts, retry_at, status, "
    "diagnostic, updated_at, first_failed_at, owner, lease_until, delay_warned, claim) "
    "WHERE r.message_id = v.message_id AND r.idx = v.idx"
)
RENEW_LEASE = (
    "UPDATE recipients SET lease_until = %s "
    "WHERE message_id = %s AND idx = %s AND state = 'active' AND owner = %s AND claim = %s"
)

# -- routing ------------------------------------------------------------------------

SELECT_UNROUTED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state = 'queued' AND route IS NULL "
    "AND (message_id, idx) > (%s, %s) ORDER BY message_id, idx LIMIT %s"
)
SELECT_ROUTED_ELSEWHERE = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state IN ('queued', 'parked') AND route IS NOT NULL AND route <> ALL(%s) "
    "ORDER BY message_id, idx FOR UPDATE"
)
SELECT_ROUTED_TO = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state IN ('queued', 'parked') AND route = ANY(%s) "
    "ORDER BY message_id, idx FOR UPDATE"
)
ASSIGN_ROUTE = (
    "UPDATE recipients SET route = %s WHERE message_id = %s AND idx = %s AND state = 'queued'"
)

# -- claims -------------------------------------------------------------------------


_RETURNING_RECIPIENT = ", ".join(f"r.{c.strip()}" for c in RECIPIENT_COLUMNS.split(","))
#: A claim in one statement: lock up to ``rows`` ready recipients of one transport
#: (highest priority first, then oldest ready; rows another node is claiming are
#: skipped; one priority at a time, each a range of the queue index that ends at the
#: first row not ready, so recipients waiting for a retry are never read), rank the
#: messages they belong to by their first row in that order and keep the first
#: ``limit`` (``picked``), then take every claimable
#: recipient of those messages under one claim token (one value of the sequence
#: ``recipient_claims`` for the whole statement: a volatile CTE runs once).  Each row
#: returned carries its message's rank (``pick_rank``: the jobs' order).
#:
#: The second look-up reads each picked message's rows through the primary key, one
#: message at a time (``LATERAL``), and states its conditions with ``IS NOT DISTINCT
#: FROM`` (the same for these non-null values) so that no index of the queue can
#: serve it: without statistics (a new database, a burst before autovacuum's first
#: ``ANALYZE``) the planner read the whole queue of the transport through
#: ``recipients_flush`` for every claim (2.8-5.3 ms a claim with 9,000 queued, against
#: 0.34-0.45 ms now; see docs/benchmarks.md, session 15).
_PICK = (
    "SELECT message_id, priority, ready_at, seq FROM recipients WHERE state = 'queued' "
    "AND route = %(route)s AND priority = {priority} AND {{ready}} <= %(now)s{{skip}} "
    "ORDER BY ready_at, seq LIMIT {limit} FOR UPDATE SKIP LOCKED"
)
#: A recipient's destination (:func:`spoolbox.model.destination`) from its stored
#: ``TYPE:value`` address: the text after the last "@" with only the ASCII letters
#: folded (``lower`` in the "C" collation folds those alone, whatever the database's
#: collation), or the value when it has no "@".  The last part is ``split_part`` of the
#: reversed text (PostgreSQL 13 has no negative index).  A row costs 0.45-0.47 us;
#: with a regular expression and ``translate``, as it was, 2.5-2.6 us
#: (``bench/pass_over.py --per-row``).
DESTINATION = (
    "CASE WHEN strpos(address, '@') > 0 "
    """THEN lower(reverse(split_part(reverse(address), '@', 1)) COLLATE "C") """
    "ELSE substring(address from strpos(address, ':') + 1) END"
)
#: A claim's condition passing over the destinations in ``%(skip)s`` (a ``text[]``).
_NOT_SKIPPED = f" AND NOT ({DESTINATION}) = ANY(%(skip)s::text[])"
#: :data:`_PICK` passing over the destinations in ``%(skip)s``, reading no more than
#: ``%(window)s`` of the ready queue (:data:`.transactions.PASS_OVER_LIMIT`) from its
#: oldest end (``{order}`` empty) or its newest (``DESC``): the rows of other
#: destinations there (none of the messages ``%(taken)s``, which the claim's first
#: statement took), in that order, each locked through the primary key (``LATERAL``,
#: the conditions again with ``IS NOT DISTINCT FROM`` so that no index of the queue
#: serves it) unless another node's claim holds it, until ``{limit}`` are.  No sort
#: above the join: its ``LIMIT`` stops the scan at the rows taken (the window's
#: ``LIMIT`` keeps the filter above it), and rows that other nodes hold are passed
#: over as :data:`_PICK` passes over them; the jobs' order comes from the ranking
#: after (``picked``).
_PICK_PASSING = (
    "SELECT r.message_id, r.priority, r.ready_at, r.seq FROM (SELECT message_id, idx "
    "FROM (SELECT message_id, idx, address FROM recipients WHERE state = 'queued' "
    "AND route = %(route)s AND priority = {priority} AND {{ready}} <= %(now)s "
    "ORDER BY ready_at {{order}}, seq {{order}} LIMIT %(window)s) AS w"
    f" WHERE NOT ({DESTINATION}) = ANY(%(skip)s::text[]) "
    "AND NOT message_id = ANY(%(taken)s::text[])) AS c "
    "CROSS JOIN LATERAL (SELECT message_id, priority, ready_at, seq FROM recipients "
    "WHERE message_id = c.message_id AND idx = c.idx "
    "AND state IS NOT DISTINCT FROM 'queued' AND route IS NOT DISTINCT FROM %(route)s "
    "AND {{ready}} <= %(now)s FOR UPDATE SKIP LOCKED) AS r LIMIT {limit}"
)


def _claim(pick: str) -> str:
    """The claim statement (formatted with ``ready`` and ``skip``, and ``order`` for
    :data:`_PICK_PASSING`) picking each priority's rows with ``pick``."""
    return (
        "WITH high AS MATERIALIZED ("
        + pick.format(priority=int(Priority.HIGH), limit="%(rows)s")
        + "), normal AS MATERIALIZED ("
        + pick.format(priority=int(Priority.NORMAL), limit="(SELECT %(rows)s - count(*) FROM high)")
        + "), low AS MATERIALIZED ("
        + pick.format(
            priority=int(Priority.LOW),
            limit="(SELECT %(rows)s - count(*) FROM high) - (SELECT count(*) FROM normal)",
        )
        + _CLAIM_TAKE
    )


_CLAIM_TAKE = (
    "), locked AS (SELECT * FROM high UNION ALL SELECT * FROM normal "
    "UNION ALL SELECT * FROM low), "
    "picked AS (SELECT message_id, min(rank) AS rank FROM (SELECT message_id, "
    "row_number() OVER (ORDER BY priority DESC, ready_at, seq) AS rank FROM locked) AS o "
    "GROUP BY message_id ORDER BY min(rank) LIMIT %(limit)s), "
    "token AS (SELECT nextval('recipient_claims') AS n) "
    "UPDATE recipients AS r SET state = 'active', owner = %(owner)s, "
    "lease_until = %(until)s, updated_at = %(now)s, claim = token.n "
    "FROM token, (SELECT c.message_id, c.idx, p.rank FROM picked AS p "
    "CROSS JOIN LATERAL (SELECT message_id, idx FROM recipients "
    "WHERE message_id = p.message_id AND state IS NOT DISTINCT FROM 'queued' "
    "AND route IS NOT DISTINCT FROM %(route)s AND {ready} <= %(now)s{skip} "
    "ORDER BY idx FOR UPDATE SKIP LOCKED) AS c) AS t "
    "WHERE r.message_id = t.message_id AND r.idx = t.idx "
    "RETURNING t.rank AS pick_rank, " + _RETURNING_RECIPIENT
)
CLAIM_TAKE_READY = _claim(_PICK).format(ready="ready_at", skip="")
CLAIM_TAKE_FLUSH = _claim(_PICK).format(ready="send_at", skip="")
#: The same passing over the recipients of some destinations (``skip_destinations``),
#: from the oldest end of the ready queue and from the newest (:data:`_PICK_PASSING`).
CLAIM_TAKE_READY_SKIPPING = _claim(_PICK_PASSING).format(
    ready="ready_at", skip=_NOT_SKIPPED, order=""
)
CLAIM_TAKE_FLUSH_SKIPPING = _claim(_PICK_PASSING).format(
    ready="send_at", skip=_NOT_SKIPPED, order=""
)
CLAIM_TAKE_READY_SKIPPING_NEWEST = _claim(_PICK_PASSING).format(
    ready="ready_at", skip=_NOT_SKIPPED, order="DESC"
)
CLAIM_TAKE_FLUSH_SKIPPING_NEWEST = _claim(_PICK_PASSING).format(
    ready="send_at", skip=_NOT_SKIPPED, order="DESC"
)
#: The hand-off (:func:`.transactions.submit_claiming`): the new message's recipients
#: routed to one transport and ready now, claimed under one new token.
CLAIM_OF_MESSAGE = (
    "WITH token AS (SELECT nextval('recipient_claims') AS n) "
    "UPDATE recipients AS r SET state = 'active', owner = %(owner)s, "
    "lease_until = %(until)s, updated_at = %(now)s, claim = token.n "
    "FROM token WHERE r.message_id = %(id)s AND r.state = 'queued' "
    "AND r.route = %(route)s AND r.ready_at <= %(now)s "
    "RETURNING " + _RETURNING_RECIPIENT
)
#: :data:`CLAIM_OF_MESSAGE` in a submission's own implicit transaction: only when the
#: stored message is the submission (its fingerprint), never one that had the id first.
CLAIM_OF_SUBMITTED = (
    "WITH token AS (SELECT nextval('recipient_claims') AS n) "
    "UPDATE recipients AS r SET state = 'active', owner = %(owner)s, "
    "lease_until = %(until)s, updated_at = %(now)s, claim = token.n "
    "FROM token WHERE r.message_id = %(id)s AND r.state = 'queued' "
    "AND r.route = %(route)s AND r.ready_at <= %(now)s "
    "AND EXISTS (SELECT 1 FROM messages AS m WHERE m.id = %(id)s "
    "AND m.fingerprint = %(fingerprint)s) "
    "RETURNING " + _RETURNING_RECIPIENT
)
COUNT_READY = (
    "SELECT count(DISTINCT message_id) AS n FROM recipients "
    "WHERE state = 'queued' AND route = %s AND ready_at <= %s"
)
COUNT_FLUSH = (
    "SELECT count(DISTINCT message_id) AS n FROM recipients "
    "WHERE state = 'queued' AND route = %s AND send_at <= %s"
)
#: The earliest ready time of a transport's queue: the first row of each priority's
#: range of the queue index (a ``min`` over the transport read all of its rows, 10 ms
#: a call with 50,000 waiting for a retry; lanes ask after every empty claim).
NEXT_READY = (
    "SELECT min(x.t) AS t FROM (VALUES "
    + ", ".join(f"({int(p)})" for p in Priority)
    + ") AS p(priority) CROSS JOIN LATERAL (SELECT ready_at AS t FROM recipients "
    "WHERE state = 'queued' AND route = %s AND priority = p.priority "
    "ORDER BY ready_at LIMIT 1) AS x"
)

#: QUEUED recipients of one transport still waiting for their retry time (a flush).
SELECT_RETRYING = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state = 'queued' AND route = %s AND retry_at > %s "
    "ORDER BY message_id, idx FOR UPDATE"
)

# -- leases -------------------------------------------------------------------------

SELECT_LEASE_EXPIRED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state = 'active' AND lease_until < %s "
    "ORDER BY message_id, idx FOR UPDATE SKIP LOCKED"
)
SELECT_LEASED_BY = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state = 'active' AND owner = %s ORDER BY message_id, idx FOR UPDATE"
)
#: An owner's claims of one transport leased until a bound (release_lost_claims:
#: those it still holds are kept).
SELECT_LOST_CLAIMS = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state = 'active' AND lease_until <= %s AND owner = %s AND route = %s "
    "ORDER BY message_id, idx FOR UPDATE"
)

# -- expiry and deferral ------------------------------------------------------------

SELECT_EXPIRED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state IN ('queued', 'parked', 'held') AND expires_at <= %s "
    "ORDER BY expires_at LIMIT %s"
)
SELECT_PARKED = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE state = 'parked' AND route = %s ORDER BY message_id, idx FOR UPDATE"
)
SELECT_PARKED_OF_MESSAGE = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients "
    "WHERE message_id = %s AND state = 'parked' AND route = %s ORDER BY idx FOR UPDATE"
)

# -- counters -----------------------------------------------------------------------

SELECT_COUNTS = "SELECT state, sum(n) AS n FROM recipient_counts GROUP BY state"

# -- inbox and profile --------------------------------------------------------------

INSERT_INBOX = (
    "INSERT INTO inbox (id, transport, sender, recipients, received_at, size, subject, "
    "remote_id, meta, blob_id) VALUES (%(id)s, %(transport)s, %(sender)s, %(recipients)s, "
    "%(received_at)s, %(size)s, %(subject)s, %(remote_id)s, %(meta)s, %(blob_id)s)"
)
SELECT_INBOX_ENTRY = f"SELECT {INBOX_COLUMNS} FROM inbox WHERE id = %s"
SELECT_INBOX_AFTER = f"SELECT {INBOX_COLUMNS} FROM inbox WHERE id > %s ORDER BY id LIMIT %s"
SELECT_PROFILE = "SELECT key, value FROM profile WHERE section = %s"
UPSERT_PROFILE = (
    "INSERT INTO profile (section, key, value) VALUES (%s, %s, %s) "
    "ON CONFLICT (section, key) DO UPDATE SET value = excluded.value"
)
DELETE_PROFILE = "DELETE FROM profile WHERE section = %s AND key = %s"

# -- wake-ups -----------------------------------------------------------------------

#: The channel a store NOTIFYs when recipients become claimable (payload: transport).
CHANNEL = "spoolbox_work"
NOTIFY = "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p"
