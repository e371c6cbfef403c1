"""POP3 responses read from bytes (sans-IO): status lines and multi-line answers,
each within a bound.

The standard library's :mod:`poplib` refuses any line over 2,048 bytes, so a message
with one long line (common in HTML mail) could never be fetched, and it reads a
multi-line answer of any length into memory.  Here a status line may take
:data:`MAX_STATUS_LINE` bytes, a multi-line answer (``RETR``, ``UIDL``, ``LIST``)
as many as its caller allows, in lines of any length: more is :class:`TooLarge`.

Feed it what the server sent (:meth:`ResponseReader.feed`), say what answer comes
next (:meth:`ResponseReader.expect`, in command order), and take the answers
(:meth:`ResponseReader.next`, None while one is incomplete).  A multi-line body is
returned dot-unstuffed, every line ending in CRLF (a server's bare LF read as a line
end too, as poplib does).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = ["MAX_STATUS_LINE", "Pop3Error", "Response", "ResponseReader", "TooLarge"]

#: RFC 1939 allows 512 octets; servers' greetings and errors sometimes say more.
MAX_STATUS_LINE = 4096


class Pop3Error(Exception):
    """The server broke the protocol (or refused a command: see :class:`Response`)."""


class TooLarge(Pop3Error):
    """A multi-line answer ran past the bound its command set.  ``index``: which of
    the answers a caller awaited together it was (0 unless the caller says)."""

    index = 0


@dataclass(frozen=True, slots=True)
class Response:
    """One answer: ``+OK`` (``ok``) or ``-ERR``, the rest of its status line, and for a
    multi-line ``+OK`` its body (None otherwise)."""

    ok: bool
    text: bytes
    body: bytes | None = None


class ResponseReader:
    """The answers in the bytes a POP3 server sends, in the order they were asked for."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._expected: collections.deque[tuple[bool, int]] = collections.deque()
        self._status: Response | None = None  # of the multi-line answer being read
        self._lines: list[bytes] = []
        self._size = 0

    def expect(self, multiline: bool, limit: int = 0) -> None:
        """The next answer after those already expected: multi-line (its body at most
        ``limit`` bytes) or a status line alone."""
        self._expected.append((multiline, limit))

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received and not read as an answer yet."""
        return len(self._buf)

    def next(self) -> Response | None:
        """The next whole answer, or None until more bytes come.  Pop3Error for bytes
        that are not POP3 (an answer nobody asked for included), TooLarge past a
        bound; after either the connection cannot go on."""
        if not self._expected:
            if self._buf:
                raise Pop3Error(f"the server sent {bytes(self._buf[:80])!r} unasked")
            return None
        multiline, limit = self._expected[0]
        if self._status is None:
            status = self._status_line()
            if status is None:
                return None
            if not (multiline and status.ok):
                self._expected.popleft()
                return status
            self._status = status
        body = self._body(limit)
        if body is None:
            return None
        self._expected.popleft()
        status, self._status = self._status, None
        return Response(True, status.text, body)

    def _status_line(self) -> Response | None:
        end = self._buf.find(b"\n", 0, MAX_STATUS_LINE + 1)
        if end < 0:
            if len(self._buf) > MAX_STATUS_LINE:
                raise Pop3Error(f"a status line over {MAX_STATUS_LINE} bytes")
            return None
        line = bytes(self._buf[:end]).rstrip(b"\r")
        del self._buf[: end + 1]
        if line.startswith(b"+OK"):
            return Response(True, line[3:].strip())
        if line.startswith(b"-ERR"):
            return Response(False, line[4:].strip())
        raise Pop3Error(f"not a POP3 status line: {line[:80]!r}")

    def _body(self, limit: int) -> bytes | None:
        buf = self._buf
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line == b".":
                del buf[:start]
                body, self._lines, self._size = b"".join(self._lines), [], 0
                return body
            if line.startswith(b"."):
                line = line[1:]  # dot-unstuffed (RFC 1939 section 3)
            self._size += len(line) + 2
            if self._size > limit:
                raise TooLarge(f"a multi-line answer over {limit} bytes")
            self._lines.append(line + b"\r\n")
        del buf[:start]
        if self._size + len(buf) > limit + 2:
            raise TooLarge(f"a multi-line answer over {limit} bytes")
        return None
