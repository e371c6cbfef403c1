"""The DATA stream (RFC 5321 section 4.5.2): content to wire octets, chunk by chunk.

Line endings become CRLF (bare CR and bare LF too), a line starting with ``.`` gets one
more (dot stuffing), and the end is ``CRLF . CRLF`` (a CRLF first if the content did not
end with one).  :func:`message_octets` is the same message for ``BDAT`` (RFC 3030):
CRLF line endings and a final CRLF, no dot stuffing, no final dot: the octets a server
keeps either way.
"""

from __future__ import annotations

import re

__all__ = ["DataEncoder", "message_octets"]

_EOL_RE = re.compile(rb"\r\n|\n|\r(?!\n)")


def _crlf(data: bytes) -> bytes:
    """``data`` with every line ending CRLF (bare CR and bare LF too)."""
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r"):  # not all CRLF already
        data = _EOL_RE.sub(b"\r\n", data)
    return data


class DataEncoder:
    """Content chunks to the DATA stream: CRLF line endings, dot stuffing, final dot.

    Works across chunk boundaries (a CR at the end of one chunk and LF at the start
    of the next are one line ending).
    """

    def __init__(self) -> None:
        self._bol = True  # at the start of a line
        self._cr = False  # a CR held back from the previous chunk

    def feed(self, chunk: bytes) -> bytes:
        data = (b"\r" if self._cr else b"") + bytes(chunk)
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        if not data:
            return b""
        data = _crlf(data)
        if self._bol and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        self._bol = data.endswith(b"\r\n")
        return data

    def finish(self) -> bytes:
        out = b""
        if self._cr:
            out, self._cr, self._bol = b"\r\n", False, True
        if not self._bol:
            out += b"\r\n"
        return out + b".\r\n"


def message_octets(content: bytes) -> bytes:
    """``content`` as the octets of a BDAT chunk: CRLF line endings (bare CR and bare
    LF too), ending with CRLF; what a server keeps of the DATA stream of the same
    content."""
    content = _crlf(content)
    return content if not content or content.endswith(b"\r\n") else content + b"\r\n"
