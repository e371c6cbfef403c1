"""The SQLite store's operations as plain synchronous functions, one per operation.

Each takes an open connection (:func:`.schema.connect`) already inside the right
transaction (see :data:`spoolbox.store.operations.OPERATIONS`) and does the whole
operation in it; none commits.  The async :class:`~.store.SQLiteStore` sends them to
its thread; a process without an event loop (the client's offline submit) runs them
through :class:`~.connection.StoreFile`.  Arguments that need no database (routes
per message, profile values as JSON) are checked by the caller first.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from spoolbox._quick import quick_init

from ...model import (
    TERMINAL,
    MessageInfo,
    MessageState,
    MessageSummary,
    NewMessage,
    Priority,
    RecipientRecord,
    RecipientState,
    check_transition,
    destination,
)
from .. import retention, rules
from ..base import (
    ClaimedJob,
    InboundMessage,
    InboxEntry,
    JSONValue,
    RecipientCheck,
    RecipientUpdate,
    StoreError,
    UnknownMessage,
    new_inbox_entry,
    submission_plan,
)
from . import queries as _q
from . import schema
from .purge import delete_message
from .rows import (
    MESSAGE_AT,
    RECIPIENT_AT,
    inbox_from_row,
    inbox_params,
    message_from_columns,
    message_params,
    recipient_from_columns,
    recipient_state,
    recipient_values,
)

#: Messages up to this size are read in the claim's transaction (ClaimedJob.content).
PREFETCH_LIMIT: Final = 256 * 1024
_PRIORITIES: Final = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
_PAGE: Final = 200  # messages read per query while filtering a listing by state

_R = RecipientState
# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_QUEUED: Final = _R.QUEUED
_ACTIVE: Final = _R.ACTIVE
# Columns of a recipient's or a message's row, by position (see rows.RECIPIENT_AT).
_STATE, _OWNER, _CLAIM = RECIPIENT_AT["state"], RECIPIENT_AT["owner"], RECIPIENT_AT["claim"]
_BLOB_ID = MESSAGE_AT["blob_id"]
#: Profile values per key as JSON text, None to delete (:func:`.rows.encode_profile`).
Encoded = Mapping[str, str | None]


# -- submission ------------------------------------------------------------------------


@quick_init
@dataclass(frozen=True, slots=True)
class Prepared:
    """A submission with what its rows need worked out before its transaction (no
    database): its envelope and fingerprint.  The caller prepares it, so that the
    store's thread holds SQLite's write lock only for the statements."""

    message: NewMessage
    info: MessageInfo
    fingerprint: bytes

    @classmethod
    def of(cls, message: NewMessage, *, now: float, lifetime: float) -> Prepared:
        return cls(
            message,
            rules.accepted(message, now=now, lifetime=lifetime),
            rules.fingerprint(message),
        )


def submit(
    conn: sqlite3.Connection,
    message: NewMessage,
    *,
    now: float,
    lifetime: float,
    routes: Sequence[str | None] | None = None,
) -> MessageInfo:
    """Insert a message (or recognise it again); used by submit and by settle.

    Refuses (StoreError) before writing anything: callers rely on that.
    """
    prepared = Prepared.of(message, now=now, lifetime=lifetime)
    return submit_prepared(conn, prepared, now=now, routes=routes)


def submit_prepared(
    conn: sqlite3.Connection,
    prepared: Prepared,
    *,
    now: float,
    routes: Sequence[str | None] | None = None,
) -> MessageInfo:
    """:func:`submit` of a message prepared at ``now`` (:meth:`Prepared.of`)."""
    message, info, fingerprint = prepared.message, prepared.info, prepared.fingerprint
    row = conn.execute(_q.SELECT_MESSAGE, (message.id,)).fetchone()
    if row is not None:
        if row["fingerprint"] != fingerprint:
            raise StoreError(f"message id {message.id!r} is already used by a different message")
        return message_from_columns(row)
    blob_id = _insert_blob(conn, message.content)
    conn.execute(_q.INSERT_MESSAGE, message_params(info, fingerprint=fingerprint, blob_id=blob_id))
    send_at = float(info.send_at or 0.0)
    originals = message.originals() if message.original_recipients else None
    conn.executemany(
        _q.INSERT_RECIPIENT,
        (
            (
                info.id,
                i,
                str(a),
                routes[i] if routes is not None else None,
                now,
                int(info.priority),
                send_at,
                send_at,
                info.expires_at,
                originals[i] if originals is not None else None,
            )
            for i, a in enumerate(message.recipients)
        ),
    )
    return info


def submit_many(
    conn: sqlite3.Connection,
    messages: Sequence[NewMessage],
    *,
    now: float,
    lifetime: float,
    routes: Sequence[Sequence[str | None] | None] | None = None,
) -> list[MessageInfo]:
    """Every message in this transaction: a message refused part way undoes the ones
    before it.  ``routes``: one entry per message, as :func:`submit`'s."""
    plan = submission_plan(messages, routes)
    return [submit(conn, m, now=now, lifetime=lifetime, routes=r) for m, r in plan]


# -- routing ---------------------------------------------------------------------------


def unrouted(
    conn: sqlite3.Connection, *, limit: int, after: tuple[str, int] | None = None
) -> list[RecipientRecord]:
    mid, idx = after if after is not None else ("", -1)
    rows = conn.execute(_q.SELECT_UNROUTED, (mid, idx, max(0, limit)))
    return [recipient_from_columns(r) for r in rows]


def assign_routes(conn: sqlite3.Connection, assignments: Sequence[tuple[str, int, str]]) -> None:
    conn.executemany(
        _q.ASSIGN_ROUTE, [(transport, mid, idx) for mid, idx, transport in assignments]
    )


def reroute_missing(
    conn: sqlite3.Connection, known: Sequence[str], limited: Mapping[str, RecipientCheck]
) -> int:
    names = set(known)
    rows = [
        recipient_from_columns(r)
        for sql in (_q.SELECT_ROUTED_QUEUED, _q.SELECT_ROUTED_PARKED)
        for r in conn.execute(sql)
    ]
    held = _HeldCache(conn)
    n = 0
    for r in rows:
        if r.route in names and (r.route not in limited or limited[r.route](r)):
            continue
        back = _R.HELD if held(r.message_id) else _R.QUEUED
        _move(conn, r, replace(r, state=back, route=None))
        n += 1
    return n


# -- claims ----------------------------------------------------------------------------


def claim(
    conn: sqlite3.Connection,
    transport: str,
    *,
    owner: str,
    now: float,
    lease: float,
    limit: int = 1,
    ignore_retry: bool = False,
    skip_destinations: Collection[str] = (),
) -> list[ClaimedJob]:
    rows_sql = _q.CLAIMABLE_OF_MESSAGE_FLUSH if ignore_retry else _q.CLAIMABLE_OF_MESSAGE
    until = now + lease
    skip = frozenset(skip_destinations)
    picked = _pick(conn, transport, now, limit, ignore_retry, skip)
    jobs = [_claim_of(conn, mid, transport, owner, now, until, rows_sql, skip) for mid in picked]
    return [job for job in jobs if job is not None]


#: How many queued recipients of the destinations a claim passes over it reads at
#: most from each end of a priority's ready queue before it stops looking (a lane at
#: its ``destination_concurrency`` with a long queue for one domain): first from the
#: oldest, then, when that found too little, from the newest, where the mail that
#: came after the long queue is.  Mail of other destinations with more than this many
#: passed-over recipients both before and after it waits until that queue is shorter,
#: or its destination has room again.
PASS_OVER_LIMIT: Final = 20_000


def _pick(
    conn: sqlite3.Connection,
    transport: str,
    now: float,
    limit: int,
    ignore_retry: bool,
    skip: frozenset[str],
) -> list[str]:
    """The messages a claim takes: highest priority first, then oldest ready, passing
    over the recipients whose destination is in ``skip`` (see
    :data:`PASS_OVER_LIMIT`)."""
    if skip:
        most = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 8  # 4 are the window's
        condition, skip_args = _q.skipped(sorted(skip), most)
        ready = "send_at" if ignore_retry else "ready_at"
        oldest = _q.CLAIM_PASSING.format(ready=ready, order="", skipped=condition)
        newest = _q.CLAIM_PASSING.format(ready=ready, order="DESC", skipped=condition)
    picked: list[str] = []
    for prio in _PRIORITIES:
        if len(picked) >= limit:
            break
        if not skip:
            sql = _q.CLAIM_FLUSH if ignore_retry else _q.CLAIM_READY
            _scan(conn, sql, (transport, int(prio), now), picked, limit)
            continue
        args = (transport, int(prio), now, PASS_OVER_LIMIT, *skip_args)
        _scan(conn, oldest, args, picked, limit)
        if len(picked) < limit:
            # Then the newest end; what it found taken oldest first after the rest.
            tail: list[str] = []
            _scan(conn, newest, args, tail, limit - len(picked), picked)
            picked.extend(reversed(tail))
    return picked


def _scan(
    conn: sqlite3.Connection,
    sql: str,
    args: tuple[object, ...],
    into: list[str],
    limit: int,
    seen: Collection[str] = (),
) -> None:
    """Add to ``into`` the message ids of ``sql``'s rows, in its order, but for those
    in ``into`` or ``seen``, until it holds ``limit``."""
    cursor = conn.execute(sql, args)
    try:
        for (mid,) in cursor:
            if mid not in into and mid not in seen:
                into.append(mid)
                if len(into) >= limit:
                    break
    finally:
        cursor.close()


def submit_claiming(
    conn: sqlite3.Connection,
    prepared: Prepared,
    *,
    now: float,
    routes: Sequence[str | None] | None,
    transport: str,
    owner: str,
    lease: float,
) -> tuple[MessageInfo, ClaimedJob | None]:
    """:func:`submit_prepared`, then, in the same transaction, claim the message's
    recipients routed to ``transport`` and ready at ``now`` (a hand-off to a free lane:
    no claim transaction of its own).  Refuses (StoreError) before writing anything,
    as :func:`submit`."""
    info = submit_prepared(conn, prepared, now=now, routes=routes)
    job = _claim_of(
        conn, info.id, transport, owner, now, now + lease, _q.CLAIMABLE_OF_MESSAGE, frozenset()
    )
    return info, job


def _claim_of(
    conn: sqlite3.Connection,
    mid: str,
    transport: str,
    owner: str,
    now: float,
    until: float,
    rows_sql: str,
    skip: frozenset[str],
) -> ClaimedJob | None:
    """Claim the recipients ``rows_sql`` finds of one message (None: none), but for
    those whose destination is in ``skip``."""
    mrow = _message_row(conn, mid)
    info = message_from_columns(mrow)
    rows = conn.execute(rows_sql, (mid, transport, now)).fetchall()
    if skip:
        rows = [r for r in rows if destination(r["address"].partition(":")[2]) not in skip]
    if not rows:
        return None
    # The claim token: above every earlier claim's of these recipients (read under
    # the write lock), so a stale claim of any of them is fenced off.
    token = max(int(row[_CLAIM]) for row in rows) + 1
    # ``rows_sql`` reads QUEUED recipients only: QUEUED -> ACTIVE, the lease, the token.
    check_transition(_QUEUED, _ACTIVE)
    claimed = [recipient_from_columns(row, state=_ACTIVE, updated_at=now) for row in rows]
    conn.executemany(
        _q.CLAIM_RECIPIENT, [(now, owner, until, token, mid, r.index) for r in claimed]
    )
    # A small message's content comes with the claim: the transport needs it next, and
    # this saves a store round trip per message.
    content = _read_blob(conn, int(mrow[_BLOB_ID])) if info.size <= PREFETCH_LIMIT else None
    return ClaimedJob(info, tuple(claimed), transport, owner, until, content, claim=token)


def renew(conn: sqlite3.Connection, job: ClaimedJob, *, now: float, lease: float) -> ClaimedJob:
    until = now + lease
    for r in job.recipients:
        row = conn.execute(_q.SELECT_RECIPIENT, (r.message_id, r.index)).fetchone()
        if row is None:
            raise UnknownMessage(f"no recipient {r.message_id}#{r.index}")
        state, holder, held = recipient_state(row["state"]), row["owner"], row["claim"]
        rules.lease_kept(
            r.message_id, r.index, state, holder, held, owner=job.owner, claim=job.claim
        )
    conn.executemany(
        _q.RENEW_LEASE,
        ((until, r.message_id, r.index, job.owner, job.claim) for r in job.recipients),
    )
    return replace(job, lease_until=until)


def settle(
    conn: sqlite3.Connection,
    message_id: str,
    updates: Sequence[RecipientUpdate],
    *,
    owner: str | None,
    now: float,
    claim: int | None = None,
    reports: Sequence[NewMessage] = (),
    inbox_reports: Sequence[InboundMessage] = (),
    drop_finished: Collection[MessageState] = (),
    restoring: bool = False,
) -> MessageInfo:
    mrow = _message_row(conn, message_id)
    info = message_from_columns(mrow)
    # Check everything first; an error anywhere rolls the whole transaction back.
    rows: dict[int, sqlite3.Row] = {}
    for u in updates:
        row = rows.get(u.index)
        if row is None:
            row = conn.execute(_q.SELECT_RECIPIENT, (message_id, u.index)).fetchone()
            if row is None:
                raise StoreError(f"{message_id} has no recipient #{u.index}")
            rows[u.index] = row
        state, holder, held = recipient_state(row[_STATE]), row[_OWNER], row[_CLAIM]
        rules.check_settle(
            message_id,
            u.index,
            state,
            holder,
            held,
            owner=owner,
            claim=claim,
            target=u.state,
            restoring=restoring,
        )
    # Then work out each from the row read above (a second update of the same
    # recipient starts from what the first one gave).
    before: dict[int, RecipientRecord] = {}
    recs: dict[int, RecipientRecord] = {}
    for u in updates:
        r = recs.get(u.index) or recipient_from_columns(rows[u.index])
        before.setdefault(u.index, r)
        recs[u.index] = rules.settled(r, u, now=now, held=info.held)
    for rep in reports:
        submit(conn, rep, now=now, lifetime=info.expires_at - info.submitted_at)
    for inbound in inbox_reports:
        _insert_inbound(conn, inbound)
    # Kept for no time: the settle that finishes the message deletes it (its reports
    # are in above), and writes nothing of the recipients it deletes.  Only read the
    # others when these ones are finished.
    if drop_finished and all(r.state in TERMINAL for r in recs.values()):
        states = [
            recs[r["idx"]].state if r["idx"] in recs else recipient_state(r["state"])
            for r in conn.execute(_q.SELECT_STATES, (message_id,))
        ]
        if retention.dropped(states, drop_finished):
            delete_message(conn, message_id, int(mrow[_BLOB_ID]))
            return info
    for index, rec in recs.items():
        _move(conn, before[index], rec, check=False)
    return info


def release_expired(conn: sqlite3.Connection, *, now: float) -> int:
    return _unlease(conn, conn.execute(_q.SELECT_LEASE_EXPIRED, (now,)).fetchall(), now)


def release_owner(conn: sqlite3.Connection, owner: str) -> int:
    return _unlease(conn, conn.execute(_q.SELECT_LEASED_BY, (owner,)).fetchall(), None)


def release_lost_claims(
    conn: sqlite3.Connection,
    owner: str,
    transport: str,
    leased_until: float,
    keep: Collection[tuple[str, int]],
) -> int:
    rows = conn.execute(_q.SELECT_LOST_CLAIMS, (leased_until, owner, transport)).fetchall()
    return _unlease(conn, (r for r in rows if (r["message_id"], r["claim"]) not in keep), None)


def retry_transport(conn: sqlite3.Connection, transport: str, *, now: float) -> int:
    rows = conn.execute(_q.SELECT_RETRYING, (transport, now)).fetchall()
    for row in rows:
        r = recipient_from_columns(row)
        _move(conn, r, replace(r, retry_at=0.0))
    return len(rows)


def count_claimable(
    conn: sqlite3.Connection, transport: str, *, now: float, ignore_retry: bool
) -> int:
    sql = _q.COUNT_FLUSH if ignore_retry else _q.COUNT_READY
    # A message has one priority, so the per-priority counts add up.
    return sum(int(conn.execute(sql, (transport, int(p), now)).fetchone()[0]) for p in _PRIORITIES)


def next_ready_at(conn: sqlite3.Connection, transport: str) -> float | None:
    found = [
        float(v)
        for p in _PRIORITIES
        if (v := conn.execute(_q.NEXT_READY, (transport, int(p))).fetchone()[0]) is not None
    ]
    return min(found) if found else None


def expired(conn: sqlite3.Connection, *, now: float, limit: int) -> list[RecipientRecord]:
    rows = conn.execute(_q.SELECT_EXPIRED, (now, max(0, limit)))
    return [recipient_from_columns(r) for r in rows]


# -- deferral and user operations ------------------------------------------------------


def unpark(conn: sqlite3.Connection, transport: str, message_id: str | None, *, now: float) -> int:
    if message_id is None:
        rows = conn.execute(_q.SELECT_PARKED, (transport,)).fetchall()
    else:
        get_message(conn, message_id)
        rows = conn.execute(_q.SELECT_PARKED_OF_MESSAGE, (message_id, transport)).fetchall()
    held = _HeldCache(conn)
    for row in rows:
        r = recipient_from_columns(row)
        back = _R.HELD if held(r.message_id) else _R.QUEUED
        _move(conn, r, replace(r, state=back, retry_at=0.0, updated_at=now))
    return len(rows)


def hold(conn: sqlite3.Connection, message_id: str) -> MessageInfo:
    info = replace(get_message(conn, message_id), held=True)
    conn.execute(_q.SET_HELD, (1, message_id))
    for r in _recipients_of(conn, message_id):
        if r.state in (_R.QUEUED, _R.PARKED):
            _move(conn, r, replace(r, state=_R.HELD))
    return info


def release(conn: sqlite3.Connection, message_id: str, *, now: float) -> MessageInfo:
    info = replace(get_message(conn, message_id), held=False)
    conn.execute(_q.SET_HELD, (0, message_id))
    for r in _recipients_of(conn, message_id):
        if r.state is _R.HELD:
            _move(conn, r, replace(r, state=_R.QUEUED, retry_at=0.0, updated_at=now))
    return info


def cancel(conn: sqlite3.Connection, message_id: str) -> list[RecipientRecord]:
    get_message(conn, message_id)
    active: list[RecipientRecord] = []
    for r in _recipients_of(conn, message_id):
        if r.state is _R.ACTIVE:
            active.append(r)
        elif r.state not in TERMINAL:
            cancelled = replace(r, state=_R.CANCELLED, status=None, diagnostic="cancelled by user")
            _move(conn, r, cancelled)
    return active


def retry_now(conn: sqlite3.Connection, message_id: str, *, now: float) -> int:
    get_message(conn, message_id)
    n = 0
    for r in _recipients_of(conn, message_id):
        if r.state is _R.QUEUED and r.retry_at > now:
            _move(conn, r, replace(r, retry_at=0.0))
            n += 1
    return n


# -- reading ---------------------------------------------------------------------------


def get_message(conn: sqlite3.Connection, message_id: str) -> MessageInfo:
    return message_from_columns(_message_row(conn, message_id))


def recipients(conn: sqlite3.Connection, message_id: str) -> list[RecipientRecord]:
    get_message(conn, message_id)
    return _recipients_of(conn, message_id)


def read_content(conn: sqlite3.Connection, message_id: str) -> bytes:
    return _read_blob(conn, _content_id(conn, message_id))


def content_chunks(conn: sqlite3.Connection, message_id: str) -> tuple[int, int]:
    """``(content id, number of chunks)`` of a message, to read with :func:`read_chunk`."""
    blob_id = _content_id(conn, message_id)
    return blob_id, int(conn.execute(_q.SELECT_BLOB, (blob_id,)).fetchone()["chunks"])


def read_chunk(conn: sqlite3.Connection, blob_id: int, seq: int) -> bytes:
    row = conn.execute(_q.SELECT_CHUNK, (blob_id, seq)).fetchone()
    if row is None:
        raise StoreError(f"content {blob_id} lacks chunk {seq}: the store is damaged")
    return bytes(row["data"])


def state_of(conn: sqlite3.Connection, message_id: str, *, now: float) -> MessageState:
    get_message(conn, message_id)
    rows = conn.execute(_q.SELECT_READINESS, (message_id,))
    return rules.queue_of(((recipient_state(r["state"]), float(r["ready_at"])) for r in rows), now)


def list_messages(
    conn: sqlite3.Connection,
    *,
    state: MessageState | None = None,
    limit: int = 100,
    after: str | None = None,
    now: float,
) -> list[MessageSummary]:
    out: list[MessageSummary] = []
    cursor = after if after is not None else ""
    while len(out) < limit:
        page = min(_PAGE, limit) if state is None else _PAGE
        rows = conn.execute(_q.SELECT_MESSAGES_AFTER, (cursor, page)).fetchall()
        for row in rows:
            info = message_from_columns(row)
            rcpts = _recipients_of(conn, info.id)
            st = rules.queue_of(
                ((r.state, max(float(info.send_at or 0.0), r.retry_at)) for r in rcpts), now
            )
            if state is None or st is state:
                out.append(MessageSummary(info, st, tuple(rcpts)))
                if len(out) >= limit:
                    break
        if len(rows) < page:
            break
        cursor = rows[-1]["id"]
    return out


def counts(conn: sqlite3.Connection) -> dict[RecipientState, int]:
    found = {row["state"]: int(row["n"]) for row in conn.execute(_q.SELECT_COUNTS)}
    return {s: found.get(s.value, 0) for s in RecipientState}


# -- inbox and provider state ----------------------------------------------------------


def deliver_inbound_many(
    conn: sqlite3.Connection, items: Sequence[tuple[InboundMessage, Mapping[str, Encoded]]]
) -> list[InboxEntry]:
    """Each inbound message with its provider's profile updates, in order."""
    out: list[InboxEntry] = []
    for message, updates in items:
        out.append(_insert_inbound(conn, message))
        for section, values in updates.items():
            profile_update(conn, section, values)
    return out


def deliver_inbound(
    conn: sqlite3.Connection, message: InboundMessage, *, profile_updates: Mapping[str, Encoded]
) -> InboxEntry:
    [entry] = deliver_inbound_many(conn, [(message, profile_updates)])
    return entry


def list_inbox(
    conn: sqlite3.Connection, *, limit: int = 100, after: str | None = None
) -> list[InboxEntry]:
    rows = conn.execute(_q.SELECT_INBOX_AFTER, (after if after is not None else "", max(0, limit)))
    return [inbox_from_row(r) for r in rows]


def read_inbox(conn: sqlite3.Connection, entry_id: str) -> bytes:
    row = conn.execute(_q.SELECT_INBOX_ENTRY, (entry_id,)).fetchone()
    if row is None:
        raise UnknownMessage(f"no inbox message with id {entry_id!r}")
    return _read_blob(conn, int(row["blob_id"]))


def profile_get(conn: sqlite3.Connection, section: str) -> dict[str, JSONValue]:
    rows = conn.execute(_q.SELECT_PROFILE, (section,))
    return {str(r["key"]): json.loads(r["value"]) for r in rows}


def profile_update(conn: sqlite3.Connection, section: str, values: Encoded) -> None:
    for key, text in values.items():
        if text is None:
            conn.execute(_q.DELETE_PROFILE, (section, key))
        else:
            conn.execute(_q.UPSERT_PROFILE, (section, key, text))


# -- statements used by several operations ---------------------------------------------


def _recipients_of(conn: sqlite3.Connection, message_id: str) -> list[RecipientRecord]:
    return [recipient_from_columns(r) for r in conn.execute(_q.SELECT_RECIPIENTS, (message_id,))]


class _HeldCache:
    """Whether a message is held, read once per message within one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._held: dict[str, bool] = {}

    def __call__(self, message_id: str) -> bool:
        if message_id not in self._held:
            self._held[message_id] = get_message(self._conn, message_id).held
        return self._held[message_id]


def _move(
    conn: sqlite3.Connection,
    old: RecipientRecord,
    new: RecipientRecord,
    *,
    check: bool = True,
) -> None:
    """Write ``new`` over ``old`` (checked against the transition table), leased to
    nobody and with the claim token kept: a claim writes its lease and token itself
    (``CLAIM_RECIPIENT``), not through here."""
    if check and new.state is not old.state:
        check_transition(old.state, new.state, what=f"{old.message_id}#{old.index}")
    values = recipient_values(new, owner=None, lease_until=None)
    conn.execute(_q.UPDATE_RECIPIENT, values)


def _unlease(conn: sqlite3.Connection, rows: Iterable[sqlite3.Row], now: float | None) -> int:
    """Return leased recipients to QUEUED (HELD if their message is held)."""
    held = _HeldCache(conn)
    n = 0
    for row in rows:
        r = recipient_from_columns(row)
        back = _R.HELD if held(r.message_id) else _R.QUEUED
        _move(conn, r, replace(r, state=back, updated_at=r.updated_at if now is None else now))
        n += 1
    return n


def _message_row(conn: sqlite3.Connection, message_id: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(_q.SELECT_MESSAGE, (message_id,)).fetchone()
    if row is None:
        raise UnknownMessage(f"no message with id {message_id!r}")
    return row


def _content_id(conn: sqlite3.Connection, message_id: str) -> int:
    return int(_message_row(conn, message_id)["blob_id"])


def _insert_blob(conn: sqlite3.Connection, data: bytes) -> int:
    size = schema.CHUNK_SIZE
    chunks = max(1, -(-len(data) // size))
    blob_id = conn.execute(_q.INSERT_BLOB, (len(data), chunks)).lastrowid
    if blob_id is None:  # pragma: no cover - sqlite always reports the rowid of an INSERT
        raise StoreError("sqlite did not report the id of a new content row")
    conn.executemany(
        _q.INSERT_CHUNK, ((blob_id, i, data[i * size : (i + 1) * size]) for i in range(chunks))
    )
    return blob_id


def _read_blob(conn: sqlite3.Connection, blob_id: int) -> bytes:
    """The whole content, held once: the chunks go into one growing buffer whose bytes
    ``getvalue`` hands over without a copy (``b"".join`` would hold every chunk and
    the joined copy at once: twice the message)."""
    buffer = io.BytesIO()
    for row in conn.execute(_q.SELECT_CHUNKS, (blob_id,)):
        buffer.write(row[0])  # SELECT data
    return buffer.getvalue()


def _insert_inbound(conn: sqlite3.Connection, message: InboundMessage) -> InboxEntry:
    entry, content = new_inbox_entry(message)
    conn.execute(_q.INSERT_INBOX, inbox_params(entry, blob_id=_insert_blob(conn, content)))
    return entry
