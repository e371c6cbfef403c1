"""Rows of the SQLite store <-> the frozen domain values (:mod:`spoolbox.model`).

``*_from_row`` builds a value from a row that has the columns of one of the
``*_COLUMNS`` lists of :mod:`.queries`, by name, and ``*_from_columns`` from a row of
a query that selects the list first (the SQLite store's), by position; ``*_params``
gives the named parameters that write one.  The encodings live here and nowhere
else: addresses as text, lists and maps as JSON text, flags as 0/1.
``return_content`` (RFC 3461 RET, NULL when not given) is written as a Python bool,
which SQLite keeps as 1/0 and PostgreSQL's BOOLEAN column takes as it is; it reads
back as a bool from either.
"""

from __future__ import annotations

import functools
import json
import operator
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from ...model import Address, MessageInfo, Notify, Priority, RecipientRecord, RecipientState
from ..base import InboxEntry, JSONValue, StoreError
from .queries import MESSAGE_COLUMNS, RECIPIENT_COLUMNS

__all__ = [
    "MESSAGE_AT",
    "RECIPIENT_AT",
    "RECIPIENT_KEYS",
    "Row",
    "encode_profile",
    "inbox_from_row",
    "inbox_params",
    "message_from_columns",
    "message_from_row",
    "message_params",
    "recipient_from_columns",
    "recipient_from_row",
    "recipient_params",
    "recipient_state",
    "recipient_values",
]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_ACTIVE: Final = RecipientState.ACTIVE


class Row(Protocol):
    """A row with its columns by name (:class:`sqlite3.Row` is one)."""

    def __getitem__(self, key: str, /) -> Any: ...


@functools.lru_cache(maxsize=4096)
def _stored_address(text: str) -> Address:
    """An address as the store keeps it (checked when it was submitted), parsed once:
    a message's sender and its recipients are read at the claim and again at the
    settle, in the store's one thread.  Address is frozen: one value serves all."""
    return Address.parse(text, strict=False)


# The enums by value, looked up once per value (an enum call is a Python function).
_priority = functools.lru_cache(maxsize=None)(Priority)
_notify = functools.lru_cache(maxsize=None)(Notify)
#: A recipient's state from its column's value (the store's transactions check it too).
recipient_state: Final = functools.lru_cache(maxsize=None)(RecipientState)


class _Columns:
    """A column list of :mod:`.queries` (``MESSAGE_COLUMNS`` ...): a row's values in
    that list's order, by name (:meth:`by_name`: any row, the PostgreSQL store's dicts
    and ``SELECT *`` rows included) or by position (:meth:`by_position`: a row of a
    query that selects the list first, in that order, as every query of the SQLite
    store that reads one does; a test pins it).  A :class:`sqlite3.Row` looks a name up
    by comparing it with each column's in turn, ignoring case: a claim and a settle
    made about sixty lookups, 4% of the daemon's instructions a message
    (docs/benchmarks.md, "Session 40")."""

    __slots__ = ("at", "by_name", "count")

    def __init__(self, columns: str) -> None:
        names = tuple(name.strip() for name in columns.split(","))
        self.by_name: Callable[[Row], Sequence[Any]] = operator.itemgetter(*names)
        self.count = len(names)
        #: Each column's position in such a row.
        self.at: Mapping[str, int] = {name: i for i, name in enumerate(names)}

    def by_position(self, row: sqlite3.Row) -> Sequence[Any]:
        return row[: self.count]


_MESSAGE = _Columns(MESSAGE_COLUMNS)
_RECIPIENT = _Columns(RECIPIENT_COLUMNS)
#: A column's position in a row read with ``MESSAGE_COLUMNS`` / ``RECIPIENT_COLUMNS``
#: first (the SQLite store's few lookups of one column on its hot paths).
MESSAGE_AT: Final = _MESSAGE.at
RECIPIENT_AT: Final = _RECIPIENT.at


def message_from_row(row: Row) -> MessageInfo:
    """The message of ``row``, its columns looked up by name."""
    return _message(_MESSAGE.by_name(row))


def message_from_columns(row: sqlite3.Row) -> MessageInfo:
    """The message of a row read with ``MESSAGE_COLUMNS`` first (see :class:`_Columns`)."""
    return _message(_MESSAGE.by_position(row))


def _message(values: Sequence[Any]) -> MessageInfo:
    (
        id_,
        _fingerprint,
        sender,
        priority,
        submitted_at,
        send_at,
        expires_at,
        notify,
        is_report,
        envelope_id,
        return_content,
        size,
        subject,
        held,
        _blob_id,
    ) = values
    return MessageInfo(
        id=id_,
        sender=None if sender is None else _stored_address(sender),
        priority=_priority(priority),
        submitted_at=submitted_at,
        send_at=send_at,
        expires_at=expires_at,
        notify=_notify(notify),
        is_report=bool(is_report),
        envelope_id=envelope_id,
        return_content=_optional_flag(return_content),
        size=size,
        subject=subject,
        held=bool(held),
    )


def message_params(info: MessageInfo, *, fingerprint: bytes, blob_id: int) -> dict[str, object]:
    """A new message's row (not held): ``INSERT_MESSAGE``'s parameters."""
    return {
        "id": info.id,
        "fingerprint": fingerprint,
        "sender": None if info.sender is None else str(info.sender),
        "priority": int(info.priority),
        "submitted_at": info.submitted_at,
        "send_at": info.send_at,
        "expires_at": info.expires_at,
        "notify": int(info.notify),
        "is_report": int(info.is_report),
        "envelope_id": info.envelope_id,
        "return_content": None if info.return_content is None else bool(info.return_content),
        "size": info.size,
        "subject": info.subject,
        "blob_id": blob_id,
    }


def _optional_flag(value: object) -> bool | None:
    """A flag column that may be NULL: SQLite's 1/0 or PostgreSQL's boolean, or None."""
    return None if value is None else bool(value)


def recipient_from_row(
    row: Row, *, state: RecipientState | None = None, updated_at: float | None = None
) -> RecipientRecord:
    """The recipient of ``row``, its columns looked up by name; ``state`` and
    ``updated_at``, when given, in place of the row's (a claim's record, built once)."""
    return _recipient(_RECIPIENT.by_name(row), state, updated_at)


def recipient_from_columns(
    row: sqlite3.Row, *, state: RecipientState | None = None, updated_at: float | None = None
) -> RecipientRecord:
    """:func:`recipient_from_row` of a row read with ``RECIPIENT_COLUMNS`` first (see
    :class:`_Columns`)."""
    return _recipient(_RECIPIENT.by_position(row), state, updated_at)


def _recipient(
    values: Sequence[Any], state: RecipientState | None, updated_at: float | None
) -> RecipientRecord:
    (
        message_id,
        idx,
        address,
        row_state,
        route,
        refused_by,
        attempts,
        retry_at,
        status,
        diagnostic,
        row_updated_at,
        first_failed_at,
        _owner,
        _lease_until,
        delay_warned,
        _claim,
        original,
    ) = values
    return RecipientRecord(
        message_id=message_id,
        index=idx,
        address=_stored_address(address),
        state=recipient_state(row_state) if state is None else state,
        route=route,
        refused_by=_refused_by(refused_by),
        attempts=attempts,
        retry_at=retry_at,
        status=status,
        diagnostic=diagnostic,
        updated_at=row_updated_at if updated_at is None else updated_at,
        first_failed_at=first_failed_at,
        delay_warned=bool(delay_warned),
        original=original,
    )


def _refused_by(text: str) -> tuple[str, ...]:
    """The ``refused_by`` column (JSON), ``[]`` for nearly every recipient: read without
    the JSON decoder then (twice a message, in the store's one thread)."""
    return () if text == "[]" else tuple(json.loads(text))


#: The mutable columns of a recipient, in the order :func:`recipient_values` gives
#: them (the SQLite store's ``UPDATE_RECIPIENT`` numbers them ``?1`` to ``?15``).
RECIPIENT_KEYS: Final = (
    "message_id",
    "idx",
    "state",
    "route",
    "refused_by",
    "attempts",
    "retry_at",
    "status",
    "diagnostic",
    "updated_at",
    "first_failed_at",
    "delay_warned",
    "owner",
    "lease_until",
    "claim",
)


def recipient_values(
    r: RecipientRecord, *, owner: str | None, lease_until: float | None, claim: int | None = None
) -> tuple[object, ...]:
    """Every mutable column of one recipient, in :data:`RECIPIENT_KEYS`' order.  The
    lease (``owner``, ``lease_until``) is kept only while the recipient is ACTIVE; the
    claim token changes only with a claim (``claim``; None keeps the last one, so a
    later claim's token is always greater)."""
    active = r.state is _ACTIVE
    return (
        r.message_id,
        r.index,
        r.state.value,
        r.route,
        json.dumps(list(r.refused_by)) if r.refused_by else "[]",
        r.attempts,
        r.retry_at,
        r.status,
        r.diagnostic,
        r.updated_at,
        r.first_failed_at,
        int(r.delay_warned),
        owner if active else None,
        lease_until if active else None,
        claim,
    )


def recipient_params(
    r: RecipientRecord, *, owner: str | None, lease_until: float | None, claim: int | None = None
) -> dict[str, object]:
    """:func:`recipient_values` by name (the PostgreSQL store's ``%(state)s`` ...)."""
    values = recipient_values(r, owner=owner, lease_until=lease_until, claim=claim)
    return dict(zip(RECIPIENT_KEYS, values, strict=True))


def inbox_from_row(row: Row) -> InboxEntry:
    return InboxEntry(
        id=row["id"],
        transport=row["transport"],
        sender=row["sender"],
        recipients=tuple(json.loads(row["recipients"])),
        received_at=row["received_at"],
        size=row["size"],
        subject=row["subject"],
        remote_id=row["remote_id"],
        meta=json.loads(row["meta"]),
    )


def inbox_params(entry: InboxEntry, *, blob_id: int) -> dict[str, object]:
    """An inbox entry's row: ``INSERT_INBOX``'s parameters."""
    return {
        "id": entry.id,
        "transport": entry.transport,
        "sender": entry.sender,
        "recipients": json.dumps(list(entry.recipients)),
        "received_at": entry.received_at,
        "size": entry.size,
        "subject": entry.subject,
        "remote_id": entry.remote_id,
        "meta": json.dumps(entry.meta),
        "blob_id": blob_id,
    }


def encode_profile(section: str, values: Mapping[str, JSONValue]) -> dict[str, str | None]:
    """Profile values as the JSON text of their rows, per key (None deletes the key);
    refuses what JSON cannot hold, naming the section and key."""
    out: dict[str, str | None] = {}
    for key, value in values.items():
        if value is None:
            out[key] = None
            continue
        try:
            out[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"profile value {section}.{key} = {value!r} cannot be stored as JSON: {exc}"
            ) from exc
    return out
