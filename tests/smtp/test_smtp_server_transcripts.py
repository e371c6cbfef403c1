"""Exact transcripts of the SMTP server machine: every reply's full text, written out
by hand, for commands in and out of order and for MAIL FROM's syntax and parameters.

The machine tests (test_smtp_server_machine.py) check the protocol by reply codes;
these check the text a client and a log reader see, which mutation testing showed no
test held (a reply could be rewritten without any test noticing)."""

from __future__ import annotations

import pytest
from test_smtp_server_machine import machine, run

from spoolbox.smtp.server import (
    MailFrom,
    MessageData,
    RcptTo,
    Refused,
    ServerMachine,
)

EHLO = "250-mx.test\n250-SIZE 10000\n250-PIPELINING\n250-8BITMIME\n250 ENHANCEDSTATUSCODES"
HELP = "214 2.0.0 Supported commands: DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY"
HELO_FIRST = "503 5.5.1 Error: send HELO first"
VRFY = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"


def test_before_helo_only_the_session_commands_work() -> None:
    events, out = run(
        machine(),
        b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\nNOOP\r\nRSET\r\n"
        b"VRFY x\r\nHELP\r\nQUIT now\r\nQUIT\r\n",
    )
    assert events == []
    assert out == [
        HELO_FIRST,
        HELO_FIRST,
        HELO_FIRST,
        "250 2.0.0 OK",
        "250 2.0.0 OK",
        VRFY,
        HELP,
        "501 5.5.4 Syntax: QUIT",
        "221 2.0.0 Bye",
    ]


def test_simple_commands_word_for_word() -> None:
    events, out = run(
        machine(),
        b"HELO client.test\r\nNOOP whatever\r\nRSET\r\nRSET x\r\nVRFY bob\r\nVRFY\r\n"
        b"HELP\r\nHELP MAIL\r\nFOO bar\r\n\r\nQUIT\r\n",
    )
    assert events == []
    assert out == [
        "250 mx.test",
        "250 2.0.0 OK",
        "250 2.0.0 OK",
        "501 5.5.4 Syntax: RSET",
        VRFY,
        "501 5.5.4 Syntax: VRFY <address>",
        HELP,
        HELP,
        '500 5.5.1 Error: command "FOO" not recognized',
        "500 5.5.2 Error: bad syntax",
        "221 2.0.0 Bye",
    ]


def test_help_names_auth_and_starttls_only_when_offered() -> None:
    m = machine(auth=True, auth_without_tls=True, tls_available=True)
    _, out = run(m, b"EHLO c\r\nHELP\r\n")
    assert out[1] == (
        "214 2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET "
        "STARTTLS VRFY"
    )


@pytest.mark.parametrize(
    ("line", "sender", "reply"),
    [
        (b"MAIL FROM:<a@x.org>", "a@x.org", "250 2.0.0 OK"),
        (b"MAIL FROM: <a@x.org>", "a@x.org", "250 2.0.0 OK"),
        (b"MAIL FROM:<>", "", "250 2.0.0 OK"),
        (b"MAIL FROM:<> SIZE=10", "", "250 2.0.0 OK"),
        (b"MAIL FROM:<a@x.org> BODY=8BITMIME", "a@x.org", "250 2.0.0 OK"),
        (b"MAIL", None, "501 5.5.4 Syntax: MAIL FROM:<address> [SP <parameters>]"),
        (b"MAIL TO:<a@x.org>", None, "501 5.5.4 Syntax: MAIL FROM:<address> [SP <parameters>]"),
        (b"MAIL FROM:<a@x.org", None, "501 5.5.4 Syntax: MAIL FROM:<address> [SP <parameters>]"),
        (b"MAIL FROM:<a@x.org> SIZE=abc", None, "501 5.5.4 Syntax: SIZE=<octets>"),
        (
            b"MAIL FROM:<a@x.org> BODY=BINARYMIME",
            None,
            "501 5.5.4 BODY can only be one of 7BIT, 8BITMIME",
        ),
        (b"MAIL FROM:<a@x.org> FOO=bar", None, "555 5.5.4 MAIL parameter FOO not supported"),
        (
            b"MAIL FROM:<a@x.org> SMTPUTF8",
            None,
            "555 5.5.4 MAIL parameter SMTPUTF8 not supported",
        ),
        (
            b"MAIL FROM:<@r:a@x.org>",
            None,
            "501 5.5.4 Source routes are not accepted (RFC 5321 section 4.1.2)",
        ),
        (
            b"MAIL FROM:<\xc3\xa9@x.org>",
            None,
            "500 5.5.2 Error: strict ASCII mode (SMTPUTF8 is not offered)",
        ),
    ],
)
def test_mail_from(line: bytes, sender: str | None, reply: str) -> None:
    m = machine()
    run(m, b"EHLO c\r\n")
    events, out = run(m, line + b"\r\n")
    assert out == [reply]
    if sender is None:
        assert events == []
    else:
        params = tuple(
            (k, v)
            for k, _, v in (p.partition("=") for p in line.split(b">", 1)[1].decode().split())
        )
        assert events == [MailFrom(sender, params)]


def test_a_declared_size_over_the_limit_is_refused_with_both_numbers() -> None:
    m = machine()
    run(m, b"EHLO c\r\n")
    events, out = run(m, b"MAIL FROM:<a@x.org> SIZE=99999\r\n")
    assert [type(e) for e in events] == [Refused]
    assert out == ["552 5.3.4 Message size 99999 exceeds the limit of 10000 octets"]


def test_transaction_order_and_refused_recipients() -> None:
    m = machine()
    _, out = run(
        m,
        b"EHLO c\r\nRCPT TO:<b@x.org>\r\nDATA\r\nMAIL FROM:<a@x.org>\r\nDATA\r\n"
        b"MAIL FROM:<c@x.org>\r\nRCPT TO:<@relay:b@x.org>\r\n"
        b"RCPT TO:<b@x.org> NOTIFY=NEVER\r\n",
    )
    assert out == [
        EHLO,
        "503 5.5.1 Error: need MAIL command",
        "503 5.5.1 Error: need RCPT command",
        "250 2.0.0 OK",
        "503 5.5.1 Error: need RCPT command",
        "503 5.5.1 Error: nested MAIL command",
        "501 5.5.4 Source routes are not accepted (RFC 5321 section 4.1.2)",
        "555 5.5.4 RCPT parameter NOTIFY not supported",
    ]
    # Every recipient refused by the decision: DATA has nobody to deliver to.
    events, out = run(
        m, b"RCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\nDATA\r\n", {RcptTo: "550 5.1.1 no"}
    )
    assert [type(e) for e in events] == [RcptTo, RcptTo, Refused]
    assert out == ["550 5.1.1 no", "550 5.1.1 no", "554 5.5.1 No valid recipients"]
    # RSET starts over: the refused count too.
    events, out = run(m, b"RSET\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA x\r\nDATA\r\n")
    assert out == [
        "250 2.0.0 OK",
        "250 2.0.0 OK",
        "250 2.0.0 OK",
        "501 5.5.4 Syntax: DATA",
        "354 End data with <CR><LF>.<CR><LF>",
    ]


def test_respond_without_a_pending_decision_says_so() -> None:
    m = machine()
    with pytest.raises(RuntimeError, match="no decision is pending") as err:
        m.respond("250 2.0.0 OK")
    assert str(err.value).startswith("no decision is pending (")


# -- DATA limits, however the bytes arrive -----------------------------------------------
CHUNKS = [None, 1, 2, 7, 4096]  # None: all at once


def send_data(content: bytes, chunk: int | None) -> tuple[list[object], list[str]]:
    m = machine()
    run(m, b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n")
    data = content + b".\r\n"
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return feed(m, *pieces)


def feed(m: ServerMachine, *pieces: bytes) -> tuple[list[object], list[str]]:
    """Feed ``pieces`` (one read each); the events and the replies."""
    events: list[object] = []
    out: list[str] = []
    for piece in pieces:
        e, o = run(m, piece)
        events += e
        out += o
    return events, out


def lines_of(total: int) -> bytes:
    """A message of exactly ``total`` octets, lines of 50 and CRLF (the last shorter)."""
    body = b"".join(b"x" * 50 + b"\r\n" for _ in range(total // 52))
    rest = total - len(body)
    if rest == 1:  # no room for a line of its own: lengthen the last one
        body = body[:-2] + b"z\r\n"
    elif rest:
        body += b"y" * (rest - 2) + b"\r\n"
    assert len(body) == total
    return body


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("total", [9_999, 10_000])
def test_a_message_of_the_size_limit_is_taken(chunk: int | None, total: int) -> None:
    content = lines_of(total)
    events, out = send_data(content, chunk)
    assert [type(e) for e in events] == [MessageData]
    assert events[0].content == content  # type: ignore[attr-defined]
    assert out == ["250 2.0.0 OK"]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("total", [10_001, 10_002, 20_000])
def test_a_message_over_the_size_limit_is_refused(chunk: int | None, total: int) -> None:
    events, out = send_data(lines_of(total), chunk)
    assert [type(e) for e in events] == [Refused]
    assert out == ["552 5.3.4 Message too big: the limit is 10000 octets"]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_line_of_the_line_limit_is_taken(chunk: int | None) -> None:
    content = b"one\r\n..two\r\n" + b"a" * 100 + b"\r\n\r\n"
    events, out = send_data(content, chunk)
    assert [type(e) for e in events] == [MessageData]
    assert events[0].content == b"one\r\n.two\r\n" + b"a" * 100 + b"\r\n\r\n"  # type: ignore[attr-defined]
    assert out == ["250 2.0.0 OK"]


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_line_over_the_line_limit_is_refused_naming_it(chunk: int | None) -> None:
    events, out = send_data(b"one\r\ntwo\r\n" + b"a" * 101 + b"\r\nfour\r\n", chunk)
    assert [type(e) for e in events] == [Refused]
    assert out == [
        "554 5.6.0 Line 3 of the message is longer than 100 octets (RFC 5322 section 2.1.1);"
        " message not queued"
    ]
