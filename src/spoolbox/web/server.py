"""The web server on the daemon's event loop: uvicorn serving :func:`.app.build_app`.

It binds its socket itself (so that a port in use fails the start with a clear
error, and a test may ask for port 0), runs uvicorn's ``serve`` as a task of the
daemon's loop without uvicorn's signal handling (the daemon owns SIGTERM, SIGINT
and SIGHUP), writes no access log (an address may hold the token on a first visit),
and gives open event streams one second to end when it stops.

Its connections have a fixed send buffer (:data:`SEND_BUFFER`, set on the listening
socket, which they inherit): left to itself the kernel grows a connection's buffer
up to megabytes for a client that does not read, and such a client of the event
stream would be noticed (and dropped, :mod:`.events`) only after minutes of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from ..daemon.api_ops import DaemonView
from ..profile.schema import WebSettings
from .app import build_app
from .context import WebContext
from .lag import LagProbe
from .metrics import Metrics
from .token import csrf_token, load_or_create_token, page_url

__all__ = ["SEND_BUFFER", "WebServer"]

#: Bytes of the kernel's send buffer of each connection (the kernel doubles it).
SEND_BUFFER = 32 * 1024

log = logging.getLogger("spoolbox.web")


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon's loop has its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class WebServer:
    """``await start()`` / ``await stop()`` on the daemon's loop."""

    def __init__(self, daemon: DaemonView, settings: WebSettings, data_dir: Path) -> None:
        self._daemon = daemon
        self._settings = settings
        self._data_dir = data_dir
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.context: WebContext | None = None
        self.metrics: Metrics | None = None
        self.port = settings.port

    @property
    def url(self) -> str:
        """The page's address (without the token)."""
        return page_url(self._settings.host, self.port)

    async def start(self) -> None:
        token = load_or_create_token(self._data_dir)
        metrics = Metrics(self._daemon)
        context = WebContext(
            daemon=self._daemon, csrf=csrf_token(token), lag=LagProbe(metrics.observe_lag)
        )
        app = build_app(context, token, metrics)
        sock = _bind(self._settings.host, self._settings.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=1,
            ws="none",
        )
        server = _Server(config)
        self._socket, self._server, self.context, self.metrics = sock, server, context, metrics
        context.lag.start()
        metrics.start()
        self._task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
        log.info("web page on %s (`spoolbox web` prints it with its token)", self.url)

    async def stop(self) -> None:
        """Stop serving: end the event streams, cancel the page's flushes; idempotent."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        context, metrics = self.context, self.metrics
        assert context is not None and metrics is not None
        context.closing.set()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        await context.flushes.aclose()
        await context.lag.stop()
        await metrics.stop()
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; OSError says which address failed."""
    infos: list[Any] = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by every connection: a fixed send buffer (the kernel would grow it
        # up to megabytes for a client that does not read; see the module's docstring).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"the web page cannot listen on {host}:{port}: {exc.strerror} "
            "(change [web] port or host)",
        ) from None
    sock.setblocking(False)
    return sock
