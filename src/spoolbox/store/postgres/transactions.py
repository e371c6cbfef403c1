"""The PostgreSQL store's operations as async functions, one per operation.

Each takes a connection already inside the right transaction (see
:data:`spoolbox.store.operations.OPERATIONS` and :mod:`.connection`) and does the
whole operation in it; none commits.  They read and write rows with the SQLite
store's row functions (:mod:`spoolbox.store.sqlite.rows`: one encoding for both) and
decide with the shared rules (:mod:`spoolbox.store.rules`).  Each function returns,
besides its result where it has one, nothing about wake-ups: the caller knows from
the operation which transports may have new work (:mod:`.store`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from ...model import (
    TERMINAL,
    MessageInfo,
    MessageState,
    MessageSummary,
    NewMessage,
    RecipientRecord,
    RecipientState,
    check_transition,
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
from ..sqlite.rows import (
    inbox_from_row,
    inbox_params,
    message_from_row,
    recipient_from_row,
    recipient_params,
)
from . import queries as _q
from . import schema
from .arrays import text_array
from .connection import AfterCommit
from .purge import delete_message
from .submits import (
    PREFETCH_LIMIT,
    SubmitCall,
    handed_off,
    handoff_params,
    submission_params,
)
from .wakeups import ANY, ROUTE, notify, payloads

#: Recipient rows a claim locks per message it wants (a message has several).
_ROWS_PER_MESSAGE: Final = 4
#: How many queued recipients of the destinations a claim passes over it reads at
#: most from each end of a priority's ready queue (as the SQLite store's
#: :data:`spoolbox.store.sqlite.transactions.PASS_OVER_LIMIT`).
PASS_OVER_LIMIT: Final = 20_000
_PAGE: Final = 200  # messages read per query while filtering a listing by state

_R = RecipientState
Conn = AsyncConnection[DictRow]
#: Profile values per key as JSON text, None to delete (:func:`.rows.encode_profile`).
Encoded = Mapping[str, str | None]


async def _one(conn: Conn, query: Any, params: Any = None) -> DictRow | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def _all(conn: Conn, query: Any, params: Any = None) -> list[DictRow]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


# -- submission ------------------------------------------------------------------------


async def submit(
    conn: Conn,
    message: NewMessage,
    *,
    now: float,
    lifetime: float,
    routes: Sequence[str | None] | None = None,
) -> MessageInfo:
    """Insert a message (or recognise it again); used by settle (its reports) and by
    a group of submits that failed together (each alone, :mod:`.submits`).

    Refuses (StoreError) before writing anything that would stay.  One statement
    (:data:`.queries.INSERT_SUBMISSION`); a second and third only when the id exists."""
    call = SubmitCall(message, now, lifetime, routes)
    info = rules.accepted(message, now=now, lifetime=lifetime)
    row = await _one(conn, _q.INSERT_SUBMISSION, submission_params(call, info))
    if row is None:  # pragma: no cover - the statement returns its one row
        raise StoreError("PostgreSQL did not return the id of a new content row")
    if int(row["inserted"]):
        return info
    # The id exists (another node may have committed it first): compare.
    await conn.execute("DELETE FROM blobs WHERE id = %s", (int(row["blob_id"]),))
    existing = await _one(conn, _q.SELECT_MESSAGE, (message.id,))
    if existing is None:  # pragma: no cover - the conflict means the row exists
        raise StoreError(f"message {message.id!r} vanished while it was being stored")
    if bytes(existing["fingerprint"]) != rules.fingerprint(message):
        raise StoreError(f"message id {message.id!r} is already used by a different message")
    return message_from_row(existing)


async def submit_claiming(conn: Conn, call: SubmitCall) -> tuple[MessageInfo, ClaimedJob | None]:
    """:func:`submit`, then, in the same transaction, claim the message's recipients
    routed to the hand-off's transport and ready at ``now`` for its owner (the
    hand-off to a free lane: no claim transaction, no wake-up round trip).  One
    statement more."""
    h = call.handoff
    if h is None:
        raise ValueError("submit_claiming needs a hand-off")
    info = await submit(
        conn, call.message, now=call.now, lifetime=call.lifetime, routes=call.routes
    )
    rows = await _all(conn, _q.CLAIM_OF_MESSAGE, handoff_params(call, h))
    return info, handed_off(call, info, rows)


async def submit_many(
    conn: Conn,
    messages: Sequence[NewMessage],
    *,
    now: float,
    lifetime: float,
    routes: Sequence[Sequence[str | None] | None] | None = None,
) -> list[MessageInfo]:
    plan = submission_plan(messages, routes)
    return [await submit(conn, m, now=now, lifetime=lifetime, routes=r) for m, r in plan]


# -- routing ---------------------------------------------------------------------------


async def unrouted(
    conn: Conn, *, limit: int, after: tuple[str, int] | None = None
) -> list[RecipientRecord]:
    mid, idx = after if after is not None else ("", -1)
    rows = await _all(conn, _q.SELECT_UNROUTED, (mid, idx, max(0, limit)))
    return [recipient_from_row(r) for r in rows]


async def assign_routes(conn: Conn, assignments: Sequence[tuple[str, int, str]]) -> None:
    ordered = sorted(assignments, key=lambda a: (a[0], a[1]))
    async with conn.cursor() as c:
        await c.executemany(_q.ASSIGN_ROUTE, [(t, mid, idx) for mid, idx, t in ordered])
    await notify(conn, {t for _, _, t in ordered})


async def reroute_missing(
    conn: Conn, known: Sequence[str], limited: Mapping[str, RecipientCheck]
) -> int:
    moved = [
        recipient_from_row(row)
        for row in await _all(conn, _q.SELECT_ROUTED_ELSEWHERE, (list(known),))
    ]
    if limited:  # (only the rows of the transports limited to domains are read)
        rows = await _all(conn, _q.SELECT_ROUTED_TO, (sorted(limited),))
        moved += [
            r
            for r in map(recipient_from_row, rows)
            if (check := limited.get(r.route or "")) is not None and not check(r)
        ]
    held = _HeldCache(conn)
    for r in moved:
        back = _R.HELD if await held(r.message_id) else _R.QUEUED
        await _move(conn, r, replace(r, state=back, route=None))
    if moved:
        await notify(conn, {ROUTE})
    return len(moved)


# -- claims ----------------------------------------------------------------------------


async def claim(
    conn: Conn,
    transport: str,
    *,
    owner: str,
    now: float,
    lease: float,
    limit: int = 1,
    ignore_retry: bool = False,
    skip_destinations: Collection[str] = (),
) -> AfterCommit[list[ClaimedJob]]:
    """Pipelined (:meth:`.connection.Database.run_reading_after_commit`): the pick
    and take (its answer read with the ``BEGIN``'s), then the messages with their
    contents, sent with the ``COMMIT`` and read after it: two waits."""
    until = now + lease
    params: dict[str, object] = {
        "owner": owner,
        "until": until,
        "now": now,
        "route": transport,
        "rows": limit * _ROWS_PER_MESSAGE,
        "limit": limit,
    }
    by_message: dict[str, list[RecipientRecord]] = {}
    rank: dict[str, tuple[int, int]] = {}
    token: dict[str, int] = {}  # one value of the sequence a statement (_q.CLAIM_TAKE_READY)

    def took(rows: list[DictRow], statement: int) -> None:
        for row in rows:
            r = recipient_from_row(row)
            token[r.message_id] = int(row["claim"])
            by_message.setdefault(r.message_id, []).append(r)
            rank[r.message_id] = (statement, int(row["pick_rank"]))

    if skip_destinations:
        # Passing over some destinations: from the oldest end of the ready queue,
        # then, when that found too little, from the newest (PASS_OVER_LIMIT).
        params["skip"] = text_array(sorted(skip_destinations))
        params["window"] = PASS_OVER_LIMIT
        params["taken"] = text_array(())
        sql = _q.CLAIM_TAKE_FLUSH_SKIPPING if ignore_retry else _q.CLAIM_TAKE_READY_SKIPPING
        took(await _all(conn, sql, params), 0)
        if len(by_message) < limit:
            more = limit - len(by_message)
            params["limit"] = more
            params["rows"] = more * _ROWS_PER_MESSAGE
            params["taken"] = text_array(by_message)  # one job a message, one token
            sql = (
                _q.CLAIM_TAKE_FLUSH_SKIPPING_NEWEST
                if ignore_retry
                else _q.CLAIM_TAKE_READY_SKIPPING_NEWEST
            )
            took(await _all(conn, sql, params), 1)
    else:
        sql = _q.CLAIM_TAKE_FLUSH if ignore_retry else _q.CLAIM_TAKE_READY
        took(await _all(conn, sql, params), 0)
    if not by_message:
        return AfterCommit(_nothing)
    messages = conn.cursor()
    await messages.execute(
        _q.SELECT_MESSAGES_WITH_CONTENT, {"ids": text_array(by_message), "prefetch": PREFETCH_LIMIT}
    )

    async def jobs() -> list[ClaimedJob]:
        infos: dict[str, DictRow] = {}
        chunks: dict[str, list[bytes]] = {}
        for row in await messages.fetchall():
            mid = str(row["id"])
            infos.setdefault(mid, row)
            if row["chunk"] is not None:
                chunks.setdefault(mid, []).append(bytes(row["chunk"]))
        out: list[ClaimedJob] = []
        for mid in sorted(by_message, key=rank.__getitem__):
            claimed = tuple(sorted(by_message[mid], key=lambda r: r.index))
            content = b"".join(chunks[mid]) if mid in chunks else None
            info = message_from_row(infos[mid])
            out.append(
                ClaimedJob(info, claimed, transport, owner, until, content, claim=token[mid])
            )
        return out

    return AfterCommit(jobs)


async def _nothing() -> list[ClaimedJob]:
    return []


async def renew(conn: Conn, job: ClaimedJob, *, now: float, lease: float) -> ClaimedJob:
    until = now + lease
    for r in job.recipients:
        row = await _one(conn, _q.SELECT_RECIPIENT_FOR_UPDATE, (r.message_id, r.index))
        if row is None:
            raise UnknownMessage(f"no recipient {r.message_id}#{r.index}")
        state, holder, held = _R(row["state"]), row["owner"], row["claim"]
        rules.lease_kept(
            r.message_id, r.index, state, holder, held, owner=job.owner, claim=job.claim
        )
    async with conn.cursor() as c:
        await c.executemany(
            _q.RENEW_LEASE,
            [(until, r.message_id, r.index, job.owner, job.claim) for r in job.recipients],
        )
    return replace(job, lease_until=until)


async def settle(
    conn: Conn,
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
    # FOR SHARE: a hold or release of this message waits until the settle is done.
    info = message_from_row(await _message_row(conn, message_id, _q.SELECT_MESSAGE_FOR_SHARE))
    current = {
        int(row["idx"]): row
        for row in await _all(conn, _q.SELECT_RECIPIENTS_FOR_UPDATE, (message_id,))
    }
    # Check everything first; an error anywhere rolls the whole transaction back.
    for u in updates:
        row = current.get(u.index)
        if row is None:
            raise StoreError(f"{message_id} has no recipient #{u.index}")
        state, holder, held = _R(row["state"]), row["owner"], row["claim"]
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
    recs: dict[int, RecipientRecord] = {}
    for u in updates:
        r = recs.get(u.index) or recipient_from_row(current[u.index])
        recs[u.index] = rules.settled(r, u, now=now, held=info.held)
    for rep in reports:
        await submit(conn, rep, now=now, lifetime=info.expires_at - info.submitted_at)
    for inbound in inbox_reports:
        await _insert_inbound(conn, inbound)
    # Kept for no time: the settle that finishes the message deletes it (its reports
    # are in above), from the rows it locked: one statement, and nothing of the
    # recipients it deletes written before.
    after = (recs[i].state if i in recs else _R(row["state"]) for i, row in current.items())
    if retention.dropped(after, drop_finished):
        await delete_message(conn, message_id)
        return info
    async with conn.cursor() as c:  # one round trip for all of them
        await c.executemany(
            _q.UPDATE_RECIPIENT,
            [recipient_params(r, owner=None, lease_until=None) for r in recs.values()],
        )
    # Recipients back in the queue and ready now may be another node's work.
    await notify(
        conn, payloads(r.route for r in recs.values() if r.state is _R.QUEUED and r.retry_at <= now)
    )
    return info


async def release_expired(conn: Conn, *, now: float) -> int:
    return await _unlease(conn, await _all(conn, _q.SELECT_LEASE_EXPIRED, (now,)), now)


async def release_owner(conn: Conn, owner: str) -> int:
    return await _unlease(conn, await _all(conn, _q.SELECT_LEASED_BY, (owner,)), None)


async def release_lost_claims(
    conn: Conn,
    owner: str,
    transport: str,
    leased_until: float,
    keep: Collection[tuple[str, int]],
) -> int:
    rows = await _all(conn, _q.SELECT_LOST_CLAIMS, (leased_until, owner, transport))
    return await _unlease(
        conn, (r for r in rows if (r["message_id"], r["claim"]) not in keep), None
    )


async def _notify_if(conn: Conn, n: int, what: str) -> int:
    """Announce ``what`` when ``n`` recipients changed; returns ``n``."""
    if n:
        await notify(conn, {what})
    return n


async def retry_transport(conn: Conn, transport: str, *, now: float) -> int:
    rows = await _all(conn, _q.SELECT_RETRYING, (transport, now))
    for row in rows:
        r = recipient_from_row(row)
        await _move(conn, r, replace(r, retry_at=0.0))
    return await _notify_if(conn, len(rows), transport)


async def count_claimable(conn: Conn, transport: str, *, now: float, ignore_retry: bool) -> int:
    row = await _one(conn, _q.COUNT_FLUSH if ignore_retry else _q.COUNT_READY, (transport, now))
    return int(row["n"]) if row is not None else 0


async def next_ready_at(conn: Conn, transport: str) -> float | None:
    row = await _one(conn, _q.NEXT_READY, (transport,))
    return None if row is None or row["t"] is None else float(row["t"])


async def expired(conn: Conn, *, now: float, limit: int) -> list[RecipientRecord]:
    rows = await _all(conn, _q.SELECT_EXPIRED, (now, max(0, limit)))
    return [recipient_from_row(r) for r in rows]


# -- deferral and user operations ------------------------------------------------------


async def unpark(conn: Conn, transport: str, message_id: str | None, *, now: float) -> int:
    if message_id is None:
        rows = await _all(conn, _q.SELECT_PARKED, (transport,))
    else:
        await _message_row(conn, message_id, _q.SELECT_MESSAGE_FOR_SHARE)
        rows = await _all(conn, _q.SELECT_PARKED_OF_MESSAGE, (message_id, transport))
    held = _HeldCache(conn)
    for row in rows:
        r = recipient_from_row(row)
        back = _R.HELD if await held(r.message_id) else _R.QUEUED
        await _move(conn, r, replace(r, state=back, retry_at=0.0, updated_at=now))
    return await _notify_if(conn, len(rows), transport)


async def hold(conn: Conn, message_id: str) -> MessageInfo:
    row = await _message_row(conn, message_id, _q.SELECT_MESSAGE_FOR_UPDATE)
    info = replace(message_from_row(row), held=True)
    await conn.execute(_q.SET_HELD, (1, message_id))
    for r in await _recipients_of(conn, message_id, lock=True):
        if r.state in (_R.QUEUED, _R.PARKED):
            await _move(conn, r, replace(r, state=_R.HELD))
    return info


async def release(conn: Conn, message_id: str, *, now: float) -> MessageInfo:
    row = await _message_row(conn, message_id, _q.SELECT_MESSAGE_FOR_UPDATE)
    info = replace(message_from_row(row), held=False)
    await conn.execute(_q.SET_HELD, (0, message_id))
    for r in await _recipients_of(conn, message_id, lock=True):
        if r.state is _R.HELD:
            await _move(conn, r, replace(r, state=_R.QUEUED, retry_at=0.0, updated_at=now))
            await notify(conn, payloads([r.route]))
    return info


async def cancel(conn: Conn, message_id: str) -> list[RecipientRecord]:
    await _message_row(conn, message_id, _q.SELECT_MESSAGE_FOR_UPDATE)
    active: list[RecipientRecord] = []
    for r in await _recipients_of(conn, message_id, lock=True):
        if r.state is _R.ACTIVE:
            active.append(r)
        elif r.state not in TERMINAL:
            cancelled = replace(r, state=_R.CANCELLED, status=None, diagnostic="cancelled by user")
            await _move(conn, r, cancelled)
    return active


async def retry_now(conn: Conn, message_id: str, *, now: float) -> int:
    await _message_row(conn, message_id, _q.SELECT_MESSAGE_FOR_SHARE)
    n = 0
    for r in await _recipients_of(conn, message_id, lock=True):
        if r.state is _R.QUEUED and r.retry_at > now:
            await _move(conn, r, replace(r, retry_at=0.0))
            await notify(conn, payloads([r.route]))
            n += 1
    return n


# -- reading ---------------------------------------------------------------------------


async def get_message(conn: Conn, message_id: str) -> MessageInfo:
    return message_from_row(await _message_row(conn, message_id))


async def recipients(conn: Conn, message_id: str) -> list[RecipientRecord]:
    await _message_row(conn, message_id)
    return await _recipients_of(conn, message_id)


async def read_content(conn: Conn, message_id: str) -> bytes:
    return await _read_blob(conn, await _content_id(conn, message_id))


async def content_chunks(conn: Conn, message_id: str) -> tuple[int, int]:
    """``(content id, number of chunks)`` of a message, to read with :func:`read_chunk`."""
    blob_id = await _content_id(conn, message_id)
    row = await _one(conn, _q.SELECT_BLOB, (blob_id,))
    if row is None:
        raise StoreError(f"content {blob_id} of {message_id} is missing: the store is damaged")
    return blob_id, int(row["chunks"])


async def read_chunk(conn: Conn, blob_id: int, seq: int) -> bytes:
    row = await _one(conn, _q.SELECT_CHUNK, (blob_id, seq))
    if row is None:
        raise StoreError(f"content {blob_id} lacks chunk {seq}: the store is damaged")
    return bytes(row["data"])


async def state_of(conn: Conn, message_id: str, *, now: float) -> MessageState:
    await _message_row(conn, message_id)
    rows = await _all(conn, _q.SELECT_READINESS, (message_id,))
    return rules.queue_of(((_R(r["state"]), float(r["ready_at"])) for r in rows), now)


async def list_messages(
    conn: Conn,
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
        rows = await _all(conn, _q.SELECT_MESSAGES_AFTER, (cursor, page))
        for row in rows:
            info = message_from_row(row)
            rcpts = await _recipients_of(conn, info.id)
            st = rules.queue_of(
                ((r.state, max(float(info.send_at or 0.0), r.retry_at)) for r in rcpts), now
            )
            if state is None or st is state:
                out.append(MessageSummary(info, st, tuple(rcpts)))
                if len(out) >= limit:
                    break
        if len(rows) < page:
            break
        cursor = str(rows[-1]["id"])
    return out


async def counts(conn: Conn) -> dict[RecipientState, int]:
    found = {str(row["state"]): int(row["n"]) for row in await _all(conn, _q.SELECT_COUNTS)}
    return {s: found.get(s.value, 0) for s in RecipientState}


# -- inbox and provider state ----------------------------------------------------------


async def deliver_inbound_many(
    conn: Conn, items: Sequence[tuple[InboundMessage, Mapping[str, Encoded]]]
) -> list[InboxEntry]:
    out: list[InboxEntry] = []
    for message, updates in items:
        out.append(await _insert_inbound(conn, message))
        for section, values in updates.items():
            await profile_update(conn, section, values)
    return out


async def deliver_inbound(
    conn: Conn, message: InboundMessage, *, profile_updates: Mapping[str, Encoded]
) -> InboxEntry:
    [entry] = await deliver_inbound_many(conn, [(message, profile_updates)])
    return entry


async def list_inbox(conn: Conn, *, limit: int = 100, after: str | None = None) -> list[InboxEntry]:
    rows = await _all(
        conn, _q.SELECT_INBOX_AFTER, (after if after is not None else "", max(0, limit))
    )
    return [inbox_from_row(r) for r in rows]


async def read_inbox(conn: Conn, entry_id: str) -> bytes:
    row = await _one(conn, _q.SELECT_INBOX_ENTRY, (entry_id,))
    if row is None:
        raise UnknownMessage(f"no inbox message with id {entry_id!r}")
    return await _read_blob(conn, int(row["blob_id"]))


async def profile_get(conn: Conn, section: str) -> dict[str, JSONValue]:
    rows = await _all(conn, _q.SELECT_PROFILE, (section,))
    return {str(r["key"]): json.loads(r["value"]) for r in rows}


async def profile_update(conn: Conn, section: str, values: Encoded) -> None:
    for key, text in sorted(values.items()):
        if text is None:
            await conn.execute(_q.DELETE_PROFILE, (section, key))
        else:
            await conn.execute(_q.UPSERT_PROFILE, (section, key, text))


# -- statements used by several operations ---------------------------------------------


async def _recipients_of(
    conn: Conn, message_id: str, *, lock: bool = False
) -> list[RecipientRecord]:
    sql = _q.SELECT_RECIPIENTS_FOR_UPDATE if lock else _q.SELECT_RECIPIENTS
    return [recipient_from_row(r) for r in await _all(conn, sql, (message_id,))]


class _HeldCache:
    """Whether a message is held, read once per message within one transaction."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._held: dict[str, bool] = {}

    async def __call__(self, message_id: str) -> bool:
        if message_id not in self._held:
            row = await _message_row(self._conn, message_id, _q.SELECT_MESSAGE_FOR_SHARE)
            self._held[message_id] = bool(row["held"])
        return self._held[message_id]


async def _move(
    conn: Conn,
    old: RecipientRecord,
    new: RecipientRecord,
    *,
    owner: str | None = None,
    lease_until: float | None = None,
    check: bool = True,
) -> None:
    """Write ``new`` over ``old`` (checked against the transition table)."""
    if check and new.state is not old.state:
        check_transition(old.state, new.state, what=f"{old.message_id}#{old.index}")
    await conn.execute(
        _q.UPDATE_RECIPIENT, recipient_params(new, owner=owner, lease_until=lease_until)
    )


async def _unlease(conn: Conn, rows: Iterable[DictRow], now: float | None) -> int:
    """Return leased recipients to QUEUED (HELD if their message is held)."""
    held = _HeldCache(conn)
    n = 0
    for row in rows:
        r = recipient_from_row(row)
        back = _R.HELD if await held(r.message_id) else _R.QUEUED
        await _move(
            conn, r, replace(r, state=back, updated_at=r.updated_at if now is None else now)
        )
        n += 1
    return await _notify_if(conn, n, ANY)


async def _message_row(conn: Conn, message_id: str, query: str = _q.SELECT_MESSAGE) -> DictRow:
    row = await _one(conn, query, (message_id,))
    if row is None:
        raise UnknownMessage(f"no message with id {message_id!r}")
    return row


async def _content_id(conn: Conn, message_id: str) -> int:
    return int((await _message_row(conn, message_id))["blob_id"])


async def _insert_blob(conn: Conn, data: bytes) -> int:
    size = schema.CHUNK_SIZE
    chunks = max(1, -(-len(data) // size))
    row = await _one(conn, _q.INSERT_BLOB, (len(data), chunks))
    if row is None:  # pragma: no cover - INSERT ... RETURNING returns the row
        raise StoreError("PostgreSQL did not return the id of a new content row")
    blob_id = int(row["id"])
    async with conn.cursor() as c:
        await c.executemany(
            _q.INSERT_CHUNK,
            [(blob_id, i, data[i * size : (i + 1) * size]) for i in range(chunks)],
        )
    return blob_id


async def _read_blob(conn: Conn, blob_id: int) -> bytes:
    buffer = io.BytesIO()
    for row in await _all(conn, _q.SELECT_CHUNKS, (blob_id,)):
        buffer.write(row["data"])
    return buffer.getvalue()


async def _insert_inbound(conn: Conn, message: InboundMessage) -> InboxEntry:
    entry, content = new_inbox_entry(message)
    blob_id = await _insert_blob(conn, content)
    await conn.execute(_q.INSERT_INBOX, inbox_params(entry, blob_id=blob_id))
    return entry
