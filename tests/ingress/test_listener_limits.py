"""Connection limits: ``max_connections`` open at once, ``max_connections_per_client``
from one address outside ``relay_networks`` (Postfix's process limit and
smtpd_client_connection_count_limit).  One more gets ``421 4.7.0`` at once and is
closed; a connection that ends makes room again.  Real sockets."""

from __future__ import annotations

import asyncio

import pytest
from smtp_client import serving

from spoolbox import NewMessage
from spoolbox.ingress import ListenerConfig


async def keep(message: NewMessage) -> object:
    return None


class Client:
    """One open connection and its greeting."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> tuple[Client, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await asyncio.wait_for(reader.readline(), 10)
        return cls(reader, writer), greeting

    async def closed_after(self) -> bytes:
        """What the server sends until it closes the connection (then closed here)."""
        data = await asyncio.wait_for(self.reader.read(), 10)
        self.writer.close()
        await self.writer.wait_closed()
        return data

    async def quit(self) -> None:
        self.writer.write(b"QUIT\r\n")
        await self.writer.drain()
        await asyncio.wait_for(self.reader.read(), 10)
        self.writer.close()
        await self.writer.wait_closed()


async def test_one_connection_over_max_connections_gets_421() -> None:
    async with serving(keep, max_connections=3) as listener:
        opened = [await Client.open(listener.port) for _ in range(3)]
        assert all(g.startswith(b"220 mx.test") for _, g in opened)
        extra, greeting = await Client.open(listener.port)
        assert greeting == b"421 4.7.0 mx.test Error: too many connections; try again later\r\n"
        assert await extra.closed_after() == b""  # and closed
        await opened[0][0].quit()  # one ends: room for the next
        again, greeting = await Client.open(listener.port)
        assert greeting.startswith(b"220 "), greeting
        stats = listener.statistics()
        assert stats["rejected_connection_limit"] == 1
        assert stats["active"] == 3
        for client, _ in [*opened[1:], (again, b"")]:
            await client.quit()


async def test_a_client_outside_relay_networks_is_limited_by_its_address() -> None:
    async with serving(keep, max_connections_per_client=2, relay_networks=()) as listener:
        first = [await Client.open(listener.port) for _ in range(2)]
        assert all(g.startswith(b"220 ") for _, g in first)
        extra, greeting = await Client.open(listener.port)
        assert greeting == (
            b"421 4.7.0 mx.test Error: too many connections from 127.0.0.1; try again later\r\n"
        )
        assert await extra.closed_after() == b""
        await first[0][0].quit()
        again, greeting = await Client.open(listener.port)
        assert greeting.startswith(b"220 "), greeting
        assert listener.statistics()["rejected_client_connection_limit"] == 1
        for client in (first[1][0], again):
            await client.quit()
        assert not listener._per_client  # every connection that ended let go of its count


async def test_a_client_in_relay_networks_counts_towards_the_total_only() -> None:
    # 127.0.0.1 is in the default relay_networks: the local application may open many.
    async with serving(keep, max_connections_per_client=2, max_connections=10) as listener:
        opened = [await Client.open(listener.port) for _ in range(6)]
        assert all(g.startswith(b"220 ") for _, g in opened)
        for client, _ in opened:
            await client.quit()


@pytest.mark.parametrize("name", ["max_connections", "max_connections_per_client"])
def test_a_limit_is_a_positive_integer(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, not 0"):
        ListenerConfig(**{name: 0})  # type: ignore[arg-type]
