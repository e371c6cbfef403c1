"""One connection to the smart host: the client machine (:mod:`spoolbox.smtp.client`) on
an asyncio transport, every network step within its timeout, and the opening dialogue
(connect, implicit TLS or STARTTLS, the greeting, EHLO/HELO, AUTH).

The bytes go between the transport and the machine through :class:`Link`, an asyncio
protocol (the public ``asyncio.Protocol`` interface), not through asyncio's streams: a
relayed message waits for two replies, and a ``StreamReader`` in between (its buffer,
its waiter, its checks at every read) ran about 400 bytecodes a message
(docs/benchmarks.md, "Session 42").

Every failure comes out as a :class:`~.failures.Failure` with the connection closed.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import cast

from spoolbox.smtp.client import (
    NEED_DATA,
    ClientMachine,
    ConnectionClosed,
    Event,
    ProtocolError,
    Replied,
    UpgradeTLS,
)
from spoolbox.smtp.replies import Reply, enhanced_status, reply_text

from .dane import TLSA, matches
from .failures import Failure, exception_failure, refusal
from .settings import SMTPSettings

__all__ = ["Connection", "Link", "connect", "open_link"]

#: AUTH mechanisms in order of preference, over TLS and (allow_plain_auth) without it.
_AUTH_TLS = ("plain", "login", "cram-md5")
_AUTH_PLAIN = ("cram-md5", "plain", "login")


class Link(asyncio.Protocol):
    """The transport under a connection: what arrives goes to the client machine at
    once; a reader waits for more (:meth:`wait`), a writer for room in a full buffer
    (:meth:`drained`).  The end of the connection (the server's EOF, a reset, an
    abort) is told to the machine once, as ``receive_data(b"")``."""

    #: Set when the connection is made (``open_link`` returns after that); after
    #: STARTTLS, the TLS layer over it (:meth:`Connection.start_tls`).
    transport: asyncio.Transport

    def __init__(self, machine: ClientMachine) -> None:
        self.machine = machine
        self.ended = False  # the server closed its side, or the connection was lost
        self.error: BaseException | None = None  # what connection_lost said, if anything
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drain: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's too, which are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.machine.receive_data(data)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        self._end(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)  # the writer finds the transport closing

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- for the connection -----------------------------------------------------------
    def _end(self, exc: BaseException | None) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        if not self.ended:
            self.ended = True
            self.machine.receive_data(b"")
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until more data came or the connection ended (at once if it has ended)."""
        if self.ended:
            return
        if self._waiter is not None:  # one reader at a time: a second would never wake
            raise RuntimeError("another coroutine is already waiting for this connection's data")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def drained(self) -> None:
        """Until the transport's buffer has room again (or the connection is lost)."""
        while self._paused and not self.ended:
            drain = self._drain = asyncio.get_running_loop().create_future()
            await drain

    @property
    def paused(self) -> bool:
        return self._paused


async def open_link(
    machine: ClientMachine,
    *,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Link:
    """A :class:`Link` on the connected socket ``sock`` (TLS from the start with
    ``ssl_context``: the handshake done when this returns)."""
    link = Link(machine)
    await asyncio.get_running_loop().create_connection(
        lambda: link, sock=sock, ssl=ssl_context, server_hostname=server_hostname
    )
    return link


class Connection:
    """One open connection of the pool: its link, the machine, and what the pool notes."""

    def __init__(self, link: Link, where: str, number: int, host: str = "") -> None:
        self.link = link
        self.machine = link.machine
        self.where = where
        self.host = host  # the server's name, as the results' Remote-MTA gives it
        self.number = number
        self.messages = 0
        self.clean = False  # the last transaction ended with 250 after the data
        self.idle_since = 0.0
        #: Under DANE: what the TLS was checked against, for the log's one line a
        #: connection (the TLSA record matched, or none usable); None otherwise, and
        #: once the session logged it.
        self.dane: str | None = None
        self._closed = False
        # The awaited reply's deadline (loop time; None while no reply is awaited) and
        # the one timer that watches it: see _await_reply.
        self._deadline: float | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = 0.0
        self._timed_out = False

    @property
    def alive(self) -> bool:
        return not self._closed and not self.link.ended and not self.link.transport.is_closing()

    def close(self) -> None:
        """Drop the connection at once (a send waiting on it fails at its next await)."""
        self._closed = True
        self._deadline = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.link.transport.abort()

    async def write(self, data: bytes, step: str, timeout: float) -> None:
        """Write ``data``; wait (within ``timeout``) only while the transport's buffer is
        above its high-water mark (flow control)."""
        link = self.link
        try:
            if link.transport.is_closing():
                raise self._lost()
            link.transport.write(data)
            if link.paused:
                async with asyncio.timeout(timeout):
                    await link.drained()
                if link.transport.is_closing():
                    raise self._lost()
        except OSError as exc:  # TimeoutError included
            self.close()
            raise exception_failure(exc, step, timeout, self.where) from None

    async def flush(self, step: str, timeout: float) -> None:
        """Write what the machine has to send, if anything."""
        data = self.machine.data_to_send()
        if data:
            await self.write(data, step, timeout)

    async def event(self, step: str, timeout: float) -> Replied | UpgradeTLS:
        """The machine's next event (after writing what it has to send), reading within
        ``timeout`` if it needs more; the server's breaking the dialogue as a Failure."""
        await self.flush(step, timeout)
        event = self.machine.next_event()
        if event is NEED_DATA:  # replies to pipelined commands mostly come together
            event = await self._await_reply(step, timeout)
        if isinstance(event, ProtocolError):
            self.close()
            raise Failure(
                "4.5.0", f"x-spoolbox; bad reply from {self.where} ({step}): {event.text}"
            )
        if isinstance(event, ConnectionClosed):
            self.close()
            raise Failure(
                "4.4.2",
                f"x-spoolbox; connection to {self.where} lost ({step}): "
                "the server closed the connection",
            )
        assert isinstance(event, Replied | UpgradeTLS)  # NEED_DATA ends the loop above
        return event

    async def _await_reply(self, step: str, timeout: float) -> Event:
        """Read until the machine has its next event, within ``timeout``.

        Timed by a deadline, not by a timer a wait: a wait sets ``_deadline`` and the
        connection's one timer (``_watch``) is rescheduled only when it would fire
        after that deadline.  A watch that fires before the deadline (it was set for an
        earlier wait) moves on to it; one that finds the deadline passed aborts the
        connection, which ends the read.  A relay waits for a reply or two a message,
        and ``asyncio.timeout`` (a timer made and cancelled each time) cost more CPU
        than the rest of the wait (docs/benchmarks.md, "Issue 17: the call and reply
        timers").
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._deadline = deadline
        if self._watch is None or self._watch_at > deadline:
            if self._watch is not None:
                self._watch.cancel()
            self._watch = loop.call_at(deadline, self._on_watch)
            self._watch_at = deadline
        machine = self.machine
        link = self.link
        try:
            while True:  # the caller found the machine needing data
                answer = machine.data_to_send()  # to an AUTH challenge
                if answer:
                    link.transport.write(answer)
                await link.wait()  # the link hands what comes to the machine
                if self._timed_out:
                    raise TimeoutError
                event = machine.next_event()
                if isinstance(event, Replied | UpgradeTLS):
                    return event  # a reply that came before a reset still counts
                if isinstance(link.error, OSError):
                    raise link.error  # a reset, a TLS error: said as such
                if event is not NEED_DATA:
                    return event
                if link.ended:  # nothing more will come (the machine waits for TLS)
                    return ConnectionClosed()
        except OSError as exc:  # TimeoutError included
            cause: OSError = TimeoutError() if self._timed_out else exc
            self.close()
            raise exception_failure(cause, step, timeout, self.where) from None
        finally:
            self._deadline = None

    def _on_watch(self) -> None:
        self._watch = None
        deadline = self._deadline
        if deadline is None or self._closed:
            return  # no reply awaited: the next wait schedules the watch again
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._watch = loop.call_at(deadline, self._on_watch)
            self._watch_at = deadline
            return
        self._timed_out = True
        self.link.transport.abort()  # the wait ends (connection lost); _await_reply says why

    async def reply(self, step: str, timeout: float) -> Reply:
        """The reply to the command ``step`` (it is the next event but for STARTTLS)."""
        event = await self.event(step, timeout)
        return event.reply

    def start_tls(self, transport: asyncio.Transport | None) -> None:
        """From now on the link's transport is ``transport``: the TLS layer over the
        connection (``loop.start_tls``)."""
        if transport is None:  # the loop closed the connection meanwhile
            raise ConnectionResetError("the connection was closed during the TLS handshake")
        self.link.transport = transport

    def _lost(self) -> OSError:
        """What a write to a closed connection raises: why it was lost, if known."""
        error = self.link.error
        return error if isinstance(error, OSError) else ConnectionResetError("Connection lost")


async def _tcp_connect(host: str, port: int, timeout: float) -> socket.socket:
    """A connected non-blocking socket: name resolution plus connect within ``timeout``."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        errors: list[OSError] = []
        for family, type_, proto, _, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                errors.append(exc)
                continue
            except BaseException:
                sock.close()
                raise
            return sock
    if errors:
        raise errors[0]
    raise OSError(f"no address found for {host}")


async def connect(
    settings: SMTPSettings, tls_context: ssl.SSLContext | None, helo: str, number: int
) -> Connection:
    """A connection greeted, EHLO'd, in TLS as configured and authenticated if configured."""
    s, t, where = settings, settings.timeouts, settings.where
    try:
        sock = await _tcp_connect(s.address or s.host, s.port, t["connect"])
    except TimeoutError:
        raise Failure(
            "4.4.1",
            f"x-spoolbox; cannot connect to {where}: no connection within "
            f"{t['connect']:g} s (connect timeout)",
            connected=False,
        ) from None
    except OSError as exc:
        raise Failure(
            "4.4.1",
            f"x-spoolbox; cannot connect to {where}: {exc.strerror or exc}",
            connected=False,
        ) from None
    implicit = s.tls == "implicit"
    try:
        async with asyncio.timeout(t["greeting"]):  # the TLS handshake (implicit TLS)
            link = await open_link(
                ClientMachine(tls=implicit),
                sock=sock,
                ssl_context=tls_context if implicit else None,
                server_hostname=s.host if implicit else None,
            )
    except OSError as exc:
        sock.close()
        raise exception_failure(exc, "the greeting", t["greeting"], where) from None
    except BaseException:
        sock.close()
        raise
    conn = Connection(link, where, number, s.host)
    try:
        await _open(conn, settings, tls_context, helo)
    except BaseException:
        conn.close()
        raise
    return conn


async def _open(
    conn: Connection, settings: SMTPSettings, tls_context: ssl.SSLContext | None, helo: str
) -> None:
    s, t, where = settings, settings.timeouts, settings.where
    reply = await conn.reply("the greeting", t["greeting"])
    if reply.code != 220:
        raise refusal(reply, "the greeting", where)
    greeted = await _hello(conn, helo, "EHLO", t["mail"])
    if s.delivery == "mx":
        _not_myself(greeted, helo, where)
    offered = "starttls" in conn.machine.extensions
    if s.tls == "starttls" or (s.tls == "opportunistic" and offered):
        if not offered:
            needs = "tls='starttls'" if s.tlsa is None else "its DANE TLSA records"
            raise Failure(
                "4.7.10", f"x-spoolbox; {where} does not offer STARTTLS, which {needs} require"
            )
        conn.machine.starttls()
        event = await conn.event("STARTTLS", t["mail"])
        if not isinstance(event, UpgradeTLS):
            raise refusal(event.reply, "STARTTLS", where)
        assert tls_context is not None  # made for every tls but "none"
        try:
            async with asyncio.timeout(t["mail"]):
                conn.start_tls(
                    await asyncio.get_running_loop().start_tls(
                        conn.link.transport, conn.link, tls_context, server_hostname=s.host
                    )
                )
        except OSError as exc:
            raise exception_failure(exc, "STARTTLS", t["mail"], where) from None
        conn.machine.tls_started()
        if s.tlsa:
            conn.dane = (
                f"its certificate matches its DANE TLSA record {_dane_check(conn, s.tlsa, where)}"
            )
        elif s.tlsa is not None:
            conn.dane = "TLS required by its DANE TLSA records, none of which can be checked"
        await _hello(conn, helo, "EHLO after STARTTLS", t["mail"])
    if s.username is not None:
        await _auth(conn, settings)


def _dane_check(conn: Connection, records: tuple[TLSA, ...], where: str) -> TLSA:
    """DANE (:mod:`.dane`): the TLSA record the server's certificate matches; if it
    matches none, the connection is not used (4.7.5)."""
    tls = conn.link.transport.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    found = matches(records, der) if der else None
    if found is None:
        shown = ", ".join(str(r) for r in records[:3])
        raise Failure(
            "4.7.5",
            f"x-spoolbox; the TLS certificate of {where} matches none of its DANE TLSA "
            f"records ({shown}{', ...' if len(records) > 3 else ''}): not sent",
        )
    return found


async def _hello(conn: Connection, helo: str, step: str, timeout: float) -> Reply:
    """EHLO, and HELO if EHLO is refused (but not when the server is closing: 421); the
    server's 250 reply."""
    conn.machine.hello(helo)
    reply = await conn.reply(step, timeout)
    if reply.code == 250:
        return reply
    if reply.code != 421:
        conn.machine.helo(helo)
        reply = await conn.reply(step, timeout)
        if reply.code == 250:
            return reply
    raise refusal(reply, step, conn.where)


def _not_myself(reply: Reply, helo: str, where: str) -> None:
    """A domain's mail server that answers EHLO with this host's own name is this host
    (its MX names us, or its address is ours): sending would loop, so the mail fails
    with 5.4.6, as Postfix's "mail for ... loops back to myself"."""
    words = reply.lines[0].split()
    if words and words[0].lower() == helo.lower():
        raise Failure(
            "5.4.6",
            f"x-spoolbox; {where} is this host (it answers EHLO as {words[0]}, this "
            "host's own name): the mail would loop back to myself",
        )


async def _auth(conn: Connection, settings: SMTPSettings) -> None:
    s, where = settings, settings.where
    assert s.username is not None and s.password is not None
    machine = conn.machine
    if "auth" not in machine.extensions:
        raise Failure("4.7.0", f"x-spoolbox; {where} does not offer AUTH, but a username is set")
    offered = machine.auth_mechanisms
    order = _AUTH_TLS if machine.tls else _AUTH_PLAIN
    mechanism = next((m for m in order if m in offered), None)
    if mechanism is None:
        raise Failure(
            "4.7.0",
            f"x-spoolbox; {where} offers no AUTH mechanism we know "
            f"({', '.join(offered) or 'none'}; we know {', '.join(order)})",
        )
    # One mechanism only: trying the next after a refusal just repeats wrong
    # credentials (and some servers lose track of the dialogue doing so).
    machine.auth(mechanism, s.username, s.password)
    reply = await conn.reply("AUTH", s.timeouts["mail"])
    if reply.code != 235:
        status = enhanced_status(reply, "4" if reply.code < 500 else "5")
        raise Failure(
            "4." + status.split(".", 1)[1],  # a configuration problem: keep retrying
            f"smtp; {reply_text(reply)} (authentication as {s.username} failed)",
        )
