"""The wording of the delivery log lines (pure, by example) and the lines a running
spooler writes once the store committed an outcome."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
from helpers import FAST, message, spooler, transport

from spoolbox import Address, AlwaysIdle, MemoryStore, MessageState, Spooler, SpoolerConfig
from spoolbox._core.delivery_log import (
    DeliveryLine,
    InboundLine,
    ReportLine,
    clean_response,
    format_delay,
    log_line,
    one_line,
    outcome_of,
)
from spoolbox.model import RecipientState
from spoolbox.store import LeaseLost, RecipientUpdate
from spoolbox.testing import Act, Script

BOB = Address.parse("SMTP:bob@example.org")


def line(update: RecipientUpdate, **kw: Any) -> DeliveryLine | None:
    args: dict[str, Any] = {
        "message_id": "3Fz9abc",
        "address": BOB,
        "transport": "relay",
        "update": update,
        "submitted_at": 100.0,
        "now": 101.2,
        "remote_mta": "dns; mx.example.org",
    }
    args.update(kw)
    return DeliveryLine.of(**args)


def test_a_delivered_recipient_is_a_sent_line_in_the_postfix_manner() -> None:
    update = RecipientUpdate(
        0,
        RecipientState.DELIVERED,
        status="2.0.0",
        diagnostic="smtp; 250 2.0.0 Ok: queued as 4F2",
        count_attempt=True,
    )
    got = line(update)
    assert got is not None
    assert got.text() == (
        "3Fz9abc: to=<bob@example.org>, transport=relay, relay=mx.example.org, delay=1.2, "
        "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4F2)"
    )
    assert got.fields() == {
        "id": "3Fz9abc",
        "to": "bob@example.org",
        "transport": "relay",
        "relay": "mx.example.org",
        "delay": "1.2",
        "dsn": "2.0.0",
        "status": "sent",
        "response": "250 2.0.0 Ok: queued as 4F2",
    }


Q, F = RecipientState.QUEUED, RecipientState.FAILED


@pytest.mark.parametrize(
    ("update", "status", "dsn"),
    [
        (RecipientUpdate(0, Q, "4.7.1", "x", count_attempt=True), "deferred", "4.7.1"),
        (RecipientUpdate(0, F, "5.1.1", "x", count_attempt=True), "bounced", "5.1.1"),
        (RecipientUpdate(0, F, "5.4.7", "x"), "expired", "5.4.7"),
        (RecipientUpdate(0, F, None, "x"), "bounced", "5.0.0"),
        (RecipientUpdate(0, RecipientState.DELIVERED), "sent", "2.0.0"),
        (RecipientUpdate(0, RecipientState.CANCELLED, None, "by user"), "cancelled", "none"),
    ],
)
def test_each_outcome_has_its_status_word_and_dsn(
    update: RecipientUpdate, status: str, dsn: str
) -> None:
    got = line(update)
    assert got is not None
    assert (got.status, got.dsn) == (status, dsn)
    assert f", dsn={dsn}, status={status}" in got.text()


@pytest.mark.parametrize(
    "update",
    [
        RecipientUpdate(0, RecipientState.QUEUED),  # given back at logoff
        RecipientUpdate(0, RecipientState.QUEUED, route=None, keep_route=False, refused_by=("a",)),
        RecipientUpdate(0, RecipientState.PARKED, diagnostic="parked"),
        RecipientUpdate(0, RecipientState.ACTIVE),
    ],
)
def test_a_recipient_queued_again_without_an_attempt_says_nothing(
    update: RecipientUpdate,
) -> None:
    assert outcome_of(update) is None
    assert line(update) is None


def test_without_a_transport_or_a_peer_both_say_none() -> None:
    update = RecipientUpdate(0, RecipientState.FAILED, "5.4.4", "no transport for SMTP")
    got = line(update, transport=None, remote_mta=None)
    assert got is not None
    assert "transport=none, relay=none," in got.text()
    assert got.text().endswith("status=bounced (no transport for SMTP)")


def test_another_address_type_keeps_its_type() -> None:
    got = line(
        RecipientUpdate(0, RecipientState.DELIVERED), address=Address.parse("MAILDIR:/var/mail/b")
    )
    assert got is not None and got.to == "MAILDIR:/var/mail/b"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0712, "0.07"), (1.23, "1.2"), (9.99, "10.0"), (27.4, "27"), (3600.2, "3600"), (-1, "0.00")],
)
def test_delay_is_written_as_postfix_writes_it(seconds: float, shown: str) -> None:
    assert format_delay(seconds) == shown


def test_a_response_is_one_line_escaped_and_cut() -> None:
    assert clean_response("smtp; 451 4.7.1 try\r\n later") == "451 4.7.1 try later"
    assert clean_response("x-spoolbox; bad\x00byte\x1b[31m") == "bad\\x00byte\\x1b[31m"
    assert clean_response("a\u2028b") == "a\\u2028b"
    long = clean_response("smtp; " + "x" * 500)
    assert len(long) == 200 and long.endswith("...")
    assert clean_response(None) == ""
    update = RecipientUpdate(
        0, RecipientState.QUEUED, "4.0.0", "evil\nstatus=sent", count_attempt=True
    )
    got = line(update)
    assert got is not None and "\n" not in got.text()


def _one_line_by_the_rules(text: str, limit: int = 200) -> str:
    """What one_line must give, spelt out: white space runs made one space, control
    characters, DEL, C1 and the Unicode line separators escaped, then cut."""
    text = re.sub(r"[ \t\r\n]+", " ", text)
    text = "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029"
        else c
        for c in text
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


@pytest.mark.parametrize(
    "text",
    [
        "250 2.0.0 Ok: queued as 4F2",  # the common line: nothing to change
        "two  spaces",
        "tab\there",
        "line\r\nbreak",
        " lead and trail ",
        "nul\x00 del\x7f c1\x85 esc\x1b",
        "para\u2029graph line\u2028sep",
        "non-ASCII printable: caf\u00e9 \u00fcber \u4e2d",
        "x" * 250,
        "",
    ],
)
def test_one_line_escapes_and_cuts_as_the_rules_say(text: str) -> None:
    assert one_line(text) == _one_line_by_the_rules(text)
    assert one_line(text, 10) == _one_line_by_the_rules(text, 10)


class _Kept(logging.Handler):
    """Keeps every record it is given (level NOTSET: only the logger's level decides)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_log_line_makes_one_record_with_the_text_and_the_fields() -> None:
    logger = logging.getLogger("spoolbox.test_log_line")
    kept = _Kept()
    logger.addHandler(kept)
    logger.propagate = False
    report = ReportLine("3Fz9", "failed", "alice@example.org", "4Ab1")
    try:
        logger.setLevel(logging.WARNING)
        log_line(logger, logging.INFO, report)  # below the logger's level: no record
        assert kept.records == []
        logger.setLevel(logging.INFO)
        log_line(logger, logging.INFO, report)
    finally:
        logger.removeHandler(kept)
    [record] = kept.records
    assert (record.name, record.levelno) == ("spoolbox.test_log_line", logging.INFO)
    assert record.getMessage() == report.text()
    assert record.spoolbox_fields == report.fields()  # type: ignore[attr-defined]


def test_the_inbound_and_report_lines() -> None:
    inbound = InboundLine.of(entry_id="7Gq", sender="carol@example.net", transport="imap", size=812)
    assert (
        inbound.text() == "7Gq: from=<carol@example.net>, transport=imap, size=812, status=received"
    )
    assert inbound.fields()["from"] == "carol@example.net"
    assert (
        InboundLine.of(entry_id="8", sender=None, transport="pop", size=1)
        .text()
        .startswith("8: from=<>,")
    )
    bounce = ReportLine("3Fz9", "failed", "alice@example.org", "9Rep")
    assert bounce.text() == "3Fz9: sender non-delivery notification: 9Rep, to=<alice@example.org>"
    delay = ReportLine("3Fz9", "delayed", "alice@example.org", None)
    assert delay.text() == (
        "3Fz9: sender delay notification: put in the inbox, to=<alice@example.org>"
    )


def _delivery_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "spoolbox.delivery"]


async def test_a_running_spooler_logs_each_outcome_once_after_it_is_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "spoolbox.delivery")
    ok = Script(submit=[Act.SUCCEED])
    async with spooler(transport("relay", ok), policy=FAST) as sp:
        info = await sp.submit(message("SMTP:bob@example.org", "SMTP:carol@example.org"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        stored = await sp.store.recipients(info.id)
    lines = _delivery_lines(caplog)
    assert [r.getMessage().split(",")[0] for r in lines] == [
        f"{info.id}: to=<bob@example.org>",
        f"{info.id}: to=<carol@example.org>",
    ]
    assert all(
        "transport=relay" in r.getMessage() and "status=sent" in r.getMessage() for r in lines
    )
    assert all(s.state is RecipientState.DELIVERED for s in stored)
    fields = lines[0].spoolbox_fields  # type: ignore[attr-defined]
    assert fields["id"] == info.id and fields["status"] == "sent"


async def test_no_route_and_a_bounce_report_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "spoolbox.delivery")
    fail = Script(submit=[Act.FAIL_PERM])
    async with spooler(transport("relay", fail), policy=FAST) as sp:
        info = await sp.submit(message("SMTP:bob@example.org", "FAX:+15550100"))
        assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
    texts = [r.getMessage() for r in _delivery_lines(caplog)]
    assert any(
        t.startswith(f"{info.id}: to=<bob@example.org>, transport=relay,") and "status=bounced" in t
        for t in texts
    ), texts
    assert any(
        t.startswith(f"{info.id}: to=<FAX:+15550100>, transport=none, relay=none,")
        and "dsn=5.4.4, status=bounced" in t
        for t in texts
    ), texts
    assert any(t.startswith(f"{info.id}: sender non-delivery notification: ") for t in texts), texts


async def test_a_message_put_in_the_inbox_is_logged_once_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from spoolbox.model import LogonCaps

    caplog.set_level(logging.INFO, "spoolbox.inbound")
    script = Script(
        capabilities=LogonCaps.SP_POLL,
        inbound=[b"Subject: one\r\n\r\n1\r\n"],
        fail_inbound_once=True,  # the first try is rolled back: no line for it
    )
    async with spooler(transport("pop", script)) as sp:
        (entry,) = await sp.wait_inbox(1, timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "spoolbox.inbound"]
    assert lines == [f"{entry.id}: from=<>, transport=pop, size={entry.size}, status=received"]


async def test_a_user_cancel_of_a_queued_recipient_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "spoolbox.delivery")
    later = Script(submit=[Act.FAIL_TEMP])
    async with spooler(transport("relay", later), policy=FAST) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, (MessageState.DEFERRED,), timeout=5)
        assert await sp.cancel(info.id) is MessageState.CANCELLED
        assert await sp.cancel(info.id) is MessageState.CANCELLED  # twice: one line
    texts = [r.getMessage() for r in _delivery_lines(caplog)]
    assert [t.rsplit("status=", 1)[1] for t in texts] == [
        "deferred (scripted: try later)",
        "cancelled (cancelled by user)",
    ], texts
    assert "transport=relay, relay=none, delay=" in texts[1]  # the route it had


class _RefusingStore(MemoryStore):
    """A real MemoryStore whose settles with an owner are refused (LeaseLost), as
    when another spooler took the message over: nothing of it is committed (written
    again as restoring, it is refused the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = asyncio.Event()

    async def settle(self, message_id: str, updates: Any, **kw: Any) -> Any:
        if kw.get("owner") is not None:
            self.refused.set()
            raise LeaseLost(f"{message_id}: lease moved (test)")
        return await super().settle(message_id, updates, **kw)


async def test_an_outcome_the_store_did_not_commit_is_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "spoolbox.delivery")
    store = _RefusingStore()
    ok = Script(submit=[Act.SUCCEED])
    cfg = SpoolerConfig(transports=(transport("relay", ok),), policy=FAST, node="test-node")
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle()) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await asyncio.wait_for(store.refused.wait(), 5)  # the transport said: delivered
        (recipient,) = await store.recipients(info.id)
        assert ok.sent  # it was delivered; the store did not take the outcome
    assert recipient.state is not RecipientState.DELIVERED
    assert _delivery_lines(caplog) == []


async def test_a_recipient_held_by_its_destinations_back_off_is_logged_as_suspended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postfix's "delivery temporarily suspended": a recipient held back, without an
    attempt, because the last attempt at its destination deferred, says so and why."""
    from spoolbox.testing import FakeClock

    caplog.set_level(logging.INFO, "spoolbox.delivery")
    clock = FakeClock()
    script = Script(("SMTP",), submit=[Act.FAIL_TEMP, Act.SUCCEED])
    async with spooler(transport("relay", script), clock=clock) as sp:
        first = await sp.submit(message("SMTP:a@down.example"))
        await sp.wait_for(first.id, [MessageState.DEFERRED], timeout=5)
        held = await sp.submit(message("SMTP:b@down.example"))
        await sp.wait_for(held.id, [MessageState.DEFERRED], timeout=5)
        (rec,) = await sp.store.recipients(held.id)
        assert rec.attempts == 0  # held, not tried
        lines = [r.getMessage() for r in _delivery_lines(caplog)]
        assert lines[-1] == (
            f"{held.id}: to=<b@down.example>, transport=relay, relay=none, delay=0.00, "
            "dsn=4.4.1, status=deferred (delivery temporarily suspended: scripted: try later)"
        ), lines
        assert [line for line in lines if line.startswith(f"{held.id}:")] == [lines[-1]]
        fields = _delivery_lines(caplog)[-1].spoolbox_fields  # type: ignore[attr-defined]
        assert (fields["status"], fields["dsn"]) == ("deferred", "4.4.1")
        await clock.advance(FAST.retry_base + 1)
        assert await sp.wait_for(held.id, timeout=5) is MessageState.SENT
    texts = [r.getMessage() for r in _delivery_lines(caplog)]
    sent = f"{held.id}: to=<b@down.example>, transport=relay, relay=none, delay="
    assert any(t.startswith(sent) and "status=sent" in t for t in texts), texts
