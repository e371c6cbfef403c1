"""A real HTTP server for the webhook transport's tests: Hypercorn (HTTP/1.1, HTTP/2 over
TLS by ALPN, and h2c by prior knowledge) on a free loopback port in the test's loop,
serving :class:`Receiver`, an ASGI application that records every request and answers
each path from a script of :class:`Answer` s: a status, slowly, never, with a
connection dropped in the middle of the body, or with an endless body.  With a
``secret`` it checks every request's signature the way a real receiver would
(``verify_signature``), answers 401 to a bad one, and drops repeated idempotency keys.

Also the spooler side: :func:`open_spooler` runs a real spooler with one webhook
transport, :func:`send` submits and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from hypercorn.asyncio import serve
from hypercorn.config import Config

from spoolbox import (
    AlwaysIdle,
    MessageState,
    NewMessage,
    Policy,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.model import RecipientRecord
from spoolbox.transports.webhook import SignatureError, verify_signature

HOST = "127.0.0.1"
SECRET = "whsec-test-3f9a1c"
#: How long a test waits for something that will happen (seconds).
WAIT = 30.0
#: Where an endless body stops sending (and waits), so that a test stays bounded.
ENDLESS_LIMIT = 256 << 20
FINISHED = (MessageState.SENT, MessageState.FAILED, MessageState.DEFERRED)


@dataclass(frozen=True)
class Answer:
    """How the receiver answers one request."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b"ok"
    delay: float = 0.0  # seconds before the response starts
    hang: bool = False  # never answer (until the server stops)
    drop_after: int | None = None  # send this many body bytes of a longer one, then drop
    endless: bool = False  # a body that never ends


@dataclass
class Request:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    http_version: str
    client_port: int
    verified: str | None = None  # "ok", or why the signature was refused


@dataclass
class Receiver:
    """The ASGI application: records requests, answers each path from its script (the
    last answer repeats), checks signatures when it has a ``secret``."""

    script: dict[str, list[Answer]] = field(default_factory=dict)
    secret: str | None = None
    requests: list[Request] = field(default_factory=list)
    keys_done: list[str] = field(default_factory=list)  # idempotency keys acted on
    arrived: asyncio.Queue[Request] = field(default_factory=asyncio.Queue)
    body_bytes_sent: int = 0

    def answer(self, path: str, *answers: Answer) -> None:
        self.script[path] = list(answers)

    def _next(self, path: str) -> Answer:
        todo = self.script.get(path) or [Answer()]
        return todo.pop(0) if len(todo) > 1 else todo[0]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        req = Request(scope["path"], headers, body, scope["http_version"], scope["client"][1])
        answer = self._next(scope["path"])
        if self.secret is not None:
            answer = self._check(req, answer)
        self.requests.append(req)
        self.arrived.put_nowait(req)
        await self._respond(answer, send, receive)

    def _check(self, req: Request, answer: Answer) -> Answer:
        """What a real receiver does: verify, then act once per idempotency key."""
        assert self.secret is not None
        key = req.headers.get("idempotency-key")
        try:
            verify_signature(self.secret, req.body, req.headers.get("spoolbox-signature"), key)
        except SignatureError as exc:
            req.verified = str(exc)
            return Answer(401, body=f"bad signature: {exc}".encode())
        req.verified = "ok"
        assert key is not None
        if answer.status != 200:
            return answer  # refused: it did not act on this one
        if key in self.keys_done:
            return Answer(200, body=b"duplicate, dropped")
        self.keys_done.append(key)
        return answer

    async def _endless(self, send: Any, receive: Any) -> None:
        """A body that does not end: 64 KiB chunks until the client goes away (or, to
        bound the test, 256 MiB were sent: then it waits, still unfinished)."""
        gone = asyncio.ensure_future(receive())  # http.disconnect, once the client leaves
        chunk = b"x" * 65536
        try:
            while not gone.done() and self.body_bytes_sent < ENDLESS_LIMIT:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.body_bytes_sent += len(chunk)
                await asyncio.sleep(0)
            await gone
        finally:
            gone.cancel()

    async def _respond(self, answer: Answer, send: Any, receive: Any) -> None:
        if answer.hang:
            await asyncio.Event().wait()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        headers = [(k.encode(), v.encode()) for k, v in answer.headers]
        if not answer.endless:
            size = len(answer.body) if answer.drop_after is None else len(answer.body) * 10
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        if answer.endless:
            await self._endless(send, receive)
        if answer.drop_after is not None:
            part = answer.body[: answer.drop_after]
            await send({"type": "http.response.body", "body": part, "more_body": True})
            raise ConnectionAbortedError("the test drops this connection mid-response")
        await send({"type": "http.response.body", "body": answer.body})


@dataclass
class Server:
    url: str  # http(s)://127.0.0.1:PORT
    ca: trustme.CA | None = None

    def ca_file(self, directory: Path) -> str:
        assert self.ca is not None
        path = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)


@contextlib.asynccontextmanager
async def http_server(
    app: Receiver, *, tls: bool = False, tmp: Path | None = None
) -> AsyncIterator[Server]:
    """Hypercorn serving ``app`` on a free loopback port; ``tls`` with a trustme CA's
    certificate for 127.0.0.1 (``tmp`` holds its files), offering h2 and http/1.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
    config.graceful_timeout = 0.5
    config.errorlog = None
    config.accesslog = None
    ca = None
    if tls:
        assert tmp is not None
        ca = trustme.CA()
        cert = ca.issue_cert(HOST)
        cert.private_key_pem.write_to_path(str(tmp / "server.key"))
        cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
        config.certfile = str(tmp / "server.pem")
        config.keyfile = str(tmp / "server.key")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(WAIT):
            while True:
                with contextlib.suppress(OSError):
                    _, w = await asyncio.open_connection(HOST, port)
                    w.close()
                    await w.wait_closed()
                    break
                await asyncio.sleep(0.02)
        yield Server(f"{'https' if tls else 'http'}://{HOST}:{port}", ca)
    finally:
        stop.set()
        await task


def tls_client_context(server: Server) -> ssl.SSLContext:
    assert server.ca is not None
    ctx = ssl.create_default_context()
    server.ca.configure_trust(ctx)
    return ctx


def options(server: Server, **extra: Any) -> dict[str, Any]:
    """The transport's options: the endpoint ``hook`` at ``/hook``, signed, short
    timeouts (a test waits for them)."""
    opts: dict[str, Any] = {
        "endpoints": {"hook": f"{server.url}/hook"},
        "secret": SECRET,
        "connect_timeout": 5,
        "read_timeout": 5,
        "write_timeout": 5,
        "pool_timeout": 5,
        "total_timeout": 20,
    }
    opts.update(extra)
    return opts


@contextlib.asynccontextmanager
async def open_spooler(opts: Mapping[str, Any], **policy: Any) -> AsyncIterator[Spooler]:
    config = SpoolerConfig(
        transports=(TransportConfig("webhook", "webhook", options=dict(opts)),),
        policy=Policy(
            **{"retry_base": 3600.0, "router_interval": 0.05, "relogon_delay": 3600.0, **policy}
        ),
        node="test",
    )
    async with Spooler.open(config, idle=AlwaysIdle()) as sp:
        yield sp


@contextlib.asynccontextmanager
async def serving(
    receiver: Receiver, *, policy: Mapping[str, Any] | None = None, **extra: Any
) -> AsyncIterator[tuple[Server, Spooler]]:
    """:func:`http_server` serving ``receiver`` and a spooler posting to it (``extra``:
    the transport's options beyond :func:`options`; ``policy``: the Policy's)."""
    async with (
        http_server(receiver) as srv,
        open_spooler(options(srv, **extra), **(policy or {})) as sp,
    ):
        yield srv, sp


async def send(sp: Spooler, msg: NewMessage) -> tuple[MessageState, list[RecipientRecord]]:
    info = await sp.submit(msg)
    state = await sp.wait_for(info.id, FINISHED, timeout=WAIT)
    return state, list(await sp.store.recipients(info.id))
