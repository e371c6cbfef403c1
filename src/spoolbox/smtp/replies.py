"""SMTP replies (RFC 5321 section 4.2): the reader, the reply value, and what a
diagnostic takes from a reply (its enhanced status code, RFC 3463, and its text made safe).

The reader's limits are aiosmtplib's, which the transport used before it had its own
reader: a line of at most :data:`MAX_LINE` octets, a whole (multi-line) reply of at most
:data:`MAX_REPLY`, so an endless ``250-`` reply ends quickly.  A line must start with
three ASCII digits; the fourth octet ``-`` continues the reply, anything else ends it.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

from spoolbox._quick import quick_init

__all__ = [
    "MAX_LINE",
    "MAX_REPLY",
    "Reply",
    "ReplyError",
    "ReplyReader",
    "clean_text",
    "enhanced_status",
    "reply_text",
]

#: The longest reply line (octets, with its line ending) and the longest whole reply.
MAX_LINE = 8192
MAX_REPLY = MAX_LINE * 4

_ENHANCED_RE = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![\d.])")  # ASCII digits only
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]+")


@quick_init
@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: its code and its text (the lines' texts joined by ``\\n``).

    The text is the octets decoded as UTF-8 with ``surrogateescape``, so nothing is lost;
    :func:`clean_text` makes it fit for a diagnostic.
    """

    code: int
    text: str = ""

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")


class ReplyError(Exception):
    """The server sent something that is not a reply (or one over the limits)."""


class ReplyReader:
    """Bytes in (cut anywhere), whole replies out, in order, none lost.

    :meth:`feed` never raises: a malformed reply stops the reader, and :meth:`next_reply`
    raises :class:`ReplyError` once the replies before the bad one have been taken.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._replies: collections.deque[Reply] = collections.deque()
        self._error: ReplyError | None = None

    @property
    def pending(self) -> int:
        """Octets received and not yet part of a whole reply."""
        return len(self._buffer)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except ReplyError as exc:
            self._error = exc
            del self._buffer[:]
            return
        if len(self._buffer) > MAX_REPLY:
            self._error = ReplyError("Reply too long")
            del self._buffer[:]

    def next_reply(self) -> Reply | None:
        """The next whole reply; None if there is none yet."""
        if self._replies:
            return self._replies.popleft()
        if self._error is not None:
            raise self._error
        return None

    def _parse(self) -> Reply | None:
        """One whole reply off the front of the buffer, or None."""
        buf = self._buffer
        end = buf.find(b"\n")
        if end == -1:
            return None
        if end < MAX_LINE and buf[3:4] != b"-" and buf[:3].isdigit():
            # A reply of one line (nearly every one): what the loop below makes of it.
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            return Reply(
                int(line[:3]), line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape")
            )
        texts: list[bytes] = []
        offset = 0
        while (end := buf.find(b"\n", offset)) != -1:
            line = bytes(buf[offset : end + 1])
            if len(line) > MAX_LINE:
                raise ReplyError("Reply line too long")
            if not line[:3].isdigit():
                text = clean_text(line.decode("utf-8", "surrogateescape"))
                raise ReplyError(f"Malformed SMTP reply line: {text}")
            offset = end + 1
            if offset > MAX_REPLY:
                raise ReplyError("Reply too long")
            texts.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del buf[:offset]
                return Reply(int(line[:3]), b"\n".join(texts).decode("utf-8", "surrogateescape"))
        return None


def clean_text(text: str) -> str:
    """Server text made safe for a diagnostic: undecodable bytes replaced, no controls."""
    raw = text.encode("utf-8", "surrogateescape")
    return " ".join(_CONTROL_RE.sub(" ", raw.decode("utf-8", "replace")).split())


def reply_text(reply: Reply) -> str:
    """``550 5.1.1 user unknown``: the reply on one clean line."""
    return f"{reply.code} {clean_text(reply.text)}".rstrip()


def enhanced_status(reply: Reply, cls: str) -> str:
    """The reply's enhanced status code (RFC 3463) if it has one of class ``cls``."""
    m = _ENHANCED_RE.match(reply.text.lstrip())
    if m is not None and m.group(1) == cls:
        return m.group(0)
    return f"{cls}.0.0"
