"""The POP3 transport against servers that break the rules: a raw asyncio server
(Dovecot never does these).  A UIDL listed for two messages: the first is fetched,
the other never fetched and never deleted, since the UIDLs in the inbox cannot tell
them apart.  A message whose RETR runs past ``max_size`` although LIST gave a small
size: cut off, left on the server, and the others fetched."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from mailbox_kit import FAST, WAIT, eventually, inbox, listening, raw_server_spooler

from spoolbox import Spooler


def _message(i: int) -> bytes:
    return b"Subject: message %d\r\n\r\nbody %d\r\n" % (i, i)


class _Maildrop:
    """Messages 1..3, UIDLs ``dup``, ``dup``, ``u3`` (or ``uids``); DELE applied at
    QUIT.  LIST gives each message's size, or ``listed`` for all.  Each answer goes
    out ``delay`` seconds after its command came (a distant server); ``most_owed``
    is the most commands it had read and not yet answered at once."""

    def __init__(
        self,
        uids: tuple[bytes, ...] = (b"dup", b"dup", b"u3"),
        listed: int = 0,
        pipelining: bool = False,
        delay: float = 0.0,
    ) -> None:
        self.pipelining = pipelining
        self.messages = {n: (uid, _message(n)) for n, uid in enumerate(uids, start=1)}
        self.listed = listed
        self.delay = delay
        self.deleted: list[int] = []
        self.owed = self.most_owed = 0
        self.commands: list[bytes] = []

    def _answer(self, line: bytes, marked: set[int]) -> bytes:
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb in (b"USER", b"PASS", b"NOOP"):
            return b"+OK\r\n"
        if verb == b"STLS":  # and, in the same packet, in the clear, an attacker's line
            return b"+OK begin TLS\r\n+OK injected\r\n"
        if verb == b"CAPA" and self.pipelining:
            return b"+OK\r\nUIDL\r\nPIPELINING\r\n.\r\n"
        if verb == b"UIDL":
            lines = [b"%d %s\r\n" % (n, uidl) for n, (uidl, _) in self.messages.items()]
            return b"+OK\r\n" + b"".join(lines) + b".\r\n"
        if verb == b"LIST":
            sizes = [(n, self.listed or len(data)) for n, (_, data) in self.messages.items()]
            return b"+OK\r\n" + b"".join(b"%d %d\r\n" % ns for ns in sizes) + b".\r\n"
        if verb == b"RETR" and int(arg) in self.messages:
            return b"+OK\r\n" + self.messages[int(arg)][1] + b".\r\n"
        if verb == b"DELE" and int(arg) in self.messages:
            marked.add(int(arg))
            return b"+OK\r\n"
        if verb == b"QUIT":
            for n in sorted(marked):
                del self.messages[n]
                self.deleted.append(n)
            return b"+OK bye\r\n"
        return b"-ERR no\r\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        marked: set[int] = set()

        def send(data: bytes) -> None:
            self.owed -= 1
            if not writer.is_closing():
                writer.write(data)

        writer.write(b"+OK ready\r\n")
        try:
            while line := (await reader.readline()).rstrip(b"\r\n"):
                self.commands.append(line.split(b" ", 1)[0].upper())
                self.owed += 1
                self.most_owed = max(self.most_owed, self.owed)
                loop.call_later(self.delay, send, self._answer(line, marked))
                if line.upper() == b"QUIT":
                    await asyncio.sleep(self.delay + 0.05)  # its answer out first
                    return
        finally:
            writer.close()


def _spooler(port: int, **extra: object) -> Spooler:
    """A spooler fetching from the fake server on ``port`` (``after_fetch = "delete"``)."""
    return raw_server_spooler("pop3", port, policy=FAST, **{"after_fetch": "delete", **extra})


@contextlib.asynccontextmanager
async def _server(drop: _Maildrop | None = None) -> AsyncIterator[tuple[_Maildrop, int]]:
    drop = drop or _Maildrop()
    async with listening(drop.handle) as port:
        yield drop, port


async def test_a_uidl_listed_twice_is_fetched_once_and_its_twin_never_deleted() -> None:
    async with _server() as (drop, port), _spooler(port) as sp:
        await sp.wait_inbox(2, timeout=WAIT)
        await eventually(lambda: drop.deleted == [1, 3], "the fetched ones deleted")
        await asyncio.sleep(1.0)  # several polls (every 0.2 s): none deletes message 2
        assert sorted(await inbox(sp)) == [_message(1), _message(3)]
        status = sp.host("pop3").status_object()
    assert drop.deleted == [1, 3] and list(drop.messages) == [2]
    assert "lists UIDL 'dup' for 2 messages" in str(status["last_error"]), status


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
async def test_a_retr_past_max_size_is_cut_off_and_the_others_fetched(pipelining: bool) -> None:
    # LIST says 10 bytes each; with PIPELINING the three RETRs go in one write.
    drop = _Maildrop((b"u1", b"u2", b"u3"), listed=10, pipelining=pipelining)
    big = b"Subject: big\r\n\r\n" + b"z" * 300_000 + b"\r\n"
    drop.messages[2] = (b"u2", big)
    async with _server(drop) as (drop, port), _spooler(port, max_size=100_000) as sp:
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


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelined"])
async def test_with_pipelining_the_retrs_and_deles_go_together(pipelining: bool) -> None:
    # A server 20 ms away: without PIPELINING every RETR and DELE waits for the answer
    # before it; with it, a session's RETRs (and its DELEs) are in flight together.
    drop = _Maildrop((b"u1", b"u2", b"u3"), pipelining=pipelining, delay=0.02)
    async with _server(drop) as (drop, port), _spooler(port) as sp:
        await sp.wait_inbox(3, timeout=WAIT)
        await eventually(lambda: sorted(drop.deleted) == [1, 2, 3], "all deleted")
        assert sorted(await inbox(sp)) == [_message(1), _message(2), _message(3)]
    assert drop.most_owed == (3 if pipelining else 1)


async def test_data_after_the_stls_answer_is_refused_before_anything_is_sent() -> None:
    # STARTTLS command injection: bytes after "+OK begin TLS", in the clear, must not
    # be read as the answers to what is sent under TLS (nor USER and PASS be sent).
    async with _server() as (drop, port), _spooler(port, tls="starttls") as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"pop3": False}
        detail = str(sp.status["pop3"].detail)
    assert "the server sent data after its STLS answer, before TLS" in detail, detail
    assert b"USER" not in drop.commands and b"PASS" not in drop.commands
    assert drop.commands[0] == b"STLS"
