"""BDAT (CHUNKING, RFC 3030) in the SMTP server machine, by feeding it bytes: chunks
pipelined or one at a time, split anywhere, refused commands whose octets are still
read, the content's rules (size, line length, bare CR or LF, NUL), and the client
machine's BDAT taken as DATA's would be."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from test_smtp_server_machine import machine, run

from spoolbox.smtp.client import ClientMachine
from spoolbox.smtp.data import message_octets
from spoolbox.smtp.server import MessageData, RcptTo, Refused, ServerMachine, State

ENVELOPE = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
OK2 = ["250 2.0.0 OK", "250 2.0.0 OK"]


def chunking(**changes: object) -> ServerMachine:
    m = machine(chunking=True, **changes)
    _, said = run(m, b"EHLO c.test\r\n")
    assert "CHUNKING" in said[0].split("\n")[-1] or "250-CHUNKING" in said[0], said
    return m


def test_chunking_is_offered_only_when_set() -> None:
    m = machine()
    _, said = run(m, b"EHLO c.test\r\n")
    assert "CHUNKING" not in said[0]
    # not offered: BDAT is a command it does not know
    assert run(m, b"BDAT 0 LAST\r\n")[1] == ['500 5.5.1 Error: command "BDAT" not recognized']
    m = chunking()
    assert "BDAT" in run(m, b"HELP\r\n")[1][0]


def test_one_chunk_pipelined_with_mail_and_rcpt() -> None:
    m = chunking()
    body = b"Subject: x\r\n\r\n.a leading dot stays\r\nend\r\n"
    events, said = run(m, ENVELOPE + b"BDAT %d LAST\r\n" % len(body) + body)
    assert said == [*OK2, "250 2.0.0 OK"]
    data = events[-1]
    assert isinstance(data, MessageData)
    assert data.content == body  # no dot-unstuffing in BDAT
    assert (data.sender, data.recipients) == ("a@x.test", ("b@y.test",))
    assert m.state is State.READY and not m.in_transaction


def test_several_chunks_fed_in_pieces_make_one_message() -> None:
    m = chunking()
    run(m, ENVELOPE)
    parts = [b"Subject: x\r\n\r\nline one\r", b"\nline two\r\nand a half", b" line\r\n"]
    wire = b"".join(b"BDAT %d\r\n" % len(p) + p for p in parts) + b"BDAT 0 LAST\r\n"
    events: list[object] = []
    said: list[str] = []
    for i in range(0, len(wire), 7):  # seven octets at a time
        got, replies = run(m, wire[i : i + 7])
        events += got
        said += replies
    sofar = list(itertools.accumulate(map(len, parts)))
    assert said == [f"250 2.0.0 {n} octets received" for n in sofar] + ["250 2.0.0 OK"]
    [data] = [e for e in events if isinstance(e, MessageData)]
    assert data.content == b"".join(parts)


def test_a_last_chunk_without_a_final_crlf_gets_one() -> None:
    m = chunking()
    events, said = run(m, ENVELOPE + b"BDAT 9 LAST\r\nSubject:x")
    assert said[-1] == "250 2.0.0 OK"
    assert events[-1] == MessageData(b"Subject:x\r\n", "a@x.test", ("b@y.test",))


def test_a_refused_bdat_is_read_to_its_end_before_its_reply() -> None:
    """No transaction: 503 once the octets are read (they hold command-like lines,
    which must not be run); the session goes on in step."""
    m = chunking()
    chunk = b"RSET\r\nQUIT\r\n"
    events, said = run(m, b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert said == ["503 5.5.1 Error: need RCPT command", "250 2.0.0 OK"]
    assert events == [] and m.state is State.READY


def test_every_rcpt_refused_then_bdat_is_554_after_its_octets() -> None:
    m = chunking()
    events, said = run(
        m, ENVELOPE + b"BDAT 4 LAST\r\nhi\r\nNOOP\r\n", {RcptTo: "550 5.1.1 no such user"}
    )
    assert said == [
        "250 2.0.0 OK",
        "550 5.1.1 no such user",
        "554 5.5.1 No valid recipients",
        "250 2.0.0 OK",
    ]
    assert events[-1] == Refused("no_recipients")


def test_data_after_bdat_and_rcpt_after_bdat_are_refused() -> None:
    m = chunking()
    events, said = run(m, ENVELOPE + b"BDAT 4\r\nab\r\nDATA\r\nRCPT TO:<c@y.test>\r\n")
    assert said[-3:] == [
        "250 2.0.0 4 octets received",
        "503 5.5.1 Error: DATA after BDAT",
        "503 5.5.1 Error: RCPT after BDAT",
    ]
    events, said = run(m, b"BDAT 4 LAST\r\ncd\r\n")
    assert said == ["250 2.0.0 OK"]
    assert isinstance(events[-1], MessageData) and events[-1].content == b"ab\r\ncd\r\n"
    # RSET forgets the chunks: a new transaction may use DATA
    run(m, ENVELOPE + b"BDAT 2\r\nx\n")
    events, said = run(m, b"RSET\r\n" + ENVELOPE + b"DATA\r\nhi\r\n.\r\n")
    assert said[-1] == "250 2.0.0 OK" and events[-1].content == b"hi\r\n"  # type: ignore[union-attr]


def test_a_bdat_whose_size_cannot_be_read_ends_the_session() -> None:
    m = chunking()
    run(m, ENVELOPE)
    events, said = run(m, b"BDAT lots LAST\r\nRSET\r\n")
    assert events == []
    assert said == ["501 5.5.4 Syntax: BDAT octets [LAST]"]
    assert m.closing


def test_the_content_rules_of_data_hold_in_chunks() -> None:
    """Bare LF, NUL, a line over max_line_length (100 here, also across chunks),
    over max_message_size: refused at the end of the chunk that broke it, the
    transaction over; the chunks pipelined after it find none (503), read all the
    same."""
    cases = [
        (b"a\nb\r\n", "554 5.6.0 Line 1 of the message contains a bare CR or LF"),
        (b"ok\r\na\x00b\r\n", "554 5.6.0 Line 2 of the message contains a NUL byte"),
        (b"x" * 101 + b"\r\n", "554 5.6.0 Line 1 of the message is longer than 100 octets"),
    ]
    for chunk, reply in cases:
        m = chunking()
        events, said = run(
            m, ENVELOPE + b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT 4 LAST\r\nab\r\n"
        )
        assert said[2].startswith(reply), (chunk, said)
        assert said[3] == "503 5.5.1 Error: need RCPT command"
        assert not any(isinstance(e, MessageData) for e in events)
    m = chunking()
    long_line = [b"BDAT 60\r\n" + b"y" * 60, b"BDAT 60 LAST\r\n" + b"y" * 58 + b"\r\n"]
    events, said = run(m, ENVELOPE + b"".join(long_line))
    assert said[-1].startswith("554 5.6.0 Line 1 of the message is longer than 100"), said
    m = chunking(max_message_size=50)
    big = b"z" * 30 + b"\r\n"
    events, said = run(m, ENVELOPE + (b"BDAT 32\r\n" + big) * 2 + b"BDAT 0 LAST\r\n")
    assert said[3].startswith("552 5.3.4 Message too big"), said
    assert events[-1] == Refused("size")


@given(st.binary(max_size=400), st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_what_the_client_machine_sends_the_server_takes(body: bytes, cuts: list[int]) -> None:
    """The client's BDAT of any content, delivered in arbitrary pieces: the server's
    message is the client's octets (or a refusal naming a rule, for content that
    breaks one: a NUL, a long line)."""
    client = ClientMachine()
    client.receive_data(b"220 s\r\n")
    client.next_event()
    client.hello("c.test")
    client.data_to_send()
    client.receive_data(b"250-s\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    client.next_event()
    client.transaction([b"a@x.test"], [b"b@y.test"], content=body)
    wire = client.data_to_send()
    m = chunking(max_line_length=998)
    events: list[object] = []
    at = 0
    for cut in cuts * (len(wire) // max(sum(cuts), 1) + 1):
        if at >= len(wire):
            break
        got, _ = run(m, wire[at : at + cut])
        events += got
        at += cut
    got, _ = run(m, wire[at:])
    events += got
    final = events[-1]
    octets = message_octets(body)
    if b"\x00" in octets or any(len(line) > 998 for line in octets.split(b"\r\n")):
        assert isinstance(final, Refused) and final.reason in ("bad_data", "line_length")
    else:
        assert isinstance(final, MessageData) and final.content == octets
