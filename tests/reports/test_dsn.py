"""Tests of the delivery status notification builder (spoolbox.reports).

Every report is parsed back with the standard library, the way a mail client
would, and checked field by field; hostile originals and diagnostics must still
give a well-formed report with no injected header.
"""

from __future__ import annotations

import email
import email.generator
import email.policy
import re
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolbox.model import (
    Address,
    MessageInfo,
    NewMessage,
    Notify,
    Outcome,
    Priority,
    RecipientResult,
)
from spoolbox.reports import (
    RETURN_SIZE_LIMIT,
    ReportItem,
    ReportKind,
    build_report,
    needed_bytes,
    report_message,
    wants_report,
)

NOW = 1_700_000_200.0
SUBMITTED = 1_700_000_000.0
ALICE = Address("SMTP", "alice@example.com")
BOB = Address("SMTP", "bob@example.org")
CAROL = Address("SMTP", "carol@example.org")
ORIGINAL = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org, carol@example.org\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <orig.1@example.com>\r\n"
    b"\r\n"
    b"Here they are.\r\n"
)
TOP_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "auto-submitted",
    "mime-version",
    "content-type",
}
RECIPIENT_FIELDS = {
    "original-recipient",
    "final-recipient",
    "action",
    "status",
    "remote-mta",
    "diagnostic-code",
    "last-attempt-date",
    "will-retry-until",
}


def _info(**changes: object) -> MessageInfo:
    values: dict[str, object] = {
        "id": "018f00aa11bb22cc33dd",
        "sender": ALICE,
        "priority": Priority.NORMAL,
        "submitted_at": SUBMITTED,
        "send_at": None,
        "expires_at": SUBMITTED + 5 * 86400,
        "notify": Notify.FAILURE,
        "is_report": False,
        "envelope_id": None,
        "size": len(ORIGINAL),
        "subject": "quarterly numbers",
    }
    values.update(changes)
    return MessageInfo(**values)  # type: ignore[arg-type]


def _failed(address: Address = BOB, diagnostic: str = "smtp; 550 5.1.1 no such user") -> ReportItem:
    return ReportItem(address, "5.1.1", diagnostic, last_attempt=NOW - 10)


def _build(
    items: list[ReportItem] | None = None,
    *,
    kind: ReportKind = ReportKind.FAILURE,
    original: bytes = ORIGINAL,
    info: MessageInfo | None = None,
    reporting_mta: str = "mx.example.net",
    **kwargs: object,
) -> bytes:
    return build_report(
        info=info or _info(),
        original=original,
        items=items or [_failed()],
        kind=kind,
        reporting_mta=reporting_mta,
        now=NOW,
        **kwargs,  # type: ignore[arg-type]
    )


def _check_wire_format(data: bytes) -> None:
    """CRLF line ends only, no line over the RFC 5322 limit of 998 octets."""
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF or CR in the report"
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def _parse(data: bytes) -> EmailMessage:
    """Parse a report as a client would and check its outer shape."""
    _check_wire_format(data)
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert {name.lower() for name in message} <= TOP_HEADERS
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert 2 <= len(parts) <= 3
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    return message


def _parts(message: EmailMessage) -> list[EmailMessage]:
    parts = message.get_payload()
    assert isinstance(parts, list)
    return parts  # type: ignore[return-value]


def _raw(block: Message, name: str) -> str | None:
    """A field's raw value, unfolded, exactly as written (no RFC 2047 decoding)."""
    values = [v for k, v in block.raw_items() if k.lower() == name.lower()]
    assert len(values) <= 1, f"{name} appears {len(values)} times"
    if not values:
        return None
    return re.sub(r"\r?\n(?=[ \t])", "", str(values[0])).strip()


def _blocks(message: EmailMessage) -> tuple[Message, list[Message]]:
    blocks = _parts(message)[1].get_payload()
    assert isinstance(blocks, list)
    assert len(blocks) >= 2
    per_recipient = blocks[1:]
    for block in per_recipient:
        assert {k.lower() for k in block} <= RECIPIENT_FIELDS
    return blocks[0], per_recipient


def _text(message: EmailMessage) -> str:
    content = _parts(message)[0].get_content()
    assert isinstance(content, str)
    return " ".join(content.split())


# --- structure and fields ----------------------------------------------------------


def test_failure_report_headers_and_parts() -> None:
    message = _parse(_build())
    assert [p.get_content_type() for p in _parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert _parts(message)[0]["Content-Transfer-Encoding"] == "7bit"  # plain, readable text
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.example.net"
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["To"].addresses[0].addr_spec == "alice@example.com"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == "<orig.1@example.com>"
    assert message["References"] == "<orig.1@example.com>"
    assert message["Message-ID"].endswith("@mx.example.net>")
    assert parsedate_to_datetime(str(message["Date"])).timestamp() == NOW


def test_delivery_status_fields_for_each_recipient() -> None:
    items = [
        ReportItem(
            BOB,
            "5.1.1",
            "smtp; 550 5.1.1 <bob@example.org>: no such user",
            remote_mta="dns; mx.example.org",
            last_attempt=NOW - 60,
        ),
        ReportItem(CAROL, "5.2.2", "SMTP; 552 mailbox full", remote_mta="mx2.example.org"),
    ]
    message = _parse(_build(items, info=_info(envelope_id="ENV-42")))
    per_message, recipients = _blocks(message)
    assert _raw(per_message, "Reporting-MTA") == "dns; mx.example.net"
    assert _raw(per_message, "Original-Envelope-Id") == "ENV-42"
    assert _raw(per_message, "X-Spoolbox-Queue-ID") == "018f00aa11bb22cc33dd"
    arrival = _raw(per_message, "Arrival-Date")
    assert arrival is not None
    assert parsedate_to_datetime(arrival).timestamp() == SUBMITTED
    assert len(recipients) == 2
    bob, carol = recipients
    assert _raw(bob, "Final-Recipient") == "rfc822; bob@example.org"
    assert _raw(bob, "Action") == "failed"
    assert _raw(bob, "Status") == "5.1.1"
    assert _raw(bob, "Diagnostic-Code") == "smtp; 550 5.1.1 <bob@example.org>: no such user"
    assert _raw(bob, "Remote-MTA") == "dns; mx.example.org"
    last = _raw(bob, "Last-Attempt-Date")
    assert last is not None
    assert parsedate_to_datetime(last).timestamp() == NOW - 60
    assert _raw(bob, "Will-Retry-Until") is None
    assert _raw(carol, "Final-Recipient") == "rfc822; carol@example.org"
    assert _raw(carol, "Status") == "5.2.2"
    assert _raw(carol, "Diagnostic-Code") == "smtp; 552 mailbox full"
    assert _raw(carol, "Remote-MTA") == "dns; mx2.example.org"
    assert _raw(carol, "Last-Attempt-Date") is None
    text = _text(message)
    assert "<bob@example.org>: failed permanently (status 5.1.1)" in text
    assert "<carol@example.org>: failed permanently (status 5.2.2)" in text
    assert "no such user" in text


def test_no_envelope_id_no_field() -> None:
    per_message, _ = _blocks(_parse(_build()))
    assert _raw(per_message, "Original-Envelope-Id") is None


def test_failure_attaches_the_original_verbatim() -> None:
    data = _build()
    returned = _parts(_parse(data))[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_content()
    assert inner["Subject"] == "quarterly numbers"
    assert inner.get_content().strip() == "Here they are."
    assert ORIGINAL in data


def test_original_with_lf_line_ends_is_attached_with_crlf() -> None:
    data = _build(original=ORIGINAL.replace(b"\r\n", b"\n"))
    assert ORIGINAL in data
    assert _parts(_parse(data))[2].get_content_type() == "message/rfc822"


def test_failure_without_content_returns_headers_only() -> None:
    data = _build(include_content=False)
    returned = _parts(_parse(data))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    headers = returned.get_payload(decode=True)
    assert b"Subject: quarterly numbers" in headers
    assert b"Here they are." not in data


def test_delay_report() -> None:
    until = SUBMITTED + 5 * 86400
    item = ReportItem(
        BOB,
        "4.4.1",
        "smtp; 451 4.4.1 try again later",
        last_attempt=NOW - 5,
        will_retry_until=until,
    )
    message = _parse(_build([item], kind=ReportKind.DELAY))
    assert message["Subject"] == "Delayed Mail (still being retried)"
    _, (block,) = _blocks(message)
    assert _raw(block, "Action") == "delayed"
    assert _raw(block, "Status") == "4.4.1"
    retry = _raw(block, "Will-Retry-Until")
    assert retry is not None
    assert parsedate_to_datetime(retry).timestamp() == until
    text = _text(message)
    assert f"delayed, still being retried until {retry}" in text
    assert "do not need to send it again" in text
    returned = _parts(message)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Here they are." not in returned.get_payload(decode=True)


def test_success_report() -> None:
    item = ReportItem(BOB, "2.0.0", "smtp; 250 2.0.0 queued as 4F2A", remote_mta="mx.example.org")
    message = _parse(_build([item], kind=ReportKind.SUCCESS))
    assert message["Subject"] == "Successful Mail Delivery Report"
    _, (block,) = _blocks(message)
    assert _raw(block, "Action") == "delivered"
    assert _raw(block, "Status") == "2.0.0"
    assert _raw(block, "Diagnostic-Code") == "smtp; 250 2.0.0 queued as 4F2A"
    assert "<bob@example.org>: delivered (status 2.0.0)" in _text(message)
    assert _parts(message)[2].get_content_type() == "text/rfc822-headers"


def test_a_hand_off_to_a_server_without_dsn_is_relayed() -> None:
    """RFC 3464's ``relayed``: handed on to a next hop that sends no reports; the
    report says so beside a recipient that was delivered."""
    carol = Address("SMTP", "carol@example.org")
    items = [
        ReportItem(
            BOB, "2.0.0", "smtp; 250 2.0.0 queued", remote_mta="mx.example.org", relayed=True
        ),
        ReportItem(carol, "2.0.0", "delivered to /var/mail/carol"),
    ]
    message = _parse(_build(items, kind=ReportKind.SUCCESS))
    _, blocks = _blocks(message)
    assert [_raw(b, "Action") for b in blocks] == ["relayed", "delivered"]
    text = _text(message)
    assert "<bob@example.org>: relayed (status 2.0.0)" in text
    assert "<carol@example.org>: delivered (status 2.0.0)" in text
    assert "sends no delivery reports (relayed)" in text


def test_success_with_full_content_attaches_the_message() -> None:
    item = ReportItem(BOB, "2.0.0", "")
    data = _build([item], kind=ReportKind.SUCCESS, include_content=True)
    assert _parts(_parse(data))[2].get_content_type() == "message/rfc822"
    assert ORIGINAL in data


def test_empty_diagnostic_has_no_diagnostic_code() -> None:
    _, (block,) = _blocks(_parse(_build([ReportItem(BOB, "2.0.0")], kind=ReportKind.SUCCESS)))
    assert _raw(block, "Diagnostic-Code") is None
    assert _raw(block, "Status") == "2.0.0"


def test_failure_may_carry_an_expired_temporary_status() -> None:
    item = ReportItem(BOB, "4.4.7", "x-spoolbox; queue lifetime expired")
    _, (block,) = _blocks(_parse(_build([item])))
    assert _raw(block, "Action") == "failed"
    assert _raw(block, "Status") == "4.4.7"
    assert _raw(block, "Diagnostic-Code") == "x-spoolbox; queue lifetime expired"


@pytest.mark.parametrize(
    ("diagnostic", "expected"),
    [
        ("550 no such user", "x-spoolbox; 550 no such user"),
        ("SMTP;550 no such user", "smtp; 550 no such user"),
        ("X-Postfix; host mx said: go away", "x-postfix; host mx said: go away"),
        ("timeout; connection reset", "x-spoolbox; timeout; connection reset"),
        ("  lots   of\tspace  ", "x-spoolbox; lots of space"),
    ],
)
def test_diagnostic_code_type_prefix(diagnostic: str, expected: str) -> None:
    _, (block,) = _blocks(_parse(_build([_failed(diagnostic=diagnostic)])))
    assert _raw(block, "Diagnostic-Code") == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (Address("SMTP", "bob@example.org"), "rfc822; bob@example.org"),
        (Address("SMTP", "jörg@bücher.example"), "utf-8; j\\x{F6}rg@b\\x{FC}cher.example"),
        (Address("MAILDIR", "/var/mail/bob"), "x-maildir; /var/mail/bob"),
        (Address("X400", "c=US;a= ;p=Org;s=Bob"), "x400; c=US;a= ;p=Org;s=Bob"),
        (Address("MY.FAX", "+15551234"), "x-my-fax; +15551234"),
        (Address("X-LOCAL", "bob"), "x-local; bob"),
    ],
)
def test_final_recipient_address_types(address: Address, expected: str) -> None:
    _, (block,) = _blocks(_parse(_build([_failed(address)])))
    assert _raw(block, "Final-Recipient") == expected


def test_message_id_is_deterministic_and_differs_by_kind() -> None:
    first = _parse(_build())
    again = _parse(_build())
    delay = _parse(_build([ReportItem(BOB, "4.0.0", "")], kind=ReportKind.DELAY))
    assert first["Message-ID"] == again["Message-ID"]
    assert first["Message-ID"] != delay["Message-ID"]


def test_postmaster_address() -> None:
    local = _parse(_build(postmaster="postmaster"))
    full = _parse(_build(postmaster="bounces@example.net"))
    assert local["From"].addresses[0].addr_spec == "postmaster@mx.example.net"
    assert full["From"].addresses[0].addr_spec == "bounces@example.net"


def test_report_kind_for_outcome_and_item_from_result() -> None:
    assert ReportKind.for_outcome(Outcome.FAILED) is ReportKind.FAILURE
    assert ReportKind.for_outcome(Outcome.DEFERRED) is ReportKind.DELAY
    assert ReportKind.for_outcome(Outcome.DELIVERED) is ReportKind.SUCCESS
    result = RecipientResult.failed(
        0, "smtp; 550 nope", status="5.1.2", remote_mta="dns; mx.example.org"
    )
    item = ReportItem.from_result(result, BOB, last_attempt=NOW)
    assert item == ReportItem(BOB, "5.1.2", "smtp; 550 nope", "dns; mx.example.org", NOW, None)


# --- bad arguments -----------------------------------------------------------------


@pytest.mark.parametrize("status", ["5.1", "6.0.0", "5.1.1000", "5.1.1 ", "", "x.y.z"])
def test_invalid_status_is_refused(status: str) -> None:
    with pytest.raises(ValueError, match="RFC 3463"):
        ReportItem(BOB, status, "")


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ReportKind.FAILURE, "2.0.0"),
        (ReportKind.DELAY, "5.1.1"),
        (ReportKind.DELAY, "2.0.0"),
        (ReportKind.SUCCESS, "4.0.0"),
    ],
)
def test_status_class_must_fit_the_kind(kind: ReportKind, status: str) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        _build([ReportItem(BOB, status, "")], kind=kind)


def test_other_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_report(
            info=_info(),
            original=ORIGINAL,
            items=[],
            kind=ReportKind.FAILURE,
            reporting_mta="mx.example.net",
            now=NOW,
        )
    with pytest.raises(ValueError, match="reporting_mta"):
        _build(reporting_mta="mx.example.net\r\nBcc: evil@x")
    with pytest.raises(ValueError, match="postmaster"):
        _build(postmaster="a b\r\nBcc: evil@x")
    with pytest.raises(ValueError, match="finite"):
        ReportItem(BOB, "5.0.0", "", last_attempt=float("nan"))


# --- who gets a report -------------------------------------------------------------


@pytest.mark.parametrize(
    ("notify", "kind", "expected"),
    [
        (Notify.FAILURE, ReportKind.FAILURE, True),
        (Notify.FAILURE, ReportKind.DELAY, False),
        (Notify.FAILURE, ReportKind.SUCCESS, False),
        (Notify.FAILURE | Notify.DELAY, ReportKind.DELAY, True),
        (Notify.SUCCESS, ReportKind.SUCCESS, True),
        (Notify.SUCCESS, ReportKind.FAILURE, False),
        (Notify.SUCCESS | Notify.FAILURE | Notify.DELAY, ReportKind.SUCCESS, True),
        (Notify.NEVER, ReportKind.FAILURE, False),
        (Notify.NEVER, ReportKind.DELAY, False),
        (Notify.NEVER, ReportKind.SUCCESS, False),
    ],
)
def test_wants_report_follows_notify(notify: Notify, kind: ReportKind, expected: bool) -> None:
    assert wants_report(_info(notify=notify), kind) is expected


def test_default_submission_asks_for_failure_reports_only() -> None:
    notify = NewMessage(sender=ALICE, recipients=(BOB,), content=ORIGINAL).notify
    info = _info(notify=notify)
    assert wants_report(info, ReportKind.FAILURE)
    assert not wants_report(info, ReportKind.DELAY)
    assert not wants_report(info, ReportKind.SUCCESS)


@pytest.mark.parametrize("kind", list(ReportKind))
def test_never_a_report_to_a_null_sender_or_about_a_report(kind: ReportKind) -> None:
    everything = Notify.FAILURE | Notify.DELAY | Notify.SUCCESS
    assert wants_report(_info(notify=everything), kind)
    assert not wants_report(_info(notify=everything, sender=None), kind)
    assert not wants_report(_info(notify=everything, is_report=True), kind)


def _report(info: MessageInfo, kind: ReportKind, status: str) -> NewMessage | None:
    return report_message(
        info=info,
        original=ORIGINAL,
        items=[ReportItem(BOB, status, "smtp; 999 whatever")],
        kind=kind,
        reporting_mta="mx.example.net",
        now=NOW,
    )


def test_report_message_is_a_null_sender_report_to_the_sender() -> None:
    report = _report(_info(), ReportKind.FAILURE, "5.1.1")
    assert report is not None
    assert report.sender is None
    assert report.recipients == (ALICE,)
    assert report.is_report
    assert report.notify is Notify.NEVER
    message = _parse(report.content)
    _, (block,) = _blocks(message)
    assert _raw(block, "Status") == "5.1.1"
    assert message["To"].addresses[0].addr_spec == "alice@example.com"


def test_report_message_none_when_not_wanted() -> None:
    assert _report(_info(sender=None), ReportKind.FAILURE, "5.1.1") is None
    assert _report(_info(is_report=True), ReportKind.FAILURE, "5.1.1") is None
    assert _report(_info(notify=Notify.NEVER), ReportKind.FAILURE, "5.1.1") is None
    assert _report(_info(), ReportKind.DELAY, "4.4.1") is None
    assert _report(_info(), ReportKind.SUCCESS, "2.0.0") is None
    assert _report(_info(notify=Notify.DELAY), ReportKind.DELAY, "4.4.1") is not None
    assert _report(_info(notify=Notify.SUCCESS), ReportKind.SUCCESS, "2.0.0") is not None


def test_a_report_about_a_report_is_never_made() -> None:
    report = _report(_info(), ReportKind.FAILURE, "5.1.1")
    assert report is not None
    info = _info(sender=report.sender, is_report=report.is_report, notify=report.notify)
    assert _report(info, ReportKind.FAILURE, "5.1.1") is None


# --- hostile input -----------------------------------------------------------------


def test_injected_header_in_diagnostic_stays_in_its_field() -> None:
    hostile = "smtp; 550 no\r\nBcc: evil@x\r\n\r\n--boundary\nX-Evil: 1\x00\x1b[31m"
    items = [
        ReportItem(BOB, "5.1.1", hostile, remote_mta="mx.example.org\r\nBcc: evil@x"),
    ]
    data = _build(items)
    message = _parse(data)
    assert "Bcc" not in message
    per_message, (block,) = _blocks(message)
    assert "Bcc" not in per_message
    assert "Bcc" not in block
    assert "X-Evil" not in block
    code = _raw(block, "Diagnostic-Code")
    assert code == "smtp; 550 no Bcc: evil@x --boundary X-Evil: 1 [31m"
    assert _raw(block, "Remote-MTA") == "dns; mx.example.org Bcc: evil@x"
    assert b"\x00" not in data
    assert b"\x1b" not in data
    assert re.search(rb"^Bcc:", data, re.MULTILINE) is None


def test_long_diagnostic_is_cut_and_folded() -> None:
    diagnostic = "smtp; 550 " + " ".join(["word"] * 2000)
    data = _build([_failed(diagnostic=diagnostic)])
    _, (block,) = _blocks(_parse(data))
    code = _raw(block, "Diagnostic-Code")
    assert code is not None
    assert code.startswith("smtp; 550 word word")
    assert code.endswith("...")
    assert len(code) <= 1000
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def test_non_ascii_diagnostic_is_escaped_in_the_status_and_kept_in_the_text() -> None:
    message = _parse(_build([_failed(diagnostic="smtp; 550 boîte pleine ☃")]))
    _, (block,) = _blocks(message)
    assert _raw(block, "Diagnostic-Code") == "smtp; 550 bo\\x{EE}te pleine \\x{2603}"
    assert "smtp; 550 boîte pleine ☃" in _text(message)


def test_malformed_mime_original() -> None:
    original = (
        b"From: x@example.com\r\n"
        b'Content-Type: multipart/mixed; boundary="unterminated\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"--unterminated\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"\r\n"
        b"--===============0000000000000000001==\r\n"
        b"not base64 at all !!!\r\n"
        b"--unterminated\r\n"
        b"Content-Type: multipart/alternative\r\n"
        b"\r\n"
        b"no boundary parameter here\r\n"
    )
    data = _build(original=original)
    message = _parse(data)
    parts = _parts(message)
    assert len(parts) == 3
    assert parts[2].get_content_type() == "message/rfc822"
    assert original in data
    _, (block,) = _blocks(message)
    assert _raw(block, "Status") == "5.1.1"


def test_original_containing_the_report_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    # The email package draws a random boundary and checks it against the parts with
    # a regex that misses CRLF lines; force it to draw one the original contains.
    tokens = iter(range(1, 100))
    monkeypatch.setattr(email.generator.random, "randrange", lambda _n: next(tokens))
    first = f"==============={1:019d}=="
    fake = f"--{first}\r\nContent-Type: text/plain\r\n\r\nfake\r\n--{first}--\r\n"
    original = ORIGINAL + fake.encode()
    data = _build(original=original)
    message = _parse(data)
    assert message.get_boundary() != first
    parts = _parts(message)
    assert len(parts) == 3
    assert parts[2].get_content_type() == "message/rfc822"
    assert original in data


def test_100kb_header_line() -> None:
    long_value = b"x" * 100_000
    original = b"Subject: hi\r\nX-Long: " + long_value + b"\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    data = _build(original=original)
    message = _parse(data)
    returned = _parts(message)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Transfer-Encoding"] == "quoted-printable"
    headers = returned.get_payload(decode=True)
    assert (
        headers.replace(b"\r\n", b"\n")
        == original.split(b"\r\n\r\n")[0].replace(b"\r\n", b"\n") + b"\n"
    )
    assert "longer than 998 octets" in _text(message)
    assert b"body\r\n" not in data.split(b"text/rfc822-headers")[1]


def test_eight_bit_garbage_in_headers_is_returned_as_8bit() -> None:
    original = (
        b"From: \xc3\xa9lise <elise@example.com>\r\n"
        b"Subject: \xff\xfe\x80 garbage \x1b\r\n"
        b"Message-ID: <\xe2\x98\x83@example.com>\r\n"
        b"\r\n"
        b"caf\xe9\r\n"
    )
    data = _build(original=original)
    message = _parse(data)
    returned = _parts(message)[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert original in data
    assert "In-Reply-To" not in message  # a non-ASCII Message-ID is not echoed


def test_eight_bit_headers_only_are_quoted_printable() -> None:
    original = b"Subject: \xff\xfe garbage\r\nFrom: \xc3\xa9@example.com\r\n\r\nbody\r\n"
    item = ReportItem(BOB, "4.4.1", "smtp; 451 later")
    data = _build([item], kind=ReportKind.DELAY, original=original)
    returned = _parts(_parse(data))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Transfer-Encoding"] == "quoted-printable"
    assert returned.get_payload(decode=True) == original.split(b"\r\n\r\n")[0] + b"\r\n"
    assert data.isascii()


def test_nul_bytes_in_original() -> None:
    original = b"Subject: a\x00b\r\n\r\nbo\x00dy\r\n"
    report = report_message(
        info=_info(),
        original=original,
        items=[_failed()],
        kind=ReportKind.FAILURE,
        reporting_mta="mx.example.net",
        now=NOW,
    )
    assert report is not None
    assert b"\x00" not in report.content
    returned = _parts(_parse(report.content))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == b"Subject: a\x00b\r\n"


@pytest.mark.parametrize(
    "original",
    [b"Subject: no body\r\n\r\n", b"Subject: no blank line", b"\r\nbody without headers\r\n"],
)
def test_empty_body_and_odd_originals(original: bytes) -> None:
    message = _parse(_build(original=original))
    parts = _parts(message)
    assert len(parts) == 3
    assert parts[2].get_content_type() == "message/rfc822"
    _, (block,) = _blocks(message)
    assert _raw(block, "Action") == "failed"


@pytest.mark.parametrize("original", [b"", b"\r\n\r\n", b"   "])
def test_empty_original_attaches_nothing(original: bytes) -> None:
    message = _parse(_build(original=original))
    assert len(_parts(message)) == 2
    assert "was empty" in _text(message)


def test_empty_header_section_when_headers_only() -> None:
    message = _parse(_build(original=b"\r\nbody only\r\n", include_content=False))
    assert len(_parts(message)) == 2
    assert "has no header section" in _text(message)


def test_huge_original_is_cut_to_headers() -> None:
    original = ORIGINAL + b"x" * 998 + b"\r\n"
    data = _build(original=original, size_limit=len(original) - 1)
    message = _parse(data)
    returned = _parts(message)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"x" * 998 not in data
    assert "too large" in _text(message)
    assert (
        _parts(_parse(_build(original=original, size_limit=len(original))))[2].get_content_type()
        == "message/rfc822"
    )


def test_the_beginning_of_an_original_too_large_to_return_is_enough() -> None:
    # What the spooler reads of a large original: needed_bytes of it, and its size.
    size = RETURN_SIZE_LIMIT * 5
    need = needed_bytes(size, RETURN_SIZE_LIMIT)
    assert need is not None and need < RETURN_SIZE_LIMIT
    assert needed_bytes(RETURN_SIZE_LIMIT, RETURN_SIZE_LIMIT) is None  # all of it
    beginning = (ORIGINAL + (b"x" * 76 + b"\r\n") * (need // 78 + 1))[:need]
    message = _parse(_build(original=beginning, original_size=size))
    returned = _parts(message)[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert f"too large ({size} bytes)" in _text(message)


def test_default_size_limit_is_10_mib() -> None:
    line = b"y" * 998 + b"\r\n"
    original = ORIGINAL + line * (RETURN_SIZE_LIMIT // len(line) + 1)
    assert len(original) > RETURN_SIZE_LIMIT
    data = _build(original=original)
    assert len(data) < 100_000
    assert _parts(_parse(data))[2].get_content_type() == "text/rfc822-headers"


def test_huge_header_section_is_cut() -> None:
    original = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 900) for i in range(400)) + b"\r\nbody\r\n"
    data = _build(original=original, include_content=False)
    message = _parse(data)
    headers = _parts(message)[2].get_payload(decode=True)
    assert 200_000 < len(headers) <= 256 * 1024
    assert headers.endswith(b"\r\n")
    assert original.startswith(headers)
    assert "cut to" in _text(message)


def test_hostile_subject_and_sender() -> None:
    info = _info(
        sender=Address("SMTP", "alice@example.com, evil@example.net"),
        subject="hi\r\nBcc: evil@x\u202e\udcff",
    )
    message = _parse(_build(info=info))
    assert str(message["To"]) == "undisclosed-recipients:;"
    assert "Bcc" not in message
    text = _parts(message)[0].get_content()
    assert "Subject: hi Bcc: evil@x\ufffd" in text
    assert "\u202e" not in text


def test_non_smtp_sender_gets_undisclosed_to() -> None:
    message = _parse(_build(info=_info(sender=Address("MAILDIR", "/var/mail/alice"))))
    assert str(message["To"]) == "undisclosed-recipients:;"


# --- properties --------------------------------------------------------------------

_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)


def _statuses(classes: str) -> st.SearchStrategy[str]:
    return st.builds(
        "{}.{}.{}".format,
        st.sampled_from(classes),
        st.integers(0, 999),
        st.integers(0, 999),
    )


_KIND_AND_STATUS = st.sampled_from(list(ReportKind)).flatmap(
    lambda kind: st.tuples(
        st.just(kind), _statuses({"failed": "45", "delayed": "4", "delivered": "2"}[kind.value])
    )
)


@settings(max_examples=150, deadline=None)
@given(kind_status=_KIND_AND_STATUS, diagnostics=st.lists(_PRINTABLE, min_size=1, max_size=4))
def test_printable_diagnostics_and_statuses_round_trip(
    kind_status: tuple[ReportKind, str], diagnostics: list[str]
) -> None:
    kind, status = kind_status
    items = [
        ReportItem(Address("SMTP", f"r{i}@example.org"), status, f"smtp; {text}")
        for i, text in enumerate(diagnostics)
    ]
    message = _parse(_build(items, kind=kind))
    _, blocks = _blocks(message)
    assert len(blocks) == len(items)
    for i, (block, text) in enumerate(zip(blocks, diagnostics, strict=True)):
        assert _raw(block, "Status") == status
        assert _raw(block, "Action") == kind.value
        assert _raw(block, "Final-Recipient") == f"rfc822; r{i}@example.org"
        expected = ("smtp; " + " ".join(text.split())).rstrip()
        assert _raw(block, "Diagnostic-Code") == expected


@settings(max_examples=150, deadline=None)
@given(
    kind_status=_KIND_AND_STATUS,
    diagnostic=st.text(max_size=400),
    remote=st.one_of(st.none(), st.text(max_size=100)),
    value=st.text(min_size=1, max_size=60),
    original=st.binary(max_size=2000),
)
def test_arbitrary_text_never_breaks_the_report(
    kind_status: tuple[ReportKind, str],
    diagnostic: str,
    remote: str | None,
    value: str,
    original: bytes,
) -> None:
    kind, status = kind_status
    try:
        address = Address("SMTP", value)
    except ValueError:
        address = Address("SMTP", "fallback@example.org")
    item = ReportItem(address, status, diagnostic, remote_mta=remote)
    data = _build([item], kind=kind, original=original)
    message = _parse(data)
    _, (block,) = _blocks(message)
    assert _raw(block, "Status") == status
    assert _raw(block, "Action") == kind.value
    for name in ("Final-Recipient", "Diagnostic-Code", "Remote-MTA"):
        field = _raw(block, name)
        assert field is None or (field.isascii() and field.isprintable())
    assert NewMessage(sender=None, recipients=(ALICE,), content=data).size == len(data)


def test_long_diagnostic_is_written_literally() -> None:
    # Left to itself the email package refolds a long raw value by parsing it as
    # RFC 2047 text, which would rewrite this encoded-word look-alike.
    diagnostic = "smtp; 550 " + "mailbox unavailable " * 5 + "=?iso-8859-1?q?caf=E9?= end"
    data = _build([_failed(diagnostic=diagnostic)])
    _, (block,) = _blocks(_parse(data))
    assert _raw(block, "Diagnostic-Code") == " ".join(diagnostic.split())
    assert b"=?iso-8859-1?q?caf=E9?=" in data


def test_the_original_recipient_comes_before_the_final_one() -> None:
    """RFC 3464 2.3.1: a recipient that came with an ORCPT (RFC 3461) is named as it
    came first; one without has no Original-Recipient."""
    given = ReportItem(BOB, "5.1.1", "smtp; 550 no", original="RFC822;Bob.Old@old.example")
    _, (first, second) = _blocks(_parse(_build([given, _failed(CAROL)])))
    assert list(first.keys())[:2] == ["Original-Recipient", "Final-Recipient"]
    assert first["Original-Recipient"] == "rfc822; Bob.Old@old.example"
    assert first["Final-Recipient"] == "rfc822; bob@example.org"
    assert "Original-Recipient" not in second


@pytest.mark.parametrize(
    ("original", "field"),
    [
        # what a header field can't hold comes out on one line, in ASCII
        ("rfc822;j\u00f6rg@old.example", "rfc822; j\\x{F6}rg@old.example"),
        ("rfc822;a@b\r\nX-Injected: yes", "rfc822; a@b X-Injected: yes"),
        ("X_Odd;someone", "x-odd; someone"),
        ("no type at all", "unknown; no type at all"),
        # the longest the listener takes (500 characters), on one line under 998
        ("rfc822;" + "a" * 480 + "@old.example", "rfc822; " + "a" * 480 + "@old.example"),
        ("utf-8;\u4f8b@\u4f8b.example", "utf-8; \\x{4F8B}@\\x{4F8B}.example"),
    ],
)
def test_a_hostile_original_recipient_stays_one_ascii_field(original: str, field: str) -> None:
    item = ReportItem(BOB, "5.1.1", original=original)
    data = _build([item])
    _, [block] = _blocks(_parse(data))
    assert block["Original-Recipient"] == field
    assert b"\r\nX-Injected" not in data
