"""The reply deadline of one SMTP connection (``Connection._await_reply``).

A wait for a reply does not make a timer: it sets the connection's deadline, and the
connection's one timer ("the watch") is moved only when it would fire after that
deadline.  These tests drive a :class:`~spoolbox.transports.smtp.connection.Connection`
against a real server on loopback whose replies come when the test says, through the
three cases of the watch: it fires after the deadline it was set for (the reply is
late: a timeout), it fires before the deadline of a later, longer wait (it moves on,
and a reply that comes in time is read), and a shorter wait comes while it is set for
later (it is brought forward).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from smtp_servers import greeted_connection, line

from spoolbox.transports.smtp.connection import Connection
from spoolbox.transports.smtp.failures import Failure

#: The server's answers, one for each NOOP, after the delay the test puts in the queue.
Replies = asyncio.Queue[float]


@asynccontextmanager
async def connection(replies: Replies) -> AsyncIterator[Connection]:
    """A connection greeted and EHLO'd; each NOOP is answered after the next delay."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await line(reader)).upper().startswith(b"NOOP"):
            await asyncio.sleep(await replies.get())
            writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()

    async with greeted_connection(script) as conn:
        yield conn


async def noop(conn: Connection, timeout: float) -> float:
    """Send NOOP and wait for its reply within ``timeout``; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    conn.machine.noop()
    assert (await conn.reply("NOOP", timeout)).code == 250
    return loop.time() - start


async def late_noop(conn: Connection, timeout: float) -> tuple[Failure, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    conn.machine.noop()
    with pytest.raises(Failure) as caught:
        await conn.reply("NOOP", timeout)
    return caught.value, loop.time() - start


async def test_a_late_reply_times_out_at_its_deadline_and_closes_the_connection() -> None:
    replies: Replies = asyncio.Queue()
    async with connection(replies) as conn:
        replies.put_nowait(0.0)
        assert await noop(conn, 0.3) < 0.3
        replies.put_nowait(2.0)
        failure, took = await late_noop(conn, 0.3)
        assert failure.status == "4.4.1"
        assert failure.text == (
            f"x-spoolbox; timed out after 0.3 s waiting for the reply of {conn.where} to NOOP"
        )
        assert 0.25 <= took < 1.5
        assert not conn.alive


async def test_the_watch_moves_on_to_a_later_deadline_and_the_reply_is_read() -> None:
    """The watch set for a short wait fires during a long one, which is not cut short."""
    replies: Replies = asyncio.Queue()
    async with connection(replies) as conn:
        replies.put_nowait(0.0)
        await noop(conn, 0.2)  # the watch: 0.2 s from here
        replies.put_nowait(0.6)
        took = await noop(conn, 3.0)  # the watch fires meanwhile and moves on
        assert 0.5 <= took < 3.0
        assert conn.alive
        replies.put_nowait(5.0)  # and that moved watch still times a late reply
        failure, took = await late_noop(conn, 0.4)
        assert failure.status == "4.4.1"
        assert 0.35 <= took < 2.5


async def test_a_shorter_wait_brings_the_watch_forward() -> None:
    """After a wait with a long timeout the watch is set far ahead; a wait with a
    short one still times out when its own timeout says."""
    replies: Replies = asyncio.Queue()
    async with connection(replies) as conn:
        replies.put_nowait(0.0)
        await noop(conn, 60.0)  # the watch: a minute from here
        replies.put_nowait(5.0)
        failure, took = await late_noop(conn, 0.3)
        assert "timed out after 0.3 s" in failure.text
        assert 0.25 <= took < 2.0


async def test_many_waits_share_one_timer() -> None:
    """A hundred replies in time, and the connection's watch was made once."""
    replies: Replies = asyncio.Queue()
    async with connection(replies) as conn:
        watches: list[object] = []
        for _ in range(100):
            replies.put_nowait(0.0)
            await noop(conn, 30.0)
            watches.append(conn._watch)
        assert conn.alive
        assert len({id(w) for w in watches}) == 1 and watches[0] is not None


async def test_a_cancelled_wait_leaves_no_deadline_behind() -> None:
    """A wait cancelled from outside (a cancelled message) clears the deadline, so
    the watch, when it fires, does not close a connection nobody waits on."""
    replies: Replies = asyncio.Queue()
    async with connection(replies) as conn:
        replies.put_nowait(0.0)
        await noop(conn, 0.2)
        conn.machine.noop()
        waiting = asyncio.create_task(conn.reply("NOOP", 0.2))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert conn._deadline is None
        await asyncio.sleep(0.4)  # past both deadlines: the watch has fired
        assert conn.alive
