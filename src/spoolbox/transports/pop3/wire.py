"""POP3 on an asyncio connection, read through :mod:`.reader` (the answers, bounded),
and pure readers of the UIDL and LIST answers.

Every read and write is bounded by the ``timeout`` option (a step that waits longer
is a TimeoutError); a refused login is :class:`LoginRefused`; a ``-ERR`` to another
command, or bytes that are not POP3, a :class:`~.reader.Pop3Error` (so are bytes
after the ``STLS`` answer, sent in the clear: an injection, refused before TLS).  On any failure
while opening, the connection is closed.  No threads: the earlier version ran
:mod:`poplib`'s blocking calls in workers, and poplib cannot read a line over 2,048
bytes (a message with one could never be fetched) nor bound an answer's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from .._mailbox import MailboxSettings
from .reader import Pop3Error, Response, ResponseReader, TooLarge

__all__ = ["LISTING_LIMIT", "Connection", "LoginRefused", "Pop3Error", "TooLarge"]

#: A UIDL or LIST answer may take this many bytes (two million messages or so).
LISTING_LIMIT = 64 * 1024 * 1024
#: A CAPA answer may take this many bytes.
CAPA_LIMIT = 64 * 1024
#: A RETR may run this far past the size LIST gave before it is cut (dot-stuffing and
#: line ends a server counts its own way).
RETR_SLACK = 64 * 1024
_READ = 256 * 1024


class LoginRefused(Exception):
    """The server refused USER or PASS; the text is its answer."""


class Connection:
    """One POP3 session: open (greeting, STLS, USER/PASS), then one command at a time."""

    def __init__(self, settings: MailboxSettings, ctx: ssl.SSLContext | None) -> None:
        self.settings = settings
        self._ctx = ctx
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._answers = ResponseReader()
        #: What the server's CAPA (after login) named, upper-case (empty without CAPA).
        self.capabilities: frozenset[bytes] = frozenset()

    async def open(self) -> None:
        s = self.settings
        try:
            async with asyncio.timeout(s.timeout):
                implicit = self._ctx if s.tls == "implicit" else None
                self._reader, self._writer = await asyncio.open_connection(
                    s.host, s.port, ssl=implicit, server_hostname=s.host if implicit else None
                )
            self._answers.expect(False)
            self._ok(await self._answer(), "greeting")
            if s.tls == "starttls":
                assert self._ctx is not None
                self._ok(await self._command(b"STLS"), "STLS")
                if self._answers.pending:
                    # Bytes after the STLS answer, sent in the clear: an attacker's
                    # injection (CVE-2011-0411's kind) would be read as the answers to
                    # the commands sent under TLS.
                    raise Pop3Error("the server sent data after its STLS answer, before TLS")
                assert self._writer is not None
                async with asyncio.timeout(s.timeout):
                    await self._writer.start_tls(self._ctx, server_hostname=s.host)
            for command in (b"USER " + s.username.encode(), b"PASS " + s.password.encode()):
                answer = await self._command(command)
                if not answer.ok:
                    raise LoginRefused(answer.text.decode("utf-8", "replace"))
            capa = await self._command(b"CAPA", CAPA_LIMIT)  # RFC 2449; -ERR: none
            if capa.ok and capa.body:
                names = (line.split(b" ", 1)[0].upper() for line in capa.body.splitlines())
                self.capabilities = frozenset(name for name in names if name)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop the connection without QUIT (nothing marked for deletion is deleted)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def quit(self) -> None:
        """QUIT (which applies the deletions marked), then close."""
        try:
            self._ok(await self._command(b"QUIT"), "QUIT")
        finally:
            self.close()

    async def uidl(self) -> list[tuple[int, str]]:
        """(message number, UIDL) in maildrop order."""
        body = self._ok(await self._command(b"UIDL", LISTING_LIMIT), "UIDL").body or b""
        return _uidl_result(body.splitlines())

    async def sizes(self) -> dict[int, int]:
        """Message number -> size in octets (LIST)."""
        body = self._ok(await self._command(b"LIST", LISTING_LIMIT), "LIST").body or b""
        return _list_result(body.splitlines())

    @property
    def pipelining(self) -> bool:
        """The server takes several commands before their answers (RFC 2449)."""
        return b"PIPELINING" in self.capabilities

    async def retr(self, numbers: list[int], limit: int) -> list[bytes]:
        """The messages ``numbers`` (CRLF line ends, dot-unstuffed), each within
        ``limit`` bytes (TooLarge past it); in one write with PIPELINING."""
        answers = await self._commands([b"RETR %d" % n for n in numbers], limit)
        return [
            self._ok(answer, f"RETR {n}").body or b""
            for n, answer in zip(numbers, answers, strict=True)
        ]

    async def dele(self, numbers: list[int]) -> None:
        """Mark ``numbers`` for deletion at QUIT; in one write with PIPELINING."""
        answers = await self._commands([b"DELE %d" % n for n in numbers])
        for n, answer in zip(numbers, answers, strict=True):
            self._ok(answer, f"DELE {n}")

    # -- the dialogue ----------------------------------------------------------------------
    @staticmethod
    def _ok(answer: Response, what: str) -> Response:
        if not answer.ok:
            text = answer.text.decode("utf-8", "replace")
            raise Pop3Error(f"{what} refused: -ERR {text}".rstrip())
        return answer

    async def _command(self, line: bytes, multiline_limit: int = 0) -> Response:
        """Send ``line``; its answer (multi-line when ``multiline_limit`` is set)."""
        (answer,) = await self._commands([line], multiline_limit, batch=1)
        return answer

    async def _commands(
        self, lines: list[bytes], multiline_limit: int = 0, *, batch: int = 0
    ) -> list[Response]:
        """Send ``lines`` (all in one write with PIPELINING, else one at a time, or
        ``batch`` at a time); their answers in order."""
        writer = self._writer
        if writer is None:
            raise ConnectionResetError("the connection is closed")
        if any(b"\r" in line or b"\n" in line for line in lines):
            raise Pop3Error("a command may not hold a line end")
        step = batch or (len(lines) if self.pipelining else 1)
        answers: list[Response] = []
        for i in range(0, len(lines), max(1, step)):
            group = lines[i : i + step]
            for _line in group:
                self._answers.expect(multiline_limit > 0, multiline_limit)
            writer.write(b"".join(line + b"\r\n" for line in group))
            async with asyncio.timeout(self.settings.timeout):
                await writer.drain()
            for _line in group:
                try:
                    answers.append(await self._answer())
                except TooLarge as exc:
                    exc.index = len(answers)  # which of ``lines`` ran past its bound
                    raise
        return answers

    async def _answer(self) -> Response:
        reader = self._reader
        if reader is None:
            raise ConnectionResetError("the connection is closed")
        while (answer := self._answers.next()) is None:
            async with asyncio.timeout(self.settings.timeout):
                data = await reader.read(_READ)
            if not data:
                raise ConnectionResetError("the server closed the connection")
            self._answers.feed(data)
        return answer


def _decode(b: bytes) -> str:
    return b.decode("ascii", "replace")


def _uidl_result(lines: list[bytes]) -> list[tuple[int, str]]:
    """The lines of a UIDL answer as (message number, UIDL); malformed lines are skipped."""
    out: list[tuple[int, str]] = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            out.append((int(parts[0]), _decode(parts[1])))
    return out


def _list_result(lines: list[bytes]) -> dict[int, int]:
    """The lines of a LIST answer as message number -> size; malformed lines are skipped."""
    out: dict[int, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out
