"""The POP3 transport against servers that break the rules: a raw asyncio server
(Dovecot never does these).  A UIDL listed for two messages: the first is fetched,
the other never fetched and never deleted, since the UIDLs in the inbox cannot tell
them apart.  A message whose RETR runs past ``max_size`` although LIST gave a small
size: cut off, left on the server, and the others fetched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from mailbox_kit import FAST, WAIT, eventually, inbox

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig, TransportConfig
from spoolbox.store.memory import MemoryStore


def _message(i: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (i, i)


class _Maildrop:
    """Messages 1..3, UIDLs ``dup``, ``dup``, ``u3`` (or ``uids``); DELE applied at
    QUIT.  LIST gives each message's size, or ``listed`` for all."""

    def __init__(self, uids: tuple[bytes, ...] = (b"dup", b"dup", b"u3"), listed: int = 0) -> None:
        self.messages = {n: (uid, _message(n)) for n, uid in enumerate(uids, start=1)}
        self.listed = listed
        self.deleted: list[int] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        marked: set[int] = set()
        writer.write(b"+OK ready\r\n")
        try:
            while line := (await reader.readline()).rstrip(b"\r\n"):
                verb, _, arg = line.partition(b" ")
                verb = verb.upper()
                if verb in (b"USER", b"PASS", b"NOOP"):
                    writer.write(b"+OK\r\n")
                elif verb == b"UIDL":
                    writer.write(b"+OK\r\n")
                    for n, (uidl, _) in self.messages.items():
                        writer.write(b"%d %s\r\n" % (n, uidl))
                    writer.write(b".\r\n")
                elif verb == b"LIST":
                    writer.write(b"+OK\r\n")
                    for n, (_, data) in self.messages.items():
                        writer.write(b"%d %d\r\n" % (n, self.listed or len(data)))
                    writer.write(b".\r\n")
                elif verb == b"RETR" and int(arg) in self.messages:
                    writer.write(b"+OK\r\n" + self.messages[int(arg)][1] + b".\r\n")
                elif verb == b"DELE" and int(arg) in self.messages:
                    marked.add(int(arg))
                    writer.write(b"+OK\r\n")
                elif verb == b"QUIT":
                    for n in sorted(marked):
                        del self.messages[n]
                        self.deleted.append(n)
                    writer.write(b"+OK bye\r\n")
                    return
                else:
                    writer.write(b"-ERR no\r\n")
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def _server(drop: _Maildrop | None = None) -> AsyncIterator[tuple[_Maildrop, int]]:
    drop = drop or _Maildrop()
    server = await asyncio.start_server(drop.handle, "127.0.0.1", 0)
    try:
        yield drop, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_a_uidl_listed_twice_is_fetched_once_and_its_twin_never_deleted() -> None:
    async with _server() as (drop, port):
        options = {
            "host": "127.0.0.1",
            "port": port,
            "tls": "none",
            "username": "u",
            "password": "p",
            "after_fetch": "delete",
        }
        cfg = SpoolerConfig(
            transports=(TransportConfig("pop3", "pop3", options=options),), policy=FAST
        )
        async with Spooler.open(cfg, store=MemoryStore(), idle=AlwaysIdle()) as sp:
            await sp.wait_inbox(2, timeout=WAIT)
            await eventually(lambda: drop.deleted == [1, 3], "the fetched ones deleted")
            await asyncio.sleep(1.0)  # several polls (every 0.2 s): none deletes message 2
            assert sorted(await inbox(sp)) == [_message(1), _message(3)]
            status = sp.host("pop3").status_object()
    assert drop.deleted == [1, 3] and list(drop.messages) == [2]
    assert "lists UIDL 'dup' for 2 messages" in str(status["last_error"]), status


async def test_a_retr_past_max_size_is_cut_off_and_the_others_fetched() -> None:
    drop = _Maildrop((b"u1", b"u2", b"u3"), listed=10)  # LIST says 10 bytes each
    big = b"Subject: big\r\n\r\n" + b"z" * 300_000 + b"\r\n"
    drop.messages[2] = (b"u2", big)
    async with _server(drop) as (drop, port):
        options = {
            "host": "127.0.0.1",
            "port": port,
            "tls": "none",
            "username": "u",
            "password": "p",
            "after_fetch": "delete",
            "max_size": 100_000,
        }
        cfg = SpoolerConfig(
            transports=(TransportConfig("pop3", "pop3", options=options),), policy=FAST
        )
        async with Spooler.open(cfg, store=MemoryStore(), idle=AlwaysIdle()) as sp:
            await sp.wait_inbox(2, timeout=WAIT)
            # (1 by a poll: its session was cut off before its DELE was applied)
            await eventually(lambda: sorted(drop.deleted) == [1, 3], "the others deleted")
            assert sorted(await inbox(sp)) == [_message(1), _message(3)]
            status = sp.host("pop3").status_object()
    assert list(drop.messages) == [2]
    assert status["skipped"] == 1
    assert "UIDL u2 (over 165536 bytes by its RETR; LIST said less) is too large" in str(
        status["last_error"]
    ), status
