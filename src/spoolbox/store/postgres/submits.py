"""Submissions in one pipelined transaction (the store's group commit of submits).

The submits that arrive together (:meth:`.store.PostgresStore.submit`, the hand-off's
``submit_claiming``) and the messages of one ``submit_many`` are committed together.
:func:`submit_group` sends them all before it reads any answer
(:meth:`.connection.Database.run` with ``pipelined``): the ``BEGIN``, each message's
one statement (:data:`.queries.INSERT_SUBMISSION`: content, message, recipients,
wake-ups), for a hand-off the claim of its recipients (:data:`.queries.CLAIM_OF_MESSAGE`,
which names the message by its id, so it needs no answer first), then it reads the
answers (one round trip) and the ``COMMIT`` is the second.  Two waits for the server
however many messages, where one statement after another waited once per message.

A message whose id is already in the store (a submission repeated after a lost
answer, or another node's) is recognised by its fingerprint, as
:func:`.transactions.submit` does, in the same transaction (one round trip more).  A
submission refused (the id taken by a different message) fails only its caller: the
group is rolled back and run again one submission at a time, each in a savepoint
(:class:`.settles.NotAlone`, as settles do).
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


async def submit_group(conn: Conn, calls: Sequence[SubmitCall]) -> list[Outcome]:
    """Store every call's message in the caller's pipelined transaction."""
    sent: list[tuple[SubmitCall, MessageInfo, AsyncCursor[DictRow], AsyncCursor[DictRow] | None]]
    sent = []
    for call in calls:
        info = rules.accepted(call.message, now=call.now, lifetime=call.lifetime)
        insert = conn.cursor()
        await insert.execute(_q.INSERT_SUBMISSION, submission_params(call, info))
        claim = None
        if call.handoff is not None:
            claim = conn.cursor()
            await claim.execute(_q.CLAIM_OF_MESSAGE, handoff_params(call, call.handoff))
        sent.append((call, info, insert, claim))
    out: list[Outcome] = []
    for call, info, insert, claim in sent:
        row = await insert.fetchone()
        if row is None:  # pragma: no cover - the statement returns its one row
            raise StoreError("PostgreSQL did not return the id of a new content row")
        if not int(row["inserted"]):
            info = await _existing(conn, call.message, int(row["blob_id"]))
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
        "data": [data[i : i + size] for i in range(0, len(data), size)] or [b""],
        "now": call.now,
        "ready_at": send_at,
        "addresses": [str(a) for a in message.recipients],
        "routes": list(routes) if routes is not None else [None] * len(message.recipients),
        "channel": _q.CHANNEL,
        "payloads": sorted(payloads(routes) if routes is not None else {ROUTE}),
    }


async def _existing(conn: Conn, message: NewMessage, blob_id: int) -> MessageInfo:
    """The stored message with the new one's id: the same submission again (its
    content row, written for nothing, is deleted), or NotAlone (a different message:
    its caller's submit is refused when it goes alone)."""
    cur = await conn.execute(_q.SELECT_MESSAGE, (message.id,))
    existing = await cur.fetchone()
    if existing is None or bytes(existing["fingerprint"]) != rules.fingerprint(message):
        raise NotAlone(message.id)
    await conn.execute("DELETE FROM blobs WHERE id = %s", (blob_id,))
    return message_from_row(existing)


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
