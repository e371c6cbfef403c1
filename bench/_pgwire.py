"""A TCP proxy in front of PostgreSQL that counts what a client sends, from the wire:
round trips (each time the client sends after the server has answered) and statements
(the frontend protocol's ``Query`` and ``Bind`` messages: one per simple query or
extended-protocol execution).  Independent of the client's own counters, so it
measures any spoolbox tree (``bench/cluster.py --only roundtrips``).

Connect with ``sslmode=disable`` (the proxy reads the plain protocol)."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field


@dataclass
class WireCounts:
    round_trips: int = 0
    statements: int = 0
    connections: int = 0


@dataclass
class _Direction:
    started: bool = False  # the untyped start-up message has gone by
    buffer: bytearray = field(default_factory=bytearray)


class WireProxy:
    """``async with WireProxy(host, port) as proxy``: listens on ``proxy.port``."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.counts = WireCounts()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> WireProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        up_r, up_w = await asyncio.open_connection(*self._target)
        state = {"waiting": False}
        client = _Direction()

        async def upstream() -> None:  # client -> server
            while data := await reader.read(65536):
                if not state["waiting"]:
                    self.counts.round_trips += 1
                    state["waiting"] = True
                self._statements(client, data)
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        async def downstream() -> None:  # server -> client
            while data := await up_r.read(65536):
                state["waiting"] = False
                writer.write(data)
                await writer.drain()
            writer.close()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # The proxy is closing (__aexit__ cancelled the pumps): end quietly, or
            # asyncio's stream callback reports the cancelled task as an error.
            pass
        finally:
            self._tasks.difference_update(tasks)

    def _statements(self, d: _Direction, data: bytes) -> None:
        d.buffer += data
        while True:
            if not d.started:  # StartupMessage: length, then the body, no type byte
                if len(d.buffer) < 4:
                    return
                (n,) = struct.unpack("!I", d.buffer[:4])
                if len(d.buffer) < n:
                    return
                del d.buffer[:n]
                d.started = True
                continue
            if len(d.buffer) < 5:
                return
            kind = d.buffer[0:1]
            (n,) = struct.unpack("!I", d.buffer[1:5])
            if len(d.buffer) < 1 + n:
                return
            if kind in (b"Q", b"B"):
                self.counts.statements += 1
            del d.buffer[: 1 + n]
