"""The SMTP server machine's rules that mutation testing found unguarded: every reply
written out in full, the limits at their boundaries, and DATA cut at the places where
the machine keeps a byte back (a CR that may start the CRLF).

The expected values are the RFCs' rules and the replies as a client reads them, written
by hand; nothing is taken from the machine's own constants."""

from __future__ import annotations

import base64
import itertools

import pytest
from test_smtp_server_machine import machine, ready, run
from test_smtp_server_transcripts import feed

from spoolbox.smtp.server import (
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    MailFrom,
    MessageData,
    RcptTo,
    Refused,
    ServerMachine,
    ServerSettings,
    StartTLS,
)

TOO_LONG = "500 5.5.2 Line too long (RFC 5321 allows 512 octets)"
BAD_SYNTAX = "500 5.5.2 Error: bad syntax"
OK = "250 2.0.0 OK"
MAIL_SYNTAX = "501 5.5.4 Syntax: MAIL FROM:<address> [SP <parameters>]"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_the_sentinels_name_themselves() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(PAUSED) == "PAUSED"


# -- command lines ------------------------------------------------------------------


def test_a_line_that_starts_with_its_line_feed_is_an_empty_command() -> None:
    # A bare LF ends a command line, also as the very first byte of the session and
    # right after another line.
    assert run(machine(), b"\nNOOP\r\n")[1] == [BAD_SYNTAX, OK]
    assert run(machine(), b"NOOP\r\n\nNOOP\r\n")[1] == [OK, BAD_SYNTAX, OK]


def test_an_endless_command_line_is_refused_once_with_its_rest() -> None:
    m = machine()
    run(m, b"A" * 13_000)  # more than any command may be (12288 for AUTH)
    _, out = run(m, b"BBBB\r\nNOOP\r\n")
    assert out == [TOO_LONG, OK]  # BBBB is the end of the long line, not a command


def test_the_command_limit_counts_every_octet_even_trailing_spaces() -> None:
    # RFC 5321 4.5.3.1.4: 512 octets with the CRLF; 511 + CRLF is one too many.
    assert run(machine(), b"NOOP" + b" " * 507 + b"\r\n")[1] == [TOO_LONG]


def test_mail_and_auth_lines_get_the_room_of_their_extensions() -> None:
    # MAIL: 512 + SIZE= (RFC 1870: 26) + BODY= (16) + AUTH= (RFC 4954: 500) = 1054.
    def mail(total: int) -> bytes:
        head, tail = b"MAIL FROM:<", b"@b.c>\r\n"
        return head + b"a" * (total - len(head) - len(tail)) + tail

    m = ready()
    events, out = run(m, mail(1054))
    assert out == [OK]
    assert events == [MailFrom("a" * (1054 - 18) + "@b.c")]
    m = ready()
    assert run(m, mail(1055)) == ([], [TOO_LONG])
    # AUTH: RFC 4954 section 4 allows 12288 octets; an initial response of 600 is fine.
    m = ready(auth=True, auth_without_tls=True)
    value = b"\x00ann\x00" + b"p" * 445  # 450 octets, 600 in base64
    events, out = run(m, b"AUTH PLAIN " + b64(value) + b"\r\n")
    assert events == [AuthCredentials("PLAIN", b"ann", b"p" * 445)]
    assert out == ["235 2.7.0 OK"]


def test_only_spaces_and_tabs_around_the_argument_are_dropped() -> None:
    vrfy = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    # "X" is the argument, not a character to strip; a vertical tab is not SP/HTAB.
    assert run(machine(), b"VRFY X\r\nVRFY \x0b\r\nVRFY \t \r\n")[1] == [
        vrfy,
        vrfy,
        "501 5.5.4 Syntax: VRFY <address>",
    ]


def test_unknown_commands_are_named_printable_and_short() -> None:
    m = machine()
    _, out = run(m, b"FO\tO\r\nB\x01R~\r\n" + b"Z" * 30 + b" x\r\nQQ\r\nWW\r\nNOOP\r\n")
    assert out == [
        '500 5.5.1 Error: command "FO?O" not recognized',
        '500 5.5.1 Error: command "B?R~" not recognized',
        '500 5.5.1 Error: command "' + "Z" * 20 + '" not recognized',
        '500 5.5.1 Error: command "QQ" not recognized',
        "502 5.5.1 Too many unrecognized commands, goodbye.",
    ]
    assert m.closing


def test_activity_grows_on_every_command_and_every_chunk_of_data() -> None:
    m = machine()
    seen = [m.activity]
    for line in (b"EHLO c\r\n", b"NOOP\r\n", b"MAIL FROM:<a@b.c>\r\n", b"RCPT TO:<d@e.f>\r\n"):
        run(m, line)
        seen.append(m.activity)
    run(m, b"DATA\r\n")
    seen.append(m.activity)
    for chunk in (b"one\r\n", b"two\r\n", b"thr", b"ee\r\n"):
        run(m, chunk)
        seen.append(m.activity)
    assert all(a < b for a, b in itertools.pairwise(seen)), seen


def test_hello_without_a_name_says_which_command() -> None:
    assert run(machine(), b"EHLO\r\nHELO\r\nHELO \r\n")[1] == [
        "501 5.5.4 Syntax: EHLO hostname",
        "501 5.5.4 Syntax: HELO hostname",
        "501 5.5.4 Syntax: HELO hostname",
    ]


def test_a_non_ascii_hostname_is_sent_with_question_marks() -> None:
    # Replies are ASCII (RFC 5321 2.4); a misconfigured name must not break the session.
    m = ServerMachine(ServerSettings(hostname="mx.tést", max_message_size=100))
    assert m.data_to_send() == b"220 mx.t?st spoolbox ESMTP\r\n"
    m.receive_data(b"HELO c\r\nEHLO c\r\n")
    assert m.next_event() is NEED_DATA
    assert m.data_to_send() == (
        b"250 mx.t?st\r\n250-mx.t?st\r\n250-SIZE 100\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
        b"250 ENHANCEDSTATUSCODES\r\n"
    )


# -- MAIL and RCPT --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "event", "reply"),
    [
        (b"MAIL FROM <a@b.c>", None, MAIL_SYNTAX),  # no colon
        (b"MAIL FROM:\t<a@b.c>", None, MAIL_SYNTAX),  # only spaces may follow the colon
        (b"MAIL FROM:Name<a@b.c>", None, MAIL_SYNTAX),
        (b"MAIL FROM:Name<a@b.c", None, MAIL_SYNTAX),  # half a bracket pair
        (b"MAIL FROM:Xavier@b.c", MailFrom("Xavier@b.c"), OK),
        (b"MAIL FROM:a@b.c", MailFrom("a@b.c"), OK),
        (
            b"MAIL FROM:a@b.c SIZE=100 BODY=7BIT",
            MailFrom("a@b.c", (("SIZE", "100"), ("BODY", "7BIT"))),
            OK,
        ),
        # RFC 1870: a declared size equal to the limit is within it.
        (b"MAIL FROM:<a@b.c> SIZE=10000", MailFrom("a@b.c", (("SIZE", "10000"),)), OK),
        (b"MAIL FROM:<a@b.c> body=7bit", MailFrom("a@b.c", (("BODY", "7bit"),)), OK),
        (
            b"MAIL FROM:<a@b.c> -" + b"a" * 59,
            None,
            "501 5.5.4 Syntax error in parameter -" + "a" * 39,
        ),
        (
            b"MAIL FROM:<a@b.c> " + b"X" * 30,
            None,
            "555 5.5.4 MAIL parameter " + "X" * 20 + " not supported",
        ),
        (b"MAIL FROM:<a@b.c> AUTH=<>", None, "555 5.5.4 MAIL parameter AUTH not supported"),
    ],
)
def test_mail_paths(line: bytes, event: MailFrom | None, reply: str) -> None:
    m = ready()
    events, out = run(m, line + b"\r\n")
    assert out == [reply]
    assert events == ([] if event is None else [event])


def test_auth_parameter_of_mail_only_where_auth_is_offered() -> None:
    # RFC 4954 section 5: AUTH=<> is accepted (and not used) where AUTH is offered;
    # that does not open the door to other parameters.
    m = ready(auth=True, auth_without_tls=True)
    events, out = run(m, b"MAIL FROM:<a@b.c> AUTH=<>\r\n")
    assert events == [MailFrom("a@b.c", (("AUTH", "<>"),))]
    assert out == [OK]
    m = ready(auth=True, auth_without_tls=True)
    assert run(m, b"MAIL FROM:<a@b.c> FOO=bar\r\n") == (
        [],
        ["555 5.5.4 MAIL parameter FOO not supported"],
    )


def test_after_helo_paths_take_no_parameters_and_the_syntax_says_so() -> None:
    m = machine()
    run(m, b"HELO c\r\n")
    _, out = run(m, b"MAIL FROM:<a@b.c> SIZE=1\r\n")
    assert out == ["501 5.5.4 Syntax: MAIL FROM:<address>"]
    events, out = run(m, b"MAIL FROM:a@b.c\r\n")
    assert (events, out) == ([MailFrom("a@b.c")], [OK])


def test_rcpt_replies_name_rcpt() -> None:
    m = ready()
    run(m, b"MAIL FROM:<a@b.c>\r\n")
    events, out = run(
        m,
        b"RCPT TO:<b@x.org\r\nRCPT TO:<b@x.org> FOO\r\nRCPT TO:<b@x.org> "
        + b"Y" * 30
        + b"=1\r\n"
        + b'RCPT TO:<"a:b"@c.d>\r\n',
    )
    assert out == [
        "501 5.5.4 Syntax: RCPT TO:<address> [SP <parameters>]",
        "555 5.5.4 RCPT parameter FOO not supported",
        "555 5.5.4 RCPT parameter " + "Y" * 20 + " not supported",
        OK,
    ]
    # A colon in a (quoted) local part is not a source route (RFC 5321 4.1.2).
    assert events == [RcptTo('"a:b"@c.d')]


# -- STARTTLS -------------------------------------------------------------------------


def test_starttls_replies_word_for_word() -> None:
    m = ServerMachine(
        ServerSettings(hostname="mx.test", max_message_size=100, tls_available=True),
        tls_active=True,
    )
    m.data_to_send()
    assert run(m, b"EHLO c\r\nSTARTTLS\r\n")[1][1] == "503 5.5.1 Error: TLS already active"
    m = ready(tls_available=True)
    assert run(m, b"STARTTLS now\r\n")[1] == ["501 5.5.4 Syntax: STARTTLS"]
    with pytest.raises(RuntimeError, match=r"^no STARTTLS is pending$"):
        m.tls_started()


def test_after_tls_the_session_starts_clean() -> None:
    m = ready(tls_available=True, auth=True)
    events, _ = run(m, b"STARTTLS\r\n")
    assert events == [StartTLS()]
    m.tls_started()
    assert m.authenticated is False
    # The first line under TLS may start with its line feed like any other.
    assert run(m, b"\nNOOP\r\n")[1] == [BAD_SYNTAX, OK]
    _, out = run(m, b"EHLO c\r\nAUTH PLAIN\r\n")
    assert out[1] == "334 "  # not "already authenticated"


# -- AUTH -----------------------------------------------------------------------------


def test_auth_replies_word_for_word() -> None:
    m = machine(auth=True, auth_without_tls=True)
    good = b"AUTH PLAIN " + b64(b"\x00ann\x00pw") + b"\r\n"
    script = [
        (b"AUTH PLAIN\r\n", "503 5.5.1 Error: send EHLO first"),
        (b"HELO c\r\n", "250 mx.test"),
        (b"AUTH PLAIN\r\n", '500 5.5.1 Error: command "AUTH" not recognized'),
        (b"EHLO c\r\n", None),
        (b"AUTH\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"AUTH PLAIN x y\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"AUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type"),
        (b"AUTH PLAIN\r\n*\r\n", "334 \n501 5.7.0 Auth aborted"),
        (b"AUTH PLAIN !!!!\r\n", "501 5.5.2 Can't decode base64"),
        (b"AUTH PLAIN " + b64(b"no-nul") + b"\r\n", "501 5.5.2 Can't split auth value"),
        (b"AUTH PLAIN =\r\n", "501 5.5.2 Can't split auth value"),  # empty response
        (b"MAIL FROM:<a@b.c>\r\n", OK),
        (b"AUTH PLAIN\r\n", "503 5.5.1 AUTH is not allowed during a mail transaction"),
        (b"RSET\r\n", OK),
        (good, "235 2.7.0 OK"),
        (good, "503 5.5.1 Already authenticated"),
    ]
    for line, reply in script:
        _, out = run(m, line)
        if reply is not None:
            assert "\n".join(out) == reply, line
    m = ready(auth=True)
    assert run(m, good)[1] == [
        "538 5.7.11 Encryption required for requested authentication mechanism"
    ]
    m = ready(auth_without_tls=True)
    assert run(m, good)[1] == ["502 5.5.1 AUTH is not available here"]


def test_an_aborted_auth_leaves_the_session_ready_for_mail() -> None:
    m = ready(auth=True, auth_without_tls=True)
    _, out = run(m, b"AUTH PLAIN\r\n*\r\nMAIL FROM:<a@b.c>\r\n")
    assert out == ["334 ", "501 5.7.0 Auth aborted", OK]


def test_auth_login_with_an_empty_initial_response() -> None:
    # RFC 4954 section 4: "=" is an initial response of zero octets (the user name).
    m = ready(auth=True, auth_without_tls=True)
    _, out = run(m, b"AUTH LOGIN =\r\n")
    assert out == ["334 UGFzc3dvcmQ6"]
    events, _ = run(m, b64(b"pw") + b"\r\n")
    assert events == [AuthCredentials("LOGIN", b"", b"pw")]


def test_auth_continuation_lines_may_be_12288_octets() -> None:
    # RFC 4954 section 4: 12288 octets with the CRLF.  9213 octets are 12284 in
    # base64; two spaces around it make the line 12286 + CRLF.
    value = b"\x00u\x00" + b"p" * 9210
    m = ready(auth=True, auth_without_tls=True)
    events, out = run(m, b"AUTH PLAIN\r\n " + b64(value) + b" \r\n")
    assert events == [AuthCredentials("PLAIN", b"u", b"p" * 9210)]
    assert out == ["334 ", "235 2.7.0 OK"]
    # 9216 octets are 12288 in base64: with its CRLF two octets too many.
    m = ready(auth=True, auth_without_tls=True)
    events, out = run(m, b"AUTH PLAIN\r\n" + b64(value + b"ppp") + b"\r\nNOOP\r\n")
    assert events == []
    assert out == ["334 ", TOO_LONG, OK]


# -- DATA -----------------------------------------------------------------------------


def in_data(**changes: object) -> ServerMachine:
    m = ready(**changes)
    run(m, b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n")
    return m


def line_too_long(n: int) -> str:
    return (
        f"554 5.6.0 Line {n} of the message is longer than 100 octets "
        "(RFC 5322 section 2.1.1); message not queued"
    )


def test_what_follows_the_end_of_data_is_commands() -> None:
    m = in_data()
    events, out = feed(m, b"hello\r\n.\r\nNOOP\r\n.\r\n")
    assert events == [MessageData(b"hello\r\n", "a@b.c", ("d@e.f",))]
    assert out == [OK, OK, '500 5.5.1 Error: command "." not recognized']


def test_a_line_of_the_limit_cut_after_its_cr_is_taken() -> None:
    # RFC 5322 2.1.1: 998 here 100 octets without the CRLF; a stuffed dot is not text.
    m = in_data()
    events, out = feed(m, b"\r\n" + b"a" * 100 + b"\r", b"\n.\r\n")
    assert events == [MessageData(b"\r\n" + b"a" * 100 + b"\r\n", "a@b.c", ("d@e.f",))]
    assert out == [OK]
    m = in_data()
    events, out = feed(m, b".." + b"a" * 99 + b"\r", b"\n.\r\n")
    assert events == [MessageData(b"." + b"a" * 99 + b"\r\n", "a@b.c", ("d@e.f",))]


@pytest.mark.parametrize(
    "pieces",
    [
        (b"a" * 200, b".\r\n.\r\nNOOP\r\n"),  # the long line's rest is ".", not the end
        (b"a" * 200 + b"\r", b"\n.\r\nNOOP\r\n"),  # cut between its CR and LF
        (b"a" * 200, b"bbbb\r", b"\n.\r\nNOOP\r\n"),  # ... later in the line
        (b"a" * 200, b"bb", b"\r", b"\n.\r\nNOOP\r\n"),
    ],
)
def test_an_overlong_line_is_read_to_its_end_however_it_is_cut(
    pieces: tuple[bytes, ...],
) -> None:
    m = in_data()
    events, out = feed(m, *pieces)
    assert events == [Refused("line_length")]
    assert out == [line_too_long(1), OK]


def test_a_long_line_with_spaces_is_still_too_long() -> None:
    m = in_data()
    events, out = feed(m, b"a" * 60 + b" " + b"a" * 60 + b"\r\n.\r\n")
    assert events == [Refused("line_length")]
    assert out == [line_too_long(1)]


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        # 10 + 10 octets = the 20-octet limit: the NUL is the problem, not the size.
        (b"abcdefgh\r\nabcdefg\x00\r\n", "554 5.6.0 Line 2 of the message contains a NUL byte"),
        (
            b"abc\rdefg\r\n",
            "554 5.6.0 Line 1 of the message contains a bare CR or LF: end every line with CRLF",
        ),
    ],
)
def test_data_problems_at_the_size_limit(body: bytes, reply: str) -> None:
    m = in_data(max_message_size=20)
    events, out = feed(m, body + b".\r\n")
    assert [type(e) for e in events] == [Refused]
    assert out == [reply]


@pytest.mark.parametrize(
    "first",
    [b"a" * 100, b".." + b"a" * 99],  # 100 octets of text, the second dot-stuffed
)
def test_a_line_of_the_limit_before_a_bad_line_is_not_the_problem(first: bytes) -> None:
    m = in_data()
    events, out = feed(m, first + b"\r\nx\x00\r\n.\r\n")
    assert events == [Refused("bad_data")]
    assert out == ["554 5.6.0 Line 2 of the message contains a NUL byte"]
