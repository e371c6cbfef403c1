"""The settles of a group in one pipelined transaction (the store's group commit).

A node's lanes settle one message each; the settles that arrive together are
committed together (:meth:`.store.PostgresStore.settle`).  :func:`settle_group` does
a whole group in one transaction that waits for the server twice, however many
messages it holds (:meth:`.connection.Database.run` with ``pipelined`` and
``implicit``: the statements up to the pipeline's sync are one implicit
transaction, no ``BEGIN`` or ``COMMIT``): the reads of every message (``FOR
SHARE``) and recipient (``FOR UPDATE``, in ``(message_id, idx)`` order) in the
first round trip, then every recipient's new row (one statement), the wake-ups and
the deletes of messages kept for no time, committed at the sync, in the second.
Everything is checked and computed before the first write, so a raise commits
nothing but the reads.  The checks and the new rows are
the shared rules' (:mod:`spoolbox.store.rules`), as in :func:`.transactions.settle`;
the new rows go in one ``UPDATE ... FROM unnest(...)`` (one statement, so the
counters' statement trigger runs once for the group, not once per recipient).  The
messages the group finishes and keeps for no time (``drop_finished``) are deleted
in one statement, and nothing of their recipients is written before (as the SQLite
store's settle).

The group is all or nothing.  When a settle of it cannot go this way, because its
check fails (a lease another node holds now, a recipient that is not there), it
carries reports, or its message is in the group twice, :func:`settle_group` raises
:class:`NotAlone` before writing anything, and the store runs the group again one
settle at a time (:func:`.transactions.settle`, each in a savepoint), so that only the
settle that is wrong fails, with its own error.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from ...model import (
    IllegalTransition,
    MessageInfo,
    MessageState,
    NewMessage,
    RecipientRecord,
    RecipientState,
)
from .. import retention, rules
from ..base import InboundMessage, RecipientUpdate, StoreError
from ..sqlite.queries import MESSAGE_COLUMNS, RECIPIENT_COLUMNS
from ..sqlite.rows import message_from_row, recipient_from_row, recipient_params
from . import queries as _q
from .arrays import float_array, int_array, text_array
from .purge import delete_messages
from .wakeups import notify, payloads

__all__ = ["NotAlone", "SettleCall", "groupable", "recipient_arrays", "settle_group"]

Conn = AsyncConnection[DictRow]
_R = RecipientState

_MESSAGES_FOR_SHARE = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY(%s::text[]) ORDER BY id FOR SHARE"
)
_RECIPIENTS_FOR_UPDATE = (
    f"SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ANY(%s::text[]) "
    "ORDER BY message_id, idx FOR UPDATE"
)


@dataclass(frozen=True, slots=True)
class SettleCall:
    """One settle's arguments (``Store.settle``'s)."""

    message_id: str
    updates: Sequence[RecipientUpdate]
    owner: str | None
    now: float
    claim: int | None = None
    reports: Sequence[NewMessage] = ()
    inbox_reports: Sequence[InboundMessage] = ()
    drop_finished: Collection[MessageState] = frozenset()
    restoring: bool = False

    @property
    def plain(self) -> bool:
        """No reports to write with it, nor written again after a failure (its check
        is not the group's): the group path can take it."""
        return not self.reports and not self.inbox_reports and not self.restoring


class NotAlone(Exception):
    """A settle of the group must go alone (see the module docstring)."""


def groupable(calls: Sequence[SettleCall]) -> bool:
    """Whether :func:`settle_group` may take these (none with reports, each message
    once)."""
    return (
        bool(calls)
        and all(c.plain for c in calls)
        and len({c.message_id for c in calls}) == len(calls)
    )


async def settle_group(conn: Conn, calls: Sequence[SettleCall]) -> list[MessageInfo]:
    """Settle every call of ``calls`` (:func:`groupable`) in the caller's pipelined
    transaction; each call's message as it was before.  Raises :class:`NotAlone`
    before writing if a call's check fails."""
    ids = text_array(sorted(c.message_id for c in calls))
    messages_cur = conn.cursor()
    recipients_cur = conn.cursor()
    await messages_cur.execute(_MESSAGES_FOR_SHARE, (ids,))
    await recipients_cur.execute(_RECIPIENTS_FOR_UPDATE, (ids,))
    messages = {str(row["id"]): row for row in await messages_cur.fetchall()}
    current: dict[str, dict[int, DictRow]] = {}
    for row in await recipients_cur.fetchall():
        current.setdefault(str(row["message_id"]), {})[int(row["idx"])] = row
    infos: list[MessageInfo] = []
    new_rows: list[RecipientRecord] = []
    dropped: list[str] = []
    for call in calls:
        message = messages.get(call.message_id)
        if message is None:
            raise NotAlone(call.message_id)
        info = message_from_row(message)
        rows = current.get(call.message_id, {})
        recs = _settled(call, info, rows)
        infos.append(info)
        after = (recs[i].state if i in recs else _R(r["state"]) for i, r in rows.items())
        if retention.dropped(after, call.drop_finished):
            # Kept for no time: deleted below, nothing of its recipients written.
            dropped.append(call.message_id)
        else:
            new_rows.extend(recs.values())
    # Everything is decided before the first write: the store runs a group as an
    # implicit transaction (no BEGIN), which would commit what came before a raise.
    if new_rows:
        # Recipients back in the queue and ready now may be another node's work.
        ready = payloads(r.route for r, call in _with_calls(new_rows, calls) if _ready(r, call.now))
        await conn.execute(_q.UPDATE_RECIPIENTS, recipient_arrays(new_rows))
        await notify(conn, ready)
    if dropped:
        await delete_messages(conn, dropped)
    return infos


def recipient_arrays(rows: Sequence[RecipientRecord]) -> dict[str, str]:
    """:data:`.queries.UPDATE_RECIPIENTS`'s parameters: each column of
    :func:`~spoolbox.store.sqlite.rows.recipient_params` (a settle's: no lease) as
    one array literal (:mod:`.arrays`), a row of each per recipient."""
    params = [recipient_params(r, owner=None, lease_until=None) for r in rows]
    return {key: literal([p[key] for p in params]) for key, literal in _UPDATE_COLUMNS.items()}


# Each column of UPDATE_RECIPIENTS with the literal of its type (its cast there).
_UPDATE_COLUMNS: dict[str, Callable[[list[Any]], str]] = {
    "message_id": text_array,
    "idx": int_array,
    "state": text_array,
    "route": text_array,
    "refused_by": text_array,
    "attempts": int_array,
    "retry_at": float_array,
    "status": text_array,
    "diagnostic": text_array,
    "updated_at": float_array,
    "first_failed_at": float_array,
    "owner": text_array,
    "lease_until": float_array,
    "delay_warned": int_array,
    "claim": int_array,
}


def _settled(
    call: SettleCall, info: MessageInfo, rows: dict[int, DictRow]
) -> dict[int, RecipientRecord]:
    """The call's recipients after it (:func:`.transactions.settle`'s checks and
    rules); NotAlone where a check fails."""
    for u in call.updates:
        row = rows.get(u.index)
        if row is None:
            raise NotAlone(call.message_id)
        try:
            rules.check_settle(
                call.message_id,
                u.index,
                _R(row["state"]),
                row["owner"],
                row["claim"],
                owner=call.owner,
                claim=call.claim,
                target=u.state,
            )
        except (StoreError, IllegalTransition):
            raise NotAlone(call.message_id) from None
    recs: dict[int, RecipientRecord] = {}
    for u in call.updates:
        r = recs.get(u.index) or recipient_from_row(rows[u.index])
        recs[u.index] = rules.settled(r, u, now=call.now, held=info.held)
    return recs


def _with_calls(
    rows: Sequence[RecipientRecord], calls: Sequence[SettleCall]
) -> list[tuple[RecipientRecord, SettleCall]]:
    by_id = {c.message_id: c for c in calls}
    return [(r, by_id[r.message_id]) for r in rows]


def _ready(r: RecipientRecord, now: float) -> bool:
    return r.state is _R.QUEUED and r.retry_at <= now
