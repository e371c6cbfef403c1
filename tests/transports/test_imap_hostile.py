"""The IMAP transport against a server that closes the connection in the middle of a
command (a restart, a crash, an idle timeout on its side): a raw asyncio server, as
no real server does it on cue.  The session hears of it at once and says what
happened; aioimaplib alone would leave the command waiting for its time limit and
report a timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from mailbox_kit import NO_POLL, WAIT, listening, raw_server_spooler

from spoolbox import Spooler
from spoolbox.store.memory import MemoryStore

_SELECTED = b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT 4] n\r\n"


class _RawImap:
    """A raw IMAP server: the greeting, then each command handed to :meth:`answer`,
    which writes the untagged lines and says what follows: True the tagged OK, False
    nothing more (it answered in full), None the connection closed."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        try:
            while line := (await reader.readline()).rstrip(b"\r\n"):
                tag, _, rest = line.partition(b" ")
                then = self.answer(tag, rest, rest.upper(), writer)
                if then is None:
                    return
                if then:
                    writer.write(tag + b" OK done\r\n")
                await writer.drain()
        except ConnectionError:
            pass  # the client dropped the connection (a lying server's)
        finally:
            writer.close()

    def answer(
        self, tag: bytes, rest: bytes, verb: bytes, writer: asyncio.StreamWriter
    ) -> bool | None:
        raise NotImplementedError


class _ClosesOn(_RawImap):
    """An IMAP server that answers the login dialogue and a search, and closes the
    connection when it reads ``command`` (``UID FETCH``, ``UID STORE``...)."""

    def __init__(self, command: bytes, body: bytes = b"Subject: x\r\n\r\nbody\r\n") -> None:
        self.command = command
        self.body = body  # what each BODY[] holds (RFC822.SIZE says 20 bytes whatever it is)
        self.closed_on: list[bytes] = []
        self.verbs: list[bytes] = []

    def answer(
        self, tag: bytes, rest: bytes, verb: bytes, writer: asyncio.StreamWriter
    ) -> bool | None:
        self.verbs.append(verb.split(b" ", 1)[0])
        if verb.startswith(self.command):
            self.closed_on.append(rest)
            return None
        if verb.startswith(b"CAPABILITY"):
            writer.write(b"* CAPABILITY IMAP4rev1 UIDPLUS STARTTLS\r\n")
        elif verb.startswith(b"STARTTLS"):  # and an attacker's line, in the clear
            writer.write(tag + b" OK begin TLS\r\n* OK injected\r\n")
            return False
        elif verb.startswith((b"SELECT", b"EXAMINE")):
            writer.write(_SELECTED)
        elif verb.startswith(b"UID SEARCH"):
            writer.write(b"* SEARCH 1 2 3\r\n")
        elif verb.startswith(b"UID FETCH") and b"RFC822.SIZE" in verb:
            for uid in (1, 2, 3):
                writer.write(b"* %d FETCH (UID %d RFC822.SIZE 20)\r\n" % (uid, uid))
        elif verb.startswith(b"UID FETCH"):
            body = self.body
            for uid in (1, 2, 3):
                writer.write(
                    b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (uid, uid, len(body), body)
                )
        return True


def _spooler(port: int, *, store: MemoryStore | None = None, **extra: object) -> Spooler:
    """A spooler fetching from the fake server on ``port`` (no IDLE, no TLS unless
    ``extra`` says), on ``store`` (default: a new one)."""
    return raw_server_spooler("imap", port, policy=NO_POLL, store=store, idle=False, **extra)


@contextlib.asynccontextmanager
async def _server(command: bytes, **kw: bytes) -> AsyncIterator[tuple[_ClosesOn, int]]:
    peer = _ClosesOn(command, **kw)
    async with listening(peer.handle) as port:
        yield peer, port


@pytest.mark.parametrize(
    ("command", "after_fetch"),
    [(b"UID FETCH", "keep"), (b"UID STORE", "delete")],
    ids=["mid-fetch", "mid-delete"],
)
async def test_a_connection_closed_mid_command_is_reported_as_such_at_once(
    command: bytes, after_fetch: str
) -> None:
    # (timeout: were the session to wait for it, the test would time out)
    async with (
        _server(command) as (peer, port),
        _spooler(port, after_fetch=after_fetch, timeout=600) as sp,
    ):
        async with asyncio.timeout(WAIT):
            report = await sp.flush(upload=False)
        status = str(sp.status["imap"].status_string)
    assert peer.closed_on, "the server never saw the command"
    assert "ConnectionResetError: the server closed the connection during UID" in status, status
    assert "TimeoutError" not in status
    result = report.for_transport("imap")
    if command == b"UID FETCH":
        # The flush's report says the download failed, not that there was nothing to fetch.
        assert result.downloaded == 0
        assert result.error is not None and "closed the connection during UID" in result.error
    else:
        # Fetched and committed; their removal is left to the next poll (the row says so).
        assert (result.downloaded, result.error) == (3, None)
        assert "removing 3 fetched messages (retried at poll)" in status, status


async def test_a_server_sending_more_than_it_announced_is_cut_off() -> None:
    # RFC822.SIZE says 20 bytes, BODY[] brings 8 MB: aioimaplib would hold all of it
    # (and any amount more) in memory; the connection is dropped past the budget.
    big = b"Subject: x\r\n\r\n" + b"z" * 8_000_000
    async with (
        _server(b"NOTHING", body=big) as (_p, port),
        _spooler(port, after_fetch="keep") as sp,
    ):
        async with asyncio.timeout(WAIT):
            report = await sp.flush(upload=False)
        status = str(sp.status["imap"].status_string)
        assert await sp.store.list_inbox() == []
    error = report.for_transport("imap").error or ""
    assert "more than it announced: connection dropped" in error, (error, status)
    assert "UID FETCH" in error


class _Lies(_RawImap):
    """An IMAP server with three messages, UID 2 of which is 8 MB where RFC822.SIZE
    says 20 bytes; it answers FETCHes for the UIDs asked (and counts them)."""

    def __init__(self) -> None:
        self.bodies = {
            1: b"Subject: one\r\n\r\nbody\r\n",
            2: b"Subject: two\r\n\r\n" + b"z" * 8_000_000,
            3: b"Subject: three\r\n\r\nbody\r\n",
        }
        self.fetches: list[bytes] = []  # the UID sets of BODY[] fetches

    def size(self, uid: int) -> int:
        return 20 if uid == 2 else len(self.bodies[uid])

    def uids(self, text: bytes) -> list[int]:
        found: list[int] = []
        for part in text.split(b","):
            lo, _, hi = part.partition(b":")
            top = max(self.bodies) if hi == b"*" else int(hi or lo)
            found.extend(u for u in range(int(lo), top + 1) if u in self.bodies)
        return found

    def answer(
        self, tag: bytes, rest: bytes, verb: bytes, writer: asyncio.StreamWriter
    ) -> bool | None:
        if verb.startswith(b"CAPABILITY"):
            writer.write(b"* CAPABILITY IMAP4rev1 UIDPLUS\r\n")
        elif verb.startswith((b"SELECT", b"EXAMINE")):
            writer.write(_SELECTED)
        elif verb.startswith(b"UID SEARCH"):
            found = self.uids(rest.split()[-1])
            writer.write(b"* SEARCH " + b" ".join(b"%d" % u for u in found) + b"\r\n")
        elif verb.startswith(b"UID FETCH"):
            wanted = self.uids(rest.split()[2])
            sizes = b"RFC822.SIZE" in verb
            if not sizes:
                self.fetches.append(rest.split()[2])
            for uid in wanted:
                if sizes:
                    item = b"RFC822.SIZE %d" % self.size(uid)
                else:
                    body = self.bodies[uid]
                    item = b"BODY[] {%d}\r\n%s" % (len(body), body)
                writer.write(b"* %d FETCH (UID %d %s)\r\n" % (uid, uid, item))
        return True


async def test_a_message_the_server_lies_about_is_found_and_left_on_the_server() -> None:
    # The fetch of 1:3 is cut off (UID 2 is far larger than said) and the flush
    # says so; the next fetches take one UID at a time; UID 2, cut off alone, is
    # left on the server (recorded as skipped) and the mailbox goes on with UID 3:
    # not blocked behind it at every poll, as it was before.
    peer = _Lies()
    store = MemoryStore()
    async with listening(peer.handle) as port:
        async with _spooler(port, store=store, after_fetch="keep") as sp:
            results = []
            for _ in range(3):
                async with asyncio.timeout(WAIT):
                    results.append((await sp.flush(upload=False)).for_transport("imap"))
            status = str(sp.status["imap"].status_string)
            subjects = sorted(
                [
                    (await sp.store.read_inbox(e.id)).split(b"\r\n")[0]
                    for e in await sp.store.list_inbox()
                ]
            )
        # The second flush fetches UID 1 alone, finds UID 2 lying, leaves it, and
        # goes on with UID 3 on a new connection.
        assert [r.downloaded for r in results] == [0, 2, 0]
        assert "more than it announced: connection dropped" in (results[0].error or "")
        assert [r.error for r in results[1:]] == [None, None]
        assert subjects == [b"Subject: one", b"Subject: three"]
        assert "UID 2: the server sent far more than the 20 bytes it announced" in status, status
        assert peer.fetches == [b"1:3", b"1", b"2", b"3"]
        # Recorded: a restart does not fetch it again.
        async with _spooler(port, store=store, after_fetch="keep") as sp:
            async with asyncio.timeout(WAIT):
                again = (await sp.flush(upload=False)).for_transport("imap")
        assert (again.downloaded, again.error) == (0, None)
        assert peer.fetches == [b"1:3", b"1", b"2", b"3"]


async def test_data_after_the_starttls_answer_is_refused_before_anything_is_sent() -> None:
    # STARTTLS command injection: bytes after the tagged OK, in the clear, must not be
    # read as answers to what is sent under TLS (nor LOGIN be sent at all).
    async with _server(b"NOTHING") as (peer, port), _spooler(port, tls="starttls") as sp:
        assert (await sp.wait_ready(timeout=WAIT)) == {"imap": False}
        detail = str(sp.status["imap"].detail)
    assert "the server sent data after its STARTTLS answer, before TLS" in detail, detail
    assert b"STARTTLS" in peer.verbs and b"LOGIN" not in peer.verbs
