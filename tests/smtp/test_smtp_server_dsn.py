"""DSN (RFC 3461) in the SMTP server machine: the EHLO keyword, RET and ENVID on MAIL,
NOTIFY and ORCPT on RCPT, checked and handed on with the message; malformed ones
refused naming the parameter.  Fed bytes, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_smtp_server_machine import ready, run

from spoolbox.smtp import xtext
from spoolbox.smtp.server import MailFrom, MessageData, RcptTo


def test_dsn_is_offered_only_when_set() -> None:
    keywords = [line[4:] for line in run(ready(dsn=True), b"EHLO c.test\r\n")[1][0].split("\n")]
    assert "DSN" in keywords
    keywords = [line[4:] for line in run(ready(), b"EHLO c.test\r\n")[1][0].split("\n")]
    assert "DSN" not in keywords


def test_the_parameters_travel_with_the_message() -> None:
    m = ready(dsn=True)
    m.data_to_send()
    events, out = run(
        m,
        b"MAIL FROM:<a@b.c> RET=hdrs ENVID=QQ+2B314\r\n"
        b"RCPT TO:<d@e.f> NOTIFY=success,delay ORCPT=rfc822;d+40e.f\r\n"
        b"RCPT TO:<g@e.f>\r\n"
        b"DATA\r\nhi\r\n.\r\n",
    )
    assert events[0] == MailFrom("a@b.c", (("RET", "HDRS"), ("ENVID", "QQ+2B314")))
    assert events[1] == RcptTo("d@e.f", (("NOTIFY", "SUCCESS,DELAY"), ("ORCPT", "rfc822;d+40e.f")))
    assert events[2] == RcptTo("g@e.f")
    data = events[3]
    assert isinstance(data, MessageData)
    assert data.params == (("RET", "HDRS"), ("ENVID", "QQ+2B314"))
    assert data.recipient_params == (
        (("NOTIFY", "SUCCESS,DELAY"), ("ORCPT", "rfc822;d+40e.f")),
        (),
    )
    assert [r[:3] for r in out] == ["250", "250", "250", "354", "250"]


def test_a_refused_recipient_leaves_no_parameters_behind() -> None:
    m = ready(dsn=True)
    m.data_to_send()
    m.receive_data(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@e.f> NOTIFY=NEVER\r\n")
    assert isinstance(m.next_event(), MailFrom)
    m.respond("250 OK")
    assert isinstance(m.next_event(), RcptTo)
    m.respond("550 no")
    events, _ = run(m, b"RCPT TO:<d@e.f> NOTIFY=FAILURE\r\nDATA\r\nhi\r\n.\r\n")
    data = events[-1]
    assert isinstance(data, MessageData)
    assert (data.recipients, data.recipient_params) == (("d@e.f",), ((("NOTIFY", "FAILURE"),),))


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"MAIL FROM:<a@b.c> RET=ALL", "501 5.5.4 RET must be FULL or HDRS"),
        (b"MAIL FROM:<a@b.c> RET", "501 5.5.4 RET must be FULL or HDRS"),
        (b"MAIL FROM:<a@b.c> RET=FULL RET=HDRS", "501 5.5.4 Duplicate MAIL parameter RET"),
        (b"MAIL FROM:<a@b.c> ENVID=a+2", "501 5.5.4 ENVID must be xtext"),  # a cut +XX
        (b"MAIL FROM:<a@b.c> ENVID=a+20b", "501 5.5.4 ENVID must be xtext"),  # a space
        (b"MAIL FROM:<a@b.c> ENVID=" + b"x" * 101, "501 5.5.4 ENVID must be xtext"),
        (b"MAIL FROM:<a@b.c> ENVID", "501 5.5.4 ENVID must be xtext"),
    ],
)
def test_a_malformed_mail_parameter_is_named(line: bytes, reply: str) -> None:
    _, out = run(ready(dsn=True), line + b"\r\n")
    assert out[-1].startswith(reply), out


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"RCPT TO:<d@e.f> NOTIFY=NEVER,SUCCESS", "501 5.5.4 NOTIFY must be NEVER, or"),
        (b"RCPT TO:<d@e.f> NOTIFY=SOMETIMES", "501 5.5.4 NOTIFY must be NEVER, or"),
        (b"RCPT TO:<d@e.f> NOTIFY=FAILURE,FAILURE", "501 5.5.4 NOTIFY must be NEVER, or"),
        (b"RCPT TO:<d@e.f> NOTIFY", "501 5.5.4 NOTIFY must be NEVER, or"),
        (b"RCPT TO:<d@e.f> ORCPT=d@e.f", "501 5.5.4 ORCPT must be addr-type;xtext"),
        (b"RCPT TO:<d@e.f> ORCPT=rfc822;", "501 5.5.4 ORCPT must be addr-type;xtext"),
        (b"RCPT TO:<d@e.f> ORCPT=rfc822;a+zz", "501 5.5.4 ORCPT must be addr-type;xtext"),
        (b"RCPT TO:<d@e.f> ORCPT=rfc822;" + b"a" * 500, "501 5.5.4 ORCPT must be"),
        # a line break hidden in the xtext would end up in a report's header field
        (b"RCPT TO:<d@e.f> ORCPT=rfc822;d@e.f+0D+0AX-Evil:+201", "501 5.5.4 ORCPT must be"),
        (b"RCPT TO:<d@e.f> ORCPT=rfc822;d+00@e.f", "501 5.5.4 ORCPT must be"),
        (b"RCPT TO:<d@e.f> NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Duplicate RCPT parameter"),
        (b"RCPT TO:<d@e.f> XFOO=1", "555 5.5.4 RCPT parameter XFOO not supported"),
    ],
)
def test_a_malformed_rcpt_parameter_is_named(line: bytes, reply: str) -> None:
    m = ready(dsn=True)
    run(m, b"MAIL FROM:<a@b.c>\r\n")
    _, out = run(m, line + b"\r\n")
    assert out[-1].startswith(reply), out


def test_without_dsn_its_parameters_are_not_supported() -> None:
    _, out = run(ready(), b"MAIL FROM:<a@b.c> RET=FULL\r\n")
    assert out[-1] == "555 5.5.4 MAIL parameter RET not supported"
    m = ready()
    run(m, b"MAIL FROM:<a@b.c>\r\n")
    _, out = run(m, b"RCPT TO:<d@e.f> NOTIFY=NEVER\r\n")
    assert out[-1] == "555 5.5.4 RCPT parameter NOTIFY not supported"


def test_a_long_orcpt_fits_the_longer_rcpt_line_of_dsn() -> None:
    orcpt = b"rfc822;" + b"a" * 480 + b"+40example.org"  # 501 characters: one too many
    m = ready(dsn=True)
    run(m, b"MAIL FROM:<a@b.c>\r\n")
    _, out = run(m, b"RCPT TO:<d@e.f> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" + orcpt[:500] + b"\r\n")
    assert out[-1].startswith("250"), out
    m = ready()
    run(m, b"MAIL FROM:<a@b.c>\r\n")
    _, out = run(m, b"RCPT TO:<d@e.f> ORCPT=" + orcpt[:500] + b"\r\n")
    assert out[-1].startswith("500 5.5.2"), out  # the plain line limit without DSN


@given(st.text(min_size=0, max_size=60))
def test_xtext_carries_any_text(text: str) -> None:
    encoded = xtext.encode(text)
    assert encoded.isascii() and "=" not in encoded and " " not in encoded
    if all(ord(c) <= 0xFF for c in text):
        assert xtext.decode(encoded) == text


def test_xtext_examples() -> None:
    assert xtext.encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext.decode("a+2Bb+3Dc+20d") == "a+b=c d"
    assert xtext.decode("a+2b") is None  # lower-case hex is not xtext
    assert xtext.decode("a=b") is None
