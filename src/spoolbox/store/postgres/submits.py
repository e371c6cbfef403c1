"""Submissions in one pipelined transaction (the store's group commit of submits).

The submits that arrive together (:meth:`.store.PostgresStore.submit`, the hand-off's
``submit_claiming``) and the messages of one ``submit_many`` are committed together,
every statement sent before any answer is read (:meth:`.connection.Database.run` with
``pipelined``): each message's one statement (:data:`.queries.INSERT_SUBMISSION`:
content, message, recipients, wake-ups) and, for a hand-off, the claim of its
recipients (it names the message by its id, so it needs no answer first).

* :func:`submit_group_committing`, for the submits that arrive together: no ``BEGIN``
  or ``COMMIT``; the statements are one implicit transaction, committed at the
  pipeline's sync, and the answers are read after it: **one** wait for the server
  however many messages.  The submissions are independent, so nothing has to be
  decided before the commit: a message whose id was already stored inserts nothing
  (its content row is dropped by the statement after it,
  :data:`.queries.DROP_UNUSED_CONTENT`), is then compared with the stored one by its
  fingerprint (the same submission again: the stored info; a different message:
  only its caller fails), and a hand-off claims only recipients of a stored message
  with the submission's fingerprint (:data:`.queries.CLAIM_OF_SUBMITTED`).
* :func:`submit_group`, for ``submit_many`` (all or nothing): between a ``BEGIN`` and
  a ``COMMIT`` sent in the pipeline, the answers read before the ``COMMIT``: two
  waits.  A message whose id is already in the store is recognised by its
  fingerprint in the same transaction (one round trip more); a different message
  under a taken id raises :class:`.settles.NotAlone`, and the store runs the
  messages again one after another so that the error names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow

from ...model import MessageInfo, NewMessage
from .. import rules
from ..base import ClaimedJob, StoreError
from ..sqlite.rows import message_from_row, message_params, recipient_from_row
from . import queries as _q
from . import schema
from .arrays import ByteaChunks, text_array
from .connection import AfterCommit
from .settles import NotAlone
from .wakeups import ROUTE, payloads

__all__ = [
    "PREFETCH_LIMIT",
    "Handoff",
    "SubmitCall",
    "handed_off",
    "handoff_params",
    "submission_params",
    "submit_group",
    "submit_group_committing",
]

Conn = AsyncConnection[DictRow]

#: Messages up to this size are read in the claim's transaction (ClaimedJob.content).
PREFETCH_LIMIT: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class Handoff:
    """Claim the new message's recipients routed to ``transport`` for ``owner``."""

    transport: str
    owner: str
    lease: float


@dataclass(frozen=True, slots=True)
class SubmitCall:
    """One submission's arguments (``Store.submit``'s), and the hand-off if any."""

    message: NewMessage
    now: float
    lifetime: float
    routes: Sequence[str | None] | None = None
    handoff: Handoff | None = None


#: What a call gives: the message's info, or with a hand-off the info and the job.
Outcome = MessageInfo | tuple[MessageInfo, ClaimedJob | None]


#: Per call: the call, its info, its fingerprint, and its statements' cursors.
_Sent = list[
    tuple[SubmitCall, MessageInfo, bytes, AsyncCursor[DictRow], AsyncCursor[DictRow] | None]
]


async def _send(conn: Conn, calls: Sequence[SubmitCall], *, committing: bool) -> _Sent:
    """Each call's statement (and its hand-off's claim), not read yet; ``committing``:
    for :func:`submit_group_committing` (its content row dropped in the same
    transaction if the id was taken, its claim fenced by the fingerprint)."""
    claim_sql = _q.CLAIM_OF_SUBMITTED if committing else _q.CLAIM_OF_MESSAGE
    sent: _Sent = []
    for call in calls:
        info = rules.accepted(call.message, now=call.now, lifetime=call.lifetime)
        params = submission_params(call, info)
        fingerprint: bytes = params["fingerprint"]  # worked out once a submission
        insert = conn.cursor()
        await insert.execute(_q.INSERT_SUBMISSION, params)
        if committing:
            await conn.execute(_q.DROP_UNUSED_CONTENT, {"id": call.message.id})
        claim = None
        if call.handoff is not None:
            claim = conn.cursor()
            claim_params = handoff_params(call, call.handoff)
            await claim.execute(claim_sql, {**claim_params, "fingerprint": fingerprint})
        sent.append((call, info, fingerprint, insert, claim))
    return sent


async def submit_group_committing(
    conn: Conn, calls: Sequence[SubmitCall]
) -> AfterCommit[list[Outcome | StoreError]]:
    """Every call's message in one implicit transaction (``Database.run`` with
    ``implicit``: no ``BEGIN`` or ``COMMIT``, committed at the pipeline's sync), its
    answers read after the commit: one wait for the server, where
    :func:`submit_group` takes two.  The submissions are independent (a group of
    ``Store.submit`` calls), so nothing needs deciding before the commit:

    * a message whose id was already stored inserts nothing, its content row is
      dropped by the next statement (:data:`.queries.DROP_UNUSED_CONTENT`), and
      after the commit the stored message is compared with the submission: the
      same one again (its fingerprint) gives the stored message's info, a different
      one fails only its caller (a StoreError in its place);
    * a hand-off claims only the recipients of a stored message with the
      submission's fingerprint (:data:`.queries.CLAIM_OF_SUBMITTED`): never those of
      a different message that had the id first.

    ``submit_many`` keeps :func:`submit_group`: all its messages or none."""
    sent = await _send(conn, calls, committing=True)

    async def read() -> list[Outcome | StoreError]:
        out: list[Outcome | StoreError] = []
        for call, info, fingerprint, insert, claim in sent:
            row = await insert.fetchone()
            rows = await claim.fetchall() if claim is not None else []
            if row is None:  # pragma: no cover - the statement returns its one row
                out.append(StoreError("PostgreSQL did not return the id of a new content row"))
                continue
            if not int(row["inserted"]):
                stored = await _stored(conn, call.message.id, fingerprint)
                if stored is None:
                    out.append(_refused(call.message))
                    continue
                info = stored
            out.append(info if claim is None else (info, handed_off(call, info, rows)))
        return out

    return AfterCommit(read)


async def _stored(conn: Conn, message_id: str, fingerprint: bytes) -> MessageInfo | None:
    """The stored message with this id if it is the same submission (its
    fingerprint), None if it is a different message."""
    cur = await conn.execute(_q.SELECT_MESSAGE, (message_id,))
    existing = await cur.fetchone()
    if existing is None or bytes(existing["fingerprint"]) != fingerprint:
        return None
    return message_from_row(existing)


def _refused(message: NewMessage) -> StoreError:
    return StoreError(f"message id {message.id!r} is already used by a different message")


async def submit_group(conn: Conn, calls: Sequence[SubmitCall]) -> list[Outcome]:
    """Store every call's message in the caller's pipelined transaction."""
    sent = await _send(conn, calls, committing=False)
    out: list[Outcome] = []
    for call, info, fingerprint, insert, claim in sent:
        row = await insert.fetchone()
        if row is None:  # pragma: no cover - the statement returns its one row
            raise StoreError("PostgreSQL did not return the id of a new content row")
        if not int(row["inserted"]):
            info = await _existing(conn, call.message, fingerprint, int(row["blob_id"]))
        if claim is None:
            out.append(info)
        else:
            out.append((info, handed_off(call, info, await claim.fetchall())))
    return out


def submission_params(call: SubmitCall, info: MessageInfo) -> dict[str, Any]:
    """:data:`.queries.INSERT_SUBMISSION`'s parameters for one submission."""
    message, routes = call.message, call.routes
    data = message.content
    size = schema.CHUNK_SIZE
    send_at = float(info.send_at or 0.0)
    return {
        **message_params(info, fingerprint=rules.fingerprint(message), blob_id=0),
        "content_size": len(data),
        "chunks": max(1, -(-len(data) // size)),
        "data": ByteaChunks([data[i : i + size] for i in range(0, len(data), size)] or [b""]),
        "now": call.now,
        "ready_at": send_at,
        "addresses": text_array(str(a) for a in message.recipients),
        "routes": text_array(routes if routes is not None else [None] * len(message.recipients)),
        "originals": text_array(
            message.originals() if message.original_recipients else [None] * len(message.recipients)
        ),
        "channel": _q.CHANNEL,
        "payloads": text_array(sorted(_wakeups(call, send_at))),
    }


def _wakeups(call: SubmitCall, send_at: float) -> set[str]:
    """Whom the new message's commit wakes: the transports of its recipients (or the
    routers), except the transport of a hand-off whose recipients are ready now: the
    same statement claims all of them for the lane waiting here, so another node (or
    another lane) woken for them would find nothing."""
    wake = payloads(call.routes) if call.routes is not None else {ROUTE}
    if call.handoff is not None and send_at <= call.now:
        wake.discard(call.handoff.transport)
    return wake


async def _existing(
    conn: Conn, message: NewMessage, fingerprint: bytes, blob_id: int
) -> MessageInfo:
    """The stored message with the new one's id: the same submission again (its
    content row, written for nothing, is deleted), or NotAlone (a different message:
    its caller's submit is refused when it goes alone)."""
    info = await _stored(conn, message.id, fingerprint)
    if info is None:
        raise NotAlone(message.id)
    await conn.execute("DELETE FROM blobs WHERE id = %s", (blob_id,))
    return info


def handoff_params(call: SubmitCall, h: Handoff) -> dict[str, Any]:
    """:data:`.queries.CLAIM_OF_MESSAGE`'s parameters: the new message's recipients
    routed to the hand-off's transport, for its owner under its lease."""
    return {
        "owner": h.owner,
        "until": call.now + h.lease,
        "now": call.now,
        "id": call.message.id,
        "route": h.transport,
    }


def handed_off(call: SubmitCall, info: MessageInfo, rows: list[DictRow]) -> ClaimedJob | None:
    """The hand-off's job from the claim's rows (None when nothing was claimed)."""
    h = call.handoff
    if h is None or not rows:
        return None
    claimed = tuple(sorted((recipient_from_row(r) for r in rows), key=lambda r: r.index))
    # The content is the message's own (an existing id was recognised by its fingerprint).
    content = call.message.content if info.size <= PREFETCH_LIMIT else None
    token = int(rows[0]["claim"])
    return ClaimedJob(info, claimed, h.transport, h.owner, call.now + h.lease, content, claim=token)
