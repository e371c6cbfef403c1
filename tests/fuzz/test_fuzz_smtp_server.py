"""Fuzz target: the SMTP server machine (:mod:`spoolbox.smtp.server`).

Hypothesis writes sessions from a grammar of commands, near-commands and raw bytes,
cuts them at random points, and answers every decision the machine asks for.  What
must hold whatever the input:

* every byte sent is a well-formed SMTP reply: ``NNN`` + space or hyphen + printable
  ASCII + CRLF, multi-line replies with one code and a last line with a space;
* the first reply is the greeting, nothing is sent after the session closed;
* a message is handed over (``MessageData``) only inside a transaction whose MAIL and
  at least one RCPT were accepted, with exactly those addresses, and its content is
  clean (CRLF lines, no NUL, no bare CR or LF, within the size and line limits);
* the machine raises nothing at all (its only documented error is ``RuntimeError``
  for a caller that answers a decision that is not pending, which this driver never
  does);
* without STARTTLS (which drops what came in the same read, on purpose), the replies
  and events do not depend on how the input was cut.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

from fuzz_settings import budget
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox.smtp.server import (
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

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([\x20-\x7e]*)\r\n")

_ADDRESS = st.one_of(
    st.sampled_from(["a@b.c", "d@e.f", "g@h.i", "postmaster"]),
    st.sampled_from(["", "x y@z", "@r:a@b", "a>b", "<a@b>", "\u00e9@x", "a\tb@c"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
)
_PARAM = st.sampled_from(
    [
        "SIZE=10",
        "SIZE=99999999",
        "SIZE=x",
        "BODY=8BITMIME",
        "BODY=7bit",
        "BODY=bin",
        "AUTH=<>",
        "AUTH",
        "FOO=bar",
        "=x",
        "SIZE=",
        "X",
        # DSN (RFC 3461), taken when the settings say dsn
        "RET=FULL",
        "RET=hdrs",
        "RET=x",
        "ENVID=a+2Bb",
        "ENVID=+zz",
        "NOTIFY=NEVER",
        "NOTIFY=success,delay",
        "NOTIFY=NEVER,SUCCESS",
        "ORCPT=rfc822;a+40b",
        "ORCPT=x",
    ]
)


def _path(keyword: str) -> st.SearchStrategy[str]:
    return st.builds(
        lambda kw, addr, brackets, params, space: (
            f"{kw}{space}{'<' + addr + '>' if brackets else addr}"
            + "".join(" " + p for p in params)
        ),
        st.sampled_from([keyword] * 5 + [keyword.lower(), keyword.replace(":", ""), keyword + " "]),
        _ADDRESS,
        st.sampled_from([True, True, True, False]),
        st.lists(_PARAM, max_size=2),
        st.sampled_from(["", " "]),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_AUTH_VALUE = st.one_of(
    st.builds(
        lambda u, p: _b64(b"\x00" + u + b"\x00" + p), st.binary(max_size=8), st.binary(max_size=8)
    ),
    st.builds(_b64, st.binary(max_size=12)),
    st.sampled_from(["=", "*", "!!!", "abc", ""]),
)
_COMMAND = st.one_of(
    st.builds("EHLO {}".format, st.sampled_from(["client.test", "", "x y"])),
    st.builds("HELO {}".format, st.sampled_from(["client.test", ""])),
    st.builds("MAIL {}".format, _path("FROM:")),
    st.builds("RCPT {}".format, _path("TO:")),
    st.sampled_from(
        [
            "DATA",
            "DATA x",
            "RSET",
            "RSET x",
            "NOOP",
            "NOOP x",
            "QUIT",
            "QUIT x",
            "VRFY",
            "VRFY bob",
            "HELP",
            "STARTTLS",
            "STARTTLS x",
            "AUTH",
            "",
            "BDAT 10",
            "mail from:<a@b.c>",
            "ehlo x",
        ]
    ),
    st.builds(
        lambda m, v: f"AUTH {m} {v}".rstrip(),
        st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "plain"]),
        _AUTH_VALUE,
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)
_DATA_LINE = st.one_of(
    st.sampled_from(
        [b"", b".", b"..", b".x", b"Subject: hi", b"a\x00b", b"a\rb", b"a\nb", b"\xff\xfe"]
    ),
    st.binary(max_size=40),
    st.integers(0, 140).map(lambda n: b"y" * n),
)


def _line(text: str) -> bytes:
    return text.encode("utf-8") + b"\r\n"


@st.composite
def _transaction(draw: st.DrawFn) -> bytes:
    """MAIL, some RCPTs, DATA, its lines and (mostly) the end marker."""
    out = [_line("MAIL " + draw(_path("FROM:")))]
    out += [_line("RCPT " + draw(_path("TO:"))) for _ in range(draw(st.integers(0, 3)))]
    out.append(_line(draw(st.sampled_from(["DATA", "DATA", "DATA", "DATA x", "RSET"]))))
    lines = draw(st.lists(_DATA_LINE, max_size=6))
    end = draw(st.sampled_from([b".\r\n", b".\r\n", b".\r\n", b".\n", b""]))
    out.append(b"".join(line + b"\r\n" for line in lines) + end)
    return b"".join(out)


@st.composite
def _auth(draw: st.DrawFn) -> bytes:
    """AUTH, then answers to the challenges (or junk)."""
    mech = draw(st.sampled_from(["PLAIN", "LOGIN", "login", "CRAM-MD5"]))
    first = draw(st.one_of(st.just(""), _AUTH_VALUE))
    out = [_line(f"AUTH {mech} {first}".rstrip())]
    out += [_line(draw(_AUTH_VALUE)) for _ in range(draw(st.integers(0, 2)))]
    return b"".join(out)


@st.composite
def _wire(draw: st.DrawFn) -> bytes:
    """A session: mostly EHLO first, then transactions, AUTH, single commands (CRLF or
    a bare LF), raw bytes, overlong lines."""
    out: list[bytes] = []
    if draw(st.integers(0, 4)):
        out.append(_line(draw(st.sampled_from(["EHLO client.test", "HELO client.test"]))))
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 15))
        if kind <= 5:
            out.append(draw(_transaction()))
        elif kind <= 7:
            out.append(draw(_auth()))
        elif kind <= 12:
            line = draw(_COMMAND).encode("utf-8")
            out.append(line + draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])))
        elif kind == 13:
            out.append(draw(st.binary(max_size=60)))
        elif kind == 14:
            out.append(b"X" * draw(st.integers(500, 1100)) + b"\r\n")
        else:
            out.append(b"A" * draw(st.integers(12_000, 13_000)))  # past any command limit
    return b"".join(out)


_SETTINGS = st.builds(
    ServerSettings,
    hostname=st.just("mx.test"),
    max_message_size=st.sampled_from([40, 200, 10_000, 10_000]),
    max_line_length=st.sampled_from([5, 20, 998, 998]),
    max_recipients=st.sampled_from([1, 2, 1000]),
    tls_available=st.booleans(),
    auth=st.booleans(),
    auth_without_tls=st.booleans(),
    dsn=st.booleans(),
)


@dataclass
class _Run:
    """What a driven session produced."""

    sent: bytes = b""
    events: list[Event] = field(default_factory=list)
    closed_at: int | None = None  # len(sent) when the machine closed


@dataclass
class _Transaction:
    """The transaction as the driver saw it: accepted MAIL and RCPTs."""

    sender: str | None = None
    recipients: list[str] = field(default_factory=list)


def _check_content(event: MessageData, s: ServerSettings) -> None:
    content = event.content
    assert len(content) <= s.max_message_size
    assert b"\x00" not in content
    if content:
        assert content.endswith(b"\r\n")
        lines = content[:-2].split(b"\r\n")
        assert all(b"\r" not in x and b"\n" not in x for x in lines)
        assert all(len(x) <= s.max_line_length for x in lines)


def _drive(
    s: ServerSettings, tls_active: bool, wire: bytes, cuts: list[int], answers: list[bool]
) -> _Run:
    """Feed ``wire`` cut at ``cuts``; answer decision number i with ``answers[i]``."""
    m = ServerMachine(s, tls_active=tls_active)
    run = _Run()
    txn = _Transaction()
    decisions = 0
    start = 0
    for cut in [*sorted(c for c in cuts if c < len(wire)), len(wire)]:
        m.receive_data(wire[start:cut])
        start = max(start, cut)
        while True:
            event = m.next_event()
            if isinstance(event, _Sentinel):
                break
            run.events.append(event)
            accept = answers[decisions % len(answers)] if answers else True
            decisions += 1
            if isinstance(event, MailFrom):
                m.respond("250 2.1.0 OK" if accept else "550 5.7.1 refused")
                if accept:
                    txn = _Transaction(event.address)
            elif isinstance(event, RcptTo):
                assert txn.sender is not None, "RCPT asked about outside a transaction"
                m.respond("250 2.1.5 OK" if accept else "550 5.1.1 no such user")
                if accept:
                    txn.recipients.append(event.address)
            elif isinstance(event, MessageData):
                assert txn.sender is not None, "a message outside a transaction"
                assert txn.recipients, "a message without an accepted recipient"
                assert event.sender == txn.sender
                assert event.recipients == tuple(txn.recipients)
                _check_content(event, s)
                m.respond("250 2.0.0 queued" if accept else "554 5.6.0 rejected")
                txn = _Transaction()
            elif isinstance(event, AuthCredentials):
                m.respond("235 2.7.0 OK" if accept else "535 5.7.8 no")
            elif isinstance(event, StartTLS):
                if accept:
                    m.tls_started()
                else:
                    m.close()
            else:
                assert isinstance(event, Refused)
                assert event.reason in (
                    "size",
                    "line_length",
                    "bad_data",
                    "no_recipients",
                    "recipient_limit",
                )
            if not m.in_transaction:
                txn = _Transaction()
        run.sent += m.data_to_send()
        if m.closing and run.closed_at is None:
            run.closed_at = len(run.sent)
    assert m.state is not State.CLOSED or run.closed_at is not None
    return run


def _check_replies(sent: bytes) -> None:
    assert sent.startswith(b"220 mx.test "), sent[:60]
    pos = 0
    code_of_block: bytes | None = None
    while pos < len(sent):
        m = _REPLY_LINE.match(sent, pos)
        assert m is not None, f"not an SMTP reply line at {pos}: {sent[pos : pos + 80]!r}"
        code, sep, _text = m.groups()
        if code_of_block is not None:
            assert code == code_of_block, f"a multi-line reply changes its code: {sent!r}"
        code_of_block = code if sep == b"-" else None
        pos = m.end()
    assert code_of_block is None, "a multi-line reply without its last line"


@budget(100)
@given(
    s=_SETTINGS,
    tls_active=st.booleans(),
    wire=_wire(),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
    answers=st.lists(st.sampled_from([True, True, True, False]), max_size=8),
)
@example(  # a pipelined session through DATA, cut inside the end marker
    s=ServerSettings("mx.test", 10_000),
    tls_active=False,
    wire=b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n..x\r\n.\r\nQUIT\r\n",
    cuts=[63, 64],
    answers=[],
)
@example(  # a NUL in the data: refused, never handed over (the bulk path checks it too)
    s=ServerSettings("mx.test", 10_000),
    tls_active=False,
    wire=b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\na\x00b\r\n.\r\n",
    cuts=[],
    answers=[],
)
def test_server_machine_replies_and_transactions(
    s: ServerSettings, tls_active: bool, wire: bytes, cuts: list[int], answers: list[bool]
) -> None:
    run = _drive(s, tls_active, wire, cuts, answers)
    _check_replies(run.sent)
    if run.closed_at is not None:
        assert len(run.sent) == run.closed_at, "replies after the session closed"
    if not any(isinstance(e, StartTLS) for e in run.events):
        whole = _drive(s, tls_active, wire, [], answers)
        assert whole.sent == run.sent
        assert whole.events == run.events
