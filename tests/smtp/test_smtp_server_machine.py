"""The SMTP server state machine, by feeding it bytes (no sockets, no event loop)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolbox.smtp.server import (
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    Event,
    MailFrom,
    MessageData,
    RcptTo,
    Refused,
    ServerMachine,
    ServerSettings,
    StartTLS,
    State,
    _Sentinel,
)

SETTINGS = ServerSettings(hostname="mx.test", max_message_size=10_000, max_line_length=100)


def machine(**changes: object) -> ServerMachine:
    fields = {
        "hostname": "mx.test",
        "max_message_size": 10_000,
        "max_line_length": 100,
        "max_recipients": 1000,
    }
    fields.update(changes)
    m = ServerMachine(ServerSettings(**fields))  # type: ignore[arg-type]
    assert m.data_to_send() == b"220 mx.test spoolbox ESMTP\r\n"
    return m


def replies(m: ServerMachine) -> list[str]:
    """The reply lines queued so far (continuation lines folded into their reply)."""
    out: list[str] = []
    text = m.data_to_send().decode("ascii")
    lines = text.split("\r\n")
    assert lines[-1] == ""
    current: list[str] = []
    for line in lines[:-1]:
        current.append(line)
        if line[3:4] != "-":
            out.append("\n".join(current))
            current = []
    assert not current
    return out


def run(
    m: ServerMachine, data: bytes, answers: dict[type, str] | None = None
) -> tuple[list[Event], list[str]]:
    """Feed ``data``; answer every decision from ``answers`` (by event type; ``250 OK``
    by default, ``235`` for credentials); the events and the replies."""
    answers = answers or {}
    m.receive_data(data)
    events: list[Event] = []
    while True:
        event = m.next_event()
        if isinstance(event, _Sentinel):
            break
        events.append(event)
        if isinstance(event, MailFrom | RcptTo | MessageData):
            m.respond(answers.get(type(event), "250 2.0.0 OK"))
        elif isinstance(event, AuthCredentials):
            m.respond(answers.get(AuthCredentials, "235 2.7.0 OK"))
    return events, replies(m)


def ready(**changes: object) -> ServerMachine:
    m = machine(**changes)
    run(m, b"EHLO client.test\r\n")
    return m


# -- greeting, EHLO, simple commands -------------------------------------------------


def test_ehlo_keywords_depend_on_tls_and_auth() -> None:
    m = machine()
    _, [ehlo] = run(m, b"EHLO client.test\r\n")
    assert ehlo.split("\n") == [
        "250-mx.test",
        "250-SIZE 10000",
        "250-PIPELINING",
        "250-8BITMIME",
        "250 ENHANCEDSTATUSCODES",
    ]
    m = machine(tls_available=True, auth=True)
    _, [ehlo] = run(m, b"EHLO client.test\r\n")
    assert ehlo.endswith("250 STARTTLS")
    assert "AUTH" not in ehlo  # not before TLS
    m = machine(tls_available=True, auth=True, auth_without_tls=True)
    _, [ehlo] = run(m, b"EHLO client.test\r\n")
    assert ehlo.endswith("250 AUTH LOGIN PLAIN")
    m = ServerMachine(SETTINGS, tls_active=True)
    m.data_to_send()
    _, [ehlo] = run(m, b"EHLO x\r\n")
    assert "STARTTLS" not in ehlo


def test_simple_commands() -> None:
    m = machine()
    _, out = run(
        m,
        b"HELO client.test\r\nNOOP whatever\r\nRSET\r\nRSET x\r\nVRFY bob\r\nVRFY\r\nHELP\r\n",
    )
    assert [r[:3] for r in out] == ["250", "250", "250", "501", "252", "501", "214"]
    assert out[0] == "250 mx.test"
    assert "MAIL" in out[-1]
    assert "STARTTLS" not in out[-1]
    _, out = run(m, b"QUIT\r\nNOOP\r\n")
    assert out == ["221 2.0.0 Bye"]  # nothing is read after QUIT
    assert m.closing
    m.receive_data(b"NOOP\r\n")
    assert m.next_event() is NEED_DATA
    assert m.data_to_send() == b""


def test_sequence_errors() -> None:
    m = machine()
    _, out = run(m, b"MAIL FROM:<a@b.c>\r\nRCPT TO:<a@b.c>\r\nDATA\r\nEHLO\r\n")
    assert [r[:3] for r in out] == ["503", "503", "503", "501"]
    run(m, b"EHLO c\r\n")
    _, out = run(m, b"RCPT TO:<a@b.c>\r\nDATA\r\n")
    assert [r[:3] for r in out] == ["503", "503"]
    _, out = run(m, b"MAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\nDATA\r\n")
    assert out == ["250 2.0.0 OK", "503 5.5.1 Error: nested MAIL command", out[2]]
    assert out[2].startswith("503")


def test_unknown_commands_then_goodbye() -> None:
    m = machine()
    _, out = run(m, b"".join(b"BOGUS%d\r\n" % i for i in range(10)))
    assert [r[:3] for r in out] == ["500"] * 4 + ["502"]
    assert m.closing


def test_empty_and_non_ascii_lines() -> None:
    m = machine()
    _, out = run(m, b"\r\n\xc3\xa9HLO x\r\nEHLO \xff\r\nNOOP\r\n")
    assert [r[:3] for r in out] == ["500", "500", "500", "250"]


def test_command_line_limit_is_512_octets_with_crlf() -> None:
    m = machine()
    ok = b"NOOP " + b"x" * (510 - 5)
    _, out = run(m, ok + b"\r\n" + ok + b"x\r\nNOOP\r\n")
    assert [r[:9] for r in out] == ["250 2.0.0", "500 5.5.2", "250 2.0.0"]


def test_a_line_without_end_is_not_kept() -> None:
    m = machine()
    for _ in range(100):
        run(m, b"A" * 10_000)
    assert len(m._buf) <= 12_288 + 10_000
    _, out = run(m, b"\r\nNOOP\r\n")
    assert [r[:9] for r in out] == ["500 5.5.2", "250 2.0.0"]


def test_bare_lf_ends_a_command_line() -> None:
    m = machine()
    events, out = run(m, b"EHLO x\nMAIL FROM:<a@b.c>\nNOOP\r\r\n")
    assert events == [MailFrom("a@b.c")]
    assert [r[:3] for r in out] == ["250", "250", "250"]


# -- MAIL and RCPT ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"MAIL FROM:a@b.c>", "501"),  # half a bracket pair
        (b"MAIL FROM:", "501"),
        (b"MAIL FROM:<a@b.c", "501"),
        (b"MAIL TO:<a@b.c>", "501"),
        (b"MAIL FROM:<a@b.c>SIZE=1", "501"),
        (b"MAIL FROM:<a@b.c>\rX-Injected: 1", "501"),
        (b"MAIL FROM:<@relay.test,@x.test:a@b.c>", "501"),  # source route
        (b"MAIL FROM:<a@b.c> SIZE=abc", "501"),
        (b"MAIL FROM:<a@b.c> SIZE=10001", "552"),
        (b"MAIL FROM:<a@b.c> BODY=BINARYMIME", "501"),
        (b"MAIL FROM:<a@b.c> SMTPUTF8", "555"),
        (b"MAIL FROM:<a@b.c> RET=FULL", "555"),
        (b"MAIL FROM:<a@b.c> =x", "501"),
    ],
)
def test_mail_syntax(line: bytes, reply: str) -> None:
    m = ready()
    events, out = run(m, line + b"\r\n")
    assert [r[:3] for r in out] == [reply]
    assert events == ([Refused("size")] if reply == "552" else [])
    assert m.state is State.READY


def test_mail_paths_and_parameters() -> None:
    m = ready()
    events, _ = run(m, b"mail from: <a@b.c> size=100 body=8bitmime\r\n")
    assert events == [MailFrom("a@b.c", (("SIZE", "100"), ("BODY", "8bitmime")))]
    m = ready()
    events, _ = run(m, b"MAIL FROM:<>\r\n")
    assert events == [MailFrom("")]
    # Without angle brackets (old clients; Postfix accepts it too): the first word.
    m = ready()
    events, _ = run(m, b"MAIL FROM:a@b.c SIZE=100\r\n")
    assert events == [MailFrom("a@b.c", (("SIZE", "100"),))]
    # The address is passed on as written: the I/O layer validates it (553).
    m = ready()
    events, _ = run(m, b"MAIL FROM:<a\x00b@c>\r\n", {MailFrom: "553 5.1.7 Bad"})
    assert events == [MailFrom("a\x00b@c")]
    assert m.state is State.READY


def test_params_need_ehlo() -> None:
    m = machine()
    run(m, b"HELO x\r\n")
    _, out = run(m, b"MAIL FROM:<a@b.c> SIZE=1\r\n")
    assert out[0].startswith("501")


def test_rcpt_parameters_and_limit() -> None:
    m = ready(max_recipients=2)
    run(m, b"MAIL FROM:<a@b.c>\r\n")
    events, out = run(
        m,
        b"RCPT TO:<x@b.c> NOTIFY=NEVER\r\nRCPT TO:<1@b.c>\r\nRCPT TO:<2@b.c>\r\n"
        b"RCPT TO:<3@b.c>\r\n",
    )
    assert [r[:3] for r in out] == ["555", "250", "250", "452"]
    assert events == [RcptTo("1@b.c"), RcptTo("2@b.c"), Refused("recipient_limit")]


def test_refused_recipients_only_then_data_is_554() -> None:
    m = ready()
    run(m, b"MAIL FROM:<a@b.c>\r\n")
    events, out = run(m, b"RCPT TO:<x@y.z>\r\nDATA\r\n", {RcptTo: "554 5.7.1 no"})
    assert out == ["554 5.7.1 no", "554 5.5.1 No valid recipients"]
    assert events[-1] == Refused("no_recipients")


# -- the order of replies and pending decisions ---------------------------------------


def test_pipelined_commands_wait_for_each_decision() -> None:
    m = ready()
    m.receive_data(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n")
    assert m.next_event() == MailFrom("a@b.c")
    assert m.next_event() is PAUSED  # nothing after MAIL is processed yet
    assert m.data_to_send() == b""
    m.respond("250 2.1.0 OK")
    assert m.next_event() == RcptTo("d@e.f")
    assert m.data_to_send() == b"250 2.1.0 OK\r\n"
    m.respond("250 2.1.5 OK")
    event = m.next_event()
    assert event == MessageData(b"hello\r\n", "a@b.c", ("d@e.f",))
    assert m.in_transaction
    assert m.next_event() is PAUSED
    assert m.data_to_send() == b"250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    m.respond("250 2.0.0 OK queued as 1")
    assert not m.in_transaction
    assert m.next_event() is NEED_DATA
    assert m.data_to_send() == b"250 2.0.0 OK queued as 1\r\n250 2.0.0 OK\r\n"


def test_respond_without_a_decision_is_an_error() -> None:
    m = ready()
    with pytest.raises(RuntimeError):
        m.respond("250 OK")


# -- DATA ---------------------------------------------------------------------------


def transaction(m: ServerMachine) -> None:
    run(m, b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n")


def test_dot_unstuffing_and_empty_message() -> None:
    m = ready()
    transaction(m)
    events, _ = run(m, b"..a\r\n.b\r\n..\r\nb.\r\n.\r\n")
    assert events == [MessageData(b".a\r\nb\r\n.\r\nb.\r\n", "a@b.c", ("d@e.f",))]
    transaction(m)
    events, _ = run(m, b".\r\n")
    assert events == [MessageData(b"", "a@b.c", ("d@e.f",))]


@pytest.mark.parametrize(
    ("body", "reason", "reply"),
    [
        (b"ok\r\n" + b"x" * 101 + b"\r\n", "line_length", "554 5.6.0 Line 2 "),
        (b"ok\r\n." + b"x" * 101 + b"\r\n", "line_length", "554 5.6.0 Line 2 "),
        (b"ok\r\nab\x00c\r\n", "bad_data", "554 5.6.0 Line 2 of the message contains a NUL"),
        (b"ok\r\nok\r\na\rb\r\n", "bad_data", "554 5.6.0 Line 3 of the message contains a bare"),
        (b"a\n.\nMAIL FROM:<x@y>\r\n", "bad_data", "554 5.6.0 Line 1 of the message contains"),
        ((b"x" * 99 + b"\r\n") * 60, "size", "552 5.3.4 Message too big"),
        # the first problem wins: a long line before a NUL, a NUL before a long line
        (b"ok\r\n" + b"x" * 200 + b"\r\n\x00\r\n", "line_length", "554 5.6.0 Line 2 "),
        (b"\x00\r\n" + b"x" * 200 + b"\r\n", "bad_data", "554 5.6.0 Line 1 "),
    ],
)
def test_data_rules(body: bytes, reason: str, reply: str) -> None:
    m = ready(max_message_size=5000)
    transaction(m)
    events, out = run(m, body + b".\r\nNOOP\r\n")
    assert events == [Refused(reason)]
    assert out[0].startswith(reply), out
    assert out[1] == "250 2.0.0 OK"  # read to the end of data; the session goes on
    assert m.state is State.READY


def test_data_rules_hold_across_segments() -> None:
    m = ready()
    transaction(m)
    for piece in (b"ok\r", b"\nab", b"\r", b"cd\r\n.", b"\r", b"\n"):
        events, out = run(m, piece)
    assert events == [Refused("bad_data")]
    assert out[0].startswith("554 5.6.0 Line 2")


def test_an_overlong_message_is_not_kept() -> None:
    m = ready(max_message_size=1000)
    transaction(m)
    for _ in range(200):
        run(m, b"y" * 98 + b"\r\n")
        assert m._content.tell() <= 1000
    for _ in range(100):
        run(m, b"z" * 5000)  # one line that never ends
        assert len(m._buf) <= 102
    events, out = run(m, b"\r\n.\r\n")
    assert events == [Refused("size")]
    assert out[0].startswith("552 5.3.4")


def test_an_endless_line_names_its_number() -> None:
    m = ready()
    transaction(m)
    run(m, b"one\r\ntwo\r\n")
    for _ in range(10):
        run(m, b"w" * 1000)
    events, out = run(m, b"\r\n.\r\n")
    assert events == [Refused("line_length")]
    assert out[0].startswith("554 5.6.0 Line 3 ")


LINE = st.binary(max_size=100).filter(lambda b: b"\r" not in b and b"\n" not in b)
LINE = LINE.map(lambda b: b.replace(b"\x00", b"0"))


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(LINE, max_size=30), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_any_clean_message_arrives_intact_however_it_is_cut(
    lines: list[bytes], cuts: list[int]
) -> None:
    m = ready(max_message_size=1_000_000)
    transaction(m)
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    wire += b".\r\nNOOP\r\n"
    events: list[Event] = []
    out: list[str] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c < len(wire)), len(wire)]:
        e, o = run(m, wire[start:cut])
        events += e
        out += o
        start = max(start, cut)
    assert events == [MessageData(b"".join(x + b"\r\n" for x in lines), "a@b.c", ("d@e.f",))]
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK"]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 200), max_size=10))
def test_replies_do_not_depend_on_how_the_input_is_cut(cuts: list[int]) -> None:
    script = (
        b"EHLO c\r\nNOOP\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@h.i>\r\n"
        b"DATA\r\nline one\r\n..two\r\n.\r\nRSET\r\nVRFY x\r\nQUIT\r\n"
    )
    m = machine()
    _, whole = run(m, script)
    m = machine()
    pieces: list[str] = []
    start = 0
    for cut in [*sorted(cuts), len(script)]:
        pieces += run(m, script[start:cut])[1]
        start = max(start, cut)
    assert pieces == whole
    assert whole[-1] == "221 2.0.0 Bye"


# -- AUTH ---------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_plain_and_login() -> None:
    m = ready(auth=True, auth_without_tls=True)
    events, out = run(
        m, b"AUTH PLAIN " + b64(b"\x00ann\x00pw") + b"\r\n", {AuthCredentials: "535 no"}
    )
    assert events == [AuthCredentials("PLAIN", b"ann", b"pw")]
    assert out == ["535 no"]
    assert not m.authenticated
    events, out = run(m, b"AUTH PLAIN\r\n")
    assert out == ["334 "]
    events, out = run(m, b64(b"\x00ann\x00pw") + b"\r\n")
    assert events == [AuthCredentials("PLAIN", b"ann", b"pw")]
    assert m.authenticated
    _, out = run(m, b"AUTH PLAIN " + b64(b"\x00a\x00b") + b"\r\n")
    assert out[0].startswith("503")  # already authenticated
    m = ready(auth=True, auth_without_tls=True)
    _, out = run(m, b"AUTH LOGIN\r\n" + b64(b"ann") + b"\r\n")
    assert out == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6"]
    events, _ = run(m, b64(b"pw") + b"\r\n")
    assert events == [AuthCredentials("LOGIN", b"ann", b"pw")]
    m = ready(auth=True, auth_without_tls=True)
    _, out = run(m, b"AUTH LOGIN " + b64(b"ann") + b"\r\n")
    assert out == ["334 UGFzc3dvcmQ6"]


@pytest.mark.parametrize(
    ("lines", "last"),
    [
        ([b"AUTH PLAIN not-base64!"], "501 5.5.2"),
        ([b"AUTH PLAIN " + b64(b"no-nul")], "501 5.5.2"),
        ([b"AUTH PLAIN", b"*"], "501 5.7.0"),
        ([b"AUTH PLAIN", b"%%%"], "501 5.5.2"),
        ([b"AUTH LOGIN", b64(b"ann"), b"???"], "501 5.5.2"),
        ([b"AUTH CRAM-MD5"], "504 5.5.4"),
        ([b"AUTH"], "501 5.5.4"),
    ],
)
def test_auth_errors_leave_the_session_usable(lines: list[bytes], last: str) -> None:
    m = ready(auth=True, auth_without_tls=True)
    events, out = run(m, b"".join(line + b"\r\n" for line in lines) + b"NOOP\r\n")
    assert events == []
    assert out[-2].startswith(last)
    assert out[-1] == "250 2.0.0 OK"
    assert not m.authenticated


def test_auth_needs_tls_ehlo_and_no_transaction() -> None:
    m = ready(auth=True)
    _, out = run(m, b"AUTH PLAIN " + b64(b"\x00a\x00b") + b"\r\n")
    assert out[0].startswith("538 5.7.11")
    m = machine(auth=True, auth_without_tls=True)
    _, out = run(m, b"AUTH PLAIN\r\nHELO x\r\nAUTH PLAIN\r\n")
    assert [r[:3] for r in out] == ["503", "250", "500"]
    m = ready(auth=True, auth_without_tls=True)
    _, out = run(m, b"MAIL FROM:<a@b.c>\r\nAUTH PLAIN\r\n")
    assert out[-1].startswith("503")


# -- STARTTLS -----------------------------------------------------------------------


def test_starttls_drops_clear_text_and_resets_the_session() -> None:
    m = ready(tls_available=True)
    events, out = run(m, b"MAIL FROM:<a@b.c>\r\nSTARTTLS\r\nRCPT TO:<injected@x>\r\n")
    assert events == [MailFrom("a@b.c"), StartTLS()]
    assert out == ["250 2.0.0 OK", "220 2.0.0 Ready to start TLS"]
    assert m.next_event() is PAUSED
    m.tls_started()
    assert m.tls_active
    assert m.state is State.GREETED
    assert m.helo_name is None
    _, out = run(m, b"MAIL FROM:<a@b.c>\r\nEHLO again\r\nSTARTTLS\r\n")
    assert out[0].startswith("503")  # EHLO first: nothing from before TLS is kept
    assert "STARTTLS" not in out[1]
    assert out[2].startswith("503")


def test_starttls_without_tls_configured() -> None:
    m = ready()
    _, out = run(m, b"STARTTLS\r\n")
    assert out == ["454 4.7.0 TLS not available"]


def test_close_queues_a_last_reply() -> None:
    m = ready()
    m.close("421 4.4.2 mx.test Error: timeout exceeded")
    assert m.closing
    assert replies(m) == ["421 4.4.2 mx.test Error: timeout exceeded"]
