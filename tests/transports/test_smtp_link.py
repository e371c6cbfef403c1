"""The bytes under an SMTP connection (``Link``, an asyncio protocol): what the server
sends reaches the client machine, a write waits while the kernel's buffers are full
and no longer than its timeout, and the ways a connection ends (the server's close,
a reset) each come out as a Failure that says which.

Real servers on loopback, run by the test as scripts; on both event loops the daemon
may use (asyncio's and uvloop, whose transports are their own)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from smtp_servers import greeted_connection, line

from spoolbox.transports.smtp.failures import Failure

LOOPS = ["asyncio", "uvloop"]


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "asyncio":
        asyncio.run(main())
        return
    import uvloop  # a test dependency (pyproject.toml): missing, the test fails

    uvloop.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_write_larger_than_the_buffers_waits_for_a_slow_reader(loop: str) -> None:
    size = 16 * 1024 * 1024  # far more than the socket buffers and the high-water mark
    got = bytearray()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while len(got) < size:
            chunk = await reader.read(256 * 1024)
            if not chunk:
                return
            got.extend(chunk)
            await asyncio.sleep(0.005)
        writer.write(b"250 2.0.0 all of it\r\n")
        await writer.drain()

    async def main() -> None:
        async with greeted_connection(slow) as conn:
            await conn.write(b"x" * size, "sending data", 30.0)
            assert conn.link.paused is False
            conn.machine.noop()  # a command whose reply is the server's 250
            await conn.flush("NOOP", 5.0)
            reply = await conn.reply("NOOP", 30.0)
            assert (reply.code, reply.text) == (250, "2.0.0 all of it")
            assert conn.alive

    run_on(loop, main)
    assert len(got) == size + len(b"NOOP\r\n")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_write_to_a_server_that_stops_reading_times_out(loop: str) -> None:
    async def stuck(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        async with greeted_connection(stuck) as conn:
            start = asyncio.get_running_loop().time()
            with pytest.raises(Failure) as caught:
                await conn.write(b"x" * (64 * 1024 * 1024), "sending data", 0.5)
            took = asyncio.get_running_loop().time() - start
            assert caught.value.status == "4.4.1"
            assert caught.value.text == (
                f"x-spoolbox; timed out after 0.5 s waiting for {conn.where} to take the "
                "message data"
            )
            assert 0.4 <= took < 10
            assert not conn.alive

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_the_server_closing_while_a_reply_is_awaited_is_a_lost_connection(loop: str) -> None:
    async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await line(reader)  # the NOOP, unanswered
        writer.close()

    async def main() -> None:
        async with greeted_connection(closes) as conn:
            conn.machine.noop()
            with pytest.raises(Failure) as caught:
                await conn.reply("NOOP", 5.0)
            assert caught.value.status == "4.4.2"
            assert caught.value.text == (
                f"x-spoolbox; connection to {conn.where} lost (NOOP): "
                "the server closed the connection"
            )
            assert not conn.alive
            # A write after it: refused at once, not queued into a closed transport.
            with pytest.raises(Failure):
                await conn.write(b"RSET\r\n", "RSET", 5.0)

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reset_is_said_as_such(loop: str) -> None:
    async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await line(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closed with linger 0: an RST

    async def main() -> None:
        async with greeted_connection(resets) as conn:
            conn.machine.noop()
            with pytest.raises(Failure) as caught:
                await conn.reply("NOOP", 5.0)
            assert caught.value.status == "4.4.2"
            assert caught.value.text.startswith(f"x-spoolbox; connection to {conn.where} lost")
            assert "reset by peer" in caught.value.text  # the reset, not a plain close
            assert not conn.alive

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_replies_cut_anywhere_come_out_whole(loop: str) -> None:
    answers = [b"250-first\r\n250 ok\r\n", b"250 2.0.0 second\r\n", b"550 5.0.0 third\r\n"]

    async def dribbles(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await line(reader)
            for byte in answer:  # one octet a write: the reply arrives in pieces
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.001)

    async def main() -> None:
        async with greeted_connection(dribbles) as conn:
            replies = []
            for _ in answers:
                conn.machine.noop()
                replies.append(await conn.reply("NOOP", 5.0))
            assert [(r.code, r.text) for r in replies] == [
                (250, "first\nok"),
                (250, "2.0.0 second"),
                (550, "5.0.0 third"),
            ]
            assert conn.alive and conn.machine.in_step

    run_on(loop, main)


def test_a_second_reader_at_once_is_refused_not_left_waiting_forever() -> None:
    """One transaction at a time uses a connection; a second wait at once would take
    the first one's wake-up and leave it to its timeout, so it is refused."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        async with greeted_connection(silent) as conn:
            first = asyncio.ensure_future(conn.link.wait())
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="already waiting"):
                await conn.link.wait()
            assert not first.done()
            conn.close()  # the first wait ends with the connection
            await asyncio.wait_for(first, 5)

    run_on("asyncio", main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_reply_that_came_before_a_reset_is_read(loop: str) -> None:
    """A server that answers and then resets the connection (one that crashes after
    its 250, say): the answer counts, as the server gave it; the connection is then
    no longer alive."""

    async def answers_then_resets(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await line(reader)
        writer.write(b"250 2.0.0 Ok: queued\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the answer is on its way before the reset
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def main() -> None:
        async with greeted_connection(answers_then_resets) as conn:
            conn.machine.noop()
            assert (await conn.reply("NOOP", 5.0)).text == "2.0.0 Ok: queued"
            await asyncio.sleep(0.5)  # the reset has come meanwhile
            assert not conn.alive
            assert isinstance(conn.link.error, ConnectionResetError)

    run_on(loop, main)


def test_a_reply_and_a_reset_in_one_turn_of_the_loop_give_the_reply() -> None:
    """The reply and the reset reach the link before the waiting reader runs again
    (driven by hand here, as the loop does when both are read at once): the reply."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        async with greeted_connection(silent) as conn:
            conn.machine.noop()
            await conn.flush("NOOP", 5.0)
            waiting = asyncio.ensure_future(conn.reply("NOOP", 5.0))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            conn.link.data_received(b"250 2.0.0 Ok: queued\r\n")
            conn.link.connection_lost(ConnectionResetError("Connection reset by peer"))
            assert (await waiting).text == "2.0.0 Ok: queued"
            assert not conn.alive

    run_on("asyncio", main)
