"""The POP3 answers' reader (``pop3/reader.py``), fed bytes: status lines, multi-line
bodies dot-unstuffed with CRLF line ends, lines of any length, every bound, and the
same answers however the bytes are cut."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spoolbox.transports.pop3.reader import (
    MAX_STATUS_LINE,
    Pop3Error,
    Response,
    ResponseReader,
    TooLarge,
)


def _read(data: bytes, *expected: tuple[bool, int]) -> list[Response]:
    reader = ResponseReader()
    for multiline, limit in expected:
        reader.expect(multiline, limit)
    reader.feed(data)
    out = []
    while (answer := reader.next()) is not None:
        out.append(answer)
    return out


def test_status_lines_and_a_multi_line_body() -> None:
    data = b"+OK ready\r\n-ERR no such message\r\n+OK 2 messages\r\n1 abc\r\n2 def\r\n.\r\n"
    assert _read(data, (False, 0), (True, 100), (True, 100)) == [
        Response(True, b"ready"),
        Response(False, b"no such message"),  # -ERR to a multi-line command: no body
        Response(True, b"2 messages", b"1 abc\r\n2 def\r\n"),
    ]


def test_a_body_is_dot_unstuffed_and_its_lf_lines_end_in_crlf() -> None:
    data = b"+OK\r\n..leading dot\n\r\n...\r\nend\r\n.\r\n"
    assert _read(data, (True, 100)) == [Response(True, b"", b".leading dot\r\n\r\n..\r\nend\r\n")]


def test_a_line_of_any_length_within_the_bound() -> None:
    # poplib refuses lines over 2,048 bytes: a message with one could never be fetched.
    line = b"x" * 1_000_000
    data = b"+OK message follows\r\n" + line + b"\r\n.\r\n"
    assert _read(data, (True, len(line) + 2)) == [
        Response(True, b"message follows", line + b"\r\n")
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"+OK\r\n" + b"y" * 200 + b"\r\n.\r\n",  # whole lines past the bound
        b"+OK\r\n" + b"y" * 200,  # one line, not ended yet, already past it
    ],
)
def test_a_body_past_its_bound_is_too_large(data: bytes) -> None:
    with pytest.raises(TooLarge, match="over 100 bytes"):
        _read(data, (True, 100))


def test_a_status_line_past_its_bound_and_bytes_that_are_not_pop3() -> None:
    with pytest.raises(Pop3Error, match=f"over {MAX_STATUS_LINE} bytes"):
        _read(b"+OK " + b"z" * MAX_STATUS_LINE, (False, 0))
    with pytest.raises(Pop3Error, match=r"not a POP3 status line: b'HTTP/1\.1 200 OK'"):
        _read(b"HTTP/1.1 200 OK\r\n", (False, 0))
    with pytest.raises(Pop3Error, match="unasked"):
        _read(b"+OK\r\n+OK again\r\n", (False, 0))


def test_an_answer_waits_for_its_last_byte() -> None:
    reader = ResponseReader()
    reader.expect(True, 100)
    reader.feed(b"+OK\r\nline\r\n.")
    assert reader.next() is None
    reader.feed(b"\r\n")
    assert reader.next() == Response(True, b"", b"line\r\n")
    assert reader.next() is None


_LINE = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)


@given(lines=st.lists(_LINE, max_size=20), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_the_same_answers_however_the_bytes_are_cut(lines: list[bytes], cuts: list[int]) -> None:
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    data = b"+OK first\r\n+OK body\r\n" + stuffed + b".\r\n-ERR last\r\n"
    reader = ResponseReader()
    reader.expect(False)
    reader.expect(True, 10_000)
    reader.expect(False)
    got = []
    last = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        reader.feed(data[last:cut])
        last = cut
        while (answer := reader.next()) is not None:
            got.append(answer)
    assert got == [
        Response(True, b"first"),
        Response(True, b"body", b"".join(line + b"\r\n" for line in lines)),
        Response(False, b"last"),
    ]
