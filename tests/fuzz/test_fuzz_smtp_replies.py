"""Fuzz target: the SMTP client's reply reader and what reads its replies.

:class:`spoolbox.smtp.replies.ReplyReader` is fed bytes as the connection would (cut
anywhere); its replies are taken with ``next_reply``.  What must hold:

* well-formed replies (one or several lines, CRLF or LF, pipelined several to a
  segment) come out one each, in order, with their code and text, however cut;
* any input at all: ``feed`` never raises; a bad reply fails the reader with
  ``ReplyError`` (what the client machine turns into a protocol error), nothing else;
  replies before the bad one are still delivered, in order;
* ``reply_text`` is one printable line; ``enhanced_status`` is always an ASCII RFC 3463
  code of the class asked for (it ends up as a DSN's ``Status`` field).
"""

from __future__ import annotations

import re

from fuzz_settings import budget
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox.smtp.replies import (
    MAX_REPLY,
    Reply,
    ReplyError,
    ReplyReader,
    enhanced_status,
    reply_text,
)

_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", re.ASCII)


def _feed(data: bytes, cuts: list[int]) -> tuple[list[Reply], Exception | None]:
    """Feed ``data`` cut at ``cuts``; every reply read, then what ``next_reply`` raised."""
    reader = ReplyReader()
    start = 0
    for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        reader.feed(data[start:cut])
        start = max(start, cut)
        assert reader.pending <= MAX_REPLY
    got: list[Reply] = []
    while True:
        try:
            reply = reader.next_reply()
        except ReplyError as exc:
            return got, exc
        if reply is None:
            return got, None
        got.append(reply)


_TEXT = st.text(
    st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.sampled_from(["\t", "\u00e9", "\u2603", "\u0661", "\udcff"]),
    ),
    max_size=40,
)


@st.composite
def _reply(draw: st.DrawFn) -> tuple[int, list[str], bytes]:
    """A well-formed reply: (code, its lines' texts, its bytes)."""
    code = draw(st.integers(100, 599))
    texts = draw(st.lists(_TEXT, min_size=1, max_size=4))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    bare_last = draw(st.booleans()) and texts[-1] == ""  # "250" CRLF: RFC 5321 allows it
    wire = b""
    for i, text in enumerate(texts):
        sep = b"" if i == len(texts) - 1 and bare_last else b" " if i == len(texts) - 1 else b"-"
        wire += b"%d" % code + sep + text.encode("utf-8", "surrogateescape") + eol
    return code, texts, wire


def _model(wire: bytes) -> tuple[list[tuple[int, str]], bool]:
    """The replies in ``wire`` and whether it holds an error, by the rules the reader
    documents: a line over 8192 octets, a line not starting with three
    digits, a reply (or an unfinished rest) over 32768 octets are errors."""
    replies: list[tuple[int, str]] = []
    start = 0  # where the current reply starts
    texts: list[bytes] = []
    pos = 0
    while (end := wire.find(b"\n", pos)) != -1:
        line = wire[pos : end + 1]
        pos = end + 1
        if len(line) > 8192 or not line[:3].isdigit() or pos - start > MAX_REPLY:
            return replies, True
        texts.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            replies.append((int(line[:3]), b"\n".join(texts).decode("utf-8", "surrogateescape")))
            texts = []
            start = pos
    return replies, len(wire) - start > MAX_REPLY


def _expected(code: int, texts: list[str]) -> tuple[int, str]:
    lines = [t.encode("utf-8", "surrogateescape").strip(b" \t\r\n") for t in texts]
    return code, b"\n".join(lines).decode("utf-8", "surrogateescape")


@budget(150)
@given(replies=st.lists(_reply(), max_size=8), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_well_formed_replies_come_out_whole_in_order(
    replies: list[tuple[int, list[str], bytes]], cuts: list[int]
) -> None:
    wire = b"".join(r[2] for r in replies)
    got, error = _feed(wire, cuts)
    assert error is None
    assert [(r.code, r.text) for r in got] == [_expected(c, t) for c, t, _ in replies]


@budget(150)
@given(
    replies=st.lists(_reply(), max_size=4),
    junk=st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"2\r\n", b"abc 250\r\n", b"\n", b"250-a\r\n\xff\r\n", b"\xd9\xa1" * 3]),
        st.integers(8185, 8195).map(lambda n: b"250 " + b"x" * n + b"\r\n"),
        st.integers(4, 9).map(lambda n: (b"250-" + b"y" * 8000 + b"\r\n") * n + b"250 z\r\n"),
        st.integers(1, 40).map(lambda n: b"250-" + b"x" * 1000 + b"\r\n").map(lambda b: b * 40),
    ),
    cuts=st.lists(st.integers(0, 50_000), max_size=6),
)
@example(replies=[], junk=b"250-" + b"y" * 8000 + b"\r\n", cuts=[]).via(
    "a reply of 8000+ octet lines"
)
def test_any_bytes_fail_only_with_reply_error(
    replies: list[tuple[int, list[str], bytes]], junk: bytes, cuts: list[int]
) -> None:
    wire = b"".join(r[2] for r in replies) + junk
    got, error = _feed(wire, cuts)
    assert error is None or isinstance(error, ReplyError)
    expected = [_expected(c, t) for c, t, _ in replies]
    assert [(r.code, r.text) for r in got][: len(expected)] == expected
    for r in got:
        assert 0 <= r.code <= 999
    replies, failed = _model(wire)
    assert [(r.code, r.text) for r in got] == replies
    assert (error is not None) == failed


_DIGITS = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4)
#: reply texts that start like an enhanced status code (any Unicode digits), or not
_REPLY_TEXT = st.one_of(
    _TEXT,
    st.builds(
        "{}.{}.{}{}".format,
        st.sampled_from("123456"),
        _DIGITS,
        _DIGITS,
        st.one_of(_TEXT, st.just("")),
    ),
)


@budget(150)
@given(code=st.integers(0, 999), text=_REPLY_TEXT, cls=st.sampled_from("2345"))
@example(code=550, text="5.\u0661.\u0661 no such user", cls="5").via("Arabic-Indic digits")
def test_reply_text_is_one_line_and_enhanced_status_is_ascii(
    code: int, text: str, cls: str
) -> None:
    resp = Reply(code, text)
    line = reply_text(resp)
    assert line.isprintable()
    assert line.startswith(str(code))
    status = enhanced_status(resp, cls)
    assert status[0] == cls
    assert _STATUS.fullmatch(status) or status == f"{cls}.0.0", status
