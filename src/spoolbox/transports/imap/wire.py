"""IMAP's text, without I/O: quoting and UID sets for commands, and pure readers of
what the server answered (aioimaplib's response lines).

Strict where it matters: a number too long, a ``BODY[]`` that cannot be paired with
its UID and length, a UID not asked for are :class:`_ProtocolError`, never a silent
guess (tests/fuzz/test_fuzz_mailbox.py feeds these functions arbitrary lines).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_LITERAL = re.compile(rb"BODY\[\] \{(\d+)\}$")
_UID = re.compile(rb"\bUID (\d+)")
_FETCH = re.compile(rb"^\d+ FETCH \(")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_GONE = re.compile(rb"BODY\[\] NIL\b")
_EXISTS = re.compile(rb"^\d+ EXISTS$")


class _ProtocolError(Exception):
    """The server answered a command with NO or BAD (or something unparsable)."""


class _Overrun(_ProtocolError):
    """The server sent more for a command than it announced (a ``BODY[]`` longer than
    its ``RFC822.SIZE`` by far): the connection was dropped."""


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lines(resp: Any) -> list[Any]:
    return list(getattr(resp, "lines", []) or [])


def _check(resp: Any, what: str) -> Any:
    if getattr(resp, "result", None) != "OK":
        text = b" ".join(x for x in _lines(resp) if isinstance(x, bytes)).decode(errors="replace")
        raise _ProtocolError(f"{what} failed: {getattr(resp, 'result', '?')} {text}".strip())
    return resp


def _uid_set(uids: Sequence[int]) -> str:
    """``1,3:5,9`` for [1, 3, 4, 5, 9]."""
    out: list[str] = []
    start = prev = None
    for u in sorted(set(uids)):
        if start is None:
            start = prev = u
        elif prev is not None and u == prev + 1:
            prev = u
        else:
            out.append(f"{start}" if start == prev else f"{start}:{prev}")
            start = prev = u
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}:{prev}")
    return ",".join(out)


# -- what the server's answers say (pure functions of aioimaplib's response lines) ------
def _number(digits: bytes, what: str) -> int:
    """A number of the server's (UIDs, UIDVALIDITY and sizes are 32-bit, RFC 3501 section
    9); one too long for ``int`` (4300 digits) is a protocol error, not a ValueError."""
    if len(digits) > 20:
        raise _ProtocolError(f"{what}: a number of {len(digits)} digits")
    return int(digits)


def _uidvalidity(lines: Sequence[Any]) -> int:
    """The UIDVALIDITY a SELECT reported (its last), or 0."""
    value = 0
    for line in lines:
        if isinstance(line, bytes) and (m := _UIDVALIDITY.search(line)):
            value = _number(m.group(1), "SELECT UIDVALIDITY")
    return value


def _search_result(lines: Sequence[Any], lo: int, hi: int | None) -> list[int]:
    """The UIDs of a ``UID SEARCH UID lo:hi`` answer, really in that range, ascending.
    Other untagged data ("3 EXISTS") may come along: all-digit lines are taken."""
    uids: list[int] = []
    for line in lines:
        if isinstance(line, bytes):
            words = line.split()
            if words[:1] == [b"SEARCH"]:
                words = words[1:]
            if words and all(w.isdigit() for w in words):
                uids += [_number(w, "UID SEARCH") for w in words]
    # "n:*" includes the highest UID even when it is below n (RFC 3501 6.4.8).
    return sorted(u for u in set(uids) if u >= lo and (hi is None or u <= hi))


def _sizes_result(lines: Sequence[Any], uids: Sequence[int]) -> dict[int, int]:
    """``RFC822.SIZE`` of each of ``uids`` a ``UID FETCH (UID RFC822.SIZE)`` answered."""
    wanted = set(uids)
    out: dict[int, int] = {}
    for line in lines:
        if not isinstance(line, bytes):
            raise _ProtocolError("UID FETCH RFC822.SIZE: an unexpected literal")
        if not _FETCH.match(line):
            continue  # untagged EXISTS, EXPUNGE, ...
        size = _SIZE.search(line)
        if size is None:
            continue  # an unsolicited FETCH (flags changed by another client)
        got = _UID.search(line)
        if got is None:
            raise _ProtocolError(f"UID FETCH RFC822.SIZE: no UID in {line!r}")
        uid = _number(got.group(1), "UID FETCH RFC822.SIZE")
        if uid in wanted:
            out[uid] = _number(size.group(1), "UID FETCH RFC822.SIZE")
    return out


def _fetch_result(lines: Sequence[Any], uids: Sequence[int], what: str) -> dict[int, bytes]:
    """The messages a ``UID FETCH (UID BODY.PEEK[])`` answered; those gone are absent.

    Strict: a ``BODY[]`` this cannot pair with its UID and its announced length, or a
    UID that was not asked for, is a :class:`_ProtocolError`."""
    wanted = set(uids)
    out: dict[int, bytes] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not isinstance(line, bytes):
            raise _ProtocolError(f"{what}: a literal without its FETCH line")
        m = _LITERAL.search(line)
        if m is None:
            if _FETCH.match(line) and _GONE.search(line):
                i += 1  # expunged by another client: Dovecot sends ``BODY[] NIL``
                continue
            if b"BODY[" in line.upper():
                raise _ProtocolError(f"{what}: cannot parse {line[:200]!r}")
            i += 1  # untagged EXISTS, EXPUNGE, an unsolicited FETCH of flags ...
            continue
        if not _FETCH.match(line):
            raise _ProtocolError(f"{what}: cannot parse {line[:200]!r}")
        data = lines[i + 1] if i + 1 < len(lines) else None
        if not isinstance(data, bytes | bytearray):
            raise _ProtocolError(f"{what}: the literal of {line[:200]!r} is missing")
        announced = _number(m.group(1), what)
        if len(data) != announced:
            raise _ProtocolError(f"{what}: {len(data)} bytes, {announced} announced")
        tail = lines[i + 2] if i + 2 < len(lines) else None
        if not isinstance(tail, bytes) or not tail.rstrip().endswith(b")"):
            raise _ProtocolError(f"{what}: the FETCH of {line[:200]!r} is not closed")
        got = _UID.search(line) or _UID.search(tail)
        if got is None:
            raise _ProtocolError(f"{what}: no UID with {line[:200]!r}")
        uid = _number(got.group(1), what)
        if uid not in wanted or uid in out:
            raise _ProtocolError(f"{what}: UID {uid} was not asked for (or came twice)")
        out[uid] = bytes(data)
        i += 3
    return out


def _exists(lines: Sequence[Any]) -> bool:
    """Whether untagged data (an IDLE push) says the folder has grown (``n EXISTS``)."""
    return any(isinstance(x, bytes) and _EXISTS.match(x) for x in lines)
