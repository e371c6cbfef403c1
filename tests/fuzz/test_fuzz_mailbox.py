"""Fuzz target: how the IMAP and POP3 transports read their servers' answers.

The pure functions of :mod:`spoolbox.transports.imap.wire` (``_uidvalidity``,
``_search_result``, ``_sizes_result``, ``_fetch_result``, ``_uid_set``) and of
:mod:`spoolbox.transports.pop3.wire` (``_uidl_result``, ``_list_result``) get the lines
aioimaplib and poplib hand over: well-formed answers mixed with unsolicited data, and
arbitrary lines.  What must hold:

* a well-formed answer is read exactly (UIDs, sizes, message bytes), whatever
  unsolicited EXISTS/EXPUNGE/FLAGS lines come with it;
* any answer at all: the IMAP readers raise nothing but ``_ProtocolError`` (which the
  session turns into a NetworkError and a retry), the POP3 readers nothing at all;
  every UID, size or message number returned is one the lines held;
* ``_uid_set`` names exactly the UIDs given;
* distinct valid UIDLs (RFC 1939: 1 to 70 characters 0x21-0x7E) stay distinct;
* the POP3 answers' reader (:mod:`spoolbox.transports.pop3.reader`), fed any bytes
  cut anywhere, gives answers or raises ``Pop3Error`` alone, a body within its bound.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fuzz_settings import budget
from hypothesis import assume, example, given
from hypothesis import strategies as st

from spoolbox.transports.imap.wire import (
    _fetch_result,
    _ProtocolError,
    _search_result,
    _sizes_result,
    _uid_set,
    _uidvalidity,
)
from spoolbox.transports.pop3.reader import Pop3Error, ResponseReader
from spoolbox.transports.pop3.wire import _list_result, _uidl_result

_UIDS = st.lists(st.integers(1, 2**32 - 1), max_size=12)
_NOISE = st.sampled_from(
    [
        b"3 EXISTS",
        b"2 EXPUNGE",
        b"0 RECENT",
        b"4 FETCH (FLAGS (\\Seen))",
        b"OK done",
        b"",
        b"5 FETCH (UID 77 FLAGS ())",
        b"* BYE",
    ]
)
_DIGITS = st.one_of(
    st.integers(0, 2**64).map(lambda n: str(n).encode()),
    st.integers(4290, 4400).map(lambda n: b"9" * n),  # past int()'s 4300-digit limit
)
#: lines as aioimaplib may hand them over: text lines (bytes), literals (bytearray)
_ANY_LINE = st.one_of(
    _NOISE,
    st.binary(max_size=40),
    st.binary(max_size=40).map(bytearray),
    st.builds(
        lambda n, uid, size, tail: b"%s FETCH (UID %s RFC822.SIZE %s%s" % (n, uid, size, tail),
        _DIGITS,
        _DIGITS,
        _DIGITS,
        st.sampled_from([b")", b"", b" BODY[] {3}", b" BODY[] NIL)"]),
    ),
    st.builds(lambda uid, n: b"1 FETCH (UID %s BODY[] {%s}" % (uid, n), _DIGITS, _DIGITS),
    st.builds(lambda words: b" ".join(words), st.lists(_DIGITS, max_size=4)),
    st.builds(lambda v: b"OK [UIDVALIDITY %s] UIDs valid" % v, _DIGITS),
)
_LINES = st.lists(_ANY_LINE, max_size=10)


def _only_protocol_errors(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except _ProtocolError as exc:
        message = str(exc)
    assert message, "a _ProtocolError without a message"
    return None


def _numbers(lines: list[Any]) -> set[int]:
    found: set[int] = set()
    for line in lines:
        for digits in re.findall(rb"\d+", bytes(line)):
            if len(digits) <= 4300:
                found.add(int(digits))
    return found


@budget(200)
@given(
    lines=_LINES,
    uids=_UIDS,
    lo=st.integers(1, 2**32),
    hi=st.one_of(st.none(), st.integers(1, 2**32)),
)
@example(lines=[b"9" * 5000], uids=[1], lo=1, hi=None).via("a SEARCH result of 5000 digits")
@example(lines=[b"1 FETCH (UID 1 RFC822.SIZE " + b"9" * 5000 + b")"], uids=[1], lo=1, hi=None).via(
    "an RFC822.SIZE of 5000 digits"
)
@example(lines=[b"OK [UIDVALIDITY " + b"9" * 5000 + b"]"], uids=[], lo=1, hi=None).via(
    "a UIDVALIDITY of 5000 digits"
)
def test_imap_readers_raise_only_protocol_errors(
    lines: list[Any], uids: list[int], lo: int, hi: int | None
) -> None:
    numbers = _numbers(lines)
    validity = _only_protocol_errors(_uidvalidity, lines)
    assert validity is None or validity == 0 or validity in numbers
    found = _only_protocol_errors(_search_result, lines, lo, hi)
    if found is not None:
        assert found == sorted(set(found))
        assert all(u >= lo and (hi is None or u <= hi) and u in numbers for u in found)
    sizes = _only_protocol_errors(_sizes_result, lines, uids)
    if sizes is not None:
        assert set(sizes) <= set(uids)
        assert all(size in numbers for size in sizes.values())
    got = _only_protocol_errors(_fetch_result, lines, uids, "UID FETCH")
    if got is not None:
        assert set(got) <= set(uids)
        literals = [bytes(x) for x in lines]
        assert all(data in literals for data in got.values())


@st.composite
def _fetch_answer(draw: st.DrawFn) -> tuple[list[Any], dict[int, bytes], list[int]]:
    """A well-formed UID FETCH answer (with noise), the messages it holds, the UIDs asked."""
    messages = draw(st.dictionaries(st.integers(1, 2**32 - 1), st.binary(max_size=30), max_size=5))
    gone = draw(st.lists(st.integers(1, 2**32 - 1).filter(lambda u: u not in messages), max_size=2))
    lines: list[Any] = []
    for n, (uid, data) in enumerate(messages.items(), 1):
        lines += draw(st.lists(_NOISE, max_size=2))
        if draw(st.booleans()):
            lines += [b"%d FETCH (UID %d BODY[] {%d}" % (n, uid, len(data)), bytearray(data), b")"]
        else:  # the UID after the literal
            lines += [b"%d FETCH (BODY[] {%d}" % (n, len(data)), bytearray(data), b" UID %d)" % uid]
    for uid in gone:
        lines.append(b"9 FETCH (UID %d BODY[] NIL)" % uid)
    return lines, messages, [*messages, *gone]


@budget(150)
@given(answer=_fetch_answer())
def test_imap_well_formed_fetch_is_read_exactly(
    answer: tuple[list[Any], dict[int, bytes], list[int]],
) -> None:
    lines, messages, asked = answer
    assert _fetch_result(lines, asked, "UID FETCH") == messages


@budget(100)
@given(answer=_fetch_answer(), pick=st.integers(0, 100))
def test_imap_fetch_of_a_uid_not_asked_for_is_a_protocol_error(
    answer: tuple[list[Any], dict[int, bytes], list[int]], pick: int
) -> None:
    lines, messages, asked = answer
    assume(messages)
    unasked = list(messages)[pick % len(messages)]
    with pytest.raises(_ProtocolError, match=f"UID {unasked} was not asked for"):
        _fetch_result(lines, [u for u in asked if u != unasked], "UID FETCH")


@budget(150)
@given(
    sizes=st.dictionaries(st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1), max_size=8),
    extra=st.lists(st.integers(1, 2**32 - 1), max_size=3),
    noise=st.lists(_NOISE, max_size=4),
)
def test_imap_well_formed_sizes_and_search_are_read_exactly(
    sizes: dict[int, int], extra: list[int], noise: list[bytes]
) -> None:
    lines: list[Any] = list(noise)
    lines += [
        b"%d FETCH (UID %d RFC822.SIZE %d)" % (i, u, s) for i, (u, s) in enumerate(sizes.items(), 1)
    ]
    assert _sizes_result(lines, [*sizes, *extra]) == sizes
    search = [b"SEARCH " + b" ".join(b"%d" % u for u in [*sizes, *extra])] if sizes or extra else []
    assert _search_result([*noise, *search], 1, None) == sorted({*sizes, *extra})


@budget(150)
@given(uids=_UIDS)
def test_uid_set_names_exactly_the_uids(uids: list[int]) -> None:
    text = _uid_set(uids)
    named: set[int] = set()
    for part in text.split(",") if text else []:
        first, _, last = part.partition(":")
        assert int(first) <= int(last or first)
        named |= set(range(int(first), int(last or first) + 1))
    assert named == set(uids)


_UIDL = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)


@budget(150)
@given(
    listing=st.lists(st.tuples(st.integers(1, 10**6), _UIDL, st.integers(0, 2**40)), max_size=8),
    junk=st.lists(st.binary(max_size=30), max_size=4),
)
def test_pop3_uidl_and_list_lines(listing: list[tuple[int, str, int]], junk: list[bytes]) -> None:
    uidl_lines = [b"%d %s" % (n, u.encode()) for n, u, _ in listing]
    assert _uidl_result(uidl_lines) == [(n, u) for n, u, _ in listing]
    list_lines = [b"%d %d" % (n, size) for n, _, size in listing]
    assert _list_result(list_lines) == {n: size for n, _, size in listing}
    mixed = [*junk, *uidl_lines]
    numbers = _numbers(mixed)
    for n, _u in _uidl_result(mixed):
        assert n in numbers
    assert set(_list_result([*junk, *list_lines])).issubset(_numbers([*junk, *list_lines]))
    distinct = {u for _n, u, _s in listing}
    assert len({u for _n, u in _uidl_result(uidl_lines)}) == len(distinct)


@budget(200)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.sampled_from(
                [b"+OK", b"-ERR x", b".", b"..", b"+OK 2 messages", b"1 abc", b"\r", b""]
            ).map(lambda line: line + b"\r\n"),
            max_size=12,
        ).map(b"".join),
    ),
    expected=st.lists(st.tuples(st.booleans(), st.integers(0, 200)), max_size=5),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_pop3_reader_any_bytes(
    data: bytes, expected: list[tuple[bool, int]], cuts: list[int]
) -> None:
    # Whatever a server sends, cut anywhere: answers, None for more, or Pop3Error (its
    # TooLarge included); a body is CRLF-ended lines within its bound.
    reader = ResponseReader()
    for multiline, limit in expected:
        reader.expect(multiline, limit)
    last = 0
    try:
        for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
            reader.feed(data[last:cut])
            last = cut
            while (answer := reader.next()) is not None:
                assert answer.body is None or answer.ok
                if answer.body:
                    assert answer.body.endswith(b"\r\n")
                    assert len(answer.body) <= max(limit for _m, limit in expected)
    except Pop3Error:
        pass
