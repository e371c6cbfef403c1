"""Between the socket and aioimaplib: its protocol is handed what arrives a few
hundred lines at a time.

aioimaplib 2.0's response parser calls itself once per line of what one
``data_received`` brings.  A read of more than about 950 lines (a folder of a few
thousand messages that another client expunges or flags while this connection
idles: ``* 812 EXPUNGE`` a line, 13 bytes each) ends in ``RecursionError``; the
event loop logs it as a fatal error of the protocol, closes the connection, and the
IDLE watch hears nothing more (aioimaplib issue 118, unfixed in 2.0.3).  The parser
also copies the rest of the read after every line, so its cost grows with the square
of the read.

:class:`LineBounded` is an ``asyncio.Protocol`` put in front of aioimaplib's with the
transport's public ``set_protocol``: it passes every read on in pieces of at most
:data:`LINES` lines, cut after a line feed.  A TCP stream may be cut anywhere, and
aioimaplib keeps what a piece leaves incomplete (a line, a literal) for the next, so
the pieces parse as the whole read would.  Everything else goes straight through; a
lost connection is also told to ``on_lost`` (the IDLE watch's wake-up).

It also bounds what the server may send: :data:`BUDGET` bytes from one command to
the next (:meth:`LineBounded.expect` starts a command's count, with a budget of its
own for a ``FETCH`` of known sizes).  aioimaplib holds a response, literals and all,
in memory until it ends: a server that sends more than it announced (an
``RFC822.SIZE`` that lies) would have it read without end.  Past the budget the
connection is aborted and :attr:`LineBounded.overrun` says how far it went.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

__all__ = ["LINES", "LineBounded"]

#: Lines handed to aioimaplib at a time: far below its recursion limit.
LINES: Final = 200
#: Bytes a server may send for one command (or between two) unless told otherwise.
BUDGET: Final = 64 * 1024 * 1024


class LineBounded(asyncio.Protocol):
    """``inner`` (aioimaplib's protocol) behind a transport, fed at most
    :data:`LINES` lines per call."""

    def __init__(
        self, inner: asyncio.Protocol, on_lost: Callable[[Exception | None], None]
    ) -> None:
        self.inner = inner
        self._on_lost = on_lost
        self._transport: asyncio.BaseTransport | None = None
        self._budget = BUDGET
        self._received = 0
        #: (bytes received, budget) once the server went past the budget.
        self.overrun: tuple[int, int] | None = None
        self._recording: bytearray | None = None

    def attach(self, transport: asyncio.BaseTransport) -> None:
        """The transport in front of which this protocol was put (``set_protocol``
        and ``start_tls`` call no ``connection_made``): the one aborted past the
        budget."""
        self._transport = transport

    def record(self, on: bool) -> bytes:
        """Keep a copy of what arrives from now on (``on``), or stop and return it:
        what came with a STARTTLS answer, which must end with it."""
        recorded = bytes(self._recording or b"")
        self._recording = bytearray() if on else None
        return recorded

    def expect(self, budget: int = BUDGET) -> None:
        """A command starts: its response (and anything unasked with it) may take
        ``budget`` bytes."""
        self._budget = budget
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.overrun is not None:
            return  # aborted: nothing more for aioimaplib
        if self._recording is not None and len(self._recording) < 65536:
            self._recording += data
        self._received += len(data)
        if self._received > self._budget:
            self.overrun = (self._received, self._budget)
            abort = getattr(self._transport, "abort", None)  # asyncio's, uvloop's
            if callable(abort):
                abort()  # what came so far stays with aioimaplib, unparsed
            return
        if data.count(b"\n") <= LINES:
            self.inner.data_received(data)
            return
        start, size = 0, len(data)
        while start < size:
            end = start
            for _ in range(LINES):
                end = data.find(b"\n", end) + 1
                if not end:
                    end = size
                    break
            self.inner.data_received(data[start:end])
            start = end

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.inner.connection_lost(exc)
        finally:
            self._on_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
