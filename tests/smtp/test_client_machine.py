"""The SMTP client state machine, by feeding it bytes (no sockets, no event loop).

Whole dialogues as transcripts (what the client writes, what the server answers, what
comes out), with and without PIPELINING, every step refused in turn, and servers that
break the rules.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolbox.smtp.client import (
    NEED_DATA,
    ClientMachine,
    ConnectionClosed,
    Event,
    LocalProtocolError,
    ProtocolError,
    Replied,
    Step,
    UpgradeTLS,
)
from spoolbox.smtp.data import DataEncoder, message_octets
from spoolbox.smtp.replies import MAX_LINE, Reply

EHLO_PIPELINING = (
    b"250-mx.example.org hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
    b"250-8BITMIME\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 STARTTLS\r\n"
)
EHLO_PLAIN = b"250-mx.example.org hello\r\n250 8BITMIME\r\n"


def feed(m: ClientMachine, data: bytes) -> list[Event]:
    """Feed ``data``; every event until the machine needs more (or the dialogue ended)."""
    m.receive_data(data)
    events: list[Event] = []
    while (event := m.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
        if isinstance(event, ProtocolError | ConnectionClosed):
            break
    return events


def replied(step: Step, code: int, text: str = "", index: int = -1) -> Replied:
    return Replied(step, Reply(code, text), index)


def greeted(ehlo: bytes = EHLO_PIPELINING) -> ClientMachine:
    """A machine past the greeting and EHLO."""
    m = ClientMachine()
    assert m.data_to_send() == b""  # the server speaks first
    assert feed(m, b"220 mx.example.org ESMTP\r\n") == [
        replied(Step.GREETING, 220, "mx.example.org ESMTP")
    ]
    m.hello("client.example.org")
    assert m.data_to_send() == b"EHLO client.example.org\r\n"
    [event] = feed(m, ehlo)
    assert isinstance(event, Replied) and (event.step, event.reply.code) == (Step.EHLO, 250)
    assert m.in_step
    return m


# -- EHLO -----------------------------------------------------------------------------------
def test_ehlo_keywords_and_auth_mechanisms() -> None:
    m = greeted()
    assert m.extensions == {
        "pipelining": "",
        "size": "10240000",
        "8bitmime": "",
        "auth": "PLAIN LOGIN CRAM-MD5",
        "starttls": "",
    }
    assert m.auth_mechanisms == ("plain", "login", "cram-md5")
    assert m.pipelining and m.size_limit == 10240000
    assert not greeted(EHLO_PLAIN).pipelining


def test_old_style_auth_announcement_counts_as_auth() -> None:
    m = greeted(b"250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH LOGIN\r\n")
    assert "auth" in m.extensions
    assert m.auth_mechanisms == ("login", "plain")


@pytest.mark.parametrize(
    ("size", "limit"),
    [(b"250 SIZE 1000\r\n", 1000), (b"250 SIZE 0\r\n", None), (b"250 SIZE\r\n", None),
     (b"250 SIZE lots\r\n", None), (b"250 SIZE " + b"9" * 31 + b"\r\n", None),
     (b"250 SIZE 12 extra\r\n", 12), (b"250 8BITMIME\r\n", None)],
)  # fmt: skip
def test_size_limit(size: bytes, limit: int | None) -> None:
    assert greeted(b"250-mx\r\n" + size).size_limit == limit


def test_ehlo_refused_then_helo_forgets_extensions() -> None:
    m = ClientMachine()
    feed(m, b"220 old server\r\n")
    m.hello("me")
    m.data_to_send()
    assert feed(m, b"502 5.5.1 what?\r\n") == [replied(Step.EHLO, 502, "5.5.1 what?")]
    m.helo("me")
    assert m.data_to_send() == b"HELO me\r\n"
    assert feed(m, b"250 ok\r\n") == [replied(Step.HELO, 250, "ok")]
    assert m.extensions == {} and m.auth_mechanisms == () and not m.pipelining
    assert m.in_step


# -- transactions -----------------------------------------------------------------------------
def test_pipelined_transaction_transcript() -> None:
    m = greeted()
    m.transaction([b"alice@example.org", b"SIZE=17"], [b"bob@example.org", b"carol@example.org"])
    assert m.data_to_send() == (
        b"MAIL FROM:<alice@example.org> SIZE=17\r\n"
        b"RCPT TO:<bob@example.org>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n"
    )  # one write: MAIL, every RCPT and DATA
    assert m.awaiting == 4 and not m.in_step
    events = feed(m, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n354 go on\r\n")
    assert events == [
        replied(Step.MAIL, 250, "2.1.0 Ok"),
        replied(Step.RCPT, 250, "2.1.5 Ok", 0),
        replied(Step.RCPT, 550, "5.1.1 no such user", 1),
        replied(Step.DATA, 354, "go on"),
    ]
    m.send_data(b"Subject: x\n\n.hidden\r\nend")
    m.end_data()
    assert m.data_to_send() == b"Subject: x\r\n\r\n..hidden\r\nend\r\n.\r\n"
    assert feed(m, b"250 2.0.0 queued\r\n") == [replied(Step.END_OF_DATA, 250, "2.0.0 queued")]
    assert m.in_step and m.awaiting == 0


def test_each_recipient_may_have_options_of_its_own() -> None:
    """ORCPT is one recipient's: after the options every RCPT has (NOTIFY=)."""
    m = greeted()
    m.transaction(
        [b"alice@example.org"],
        [b"bob@example.org", b"carol@example.org"],
        [b"NOTIFY=NEVER"],
        [[b"ORCPT=rfc822;b+2Bx@old.example"], []],
    )
    assert m.data_to_send() == (
        b"MAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.org> NOTIFY=NEVER ORCPT=rfc822;b+2Bx@old.example\r\n"
        b"RCPT TO:<carol@example.org> NOTIFY=NEVER\r\nDATA\r\n"
    )
    other = greeted()
    with pytest.raises(LocalProtocolError, match="1 recipients' options for 2 recipients"):
        other.transaction([b"a@b.c"], [b"d@e.f", b"g@h.i"], [], [[b"ORCPT=rfc822;d@e.f"]])
    with pytest.raises(LocalProtocolError, match="control character"):
        other.transaction([b"a@b.c"], [b"d@e.f"], [], [[b"ORCPT=rfc822;d@e.f\r\nRSET"]])


def test_transaction_without_pipelining_waits_for_each_reply() -> None:
    m = greeted(EHLO_PLAIN)
    m.transaction([b"alice@example.org"], [b"bob@example.org", b"carol@example.org"])
    assert m.data_to_send() == b"MAIL FROM:<alice@example.org>\r\n"
    assert m.awaiting == 4  # one sent, three held back
    assert feed(m, b"250 ok\r\n") == [replied(Step.MAIL, 250, "ok")]
    assert m.data_to_send() == b"RCPT TO:<bob@example.org>\r\n"
    assert feed(m, b"450 4.2.1 busy\r\n") == [replied(Step.RCPT, 450, "4.2.1 busy", 0)]
    assert m.data_to_send() == b"RCPT TO:<carol@example.org>\r\n"
    assert feed(m, b"251 forwarded\r\n") == [replied(Step.RCPT, 251, "forwarded", 1)]
    assert m.data_to_send() == b"DATA\r\n"  # a RCPT was accepted (251 counts)
    assert feed(m, b"354 go on\r\n") == [replied(Step.DATA, 354, "go on")]
    m.send_data(b"hi")
    m.end_data()
    assert m.data_to_send() == b"hi\r\n.\r\n"
    assert feed(m, b"250 ok\r\n") == [replied(Step.END_OF_DATA, 250, "ok")]
    assert m.in_step


def test_without_pipelining_no_data_when_every_rcpt_is_refused() -> None:
    m = greeted(EHLO_PLAIN)
    m.transaction([b""], [b"a@x", b"b@x"])
    assert m.data_to_send() == b"MAIL FROM:<>\r\n"
    feed(m, b"250 ok\r\n")
    m.data_to_send()
    feed(m, b"550 no\r\n")
    assert m.data_to_send() == b"RCPT TO:<b@x>\r\n"
    assert feed(m, b"550 no\r\n") == [replied(Step.RCPT, 550, "no", 1)]
    assert m.data_to_send() == b""  # no DATA
    assert m.in_step and m.awaiting == 0


def test_without_pipelining_nothing_follows_a_refused_mail() -> None:
    m = greeted(EHLO_PLAIN)
    m.transaction([b"a@x"], [b"b@x"])
    m.data_to_send()
    assert feed(m, b"553 5.1.8 bad sender\r\n") == [replied(Step.MAIL, 553, "5.1.8 bad sender")]
    assert m.data_to_send() == b""
    assert m.in_step and m.awaiting == 0


def test_pipelined_refused_mail_still_answers_the_rest_in_order() -> None:
    m = greeted()
    m.transaction([b"a@x"], [b"b@x"])
    m.data_to_send()
    events = feed(m, b"451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no RCPT\r\n")
    assert events == [
        replied(Step.MAIL, 451, "4.3.0 try later"),
        replied(Step.RCPT, 503, "5.5.1 no MAIL", 0),
        replied(Step.DATA, 503, "5.5.1 no RCPT"),
    ]
    assert m.data_to_send() == b""  # no dot for a refused MAIL
    assert m.in_step


def test_pipelined_all_rcpts_refused_but_354_ends_the_empty_message() -> None:
    m = greeted()
    m.transaction([b"a@x"], [b"b@x", b"c@x"])
    m.data_to_send()
    events = feed(m, b"250 ok\r\n550 no\r\n550 no\r\n354 go on\r\n")
    assert events[-1] == replied(Step.DATA, 354, "go on")
    assert m.data_to_send() == b".\r\n"  # RFC 2920 section 3.1
    assert feed(m, b"554 no valid recipients\r\n") == [
        replied(Step.END_OF_DATA, 554, "no valid recipients")
    ]
    assert m.in_step


def test_pipelined_all_rcpts_refused_and_data_refused() -> None:
    m = greeted()
    m.transaction([b"a@x"], [b"b@x"])
    m.data_to_send()
    assert feed(m, b"250 ok\r\n550 no\r\n554 no valid recipients\r\n")[-1] == replied(
        Step.DATA, 554, "no valid recipients"
    )
    assert m.data_to_send() == b""
    assert m.in_step


def test_a_second_transaction_after_rset() -> None:
    m = greeted()
    m.transaction([b"a@x"], [b"b@x"])
    m.data_to_send()
    feed(m, b"250 ok\r\n550 no\r\n554 nothing to send\r\n")
    m.rset()
    assert m.data_to_send() == b"RSET\r\n"
    assert feed(m, b"250 2.0.0 flushed\r\n") == [replied(Step.RSET, 250, "2.0.0 flushed")]
    m.transaction([b"a@x"], [b"c@x"])
    assert m.data_to_send() == b"MAIL FROM:<a@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n"
    feed(m, b"250 ok\r\n250 ok\r\n354 go\r\n")
    m.end_data()
    assert m.data_to_send() == b".\r\n"
    assert feed(m, b"250 ok\r\n") == [replied(Step.END_OF_DATA, 250, "ok")]
    m.noop()
    assert m.data_to_send() == b"NOOP\r\n"
    assert feed(m, b"250 ok\r\n") == [replied(Step.NOOP, 250, "ok")]
    m.quit()
    assert m.data_to_send() == b"QUIT\r\n"
    assert feed(m, b"221 bye\r\n") == [replied(Step.QUIT, 221, "bye")]
    assert feed(m, b"") == [ConnectionClosed()]


#: One whole dialogue without PIPELINING: (the client's line, the server's normal reply).
_DIALOGUE = [
    (None, b"220 mx ready"),
    (b"EHLO me", b"250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN"),
    (b"STARTTLS", b"220 go ahead"),
    (b"EHLO me", b"250-mx\r\n250 AUTH PLAIN"),
    (b"AUTH PLAIN " + base64.b64encode(b"\0u\0p"), b"235 2.7.0 ok"),
    (b"MAIL FROM:<a@x>", b"250 ok"),
    (b"RCPT TO:<b@x>", b"250 ok"),
    (b"DATA", b"354 go on"),
    (b"hi\r\n.", b"250 2.0.0 queued"),
    (b"QUIT", b"221 bye"),
]
_STEPS = [
    Step.GREETING, Step.EHLO, Step.STARTTLS, Step.EHLO, Step.AUTH, Step.MAIL, Step.RCPT,
    Step.DATA, Step.END_OF_DATA, Step.QUIT,
]  # fmt: skip


def _client_turn(m: ClientMachine, i: int) -> None:
    """The I/O layer's part at step ``i`` of ``_DIALOGUE``."""
    if i == 1 or i == 3:
        m.hello("me")
    elif i == 2:
        m.starttls()
    elif i == 4:
        m.auth("plain", "u", "p")
    elif i == 5:
        m.transaction([b"a@x"], [b"b@x"])
    elif i == 8:
        m.send_data(b"hi")
        m.end_data()
    elif i == 9:
        m.quit()


@pytest.mark.parametrize("refused", range(len(_DIALOGUE)))
@pytest.mark.parametrize("code", [b"451 4.3.0 local trouble", b"554 5.7.1 go away"])
def test_a_refusal_at_any_step_is_the_reply_to_that_step(refused: int, code: bytes) -> None:
    """The dialogue, with step ``refused`` answered 4xx/5xx: every reply before it paired
    with its command; the refusal comes out as the reply to that step."""
    m = ClientMachine()
    for i, (line, reply) in enumerate(_DIALOGUE):
        _client_turn(m, i)
        out = m.data_to_send()
        if line is not None:
            assert out.endswith(line + b"\r\n"), (i, out)
        events = feed(m, (code if i == refused else reply) + b"\r\n")
        if i == refused:
            text = code.decode().split(" ", 1)[1]
            index = 0 if _STEPS[i] is Step.RCPT else -1
            assert events == [replied(_STEPS[i], int(code[:3]), text, index)]
            assert m.data_to_send() == b""  # nothing follows a refusal on its own
            return
        if i == 2:
            assert events == [UpgradeTLS(Reply(220, "go ahead"))]
            m.tls_started()
        else:
            assert [(e.step, e.reply.code) for e in events if isinstance(e, Replied)] == [
                (_STEPS[i], int(reply[:3]))
            ]
    raise AssertionError("never refused")


@given(cuts=st.lists(st.integers(1, 200), max_size=8))
def test_replies_cut_anywhere_give_the_same_events(cuts: list[int]) -> None:
    wire = (
        b"250-first line\r\n250-second\n250 third\r\n"
        b"550-5.1.1 one\r\n550 5.1.1 two\r\n251 ok\r\n354 go\r\n"
    )
    m = greeted()
    m.transaction([b"a@x"], [b"b@x", b"c@x"])
    m.data_to_send()
    events: list[Event] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c < len(wire)), len(wire)]:
        if cut > start:  # b"" would be the end of the stream
            events += feed(m, wire[start:cut])
        start = max(start, cut)
    assert events == [
        replied(Step.MAIL, 250, "first line\nsecond\nthird"),
        replied(Step.RCPT, 550, "5.1.1 one\n5.1.1 two", 0),
        replied(Step.RCPT, 251, "ok", 1),
        replied(Step.DATA, 354, "go"),
    ]


# -- STARTTLS -------------------------------------------------------------------------------
def test_starttls_says_upgrade_and_forgets_the_extensions() -> None:
    m = greeted()
    m.starttls()
    assert m.data_to_send() == b"STARTTLS\r\n"
    assert feed(m, b"220 2.0.0 ready\r\n") == [UpgradeTLS(Reply(220, "2.0.0 ready"))]
    assert not m.in_step and m.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        m.hello("me")  # not before the handshake
    m.tls_started()
    assert m.tls and m.extensions == {} and m.auth_mechanisms == ()
    m.hello("me")
    assert m.data_to_send() == b"EHLO me\r\n"
    feed(m, b"250-mx\r\n250 AUTH PLAIN\r\n")
    assert m.auth_mechanisms == ("plain",)
    with pytest.raises(LocalProtocolError):
        m.starttls()  # TLS is on


def test_starttls_refused_is_a_reply() -> None:
    m = greeted()
    m.starttls()
    assert feed(m, b"454 4.7.0 TLS not available\r\n") == [
        replied(Step.STARTTLS, 454, "4.7.0 TLS not available")
    ]
    assert not m.tls and m.in_step


@pytest.mark.parametrize(
    ("first", "later"),
    [(b"220 ready\r\n250 injected\r\n", b""), (b"220 ready\r\n250 inj", b""),
     (b"220 ready\r\n", b"250 injected\r\n")],
)  # fmt: skip
def test_plaintext_after_220_to_starttls_is_a_protocol_error(first: bytes, later: bytes) -> None:
    m = greeted()
    m.starttls()
    events = feed(m, first)
    if later:
        assert events == [UpgradeTLS(Reply(220, "ready"))]
        events = feed(m, later)
    [error] = events
    assert isinstance(error, ProtocolError) and "TLS" in error.text
    assert not m.in_step


def test_starttls_needs_the_offer_and_tls_started_needs_the_220() -> None:
    m = greeted(EHLO_PLAIN)
    with pytest.raises(LocalProtocolError, match="STARTTLS"):
        m.starttls()
    with pytest.raises(LocalProtocolError, match="220"):
        m.tls_started()
    assert ClientMachine(tls=True).tls


# -- AUTH -----------------------------------------------------------------------------------
def test_auth_plain() -> None:
    m = greeted()
    m.auth("PLAIN", "alice", "secret")
    assert m.data_to_send() == b"AUTH PLAIN " + base64.b64encode(b"\0alice\0secret") + b"\r\n"
    assert feed(m, b"235 2.7.0 ok\r\n") == [replied(Step.AUTH, 235, "2.7.0 ok")]
    assert m.in_step


def test_auth_login_answers_the_challenge() -> None:
    m = greeted()
    m.auth("login", "alice", "secret")
    assert m.data_to_send() == b"AUTH LOGIN " + base64.b64encode(b"alice") + b"\r\n"
    assert feed(m, b"334 UGFzc3dvcmQ6\r\n") == []  # answered by the machine
    assert m.data_to_send() == base64.b64encode(b"secret") + b"\r\n"
    assert feed(m, b"535 5.7.8 bad credentials\r\n") == [
        replied(Step.AUTH, 535, "5.7.8 bad credentials")
    ]
    assert m.in_step


def test_auth_cram_md5_rfc_2195_example() -> None:
    m = greeted()
    m.auth("cram-md5", "tim", "tanstaaftanstaaf")
    assert m.data_to_send() == b"AUTH CRAM-MD5\r\n"
    challenge = b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    assert feed(m, b"334 " + challenge + b"\r\n") == []
    assert m.data_to_send() == b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n"
    assert feed(m, b"235 ok\r\n") == [replied(Step.AUTH, 235, "ok")]


def test_auth_cram_md5_bad_challenge_and_a_third_334() -> None:
    m = greeted()
    m.auth("cram-md5", "tim", "pw")
    [error] = feed(m, b"334 !!not base64!!\r\n")
    assert isinstance(error, ProtocolError) and "CRAM-MD5" in error.text
    m = greeted()
    m.auth("plain", "u", "p")
    m.data_to_send()
    assert feed(m, b"334 more?\r\n") == [replied(Step.AUTH, 334, "more?")]  # nothing to add
    assert m.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        m.auth("xoauth2", "u", "p")


# -- what the client may not do -----------------------------------------------------------
def test_control_characters_in_arguments_are_refused() -> None:
    m = greeted()
    with pytest.raises(LocalProtocolError, match="control character"):
        m.transaction([b"a@x"], [b"b@x\r\nDATA"])
    with pytest.raises(LocalProtocolError):
        m.transaction([b"a\x00@x"], [b"b@x"])
    assert m.data_to_send() == b"" and m.in_step


def test_commands_out_of_turn_are_refused() -> None:
    m = ClientMachine()
    with pytest.raises(LocalProtocolError):
        m.hello("me")  # before the greeting
    m = greeted()
    with pytest.raises(LocalProtocolError):
        m.transaction([b"a@x"], [])
    with pytest.raises(LocalProtocolError):
        m.send_data(b"x")  # before 354
    with pytest.raises(LocalProtocolError):
        m.end_data()
    m.transaction([b"a@x"], [b"b@x"])
    with pytest.raises(LocalProtocolError):
        m.rset()  # replies outstanding
    with pytest.raises(LocalProtocolError):
        m.noop()
    with pytest.raises(LocalProtocolError):
        m.quit()


# -- hostile servers ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wire", "words"),
    [
        (b"hello, I am not an SMTP server\r\n", "Malformed"),
        (b"220-ok\r\nGARBAGE\r\n220 done\r\n", "Malformed"),
        (b"220 " + b"x" * MAX_LINE + b"\r\n", "too long"),
        (b"220-" + b"x" * 200 + b"\r\n", "too long"),  # repeated: an endless reply
        (b"220 " + b"x" * (MAX_LINE * 5), "too long"),  # no line end at all
        (b"220 hi\r\n250 nobody asked\r\n", "nobody asked"),
    ],
)
def test_hostile_replies_are_a_protocol_error(wire: bytes, words: str) -> None:
    m = ClientMachine()
    events: list[Event] = []
    for _ in range(200 if wire.startswith(b"220-x") else 1):
        events += feed(m, wire)
        if events and isinstance(events[-1], ProtocolError):
            break
    error = events[-1]
    assert isinstance(error, ProtocolError) and words in error.text
    assert m.next_event() == error  # and it stays broken
    assert not m.in_step


def test_the_replies_before_a_bad_line_still_come_out() -> None:
    m = greeted()
    m.transaction([b"a@x"], [b"b@x"])
    events = feed(m, b"250 ok\r\n\xff\xfe junk\r\n")
    assert events[0] == replied(Step.MAIL, 250, "ok")
    assert isinstance(events[1], ProtocolError)
    assert "\ufffd" in events[1].text and "\xff" not in events[1].text


def test_eof_with_a_command_unanswered() -> None:
    m = greeted()
    m.transaction([b"a@x"], [b"b@x"])
    assert feed(m, b"250 ok\r\n") == [replied(Step.MAIL, 250, "ok")]
    assert feed(m, b"") == [ConnectionClosed()]
    assert not m.in_step


def test_8bit_reply_text_is_kept_whole() -> None:
    m = ClientMachine()
    [event] = feed(m, b"220 caf\xc3\xa9 \xff\r\n")
    assert isinstance(event, Replied)
    assert event.reply.text.encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff"


# -- details the transcripts above do not reach ------------------------------------------
def test_a_new_machine_knows_nothing_yet() -> None:
    m = ClientMachine()
    assert (m.extensions, m.auth_mechanisms, m.pipelining, m.tls) == ({}, (), False, False)
    assert m.size_limit is None and m.awaiting == 1  # the greeting
    assert m.next_event() is NEED_DATA and not m.in_step


def test_a_refused_ehlo_forgets_what_an_earlier_one_said() -> None:
    m = greeted()
    m.hello("me")
    assert feed(m, b"502 5.5.1 not now\r\n") == [replied(Step.EHLO, 502, "5.5.1 not now")]
    assert m.extensions == {} and m.auth_mechanisms == () and not m.pipelining


def test_an_empty_ehlo_line_is_skipped() -> None:
    m = greeted(b"250-mx\r\n250-\r\n250-  \r\n250 PIPELINING\r\n")
    assert m.extensions == {"pipelining": ""}


def test_only_250_accepts_mail() -> None:
    m = greeted(EHLO_PLAIN)
    m.transaction([b"a@x"], [b"b@x"])
    m.data_to_send()
    assert feed(m, b"251 odd\r\n") == [replied(Step.MAIL, 251, "odd")]
    assert m.data_to_send() == b""  # no RCPT: the transport takes it as not understood


@pytest.mark.parametrize("mechanism", ["login", "cram-md5"])
def test_auth_refused_at_once_sends_nothing_more(mechanism: str) -> None:
    m = greeted()
    m.auth(mechanism, "u", "p")
    m.data_to_send()
    assert feed(m, b"504 5.5.4 not that one\r\n") == [replied(Step.AUTH, 504, "5.5.4 not that one")]
    assert m.data_to_send() == b"" and m.in_step


def test_auth_login_a_third_challenge_is_the_reply() -> None:
    m = greeted()
    m.auth("login", "u", "p")
    m.data_to_send()
    feed(m, b"334 UGFzc3dvcmQ6\r\n")
    assert m.data_to_send() == base64.b64encode(b"p") + b"\r\n"
    assert feed(m, b"334 again?\r\n") == [replied(Step.AUTH, 334, "again?")]
    assert m.data_to_send() == b""


@pytest.mark.parametrize(
    "challenge", ["dGVzdA==!!", "dGVz dA==", "x" * 100 + "!"]
)  # base64 with junk that a lenient decoder would skip
def test_auth_cram_md5_challenge_must_be_strict_base64(challenge: str) -> None:
    m = greeted()
    m.auth("cram-md5", "u", "p")
    m.data_to_send()
    [error] = feed(m, b"334 " + challenge.encode() + b"\r\n")
    assert error == ProtocolError(f"CRAM-MD5 challenge is not base64: {challenge[:80]}")
    assert m.data_to_send() == b""


def _tls_on(m: ClientMachine) -> None:
    m.starttls()
    feed(m, b"220 go\r\n")
    m.tls_started()


_BUSY = ": the previous commands are not all answered"


@pytest.mark.parametrize(
    ("setup", "call", "message"),
    [
        (None, lambda m: m.hello("me"), "EHLO" + _BUSY),
        (None, lambda m: m.helo("me"), "HELO" + _BUSY),
        (None, lambda m: m.starttls(), "STARTTLS" + _BUSY),
        (None, lambda m: m.auth("plain", "u", "p"), "AUTH" + _BUSY),
        (None, lambda m: m.transaction([b"a"], [b"b"]), "MAIL" + _BUSY),
        (None, lambda m: m.rset(), "RSET" + _BUSY),
        (None, lambda m: m.noop(), "NOOP" + _BUSY),
        (None, lambda m: m.quit(), "QUIT" + _BUSY),
        (greeted, lambda m: m.send_data(b"x"), "content before 354 to DATA"),
        (greeted, lambda m: m.end_data(), "end of data before 354 to DATA"),
        (greeted, lambda m: m.transaction([b"a"], []),
         "a transaction needs at least one recipient"),
        (greeted, lambda m: m.auth("gssapi", "u", "p"), "AUTH gssapi: not a mechanism we know"),
        (greeted, lambda m: m.tls_started(), "TLS started without a 220 to STARTTLS"),
        (lambda: greeted(EHLO_PLAIN), lambda m: m.starttls(),
         "STARTTLS is not offered (or TLS is already on)"),
    ],
)  # fmt: skip
def test_what_the_machine_refuses_to_do_says_why(setup: Any, call: Any, message: str) -> None:
    m = setup() if setup is not None else ClientMachine()
    with pytest.raises(LocalProtocolError) as err:
        call(m)
    assert str(err.value) == message


def test_starttls_twice_is_refused() -> None:
    m = greeted()
    _tls_on(m)
    m.hello("me")
    feed(m, b"250-mx\r\n250 STARTTLS\r\n")  # offered again (it should not be)
    with pytest.raises(LocalProtocolError, match=r"^STARTTLS is not offered \(or TLS"):
        m.starttls()


def test_the_starttls_protocol_errors_say_what_happened() -> None:
    m = greeted()
    m.starttls()
    assert feed(m, b"220 go\r\n250 early\r\n") == [
        ProtocolError("data from the server after 220 to STARTTLS")
    ]
    m = greeted()
    m.starttls()
    feed(m, b"220 go\r\n")
    assert feed(m, b"x") == [ProtocolError("data from the server before the TLS handshake")]


# -- CHUNKING (RFC 3030) ------------------------------------------------------------------------
EHLO_CHUNKING = b"250-mx.example.org hello\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
EHLO_CHUNKING_ONLY = b"250-mx.example.org hello\r\n250 CHUNKING\r\n"


def test_pipelined_bdat_sends_the_whole_message_with_mail_and_rcpt() -> None:
    """MAIL, RCPT and ``BDAT <n> LAST`` with the content in one write: CRLF line
    endings and a final CRLF, no dot stuffing (the octets a server keeps of DATA)."""
    m = greeted(EHLO_CHUNKING)
    assert m.chunking
    m.transaction([b"alice@example.org"], [b"bob@example.org"], content=b"Subject: x\n\n.hi\nend")
    octets = b"Subject: x\r\n\r\n.hi\r\nend\r\n"
    assert m.data_to_send() == (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
        b"BDAT %d LAST\r\n" % len(octets) + octets
    )
    assert m.awaiting == 3
    events = feed(m, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as X\r\n")
    assert events == [
        replied(Step.MAIL, 250, "2.1.0 Ok"),
        replied(Step.RCPT, 250, "2.1.5 Ok", 0),
        replied(Step.BDAT, 250, "2.0.0 Ok: queued as X"),
    ]
    assert m.in_step and m.data_to_send() == b""
    with pytest.raises(LocalProtocolError, match="content before 354 to DATA"):
        m.send_data(b"more")


def test_bdat_without_pipelining_waits_for_an_accepted_rcpt() -> None:
    m = greeted(EHLO_CHUNKING_ONLY)
    m.transaction([b"a@x"], [b"b@x", b"c@x"], content=b"hi\r\n")
    assert m.data_to_send() == b"MAIL FROM:<a@x>\r\n"
    feed(m, b"250 ok\r\n")
    assert m.data_to_send() == b"RCPT TO:<b@x>\r\n"
    feed(m, b"550 no\r\n")
    assert m.data_to_send() == b"RCPT TO:<c@x>\r\n"
    feed(m, b"250 ok\r\n")
    assert m.data_to_send() == b"BDAT 4 LAST\r\nhi\r\n"
    assert feed(m, b"250 queued\r\n") == [replied(Step.BDAT, 250, "queued")]
    assert m.in_step
    # every RCPT refused: no BDAT, the transaction is over
    m.transaction([b"a@x"], [b"b@x"], content=b"hi\r\n")
    m.data_to_send()
    feed(m, b"250 ok\r\n")
    m.data_to_send()
    assert feed(m, b"550 no\r\n") == [replied(Step.RCPT, 550, "no", 0)]
    assert m.data_to_send() == b"" and m.in_step and m.awaiting == 0


def test_pipelined_bdat_after_refused_rcpts_is_answered_in_order() -> None:
    """The chunk went with the commands: the server discards it and answers BDAT
    with an error; the dialogue stays in step."""
    m = greeted(EHLO_CHUNKING)
    m.transaction([b"a@x"], [b"b@x"], content=b"hi\r\n")
    m.data_to_send()
    events = feed(m, b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n")
    assert events[-1] == replied(Step.BDAT, 554, "5.5.1 no valid recipients")
    assert m.in_step and m.data_to_send() == b""


def test_bdat_needs_the_offer() -> None:
    m = greeted()  # PIPELINING, no CHUNKING
    assert not m.chunking
    with pytest.raises(LocalProtocolError, match="BDAT: the server does not offer CHUNKING"):
        m.transaction([b"a@x"], [b"b@x"], content=b"hi\r\n")
    assert m.data_to_send() == b"" and m.in_step


@given(st.binary(max_size=300))
def test_bdat_octets_are_what_a_server_keeps_of_data(content: bytes) -> None:
    """Undo the DATA stream's dot stuffing and final dot: the same octets BDAT sends."""
    encoder = DataEncoder()
    stream = encoder.feed(content) + encoder.finish()
    assert stream.endswith(b".\r\n")
    kept = stream[:-3]
    lines = kept.split(b"\r\n")
    kept = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    octets = message_octets(content)
    assert octets == kept
    assert not octets or octets.endswith(b"\r\n")
    assert octets.count(b"\r") == octets.count(b"\n") == octets.count(b"\r\n")
