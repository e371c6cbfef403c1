"""SMTP servers for the SMTP transport tests, all on free loopback ports in the test's loop.

* :class:`Recorder` + :func:`aiosmtpd_server`: a real aiosmtpd server whose handler
  records every envelope and can be told to answer a given RCPT or DATA with a
  reply, to stall at DATA, or to drop the connection there.
* :func:`scripted_server`: a raw asyncio server running a coroutine per connection,
  for replies no real server sends (garbage, endless multi-line replies, ...).

Both count the TCP connections they accepted and close every one of them on exit,
so a test leaves no transport, task or socket behind.

* :func:`smtp_sink`: Postfix's ``smtp-sink`` in its own process, for volume.
* The spooler side of a test: :data:`FAST`, :func:`options`, :func:`open_spooler`,
  :func:`send`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

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
from spoolbox.smtp.client import ClientMachine
from spoolbox.transports.smtp.connection import Connection, open_link

HOST = "127.0.0.1"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class Recorder:
    """An aiosmtpd handler: records envelopes; scripted answers by recipient or at DATA."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply
    data_reply: str | None = None  # answer the final dot with this instead of 250
    stall_data: bool = False  # never answer the final dot
    drop_at_data: bool = False  # close the connection instead of answering the final dot
    peers: list[Any] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)  # per message received: over TLS?
    quits: int = 0  # QUIT commands received
    released: asyncio.Event = field(default_factory=asyncio.Event)
    data_started: asyncio.Event = field(default_factory=asyncio.Event)  # a stall began

    async def handle_RCPT(
        self,
        server: AiosmtpdSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_QUIT(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        if self.stall_data:
            self.data_started.set()
            await self.released.wait()  # until the test ends (the client gives up first)
            return "451 4.3.0 stalled"
        if self.drop_at_data:
            assert server.transport is not None
            server.transport.close()
            return "250 never seen"
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or b""
        self.tls.append(session.ssl is not None)
        self.received.append(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                bytes(content),
                list(envelope.mail_options),
            )
        )
        return "250 2.0.0 Ok: queued as TEST"


@dataclass
class ServerInfo:
    port: int
    connections: int = 0
    protocols: list[asyncio.BaseProtocol] = field(default_factory=list)


def _authenticator(users: dict[str, str]) -> Callable[..., AuthResult]:
    def check(
        server: AiosmtpdSMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            return AuthResult(success=users.get(user) == password, handled=False)
        return AuthResult(success=False, handled=False)

    return check


@contextlib.asynccontextmanager
async def aiosmtpd_server(
    handler: Recorder,
    *,
    starttls: ssl.SSLContext | None = None,
    implicit: ssl.SSLContext | None = None,
    users: dict[str, str] | None = None,
    auth_require_tls: bool = True,
    data_size_limit: int | None = 33554432,
    auth_exclude: tuple[str, ...] = (),
    host: str = HOST,
    port: int = 0,
) -> AsyncIterator[ServerInfo]:
    """A real aiosmtpd server in this loop (on ``host``:``port``, a free port unless
    given); yields its port and connection counter."""
    loop = asyncio.get_running_loop()
    info = ServerInfo(0)

    def factory() -> AiosmtpdSMTP:
        info.connections += 1
        proto = AiosmtpdSMTP(
            handler,
            hostname="test.invalid",
            tls_context=starttls,
            require_starttls=False,
            authenticator=_authenticator(users) if users else None,
            auth_require_tls=auth_require_tls,
            auth_exclude_mechanism=auth_exclude,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            loop=loop,
        )
        info.protocols.append(proto)
        return proto

    server = await loop.create_server(factory, host, port, ssl=implicit)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        handler.released.set()
        server.close()
        for proto in info.protocols:
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.close()
        await server.wait_closed()
        for proto in info.protocols:
            task = getattr(proto, "_handler_coroutine", None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await asyncio.sleep(0)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_server(
    script: Script, *, host: str = HOST, port: int = 0
) -> AsyncIterator[ServerInfo]:
    """A raw server running ``script(reader, writer)`` for every connection (on
    ``host``:``port``, a free port unless given)."""
    info = ServerInfo(0)
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.connections += 1
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)  # type: ignore[arg-type]
        writers.append(writer)
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield info
    finally:
        server.close()
        for w in writers:
            w.close()
        for t in list(tasks):
            t.cancel()
        for t in list(tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await server.wait_closed()


@contextlib.asynccontextmanager
async def greeted_connection(script: Script) -> AsyncIterator[Connection]:
    """A client connection (the smtp transport's own, on its ``Link``) to a scripted
    server that greets and answers EHLO, then runs ``script``; greeted and EHLO'd."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test.invalid ESMTP\r\n")
        await line(reader)  # EHLO
        writer.write(b"250-test.invalid\r\n250 PIPELINING\r\n")
        await writer.drain()
        await script(reader, writer)

    async with scripted_server(serve) as srv:
        sock = socket.create_connection((HOST, srv.port))
        sock.setblocking(False)
        link = await open_link(ClientMachine(tls=False), sock=sock)
        conn = Connection(link, f"{HOST}:{srv.port}", 1)
        try:
            assert (await conn.reply("the greeting", 5.0)).code == 220
            conn.machine.hello("client.test")
            assert (await conn.reply("EHLO", 5.0)).code == 250
            yield conn
        finally:
            conn.close()


# -- script pieces ------------------------------------------------------------------------------
EHLO = b"250-test.invalid\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


async def line(reader: asyncio.StreamReader) -> bytes:
    data = await reader.readline()
    if not data:
        raise ConnectionError("client went away")
    return data


async def smtp_dialogue(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    greeting: bytes = b"220 test.invalid ESMTP\r\n",
    ehlo: bytes = EHLO,
    rcpt: bytes = b"250 2.1.5 Ok\r\n",
    after_354: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    | None = None,
    received: list[bytes] | None = None,
) -> None:
    """A minimal SMTP server dialogue with replaceable replies."""
    writer.write(greeting)
    await writer.drain()
    while True:
        cmd = (await line(reader)).upper()
        if cmd.startswith((b"EHLO", b"HELO")):
            writer.write(ehlo)
        elif cmd.startswith(b"MAIL") or cmd.startswith(b"RSET"):
            writer.write(b"250 2.0.0 Ok\r\n")
        elif cmd.startswith(b"RCPT"):
            writer.write(rcpt)
        elif cmd.startswith(b"DATA"):
            writer.write(b"354 go ahead\r\n")
            await writer.drain()
            if after_354 is not None:
                await after_354(reader, writer)
                return
            body = b""
            while (chunk := await line(reader)) != b".\r\n":
                body += chunk
            if received is not None:
                received.append(body)
            writer.write(b"250 2.0.0 Ok: queued\r\n")
        elif cmd.startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"502 5.5.2 what?\r\n")
        await writer.drain()


# -- PIPELINING (RFC 2920) ------------------------------------------------------------------------
NO_PIPELINING_EHLO = b"250-test.invalid\r\n250 8BITMIME\r\n"


async def greet(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ehlo: bytes = EHLO
) -> None:
    """The greeting and the reply to EHLO (``EHLO`` advertises PIPELINING)."""
    writer.write(b"220 test.invalid ESMTP\r\n")
    await writer.drain()
    cmd = await line(reader)
    assert cmd.upper().startswith(b"EHLO"), cmd
    writer.write(ehlo)
    await writer.drain()


async def read_commands(reader: asyncio.StreamReader, n: int) -> tuple[list[bytes], int]:
    """``n`` command lines, read before anything is answered, and how many reads it took.

    One read holds everything a client wrote in one ``send`` (loopback, a few hundred
    bytes), so ``reads == 1`` shows the commands came in one write.
    """
    data = b""
    reads = 0
    while data.count(b"\r\n") < n:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
        reads += 1
    lines = data.split(b"\r\n")
    assert lines[n:] == [b""], f"more than {n} commands: {data!r}"
    return [ln + b"\r\n" for ln in lines[:n]], reads


async def read_data(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """The DATA stream after 354 up to and with the final dot, and how many reads it took."""
    data = b""
    reads = 0
    while not (data == b".\r\n" or data.endswith(b"\r\n.\r\n")):
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
        reads += 1
    return data, reads


async def serve_rest(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """After a transaction: RSET and NOOP answered 250 until QUIT; every line in ``seen``."""
    while True:
        cmd = await line(reader)
        seen.append(cmd)
        if cmd.upper().startswith(b"QUIT"):
            writer.write(b"221 bye\r\n")
            await writer.drain()
            return
        ok = cmd.upper()[:4] in (b"RSET", b"NOOP")
        writer.write(b"250 2.0.0 Ok\r\n" if ok else b"502 5.5.2 what?\r\n")
        await writer.drain()


@dataclass
class Lockstep:
    """What a :func:`lockstep_server` saw: every command, and those that came early."""

    ehlo: bytes
    delay: float
    port: int = 0
    commands: list[bytes] = field(default_factory=list)
    early: list[bytes] = field(default_factory=list)  # arrived while a reply was owed
    messages: list[bytes] = field(default_factory=list)


class _LockstepProtocol(asyncio.Protocol):
    """A minimal SMTP server that answers each command ``delay`` seconds after it came.

    A command arriving while the reply to an earlier one is still owed is recorded in
    ``early``: a client that waits for every reply never causes one.
    """

    def __init__(self, log: Lockstep) -> None:
        self.log = log
        self.buffer = b""
        self.owed = 0
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 test.invalid ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end == -1:
                    return
                self.log.messages.append(self.buffer[: end + 2])
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                self._reply(b"250 2.0.0 Ok: queued\r\n")
                continue
            cmd, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            self.log.commands.append(cmd)
            if self.owed:
                self.log.early.append(cmd)
            verb = cmd[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self._reply(self.log.ehlo)
            elif verb == b"DATA":
                self._reply(b"354 go ahead\r\n", then_data=True)
            elif verb == b"QUIT":
                self._reply(b"221 bye\r\n")
            else:
                self._reply(b"250 2.0.0 Ok\r\n")

    def _reply(self, reply: bytes, then_data: bool = False) -> None:
        self.owed += 1
        if then_data:
            self.in_data = True  # a client may only send the content after the 354

        def send() -> None:
            self.owed -= 1
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(reply)

        asyncio.get_running_loop().call_later(self.log.delay, send)


@contextlib.asynccontextmanager
async def lockstep_server(ehlo: bytes, delay: float = 0.05) -> AsyncIterator[Lockstep]:
    """A :class:`_LockstepProtocol` server; yields its log (``.port`` set)."""
    loop = asyncio.get_running_loop()
    log = Lockstep(ehlo, delay)
    protocols: list[_LockstepProtocol] = []

    def factory() -> _LockstepProtocol:
        proto = _LockstepProtocol(log)
        protocols.append(proto)
        return proto

    server = await loop.create_server(factory, HOST, 0)
    log.port = server.sockets[0].getsockname()[1]
    try:
        yield log
    finally:
        server.close()
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.close()
        await server.wait_closed()
        await asyncio.sleep(delay * 2)  # let pending replies fire (they see the closed transport)


# -- Postfix smtp-sink ----------------------------------------------------------------------------
SMTP_SINK = "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class Sink:
    port: int
    dump: Path  # smtp-sink -d: one file per accepted transaction
    out: Path  # its -c output (counters)

    def output(self) -> str:
        return self.out.read_text(errors="replace")


@contextlib.contextmanager
def smtp_sink(out: Path, *extra: str) -> Iterator[Sink]:
    """Postfix's ``smtp-sink -c -d DIR`` on a free loopback port (``extra``: more
    options, such as ``-p`` not to announce PIPELINING).  Skips the test when it is
    not installed (CI installs postfix)."""
    if not os.path.exists(SMTP_SINK):
        pytest.skip("smtp-sink not installed: apt-get install postfix")
    # smtp-sink drops to "nobody" when run as root: the dump directory must be reachable
    # for it, which pytest's private tmp_path is not.
    dump = Path(tempfile.mkdtemp(prefix="spoolbox-smtp-sink-"))
    dump.chmod(0o777)
    port = free_port()
    args = [SMTP_SINK, "-c", "-d", f"{dump}/m.", *extra]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]
    with open(out, "wb") as fh:
        proc = subprocess.Popen([*args, f"{HOST}:{port}", "100"], stdout=fh, stderr=fh)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                break
            if proc.poll() is not None:
                pytest.fail(f"smtp-sink exited: {out.read_text()}")
            time.sleep(0.02)
        yield Sink(port, dump, out)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(dump, ignore_errors=True)


# -- the spooler side -----------------------------------------------------------------------------
FAST = Policy(
    router_interval=0.02,
    housekeeping_interval=0.05,
    relogon_delay=0.05,
    failure_backoff=0.05,
    failure_backoff_cap=0.2,
    retry_base=3600.0,  # a deferred recipient stays deferred for the test's lifetime
    retry_jitter=0.0,
    shutdown_grace=2.0,
)
WAIT = 20.0
SHORT = {"greeting": 2.0, "mail": 2.0, "rcpt": 2.0, "data_init": 2.0, "data_term": 2.0}
FINISHED = (MessageState.SENT, MessageState.FAILED, MessageState.DEFERRED, MessageState.CANCELLED)


def options(port: int, **extra: Any) -> dict[str, Any]:
    """The smtp transport's options for a server on ``port`` (short timeouts, no TLS)."""
    return {"host": HOST, "port": port, "tls": "none", "timeouts": dict(SHORT), **extra}


def open_spooler(
    opts: Mapping[str, Any], *, hostname: str | None = None, store: Any = None
) -> Spooler:
    """A spooler with one smtp transport, on ``store`` (a fresh memory store if None)."""
    cfg = SpoolerConfig(
        transports=(TransportConfig("smtp", "smtp", options=dict(opts)),),
        policy=FAST,
        node="test-node",
        **({} if hostname is None else {"hostname": hostname}),
    )
    return Spooler.open(cfg, idle=AlwaysIdle(), **({} if store is None else {"store": store}))


async def send(
    sp: Spooler, msg: NewMessage, states: tuple[MessageState, ...] = FINISHED
) -> tuple[MessageState, list[RecipientRecord]]:
    info = await sp.submit(msg)
    state = await sp.wait_for(info.id, states, timeout=WAIT)
    return state, list(await sp.store.recipients(info.id))
