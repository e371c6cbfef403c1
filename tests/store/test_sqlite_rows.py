"""The SQLite store reads a message's or a recipient's row by position
(``*_from_columns``): every query of its that selects ``MESSAGE_COLUMNS`` or
``RECIPIENT_COLUMNS`` selects the list first, and a row read so gives the same value
as the same row read by name (``*_from_row``, the PostgreSQL store's and any other
row's way)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_helpers import T0, new_message, raw

from spoolbox.model import Address, NewMessage, RecipientState
from spoolbox.store.base import RecipientUpdate
from spoolbox.store.sqlite import SQLiteStore
from spoolbox.store.sqlite import queries as q
from spoolbox.store.sqlite.rows import (
    MESSAGE_AT,
    RECIPIENT_AT,
    message_from_columns,
    message_from_row,
    recipient_from_columns,
    recipient_from_row,
)


def _queries_with(columns: str) -> dict[str, str]:
    """The queries of :mod:`.queries` that read the list ``columns`` (not those that
    write its columns: ``INSERT_MESSAGE``)."""
    return {
        name: sql
        for name, sql in vars(q).items()
        if name.isupper() and isinstance(sql, str) and columns in sql and "SELECT" in sql
    }


def test_every_query_that_reads_the_column_lists_selects_them_first() -> None:
    recipients = _queries_with(q.RECIPIENT_COLUMNS)
    messages = _queries_with(q.MESSAGE_COLUMNS)
    assert {"SELECT_RECIPIENT", "CLAIMABLE_OF_MESSAGE", "SELECT_EXPIRED"} <= recipients.keys()
    assert {"SELECT_MESSAGE", "SELECT_MESSAGES_AFTER"} <= messages.keys()
    for columns, found in ((q.RECIPIENT_COLUMNS, recipients), (q.MESSAGE_COLUMNS, messages)):
        wrong = [n for n, sql in found.items() if not sql.startswith(f"SELECT {columns} FROM ")]
        assert wrong == []


async def test_a_row_read_by_position_is_the_row_read_by_name(tmp_path: Path) -> None:
    path = tmp_path / "rows.db"
    message = NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse("X:bob"),),
        content=b"Subject: rows\r\n\r\nx\r\n",
        id="rows",
        original_recipients=((Address.parse("X:bob"), "rfc822;bob@old.example"),),
    )
    async with SQLiteStore(path) as store:
        await store.submit(message, now=T0, lifetime=3600, routes=["x"])
        await store.submit(new_message(2), now=T0, lifetime=3600, routes=["x"])
        [job] = await store.claim("x", owner="n", now=T0 + 1, lease=60)
        update = RecipientUpdate(
            0,
            RecipientState.QUEUED,
            status="4.2.0",
            diagnostic="451 4.2.0 later",
            retry_at=T0 + 100,
            refused_by=("y", "z"),
            count_attempt=True,
            delay_warned=True,
        )
        await store.settle("rows", [update], owner="n", now=T0 + 2, claim=job.claim)
        await store.hold("rows")
    with raw(path) as conn:
        conn.row_factory = sqlite3.Row
        mrow = conn.execute(q.SELECT_MESSAGE, ("rows",)).fetchone()
        rrow = conn.execute(q.SELECT_RECIPIENT, ("rows", 0)).fetchone()
    info = message_from_columns(mrow)
    assert info == message_from_row(mrow)
    assert (info.held, info.sender) == (True, Address.parse("SMTP:alice@example.org"))
    record = recipient_from_columns(rrow)
    assert record == recipient_from_row(rrow)
    assert (record.refused_by, record.attempts, record.delay_warned) == (("y", "z"), 1, True)
    assert (record.state, record.original) == (RecipientState.HELD, "rfc822;bob@old.example")
    assert rrow[RECIPIENT_AT["claim"]] == job.claim and rrow[RECIPIENT_AT["owner"]] is None
    assert mrow[MESSAGE_AT["blob_id"]] == mrow["blob_id"]
