"""The SMS transport's pure decisions: what of a mail becomes the text, what a
+CMS ERROR code means, the line's sentence, the delivery-report bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage

import pytest

from spoolbox.transports.sms.errors import classify_cms
from spoolbox.transports.sms.ledger import apply_report, expect, verdict
from spoolbox.transports.sms.line import LineState
from spoolbox.transports.sms.pdu import StatusReport, split_text
from spoolbox.transports.sms.text import mail_to_text, sms_to_mail

WHEN = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def _mail(subject: str | None, body: str | None, *, html: bool = False) -> EmailMessage:
    mail = EmailMessage()
    if subject is not None:
        mail["Subject"] = subject
    if html:
        mail.set_content("<p>html first</p>", subtype="html")
        if body is not None:
            mail.add_alternative(body)
    elif body is not None:
        mail.set_content(body)
    return mail


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("subject+body", "Disk full\n/var is at 99 %.\n\nPlease look."),
        ("subject", "Disk full"),
        ("body", "/var is at 99 %.\n\nPlease look."),
    ],
)
def test_the_text_rule(rule: str, expected: str) -> None:
    mail = _mail("Disk  full", "\r\n/var is at 99 %.   \r\n\r\nPlease look.\r\n\r\n")
    assert mail_to_text(mail, rule, 3) == (expected, False)  # type: ignore[arg-type]


def test_the_first_plain_part_of_a_multipart_mail_and_no_text() -> None:
    mail = _mail("s", "plain one", html=True)
    assert mail_to_text(mail, "body", 3) == ("plain one", False)
    assert mail_to_text(_mail(None, None), "subject+body", 3) == ("(no text)", False)
    raw = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n"
    assert mail_to_text(message_from_bytes(raw), "subject", 1) == ("Grüße", False)


def test_a_long_mail_is_cut_with_the_marker_to_max_parts() -> None:
    text, cut = mail_to_text(_mail("Report", "x" * 2000), "subject+body", 2)
    assert cut and text.startswith("Report\nxxx") and text.endswith("...")
    assert len(split_text(text)[1]) == 2


def test_an_sms_becomes_a_plain_text_mail() -> None:
    raw = sms_to_mail("+4915112345678", WHEN, "Grüße", "<sms.k@host>")
    assert b"\r\nSubject: SMS from +4915112345678\r\n" in raw  # CRLF, as on the wire
    mail = message_from_bytes(raw)
    assert mail["From"] == '"+4915112345678" <4915112345678@sms.invalid>'
    assert mail["Subject"] == "SMS from +4915112345678"
    assert mail["X-SMS-Sender"] == "+4915112345678"
    assert mail.get_content_type() == "text/plain"
    payload = mail.get_payload(decode=True)
    assert isinstance(payload, bytes) and payload.decode("utf-8") == "Grüße\r\n"


@pytest.mark.parametrize(
    ("code", "temporary", "status"),
    [
        (1, False, "5.1.1"),  # unassigned number (TS 24.011 E-2)
        (0xC3, False, "5.1.3"),  # invalid SME address (TS 23.040)
        (10, False, "5.7.1"),  # call barred
        (304, False, "5.3.0"),  # invalid PDU mode parameter (TS 27.005)
        (42, True, "4.3.0"),  # congestion: gammu's ERR_NETWORK_ERROR
        (331, True, "4.4.1"),  # no network service
        (332, True, "4.4.1"),  # network timeout
        (0xC0, True, "4.3.0"),  # SC busy
    ],
)
def test_cms_error_codes(code: int, temporary: bool, status: str) -> None:
    verdict_ = classify_cms(code)
    assert (verdict_.temporary, verdict_.status) == (temporary, status)
    assert verdict_.text.startswith(f"+CMS ERROR: {code} (")


def test_the_line_sentence() -> None:
    assert LineState().text() == "modem initialised"
    line = LineState().with_registration(1, 21)
    assert line.text() == "registered (home network), signal -71 dBm (21/31)"
    assert line.with_registration(5, 99).text() == "registered (roaming), signal unknown"
    assert line.with_registration(2).text() == "not registered, searching for a network"
    assert line.with_modem("modem not answering: x").text() == "modem not answering: x"


def _report(mr: int, status: int, number: str = "+1555") -> StatusReport:
    return StatusReport(mr, number, status, WHEN)


def test_delivery_reports_complete_a_recipient_part_by_part() -> None:
    awaiting = expect({}, "m1/0", "+1555", [7, 8], now=100.0)
    awaiting, key = apply_report(awaiting, _report(7, 0x00))
    assert key == "m1/0" and verdict(awaiting["m1/0"], 101.0, 60.0)[0] == "pending"
    awaiting, key = apply_report(awaiting, _report(8, 0x21))  # still trying: no change
    assert verdict(awaiting["m1/0"], 101.0, 60.0)[0] == "pending"
    awaiting, key = apply_report(awaiting, _report(8, 0x00))
    assert verdict(awaiting["m1/0"], 101.0, 60.0) == (
        "delivered",
        "SMS status report: delivered (message reference 7, 8)",
    )


def test_a_failed_part_fails_and_foreign_reports_match_nothing() -> None:
    awaiting = expect({}, "m1/0", "+1555", [7], now=100.0)
    assert apply_report(awaiting, _report(9, 0))[1] is None  # another reference
    assert apply_report(awaiting, _report(7, 0, "+1666"))[1] is None  # another number
    awaiting, _ = apply_report(awaiting, _report(7, 0x41))
    outcome, why = verdict(awaiting["m1/0"], 101.0, 60.0)
    assert outcome == "failed" and "TP-ST 0x41" in why


def test_a_report_that_never_comes_times_out() -> None:
    awaiting = expect({}, "m1/0", "+1555", [7], now=100.0)
    assert verdict(awaiting["m1/0"], 159.0, 60.0)[0] == "pending"
    assert verdict(awaiting["m1/0"], 160.0, 60.0)[0] == "timeout"


def test_a_reused_reference_goes_to_the_newest_recipient() -> None:
    # TP-MR is 8 bits: after 256 messages a reference comes back.
    awaiting = expect({}, "old/0", "+1555", [7], now=100.0)
    awaiting, _ = apply_report(awaiting, _report(7, 0))
    awaiting = expect(awaiting, "new/0", "+1555", [7], now=200.0)
    awaiting, key = apply_report(awaiting, _report(7, 0x41))
    assert key == "new/0"
