"""Fuzz target: the DSN builder (:func:`spoolbox.reports.build_report`).

Hypothesis builds originals from a grammar of header lines (folded, 8-bit, odd
charsets and encoded words, very long), MIME bodies (multipart with missing or
repeated boundaries, a line equal to a boundary), NUL and bare CR or LF; recipients
of every address type; diagnostics, remote MTA names, subjects and ids with CR, LF,
controls and non-ASCII.  Whatever the input, the report:

* has CRLF line ends only, no line over 998 octets, and parses with the ``email``
  package without defects as ``multipart/report; report-type=delivery-status``;
* has only the report's own header fields, each once (no header injection), and 2 or
  3 parts: text/plain, message/delivery-status, then the original as message/rfc822
  (verbatim, line ends made CRLF) or text/rfc822-headers;
* has one delivery-status block per item, in order, with only RFC 3464 fields, in
  printable ASCII, whose Action and Status are the kind's and the item's.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage, Message

from fuzz_settings import budget
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox.model import Address, AddressError, MessageInfo, Notify, Priority
from spoolbox.reports import ReportItem, ReportKind, build_report

_TOP = {
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
_PER_MESSAGE = {"reporting-mta", "x-spoolbox-queue-id", "original-envelope-id", "arrival-date"}
_PER_RECIPIENT = {
    "final-recipient",
    "action",
    "status",
    "remote-mta",
    "diagnostic-code",
    "last-attempt-date",
    "will-retry-until",
}
_HOSTILE = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from(["\r", "\n", "\x00", "\x85", "\u2028", "\u202e", ";", ":", "\t"]),
    ),
    max_size=60,
)
_HEADER_NAME = st.sampled_from(
    [
        b"From",
        b"To",
        b"Subject",
        b"Message-ID",
        b"Content-Type",
        b"Content-Transfer-Encoding",
        b"MIME-Version",
        b"Received",
        b"X-\xff",
        b"Bad Name",
        b"",
    ]
)
_HEADER_VALUE = st.one_of(
    st.sampled_from(
        [
            b"<id.1@example.com>",
            b"<\xe2\x98\x83@x>",
            b"multipart/mixed; boundary=B",
            b'multipart/mixed; boundary="unterminated',
            b"text/plain; charset=x-unknown-7",
            b"text/plain; charset=utf-7",
            b"=?utf-8?b?4piD?=",
            b"=?bogus?q?=ZZ?=",
            b"base64",
            b"a\r\n folded",
            b"\xc3\xa9l\xe8ve",
            b"",
        ]
    ),
    st.binary(max_size=40),
    st.integers(900, 1100).map(lambda n: b"v" * n),
)
_BODY_LINE = st.one_of(
    st.sampled_from(
        [
            b"--B",
            b"--B--",
            b"--===============0000000000000000001==",
            b".",
            b"",
            b"body",
            b"\xff\xfe",
            b"a\x00b",
            b"From me",
        ]
    ),
    st.binary(max_size=50),
)


@st.composite
def _original(draw: st.DrawFn) -> bytes:
    headers = [
        draw(_HEADER_NAME) + b": " + draw(_HEADER_VALUE) for _ in range(draw(st.integers(0, 6)))
    ]
    body = draw(st.lists(_BODY_LINE, max_size=8))
    eol = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    blank = draw(st.sampled_from([eol, eol, b""]))
    return eol.join(headers) + eol + blank + eol.join(body) + draw(st.sampled_from([eol, b""]))


def _address(type_: str, value: str) -> Address:
    try:
        return Address(type_, value)
    except AddressError:
        return Address(type_, "fallback@example.org")


_ADDRESSES = st.builds(
    _address,
    st.sampled_from(["SMTP", "SMTP", "X400", "MAILDIR", "FAX", "X-ODD", "A.B+C"]),
    st.one_of(
        st.sampled_from(
            ["bob@example.org", "j\u00f6rg@b\u00fccher.de", "a, b@c", "<x>", '"q"@x', "\u2603"]
        ),
        _HOSTILE,
    ),
)
_CLASSES = {ReportKind.FAILURE: "45", ReportKind.DELAY: "4", ReportKind.SUCCESS: "2"}


@st.composite
def _items(draw: st.DrawFn, kind: ReportKind) -> list[ReportItem]:
    def status() -> str:
        code = draw(st.sampled_from(_CLASSES[kind]))
        return f"{code}.{draw(st.integers(0, 999))}.{draw(st.integers(0, 999))}"

    times = st.one_of(st.none(), st.floats(0, 4e9))
    return [
        ReportItem(
            draw(_ADDRESSES),
            status(),
            draw(
                st.one_of(_HOSTILE, st.sampled_from(["smtp; 550 5.1.1 no", "X-Foo;bar", "x400; x"]))
            ),
            remote_mta=draw(st.one_of(st.none(), _HOSTILE)),
            last_attempt=draw(times),
            will_retry_until=draw(times),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]


@st.composite
def _info(draw: st.DrawFn) -> MessageInfo:
    return MessageInfo(
        id=draw(st.one_of(st.just("018f00aa11bb22cc33dd"), _HOSTILE)),
        sender=draw(st.one_of(st.none(), _ADDRESSES)),
        priority=Priority.NORMAL,
        submitted_at=draw(st.floats(0, 4e9)),
        send_at=None,
        expires_at=0.0,
        notify=Notify.FAILURE,
        is_report=False,
        envelope_id=draw(st.one_of(st.none(), _HOSTILE)),
        size=0,
        subject=draw(_HOSTILE),
    )


def _raw(block: Message, name: str) -> str:
    (value,) = [v for k, v in block.raw_items() if k.lower() == name]
    return re.sub(r"\r?\n(?=[ \t])", "", str(value)).strip()


def _check(data: bytes, original: bytes, items: list[ReportItem], kind: ReportKind) -> None:
    assert b"\x00" not in data  # no MIME type or encoding of a report may carry NUL
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    names = [k.lower() for k in message]
    assert set(names) <= _TOP and len(names) == len(set(names)), names
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = message.get_payload()
    assert isinstance(parts, list) and 2 <= len(parts) <= 3
    assert parts[0].get_content_type() == "text/plain" and parts[0].defects == []
    assert isinstance(parts[0].get_content(), str)
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) == 1 + len(items)
    assert {k.lower() for k in blocks[0]} <= _PER_MESSAGE
    for block, item in zip(blocks[1:], items, strict=True):
        fields = [k.lower() for k in block]
        assert set(fields) <= _PER_RECIPIENT and len(fields) == len(set(fields)), fields
        for name in fields:
            value = _raw(block, name)
            assert value.isascii() and value.isprintable(), (name, value)
        assert _raw(block, "action") == kind.value
        assert _raw(block, "status") == item.status
    if len(parts) == 3:
        returned = parts[2].get_content_type()
        assert returned in ("message/rfc822", "text/rfc822-headers")
        if returned == "message/rfc822":
            assert re.sub(rb"\r\n|\r|\n", b"\r\n", original) in data


@budget(50)
@given(
    kind_items=st.sampled_from(list(ReportKind)).flatmap(
        lambda k: st.tuples(st.just(k), _items(k))
    ),
    info=_info(),
    original=st.one_of(_original(), st.binary(max_size=300)),
    include_content=st.sampled_from([None, True, False]),
    size_limit=st.sampled_from([10, 200, 10 * 1024 * 1024]),
)
@example(  # a line of the original that is the report's own boundary, later drawn
    kind_items=(ReportKind.FAILURE, [ReportItem(Address("SMTP", "b@c.d"), "5.1.1", "a\r\nBcc: x")]),
    info=MessageInfo(
        "id",
        Address("SMTP", "a@b.c, Bcc: evil@x"),
        Priority.NORMAL,
        0.0,
        None,
        0.0,
        Notify.FAILURE,
        False,
        "env\nid",
        0,
        "s\r\nX-Injected: 1",
    ),
    original=b"Subject: x\r\n\r\n--===============0000000000000000001==\r\n",
    include_content=None,
    size_limit=10 * 1024 * 1024,
).via("CR LF in every text field")
@example(
    kind_items=(ReportKind.FAILURE, [ReportItem(Address("SMTP", "b@c.d"), "5.1.1")]),
    info=MessageInfo(
        "id", None, Priority.NORMAL, 0.0, None, 0.0, Notify.FAILURE, False, None, 0, ""
    ),
    original=b"Subject: a\x00b\r\n\r\nbo\x00dy\r\n",
    include_content=True,
    size_limit=10 * 1024 * 1024,
).via("NUL in the original: never embedded as message/rfc822")
def test_report_is_well_formed_whatever_the_input(
    kind_items: tuple[ReportKind, list[ReportItem]],
    info: MessageInfo,
    original: bytes,
    include_content: bool | None,
    size_limit: int,
) -> None:
    kind, items = kind_items
    data = build_report(
        info=info,
        original=original,
        items=items,
        kind=kind,
        reporting_mta="mx.example.net",
        now=1_700_000_000.0,
        include_content=include_content,
        size_limit=size_limit,
    )
    _check(data, original, items, kind)
