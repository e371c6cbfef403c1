"""``spoolbox.store.rules.settled``: a recipient after a settle update.  It makes the
record whole (not with ``dataclasses.replace``), so every column it does not write
must be carried over: this test sets every column to a value no default has and
checks each one, the columns added after it was written included."""

from __future__ import annotations

import dataclasses

from spoolbox.model import Address, RecipientRecord, RecipientState
from spoolbox.store import rules
from spoolbox.store.base import RecipientUpdate

_BOB = Address.parse("SMTP:bob@example.org")
#: A value of each column that no default and no update below gives.
_EVERY_COLUMN = {
    "message_id": "m1",
    "index": 3,
    "address": _BOB,
    "state": RecipientState.ACTIVE,
    "route": "smtp",
    "refused_by": ("x",),
    "attempts": 2,
    "retry_at": 50.0,
    "status": "4.4.1",
    "diagnostic": "451 later",
    "updated_at": 10.0,
    "first_failed_at": 11.0,
    "delay_warned": True,
    "original": "rfc822;bob@old.example",
}


def test_every_column_a_settle_does_not_write_is_carried_over() -> None:
    assert {f.name for f in dataclasses.fields(RecipientRecord)} == _EVERY_COLUMN.keys()
    before = RecipientRecord(**_EVERY_COLUMN)
    after = rules.settled(
        before, RecipientUpdate(3, RecipientState.DELIVERED), now=100.0, held=False
    )
    written = {"state": RecipientState.DELIVERED, "retry_at": 0.0, "updated_at": 100.0}
    assert after == dataclasses.replace(before, **written)


def test_what_a_deferral_writes() -> None:
    before = RecipientRecord(**{**_EVERY_COLUMN, "first_failed_at": None, "delay_warned": False})
    update = RecipientUpdate(
        3,
        RecipientState.QUEUED,
        status="4.2.0",
        diagnostic="452 full",
        retry_at=200.0,
        refused_by=("x", "y"),
        count_attempt=True,
        delay_warned=True,
        route="other",
        keep_route=False,
    )
    after = rules.settled(before, update, now=100.0, held=True)
    assert after == dataclasses.replace(
        before,
        state=RecipientState.HELD,  # its message is held
        route="other",
        refused_by=("x", "y"),
        attempts=3,
        retry_at=200.0,
        status="4.2.0",
        diagnostic="452 full",
        updated_at=100.0,
        first_failed_at=100.0,
        delay_warned=True,
    )
