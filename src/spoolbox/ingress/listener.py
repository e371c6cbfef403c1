"""The SMTP submission listener: any program that speaks SMTP can queue mail.

Built on :mod:`aiosmtpd`'s protocol class, served with ``loop.create_server`` on the
running loop (never the threaded controller).  The rules, from DESIGN.md section 4:

* DATA is answered ``250`` only after ``await submit(message)`` returned, i.e. after
  the spooler's durable commit.  If submit raises, the answer is ``451 4.3.0`` and
  never ``250``.  A submit that started is not cancelled when the client drops (it is
  shielded and awaited by :meth:`SubmissionListener.stop`): the store sees whole
  submissions only; delivery is at least once.
* Limits: message size (SIZE advertised; ``552 5.3.4``), recipients per transaction
  (``452 4.5.3``), text line length (``554 5.6.0`` naming the line), and no NUL byte,
  bare CR or bare LF in DATA (``554 5.6.0``; a bare line break is how SMTP smuggling
  hides a second message from the next hop).
* Relay control: a client that is neither authenticated nor in ``relay_networks`` may
  only name recipients in ``local_domains`` (``554 5.7.1 relay access denied``).
* Addresses are checked as :class:`~spoolbox.model.Address` values (no control
  characters: a CR, LF or NUL in MAIL FROM or RCPT TO is refused with ``553``).
* A ``Received:`` trace line (RFC 5321 section 4.4) goes on top of the content.
* Malformed MIME is accepted as-is: the spooler relays bytes.  8-bit content is
  accepted as aiosmtpd does (8BITMIME is advertised; SMTPUTF8 is not).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from ..model import Address, AddressError, MessageError, NewMessage, new_message_id

__all__ = ["ListenerConfig", "SubmissionListener"]

log = logging.getLogger("spoolbox.ingress")

Submit = Callable[[NewMessage], Awaitable[object]]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: statistics keys, besides ``connections`` and ``accepted``
REJECT_REASONS = (
    "relay",  # RCPT to a non-local domain from a client that may not relay
    "recipient_limit",  # RCPT beyond max_recipients
    "bad_address",  # MAIL FROM / RCPT TO that is not a valid address
    "auth_required",  # MAIL without AUTH when require_auth
    "auth_failed",  # AUTH with wrong credentials
    "size",  # message larger than max_message_size (SIZE= or actual)
    "line_length",  # a text line longer than max_line_length
    "bad_data",  # NUL byte, bare CR or bare LF in DATA
    "no_recipients",  # DATA after every RCPT was refused
    "invalid_message",  # NewMessage refused the submission
    "submit_failed",  # submit raised: 451
)


def _clean(text: str, limit: int = 160) -> str:
    """Text safe to put in a reply line: printable ASCII, no line breaks, bounded."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text)
    return out[:limit]


@dataclass(frozen=True)
class ListenerConfig:
    """Settings of one SMTP submission listener (the ``[listeners.NAME]`` profile table).

    Sequences given as lists (from TOML) are kept as tuples; the values are checked on
    construction and a :class:`ValueError` names the bad one.
    """

    host: str = "127.0.0.1"
    port: int = 2525  # 0 = any free port (tests)
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 1000
    max_line_length: int = 998  # RFC 5321/5322 text line limit, octets without CRLF
    require_auth: bool = False
    users: Mapping[str, str] = field(default_factory=dict)  # username -> password
    allow_plain_auth: bool = False  # allow AUTH without TLS (loopback use)
    relay_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    local_domains: tuple[str, ...] = ()  # anyone may send to these (no relay needed)
    hostname: str | None = None
    default_address_type: str = "SMTP"
    tls_cert: str | None = None  # PEM certificate chain: enables STARTTLS
    tls_key: str | None = None  # PEM private key (default: in tls_cert)
    idle_timeout: float = 300.0  # seconds without a command before the connection closes
    shutdown_grace: float = 10.0  # stop(): how long transactions in progress may finish

    def __post_init__(self) -> None:
        object.__setattr__(self, "relay_networks", tuple(self.relay_networks))
        object.__setattr__(
            self, "local_domains", tuple(d.lower().rstrip(".") for d in self.local_domains)
        )
        object.__setattr__(self, "users", dict(self.users))
        for name in ("max_message_size", "max_recipients", "max_line_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0 to 65535, not {self.port}")
        for net in self.relay_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"relay_networks: {exc}") from None
        try:
            Address(self.default_address_type, "x@y")
        except AddressError as exc:
            raise ValueError(f"default_address_type: {exc}") from None
        if self.require_auth and not self.users:
            raise ValueError("require_auth needs at least one entry in users")
        if self.require_auth and not (self.allow_plain_auth or self.tls_cert):
            raise ValueError(
                "require_auth without TLS needs allow_plain_auth = true (or set tls_cert)"
            )
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key is set but tls_cert is not")
        if self.idle_timeout <= 0 or self.shutdown_grace < 0:
            raise ValueError("idle_timeout must be positive and shutdown_grace not negative")


class _Envelope(Envelope):
    """aiosmtpd's envelope plus how many RCPTs of this transaction were refused."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0


class _SMTP(SMTP):
    """aiosmtpd's protocol with our DATA reader (limits, NUL, bare CR/LF, clear replies)."""

    def __init__(self, listener: SubmissionListener, handler: _Handler, **kwargs: Any) -> None:
        # aiosmtpd sizes its StreamReader from line_length_limit: text + dot + CRLF.
        self.line_length_limit = listener.config.max_line_length + 3
        self._listener = listener
        self.in_data = False
        super().__init__(handler, **kwargs)

    def _create_envelope(self) -> Envelope:
        return _Envelope()

    @property
    def in_transaction(self) -> bool:
        """A MAIL was accepted and its transaction has not ended (or DATA is running)."""
        env = self.envelope
        return self.in_data or bool(env is not None and env.mail_from)

    def connection_lost(self, error: Exception | None) -> None:
        self._listener._connections.discard(self)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        env = self.envelope
        assert env is not None
        if not env.rcpt_tos:
            if isinstance(env, _Envelope) and env.refused:
                self._listener._reject("no_recipients")
                await self.push("554 5.5.1 No valid recipients")
            else:
                await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        self.in_data = True
        try:
            await self._receive_data(env)
        finally:
            self.in_data = False

    async def _receive_data(self, env: Envelope) -> None:
        cfg = self._listener.config
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        chunks: list[bytes] = []
        size = 0
        lineno = 0
        continuing = False  # the rest of a line that overran the reader's limit
        problem: tuple[str, str] | None = None  # (statistics reason, reply)

        def fail(reason: str, reply: str) -> None:
            nonlocal problem
            if problem is None:
                problem = (reason, reply)
                chunks.clear()  # discard at once: no memory pressure from a bad message

        too_long = (
            "554 5.6.0 Line {} of the message is longer than {} octets "
            "(RFC 5322 section 2.1.1); message not queued"
        )
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # Longer than the reader may buffer: drain it, remember, go on to the end.
                await self._reader.read(exc.consumed)
                if not continuing:
                    lineno += 1
                    continuing = True
                size += exc.consumed
                fail("line_length", too_long.format(lineno, cfg.max_line_length))
                continue
            except asyncio.IncompleteReadError:
                return  # the client went away mid-DATA: nothing is queued
            if continuing:  # the tail of an overlong line, never the end marker
                continuing = False
                size += len(line)
                continue
            lineno += 1
            if line == b".\r\n":
                break
            if lineno % 256 == 0:
                self._reset_timeout()  # a large message may take longer than the timeout
            size += len(line)
            if size > cfg.max_message_size:
                fail(
                    "size",
                    f"552 5.3.4 Message too big: the limit is {cfg.max_message_size} octets",
                )
            if problem is not None:
                continue
            text = line[1:-2] if line.startswith(b".") else line[:-2]
            if len(text) > cfg.max_line_length:
                fail("line_length", too_long.format(lineno, cfg.max_line_length))
            elif b"\x00" in text:
                fail("bad_data", f"554 5.6.0 Line {lineno} of the message contains a NUL byte")
            elif b"\r" in text or b"\n" in text:
                fail(
                    "bad_data",
                    f"554 5.6.0 Line {lineno} of the message contains a bare CR or LF: "
                    "end every line with CRLF",
                )
            else:
                chunks.append(text + b"\r\n")
        if self.transport is None:
            return
        if problem is not None:
            reason, reply = problem
            self._listener._reject(reason)
            self.envelope = self._create_envelope()
            await self.push(reply)
            return
        content = b"".join(chunks)
        chunks.clear()
        env.content = content
        env.original_content = content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push(status)


class _Handler:
    """The aiosmtpd handler: hooks for EHLO, MAIL, RCPT, DATA and AUTH."""

    def __init__(self, listener: SubmissionListener) -> None:
        self._listener = listener
        self._networks: list[_Network] = [
            ipaddress.ip_network(n, strict=False) for n in listener.config.relay_networks
        ]

    # -- hooks ------------------------------------------------------------------------
    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        cfg = self._listener.config
        out = [responses[0], f"250-SIZE {cfg.max_message_size}", "250-PIPELINING"]
        for line in responses[1:]:
            if line.startswith("250-AUTH") and not cfg.users:
                continue
            out.append(line)
        return out

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        cfg = self._listener.config
        if cfg.require_auth and not session.authenticated:
            self._listener._reject("auth_required")
            return "530 5.7.0 Authentication required"
        for opt in mail_options:
            key, _, value = opt.partition("=")
            if key == "SIZE" and value.isdigit() and int(value) > cfg.max_message_size:
                self._listener._reject("size")
                return (
                    f"552 5.3.4 Message size {value} exceeds the limit of "
                    f"{cfg.max_message_size} octets"
                )
        if address != "<>":
            try:
                self._address(address)
            except AddressError as exc:
                self._listener._reject("bad_address")
                return f"553 5.1.7 Bad sender address: {_clean(str(exc))}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        if isinstance(envelope, _Envelope):
            envelope.refused = 0
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        cfg = self._listener.config
        refused = envelope if isinstance(envelope, _Envelope) else _Envelope()
        if len(envelope.rcpt_tos) >= cfg.max_recipients:
            self._listener._reject("recipient_limit")
            return f"452 4.5.3 Too many recipients (at most {cfg.max_recipients} per message)"
        try:
            addr = self._address(address)
        except AddressError as exc:
            refused.refused += 1
            self._listener._reject("bad_address")
            return f"553 5.1.3 Bad recipient address: {_clean(str(exc))}"
        if not self._may_relay(session) and not self._is_local(addr.value):
            refused.refused += 1
            self._listener._reject("relay")
            return f"554 5.7.1 <{_clean(addr.value, 300)}>: Relay access denied"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        listener = self._listener
        content = envelope.original_content or b""
        message_id = new_message_id()
        try:
            sender = None if envelope.mail_from == "<>" else self._address(envelope.mail_from)
            recipients = tuple(self._address(r) for r in envelope.rcpt_tos)
            trace = self._received(server, session, envelope, message_id)
            message = NewMessage(
                sender=sender, recipients=recipients, content=trace + content, id=message_id
            )
        except (AddressError, MessageError) as exc:
            listener._reject("invalid_message")
            return f"554 5.6.0 Message refused: {_clean(str(exc))}"
        try:
            result = await listener._submit_shielded(message)
        except Exception as exc:
            log.warning("submission from %s not queued: %r", session.peer, exc)
            listener._reject("submit_failed")
            return (
                f"451 4.3.0 Message not queued ({_clean(type(exc).__name__, 40)}); try again later"
            )
        listener._count("accepted")
        queued = getattr(result, "id", None)
        return f"250 2.0.0 OK queued as {_clean(str(queued or message_id), 64)}"

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error", exc_info=error)
        return "451 4.3.0 Internal error; try again later"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        users = self._listener.config.users
        ok = False
        login = ""
        if isinstance(data, LoginPassword):
            login = data.login.decode("utf-8", "replace")
            expected = users.get(login)
            # compare_digest on equal-type bytes; an unknown user costs the same time.
            ok = hmac.compare_digest(
                (expected if expected is not None else "\x00unknown").encode("utf-8"),
                data.password,
            ) and (expected is not None)
        if not ok:
            self._listener._reject("auth_failed")
            log.info("AUTH %s failed for %r from %s", mechanism, login, session.peer)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=login)

    # -- helpers ----------------------------------------------------------------------
    def _address(self, value: str | None) -> Address:
        if not value:
            raise AddressError("empty address")
        addr = Address(self._listener.config.default_address_type, value)
        local, at, domain = value.rpartition("@")
        if not at or not local or not domain:
            raise AddressError(f"{value!r} is not of the form user@domain")
        if len(value) > 254:
            raise AddressError(f"address is {len(value)} octets long; the limit is 254")
        return addr

    def _may_relay(self, session: Session) -> bool:
        if session.authenticated:
            return True
        peer: Any = session.peer
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self._networks)

    def _is_local(self, value: str) -> bool:
        domain = value.rpartition("@")[2].lower().rstrip(".")
        return domain in self._listener.config.local_domains

    def _received(
        self, server: SMTP, session: Session, envelope: Envelope, message_id: str
    ) -> bytes:
        peer: Any = session.peer
        ip = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        helo = re.sub(r"[^A-Za-z0-9.:_\[\]-]", "", session.host_name or "")[:255] or "unknown"
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if session.ssl is not None:
            protocol += "S"
        if session.authenticated:
            protocol += "A"
        lines = [
            f"Received: from {helo} ([{_clean(str(ip), 64)}])",
            f"\tby {_clean(server.hostname, 255)} (spoolbox) with {protocol} id {message_id}",
        ]
        if len(envelope.rcpt_tos) == 1:  # never list several: that would disclose Bcc
            lines.append(f"\tfor <{envelope.rcpt_tos[0]}>;")
        else:
            lines[-1] += ";"
        lines.append(f"\t{formatdate(localtime=True)}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class SubmissionListener:
    """An SMTP submission listener that queues through ``submit``.

    ``submit`` is ``spooler.submit`` (or anything with its signature that returns only
    after a durable commit); its result's ``id`` attribute, if any, is quoted in the
    ``250`` reply.
    """

    def __init__(self, submit: Submit, config: ListenerConfig) -> None:
        self._submit = submit
        self.config = config
        self._handler = _Handler(self)
        self._server: asyncio.Server | None = None
        self._hostname = config.hostname or socket.gethostname() or "localhost"
        self._tls: ssl.SSLContext | None = None
        self._connections: set[_SMTP] = set()
        self._submits: set[asyncio.Future[object]] = set()
        self._stats: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        where = f"{self.config.host}:{self.port}" if self._server else "not started"
        return f"<SubmissionListener {where}>"

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Bind and start serving; raises :class:`OSError` naming the address on failure."""
        if self._server is not None:
            raise RuntimeError(f"{self!r} is already started")
        cfg = self.config
        if cfg.tls_cert:
            try:
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise OSError(f"cannot load the TLS certificate {cfg.tls_cert}: {exc}") from exc
            self._tls = ctx
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._protocol, host=cfg.host, port=cfg.port, reuse_address=True
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot listen for SMTP on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
                + (" (is another server using the port?)" if exc.errno == 98 else ""),
            ) from exc
        log.info("SMTP submission listener on %s:%d", cfg.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop accepting; let transactions in progress end (up to ``grace`` seconds,
        ``config.shutdown_grace`` by default); wait for started submissions; then answer
        ``421`` to the remaining clients and close.  Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.shutdown_grace if grace is None else grace)
        while loop.time() < deadline and any(c.in_transaction for c in self._connections):
            await asyncio.sleep(0.02)
        if self._submits:
            # A submission that started completes (or fails) before the store closes.
            await asyncio.wait(set(self._submits), timeout=max(0.0, deadline - loop.time()))
        tasks: list[asyncio.Task[None]] = []
        for conn in list(self._connections):
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                with contextlib.suppress(Exception):
                    assert isinstance(transport, asyncio.WriteTransport)
                    transport.write(b"421 4.3.2 Service shutting down, closing the connection\r\n")
                transport.close()
            task = conn._handler_coroutine
            if task is not None:
                tasks.append(task)
        self._connections.clear()
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=1.0)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still)
        for sub in list(self._submits):
            sub.cancel()
        if self._submits:
            await asyncio.wait(set(self._submits))
        await server.wait_closed()
        log.info("SMTP submission listener stopped")

    async def __aenter__(self) -> SubmissionListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def statistics(self) -> dict[str, int]:
        """``connections``, ``accepted``, ``rejected`` (total) and ``rejected_<reason>``
        for each of :data:`REJECT_REASONS`; ``active`` is the connections open now."""
        out = {"connections": 0, "accepted": 0, "rejected": 0}
        out.update({f"rejected_{r}": 0 for r in REJECT_REASONS})
        out.update(self._stats)
        out["active"] = len(self._connections)
        return out

    # -- internals --------------------------------------------------------------------
    def _count(self, key: str) -> None:
        self._stats[key] += 1

    def _reject(self, reason: str) -> None:
        self._stats["rejected"] += 1
        self._stats[f"rejected_{reason}"] += 1

    def _protocol(self) -> _SMTP:
        cfg = self.config
        proto = _SMTP(
            self,
            self._handler,
            data_size_limit=None,  # SIZE is advertised and enforced by us (552 5.3.4)
            enable_SMTPUTF8=False,
            decode_data=False,
            hostname=self._hostname,
            ident="spoolbox ESMTP",
            tls_context=self._tls,
            timeout=cfg.idle_timeout,
            auth_required=False,  # enforced at MAIL by the handler (530 5.7.0)
            auth_require_tls=not cfg.allow_plain_auth,
            authenticator=self._handler.authenticate,
            loop=asyncio.get_running_loop(),
        )
        self._connections.add(proto)
        self._count("connections")
        return proto

    async def _submit_shielded(self, message: NewMessage) -> object:
        """Run submit so that a client dropping mid-commit does not cancel it."""
        started = time.monotonic()
        task: asyncio.Future[object] = asyncio.ensure_future(self._submit(message))
        self._submits.add(task)
        task.add_done_callback(self._submit_done)
        result = await asyncio.shield(task)
        log.debug("queued %s in %.3fs", message.id, time.monotonic() - started)
        return result

    def _submit_done(self, task: asyncio.Future[object]) -> None:
        self._submits.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the handler reports it, or it is logged there
