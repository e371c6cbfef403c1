"""What the listener tests share: a listener serving a given ``submit`` on a free port,
and a raw SMTP client on asyncio streams (bytes as written, replies as sent)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from spoolbox import NewMessage
from spoolbox.ingress import ListenerConfig, SubmissionListener
from spoolbox.ingress.local_names import LocalNames

#: A reply that does not come within this many seconds fails the test (no hang).
REPLY_TIMEOUT = 5.0


def chunked(sender: bytes, recipient: bytes, first: bytes, last: bytes) -> bytes:
    """MAIL, RCPT and the content in two BDAT chunks (the second ``LAST``), one write."""
    return (
        b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\n" % (sender, recipient)
        + b"BDAT %d\r\n" % len(first)
        + first
        + b"BDAT %d LAST\r\n" % len(last)
        + last
    )


class Recorder:
    """A submit that keeps what it was given."""

    def __init__(self) -> None:
        self.messages: list[NewMessage] = []

    async def __call__(self, message: NewMessage) -> object:
        self.messages.append(message)
        return message


@contextlib.asynccontextmanager
async def serving(
    submit: Callable[[NewMessage], Awaitable[object]],
    *,
    submit_many: Callable[[list[NewMessage]], Awaitable[Sequence[object]]] | None = None,
    local_names: LocalNames | None = None,
    **options: Any,
) -> AsyncIterator[SubmissionListener]:
    options.setdefault("port", 0)
    options.setdefault("hostname", "mx.test")
    listener = SubmissionListener(
        submit, ListenerConfig(**options), submit_many=submit_many, local_names=local_names
    )
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop(grace=1.0)


class Raw:
    """A raw SMTP client: :meth:`send` writes bytes as given, :meth:`reply` reads one
    (multi-line) reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, greeting: str | None = "220 ") -> Raw:
        """Connected; the greeting read and checked to start with ``greeting`` (None:
        not read)."""
        raw = cls(*await asyncio.open_connection("127.0.0.1", port))
        if greeting is not None:
            reply = await raw.reply()
            assert reply.startswith(greeting), reply
        return raw

    async def reply(self) -> str:
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            if not line:
                raise ConnectionError("closed after: " + " | ".join(lines))
            text = line.decode("ascii", "replace").rstrip("\r\n")
            lines.append(text)
            if text[3:4] != "-":
                return "\n".join(lines)

    async def replies(self, n: int) -> list[str]:
        return [await self.reply() for _ in range(n)]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> str:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def data(self, content: bytes) -> str:
        """DATA, then ``content`` (CRLF lines, already dot-stuffed) and the final dot."""
        reply = await self.cmd("DATA")
        assert reply.startswith("354"), reply
        await self.send(content + b".\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
