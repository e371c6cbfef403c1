"""The SMTP submission listener: any program that speaks SMTP can queue mail.

An :class:`asyncio.Protocol` served with ``loop.create_server`` on the running loop,
around the pure SMTP state machine of :mod:`spoolbox.smtp.server`.  That module
says why we do not use aiosmtpd's protocol class here (in the relay benchmark's profile
its per-connection introspection, one ``send`` per reply line, address parsing through
``email._header_value_parser`` and per-line reads of DATA took 28.8% of the event-loop
thread); aiosmtpd stays what the tests use as a peer.  This module does the I/O and the
policy: one ``transport.write`` per batch of replies, reading paused while a submission
is pending or while the client does not read its replies, the idle timeout, STARTTLS
through ``loop.start_tls``, the credentials check, relay control and the submission.
Under ``tls = "implicit"`` the listener accepts connections itself and hands each one,
once admitted by the connection limits, to ``loop.connect_accepted_socket`` for its
handshake (a server with ``ssl=`` would make the handshake before the limits see it).

The rules, from DESIGN.md section 4:

* DATA is answered ``250`` only after ``await submit(message)`` returned, i.e. after
  the spooler's durable commit.  If submit raises, the answer is ``451 4.3.0`` and
  never ``250``.  A submit that started is not cancelled when the client drops (it runs
  in its own task, awaited by :meth:`SubmissionListener.stop`): the store sees whole
  submissions only; delivery is at least once.
* Limits: message size (SIZE advertised; ``552 5.3.4``), recipients per transaction
  (``452 4.5.3``), text line length (``554 5.6.0`` naming the line), and no NUL byte,
  bare CR or bare LF in DATA (``554 5.6.0``; a bare line break is how SMTP smuggling
  hides a second message from the next hop).
* Loops: a message that comes with :data:`MAX_HOPS` (50) ``Received:`` lines or more
  has been round a mail loop (RFC 5321 section 6.3): ``554 5.4.6``.
* Relay control: a client that is neither authenticated nor in ``relay_networks`` may
  only name recipients in ``local_domains`` (``554 5.7.1 relay access denied``), and
  none whose local part routes elsewhere (``%``, ``@`` or ``!``, quoted or not: see
  :func:`_routed_local_part`).
* Addresses are checked as :class:`~spoolbox.model.Address` values (no control
  characters: a CR, LF or NUL in MAIL FROM or RCPT TO is refused with ``553``).
* A ``Received:`` trace line (RFC 5321 section 4.4) goes on top of the content.
* Malformed MIME is accepted as-is: the spooler relays bytes.  8-bit content is
  accepted (8BITMIME is advertised; SMTPUTF8 too, unless ``smtputf8`` is off).
* DSN (RFC 3461, unless ``dsn`` is off): ``NOTIFY=`` on RCPT becomes the message's
  :class:`~spoolbox.model.Notify` (``NEVER``: no report at all), ``RET=`` how much of
  it a report returns, ``ENVID=`` its envelope id (echoed in reports, passed on with
  NOTIFY and RET to a next hop that offers DSN).  NOTIFY is one per message in the
  store: a transaction whose recipients ask for different NOTIFYs is queued as one
  message per NOTIFY, all committed together (``submit_many``; the ``250`` names
  them all).  Without ``submit_many``, a recipient whose NOTIFY differs from the
  transaction's first gets ``452 4.5.3`` (the client sends it in another
  transaction, as after a recipient limit).  ``ORCPT=`` is kept with its recipient
  (``NewMessage.original_recipients``): reports name it (``Original-Recipient``) and
  the smtp transport passes it on; an address that stands for another one here
  (root@localhost) keeps the address as given as its original when none was given.
* A client silent for ``idle_timeout`` seconds gets ``421 4.4.2`` and is disconnected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import hmac
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import formatdate
from typing import Any, Final, cast

from ..model import (
    Address,
    AddressError,
    MessageError,
    NewMessage,
    Notify,
    default_hostname,
    new_message_id,
    smtp_value_error,
)
from ..model.message import with_originals
from ..smtp import xtext
from ..smtp.server import (
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    MailFrom,
    MessageData,
    RcptTo,
    Refused,
    ServerMachine,
    ServerSettings,
    StartTLS,
)
from .config import ListenerConfig
from .local_names import LocalNames

__all__ = [
    "MAX_HOPS",
    "ListenerConfig",
    "SubmissionListener",
    "host_port",
    "listen_socket",
    "received_lines",
]

log = logging.getLogger("spoolbox.ingress")

Submit = Callable[[NewMessage], Awaitable[object]]
#: Commits several messages in one transaction (all or none), each result with an ``id``.
SubmitMany = Callable[[list[NewMessage]], Awaitable[Sequence[object]]]
#: Why a recipient cannot be routed (refused at RCPT with 550 5.1.2), or None.
RecipientCheck = Callable[[Address], str | None]

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
    "unroutable",  # RCPT to an address no transport serves (550 5.1.2)
    "no_recipients",  # DATA after every RCPT was refused
    "invalid_message",  # NewMessage refused the submission
    "submit_failed",  # submit raised: 451
    "store_full",  # no room for the message on the store's disk: 452 4.3.1
    "connection_limit",  # max_connections open already: 421 at the greeting
    "client_connection_limit",  # max_connections_per_client from its address: 421
    "too_many_hops",  # MAX_HOPS Received: lines or more already: a mail loop, 554 5.4.6
    "notify_differs",  # RCPT whose NOTIFY= differs (no submit_many): 452 4.5.3
)

#: The longest a TLS handshake may take (STARTTLS's, or an implicit-TLS connection's
#: first), shorter when ``idle_timeout`` is: asyncio's own default.
HANDSHAKE_TIMEOUT = 60.0

#: A message that comes with this many ``Received:`` lines or more has been round a
#: loop (RFC 5321 section 6.3): refused, as Postfix's ``hopcount_limit`` (50).
MAX_HOPS = 50
_RECEIVED_RE = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


#: Routing operators in a local part: ``user%host``, ``user@host`` (also quoted:
#: ``"user@host"@local``) and the bang path ``host!user``.
_ROUTING = frozenset("@%!")
#: How many peer addresses' relay_networks verdicts a listener keeps at most.
_VERDICTS_KEPT = 4096


def received_lines(content: bytes) -> int:
    """How many ``Received:`` lines the header of ``content`` has (its first lines, up
    to the first empty one)."""
    if content.startswith(b"\r\n"):
        return 0  # an empty header
    end = content.find(b"\r\n\r\n")
    head = content if end == -1 else content[: end + 2]
    return len(_RECEIVED_RE.findall(head))


def _routed_local_part(address: str) -> bool:
    """Whether ``address`` (``local@domain`` as given in RCPT TO) routes through its
    local part: ``victim%far.example@local.test``, ``victim@far.example@local.test``,
    ``"victim@far.example"@local.test`` or ``far.example!victim@local.test``.  A next hop
    that honours the percent hack, a bang path or a quoted address would forward such
    mail to the host in the local part; Postfix refuses them from untrusted clients
    (``allow_untrusted_routing = no``) for that reason.  Quoting hides nothing: the
    characters are looked for in the local part as written, quotes and backslashes
    included."""
    local = address.rpartition("@")[0]
    return not _ROUTING.isdisjoint(local)


# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_FAILURE_ONLY: Final = Notify.FAILURE


def _notify_of(params: tuple[tuple[str, str | None], ...]) -> Notify:
    """The reports a recipient's ``NOTIFY=`` asks for (the server machine checked it);
    without one, the default: failures only."""
    value = dict(params).get("NOTIFY")
    return _FAILURE_ONLY if value is None else Notify.from_text(value)


def _original_of(params: tuple[tuple[str, str | None], ...]) -> str | None:
    """A recipient's ``ORCPT=`` as kept: its type, ``;``, the address with the xtext
    decoded (the server machine checked it), or None."""
    value = dict(params).get("ORCPT")
    if value is None:
        return None
    kind, _, rest = value.partition(";")
    decoded = xtext.decode(rest)
    return None if decoded is None else f"{kind};{decoded}"


def _by_notify(
    event: MessageData, listener: SubmissionListener
) -> list[tuple[Notify, tuple[Address, ...], tuple[tuple[Address, str], ...]]]:
    """The transaction's recipients (each as what it stands for here: root@localhost is
    root's mailbox) grouped by the NOTIFY each asked for, in the order of first
    appearance; a recipient named twice stays in its first group only.  With each
    group, its recipients' original addresses (RFC 3461 ORCPT): the one the client
    gave, else the address as given where it stands for another one here."""
    params = event.recipient_params or ((),) * len(event.recipients)
    groups: dict[Notify, tuple[list[Address], list[tuple[Address, str]]]] = {}
    seen: set[Address] = set()
    for rcpt, rcpt_params in zip(event.recipients, params, strict=True):
        group, originals = groups.setdefault(_notify_of(rcpt_params), ([], []))
        given = listener._address(rcpt)
        for address, original in with_originals(
            listener._here(given), given, _original_of(rcpt_params)
        ):
            if address not in seen:
                seen.add(address)
                group.append(address)
                if original is not None:
                    originals.append((address, original))
    return [
        (notify, tuple(rcpts), tuple(originals))
        for notify, (rcpts, originals) in groups.items()
        if rcpts
    ]


def _store_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the store's :class:`~spoolbox.store.StoreFull` (by name: this
    package imports nothing of the store's)."""
    return exc is not None and any(c.__name__ == "StoreFull" for c in type(exc).__mro__)


def host_port(host: str, port: object) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:2525``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address_literal(ip: str) -> str:
    """A peer's address as RFC 5321 writes it in brackets: ``IPv6:`` before an IPv6
    one (``[IPv6:::1]``), as Postfix's Received lines do."""
    return f"IPv6:{ip}" if ":" in ip else ip


def _clean(text: str, limit: int = 160) -> str:
    """Text safe to put in a reply line: printable ASCII, no line breaks, bounded."""
    if text.isascii() and text.isprintable():
        return text[:limit]  # (nothing to replace: a message id, every message)
    out = "".join(c if " " <= c <= "~" else "?" for c in text)
    return out[:limit]


def listen_socket(host: str, port: int, *, backlog: int = 100) -> socket.socket:
    """A TCP socket listening on ``host:port`` (the first address ``host`` resolves
    to), for listener processes to share; raises :class:`OSError` naming the address."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise _listen_error(host, port, exc) from exc
    return sock


def _listen_error(host: str, port: int, exc: OSError) -> OSError:
    return OSError(
        exc.errno,
        f"cannot listen for SMTP on {host_port(host, port)}: {exc.strerror or exc}"
        + (" (is another server using the port?)" if exc.errno == errno.EADDRINUSE else ""),
    )


_SHUTDOWN = "421 4.3.2 Service shutting down, closing the connection"
_INTERNAL = "451 4.3.0 Internal error; try again later"
#: No room on the store's disk, at MAIL (SIZE=) or after the data (RFC 3463 X.3.1).
_NO_ROOM = "452 4.3.1 Insufficient system storage; try again later"
#: The listener says at most this often (seconds) that it refused MAIL for room, or a
#: connection for a limit (each kind counted in its statistics all the same).
_WARN_INTERVAL = 60.0


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The RFC 5322 date of the Received header, formatted once a second (formatting
    it was a few per cent of a listener process's time under load)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, localtime=True))
    return _date_cache[1]


class _Connection(asyncio.Protocol):
    """One client: feeds the state machine, answers its events, writes its replies."""

    def __init__(self, listener: SubmissionListener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self.machine = ServerMachine(listener._settings, tls_active=listener._implicit)
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self._last = 0.0  # loop time of the last activity (the idle clock)
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False  # the client does not read its replies
        self._eof = False  # the client half-closed: close once nothing is pending
        self._reading_paused = False
        self._handshaking = False  # a TLS handshake is under way on self.transport
        #: Whether the peer's address is in relay_networks (None: not looked up yet).
        self.in_relay_networks: bool | None = None
        #: The address this connection counts against max_connections_per_client.
        self.counted_as: str | None = None
        #: The NOTIFY of this transaction's first accepted recipient (None: none yet),
        #: kept only where a transaction is one message (no submit_many).
        self.notify: Notify | None = None

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A duck-typed transport: uvloop's are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        listener = self._listener
        if not listener._implicit:
            self.peer = transport.get_extra_info("peername")
            listener._count("connections")
            refusal = listener._admit(self)
            if refusal is not None:  # before anything of the session: no timer, no set
                self.transport.write(refusal.encode())
                self.transport.close()
                self.machine.close()
                return
            listener._connections.add(self)
        # (tls = "implicit": admitted before its handshake, SubmissionListener._accept;
        # this is the TLS transport, the handshake made.)
        log.debug("SMTP connection from %s", self.peer)
        self._last = self._loop.time()
        self._timer = self._loop.call_later(listener.config.idle_timeout, self._on_idle)
        self.transport.write(self.machine.data_to_send())

    def data_received(self, data: bytes) -> None:
        self.machine.receive_data(data)
        if not self._handshaking:  # (after it: _upgrade runs what came meanwhile)
            self._run()

    def eof_received(self) -> bool:
        # The client has finished sending.  With a submission pending, keep the
        # connection half open to answer it (and what was pipelined after it), then
        # close; otherwise close now.  (Half-open does not exist under TLS.)
        self._eof = True
        return self.machine.pending is not None and not self.machine.tls_active

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        """The connection is closed: it counts towards the limits no more.  (Also after
        a failed handshake, which does not always reach :meth:`connection_lost`.)"""
        self.transport = None
        if self in self._listener._connections:
            self._listener._connections.discard(self)
            self._listener._leave(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.machine.close()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- the dialogue -----------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self.machine.in_transaction

    def _run(self) -> None:
        """Process what the machine can, answer its events, write the replies at once."""
        machine = self.machine
        listener = self._listener
        activity = machine.activity
        while True:
            event = machine.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            try:
                if isinstance(event, MailFrom):
                    machine.respond(listener._mail(self, event))
                elif isinstance(event, RcptTo):
                    machine.respond(listener._rcpt(self, event))
                elif isinstance(event, Refused):
                    listener._reject(event.reason)
                elif isinstance(event, MessageData):
                    reply = self._start_submit(event)
                    if reply is not None:
                        machine.respond(reply)
                elif isinstance(event, AuthCredentials):
                    machine.respond(listener._authenticate(self, event))
                elif isinstance(event, StartTLS):
                    self._start_tls()
            except Exception:
                log.exception("SMTP session error with %s", self.peer)
                if machine.pending is event and not isinstance(event, StartTLS):
                    machine.respond(_INTERNAL)
        if machine.activity != activity:
            self._last = self._loop.time()
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        out = self.machine.data_to_send()
        if transport is None or transport.is_closing():
            return
        if out:
            transport.write(out)
        if self.machine.closing or (self._eof and self.machine.pending is None):
            transport.close()
        else:
            self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or isinstance(self.machine.pending, StartTLS):
            return
        pause = self._write_paused or self.machine.pending is not None
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _on_idle(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        idle = self._listener.config.idle_timeout
        now = self._loop.time()
        due = self._last + idle
        if self.machine.pending is not None:  # our turn, not the client's
            due = now + idle
        if now < due:
            self._timer = self._loop.call_at(due, self._on_idle)
            return
        log.info("SMTP client %s idle for %.0fs: disconnected", self.peer, idle)
        self.machine.close(f"421 4.4.2 {self._listener._hostname} Error: timeout exceeded")
        self._flush()

    def shutdown(self) -> None:
        """``421`` and close (the listener stops); closed without a word during a TLS
        handshake (the reply could not be read)."""
        if self._handshaking and self.transport is not None:
            self.transport.close()
            self._gone()
            return
        self.machine.close(_SHUTDOWN)
        self._flush()

    # -- DATA -------------------------------------------------------------------------
    def _start_submit(self, event: MessageData) -> str | None:
        """Start the submission; a reply now if the message is refused before it."""
        listener = self._listener
        hops = received_lines(event.content)
        if hops >= MAX_HOPS:
            listener._reject("too_many_hops")
            log.warning(
                "message from %s refused: %d Received: lines (a mail loop?)", self.peer, hops
            )
            return f"554 5.4.6 Too many hops ({hops} Received: lines): a mail loop?"
        try:
            sender = listener._address(event.sender) if event.sender else None
            mail = dict(event.params)
            ret = mail.get("RET")
            envid = mail.get("ENVID")
            messages = []
            for notify, rcpts, originals in _by_notify(event, listener):
                message_id = new_message_id()
                messages.append(
                    NewMessage(
                        sender=sender,
                        recipients=rcpts,
                        content=listener._received(self, event, message_id) + event.content,
                        id=message_id,
                        notify=notify,
                        envelope_id=None if envid is None else xtext.decode(envid),
                        return_content=None if ret is None else ret == "FULL",
                        original_recipients=originals,
                    )
                )
        except (AddressError, MessageError) as exc:
            listener._reject("invalid_message")
            return f"554 5.6.0 Message refused: {_clean(str(exc))}"
        if not messages:  # (DATA comes after an accepted RCPT: a guard, not a path)
            listener._reject("invalid_message")
            return "554 5.5.1 Error: no valid recipients"
        message_id = ", ".join(m.id for m in messages)
        # Its own task, never cancelled by the client dropping: the store sees whole
        # submissions only.  stop() waits for it.
        task: asyncio.Future[object] = asyncio.ensure_future(
            listener._submit(messages[0])
            if len(messages) == 1 or listener._submit_many is None
            else listener._submit_many(messages)
        )
        listener._submits.add(task)
        task.add_done_callback(functools.partial(self._submitted, message_id))
        return None

    def _submitted(self, message_id: str, task: asyncio.Future[object]) -> None:
        listener = self._listener
        listener._submits.discard(task)
        if task.cancelled():
            reply = "451 4.3.0 Message not queued (shutting down); try again later"
            listener._reject("submit_failed")
        elif _store_full(exc := task.exception()):
            log.warning(
                "submission from %s not queued: the store's disk is full: %s", self.peer, exc
            )
            listener._reject("store_full")
            reply = _NO_ROOM
        elif exc is not None:
            log.warning("submission from %s not queued: %r", self.peer, exc)
            listener._reject("submit_failed")
            reply = (
                f"451 4.3.0 Message not queued ({_clean(type(exc).__name__, 40)}); try again later"
            )
        else:
            listener._count("accepted")
            result = task.result()
            results = result if isinstance(result, list | tuple) else [result]  # submit_many's
            ids = [getattr(r, "id", None) for r in results]
            queued = ", ".join(str(i) for i in ids) if all(ids) else message_id
            log.debug("SMTP message from %s queued as %s", self.peer, queued)
            reply = f"250 2.0.0 OK queued as {_clean(queued, 300)}"
        if isinstance(self.machine.pending, MessageData):
            self.machine.respond(reply)
            self._last = self._loop.time()
            self._run()

    # -- STARTTLS ---------------------------------------------------------------------
    def _start_tls(self) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(self.machine.data_to_send())  # the 220, in clear text
        transport.pause_reading()  # the client's handshake waits in the socket
        self._reading_paused = False  # start_tls resumes reading on its own
        self._handshaking = True
        task = self._loop.create_task(self._upgrade(transport))
        self._listener._tasks.add(task)
        task.add_done_callback(self._listener._tasks.discard)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        listener = self._listener
        certificate = listener._tls
        assert certificate is not None
        # The context of the moment is chosen at the client's hello (_Certificate._choose).
        ctx = certificate.context
        try:
            tls = await self._loop.start_tls(
                transport,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=listener._handshake_timeout,
            )
        except Exception as exc:  # a failed handshake ends this session only
            self._handshaking = False
            log.info("STARTTLS with %s failed: %s", self.peer, str(exc) or type(exc).__name__)
            transport.close()
            self._gone()
            return
        self._handshaking = False
        if tls is None or self.transport is None:
            return
        self.transport = tls  # (uvloop: not an asyncio.Transport subclass; do not assert)
        self.machine.tls_started()
        self._last = self._loop.time()
        self._run()


class _Certificate:
    """The listener's TLS context, made again when its certificate or key file changes.

    A renewal replaces the files in place (certbot points its ``live/`` links at new
    files; acme.sh writes over them), and the certificates of Let's Encrypt last 90
    days: a listener that kept the context it started with would serve an expired
    certificate within months.  Each handshake (STARTTLS, or the hello of a
    connection under ``tls = "implicit"``) looks at the files (a ``stat`` each, beside
    a handshake's milliseconds) and loads them again when one changed.  A
    change that does not load (a key that does not match yet, a file half written,
    one missing) keeps the context before it, said once in the log, and is tried
    again at the next change.
    """

    def __init__(self, cert: str, key: str | None) -> None:
        self.cert = cert
        self.key = key
        self._stamp = self._stamp_now()
        try:
            self.context = self._load()
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load the TLS certificate {cert}: {exc}") from exc
        self._refused: tuple[object, ...] | None = None

    def _stamp_now(self) -> tuple[object, ...]:
        """What changes when a file is replaced or written over (None: it is missing)."""
        stamps: list[object] = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamps.append(
                None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            )
        return tuple(stamps)

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.sni_callback = self._choose
        return ctx

    def _choose(self, tls: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: object) -> None:
        """At each handshake's hello (with or without a server name): the context now.
        For ``tls = "implicit"``, whose server made its handshakes with the context it
        started with, before our protocol hears of the connection."""
        now = self.context_now()
        if now is not ctx:
            tls.context = now

    def context_now(self) -> ssl.SSLContext:
        """The context for a handshake now: loaded again if a file changed since."""
        stamp = self._stamp_now()
        if stamp == self._stamp or stamp == self._refused:
            return self.context
        try:
            context = self._load()
        except (OSError, ssl.SSLError) as exc:
            self._refused = stamp
            log.error(
                "the TLS certificate %s (or its key) changed but does not load: %s; "
                "the certificate loaded before is still served",
                self.cert,
                exc,
            )
            return self.context
        self.context, self._stamp, self._refused = context, stamp, None
        log.info("the TLS certificate %s changed: loaded again", self.cert)
        return context


class SubmissionListener:
    """An SMTP submission listener that queues through ``submit``.

    ``submit`` is ``spooler.submit`` (or anything with its signature that returns only
    after a durable commit); its result's ``id`` attribute, if any, is quoted in the
    ``250`` reply.  ``check_recipient`` says why a recipient cannot be routed (the
    daemon's: :func:`spoolbox.routing.unroutable` on its routing table), or None;
    such a recipient is refused at RCPT TO with ``550 5.1.2`` and the others are
    accepted.  ``no_room(size)`` says why the store's disk has no room for a message
    of ``size`` bytes (MAIL's SIZE=, 0 without), or None if it has (the daemon's:
    :func:`spoolbox.store.space.room_check`); MAIL is then refused with ``452 4.3.1``.
    A submission the store refuses as full (``StoreFull``) gets ``452 4.3.1`` too.
    """

    def __init__(
        self,
        submit: Submit,
        config: ListenerConfig,
        *,
        check_recipient: RecipientCheck | None = None,
        no_room: Callable[[int], str | None] | None = None,
        local_names: LocalNames | None = None,
        submit_many: SubmitMany | None = None,
    ) -> None:
        self._submit = submit
        #: One transaction's recipients with different NOTIFYs: one message each.
        self._submit_many = submit_many
        #: The profile's [local_names]: a recipient at this host's own name
        #: (root@localhost) is what it stands for (MAILDIR:root, root's alias).
        self._local_names = local_names
        self._check_recipient = check_recipient
        self._no_room = no_room
        self._no_room_said = -_WARN_INTERVAL
        self._limit_said = -_WARN_INTERVAL
        self.config = config
        self._server: asyncio.Server | None = None
        #: tls = "implicit": the listening socket _accept takes connections from
        self._lsock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._hostname = config.hostname or default_hostname()
        self._tls: _Certificate | None = None
        #: tls = "implicit": every connection starts with the TLS handshake
        self._implicit = config.tls == "implicit"
        self._settings = self._server_settings()
        #: relay_networks' verdict by peer address (a client sends every message on a
        #: connection of its own, often from one address; parsing it was 3% of the
        #: listener's CPU a message), emptied when it holds _VERDICTS_KEPT.
        self._verdicts: dict[str, bool] = {}
        self._networks: list[_Network] = [
            ipaddress.ip_network(n, strict=False) for n in config.relay_networks
        ]
        self._connections: set[_Connection] = set()
        #: open connections by client address (only those outside relay_networks)
        self._per_client: collections.Counter[str] = collections.Counter()
        self._submits: set[asyncio.Future[object]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        where = host_port(self.config.host, self.port) if self._started else "not started"
        return f"<SubmissionListener {where}>"

    def _server_settings(self) -> ServerSettings:
        cfg = self.config
        return ServerSettings(
            hostname=self._hostname,
            max_message_size=cfg.max_message_size,
            max_line_length=cfg.max_line_length,
            max_recipients=cfg.max_recipients,
            ident="spoolbox ESMTP",
            tls_available=self._tls is not None,
            auth=bool(cfg.users),
            auth_without_tls=cfg.allow_plain_auth,
            smtputf8=cfg.smtputf8,
            dsn=cfg.dsn,
            chunking=cfg.chunking,
        )

    # -- lifecycle --------------------------------------------------------------------
    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Bind and start serving; raises :class:`OSError` naming the address on failure.

        With ``sock`` (a listening socket from :func:`listen_socket`), serve on it
        instead of binding: the listener processes of one listener share one socket.
        """
        if self._started:
            raise RuntimeError(f"{self!r} is already started")
        cfg = self.config
        if cfg.tls_cert:
            self._tls = _Certificate(cfg.tls_cert, cfg.tls_key)
            self._settings = self._server_settings()
        loop = asyncio.get_running_loop()
        if self._implicit:
            # tls = "implicit": connections are accepted here, admitted (counted
            # towards the limits), then make their handshake: _accept.
            lsock = sock if sock is not None else listen_socket(cfg.host, cfg.port)
            lsock.setblocking(False)
            self._lsock = lsock
            self._accepting = loop.create_task(self._accept(lsock))
            log.info("SMTP submission listener on %s", host_port(cfg.host, self.port))
            return
        try:
            if sock is not None:
                self._server = await loop.create_server(self._protocol, sock=sock)
            else:
                self._server = await loop.create_server(
                    self._protocol, host=cfg.host, port=cfg.port, reuse_address=True
                )
        except OSError as exc:
            raise _listen_error(cfg.host, cfg.port, exc) from exc
        log.info("SMTP submission listener on %s", host_port(cfg.host, self.port))

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._lsock is not None:
            return int(self._lsock.getsockname()[1])
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the listener is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def _handshake_timeout(self) -> float:
        """How long a TLS handshake may take: ``idle_timeout``, 60 s at most."""
        return min(self.config.idle_timeout, HANDSHAKE_TIMEOUT)

    @property
    def _started(self) -> bool:
        return self._server is not None or self._lsock is not None

    async def _accept(self, lsock: socket.socket) -> None:
        """``tls = "implicit"``: accept, admit (the limits count a connection from
        here, its handshake included), then the handshake in a task of its own.  A
        connection over a limit is closed at once: no handshake is spent on it, and
        a 421 in clear text could not be read by a client that speaks TLS first."""
        loop = asyncio.get_running_loop()
        said = -_WARN_INTERVAL
        while True:
            try:
                sock, peer = await loop.sock_accept(lsock)
            except OSError as exc:  # out of file descriptors, mostly: try again soon
                if time.monotonic() - said >= _WARN_INTERVAL:  # (once a minute)
                    said = time.monotonic()
                    log.warning("SMTP listener cannot accept a connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn = _Connection(self)
            conn.peer = peer
            self._count("connections")
            if self._admit(conn) is not None:
                sock.close()
                conn.machine.close()
                continue
            self._connections.add(conn)
            task = loop.create_task(self._handshake(conn, sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: _Connection, sock: socket.socket) -> None:
        """An admitted connection's TLS handshake (``tls = "implicit"``), with the
        certificate of the moment, at most ``min(idle_timeout, 60)`` seconds; its
        session (``conn.connection_made``) starts under TLS."""
        assert self._tls is not None
        made = False
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=self._tls.context,
                ssl_handshake_timeout=self._handshake_timeout,
            )
            made = True
        except Exception as exc:  # a failed handshake ends this connection only
            log.info("TLS handshake with %s failed: %s", conn.peer, str(exc) or type(exc).__name__)
        finally:
            if not made:  # (failed, or the listener stops): its place is free again
                sock.close()
                conn._gone()

    async def stop(self, *, grace: float | None = None) -> None:
        """Stop accepting; let transactions in progress end (up to ``grace`` seconds,
        ``config.shutdown_grace`` by default); wait for started submissions; then answer
        ``421`` to the remaining clients and close.  Idempotent."""
        server, self._server = self._server, None
        lsock, self._lsock = self._lsock, None
        accepting, self._accepting = self._accepting, None
        if server is None and lsock is None:
            return
        if server is not None:
            server.close()
        if accepting is not None:
            accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await accepting
        if lsock is not None:
            lsock.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.shutdown_grace if grace is None else grace)
        while loop.time() < deadline and any(c.in_transaction for c in self._connections):
            await asyncio.sleep(0.02)
        if self._submits:
            # A submission that started completes (or fails) before the store closes.
            await asyncio.wait(set(self._submits), timeout=max(0.0, deadline - loop.time()))
        for conn in list(self._connections):
            conn.shutdown()
        self._connections.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for sub in list(self._submits):
            sub.cancel()
        if self._submits:
            await asyncio.wait(set(self._submits))
        if server is not None:
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
        log.debug("SMTP refused: %s", reason)
        self._stats["rejected"] += 1
        self._stats[f"rejected_{reason}"] += 1

    def _protocol(self) -> _Connection:
        return _Connection(self)

    def session(self) -> asyncio.Protocol:
        """The protocol of one client on a transport the caller makes: the dialogue,
        policy and submission of a connection to the listening socket, without
        :meth:`start` (``sendmail -bs`` serves stdin and stdout with it).  Its peer is
        the transport's ``peername``."""
        return self._protocol()

    # -- the policy: what the state machine asks ----------------------------------------
    def _mail(self, conn: _Connection, event: MailFrom) -> str:
        if self.config.require_auth and not conn.machine.authenticated:
            self._reject("auth_required")
            return "530 5.7.0 Authentication required"
        if event.address:  # "" is the null sender
            try:
                self._address(event.address)
            except AddressError as exc:
                self._reject("bad_address")
                return f"553 5.1.7 Bad sender address: {_clean(str(exc))}"
        if self._no_room is not None and not self._room_for(conn, event):
            self._reject("store_full")
            return _NO_ROOM
        conn.notify = None  # a new transaction: its first recipient's NOTIFY rules it
        return "250 2.1.0 OK"

    def _room_for(self, conn: _Connection, event: MailFrom) -> bool:
        """Whether the store's disk has room for the message MAIL announces (its SIZE=,
        0 without; ``no_room`` decides).  Said in the log at most once a minute while
        there is none."""
        assert self._no_room is not None
        declared = next((v for k, v in event.params if k == "SIZE" and v), "0")
        why = self._no_room(int(declared))
        if why is None:
            return True
        now = time.monotonic()
        if now - self._no_room_said >= _WARN_INTERVAL:
            self._no_room_said = now
            log.warning(
                "MAIL from %s refused (452 4.3.1): %s; free space there (df -h) and mail "
                "flows again",
                conn.peer,
                why,
            )
        return False

    def _rcpt(self, conn: _Connection, event: RcptTo) -> str:
        try:
            addr = self._address(event.address)
        except AddressError as exc:
            self._reject("bad_address")
            return f"553 5.1.3 Bad recipient address: {_clean(str(exc))}"
        if not self._may_relay(conn) and (
            _routed_local_part(addr.value) or not self._is_local(addr.value)
        ):
            self._reject("relay")
            return f"554 5.7.1 <{_clean(addr.value, 300)}>: Relay access denied"
        problem = None
        if self._check_recipient is not None:
            for target in self._here(addr):  # root@localhost: where it goes
                problem = self._check_recipient(target)
                if problem is not None:
                    break
        if problem is not None:
            # RFC 3463 X.1.2, "bad destination system address": this address names a
            # destination nothing here can reach.  (X.1.1 would say the mailbox does
            # not exist, X.7.1 a policy refusal; 5.4.4 stays the router's code for a
            # route lost after acceptance.)  A permanent 550: retrying cannot help.
            self._reject("unroutable")
            return (
                f"550 5.1.2 <{_clean(addr.value, 300)}>: Recipient address rejected: "
                f"{_clean(problem, 300)}"
            )
        if self._submit_many is None:
            # One message per transaction, one NOTIFY per message in the store: a
            # recipient that asks for another goes in another transaction.
            notify = _notify_of(event.params)
            if conn.notify is None:
                conn.notify = notify
            elif notify != conn.notify:
                self._reject("notify_differs")
                return (
                    "452 4.5.3 This recipient's NOTIFY differs from the other recipients': "
                    "send it in another transaction"
                )
        return "250 2.1.5 OK"

    def _authenticate(self, conn: _Connection, event: AuthCredentials) -> str:
        users = self.config.users
        login = event.login.decode("utf-8", "replace")
        expected = users.get(login)
        # compare_digest on equal-type bytes; an unknown user costs the same time.
        ok = hmac.compare_digest(
            (expected if expected is not None else "\x00unknown").encode("utf-8"),
            event.password,
        ) and (expected is not None)
        if not ok:
            self._reject("auth_failed")
            log.info("AUTH %s failed for %r from %s", event.mechanism, login, conn.peer)
            return "535 5.7.8 Authentication credentials invalid"
        return "235 2.7.0 Authentication successful"

    def _address(self, value: str | None) -> Address:
        if not value:
            raise AddressError("empty address")
        addr = Address(self.config.default_address_type, value)
        problem = smtp_value_error(value, advice=False) if addr.type == "SMTP" else None
        if problem is not None:  # what Address.parse refuses (a space in a quoted local part)
            raise AddressError(problem)
        local, at, domain = value.rpartition("@")
        if not at or not local or not domain:
            raise AddressError(f"{value!r} is not of the form user@domain")
        if len(value) > 254:
            raise AddressError(f"address is {len(value)} octets long; the limit is 254")
        return addr

    def _here(self, addr: Address) -> tuple[Address, ...]:
        """A recipient's addresses: itself, or what an address at this host's own name
        stands for (``[local_names] host_names``: root@localhost is MAILDIR:root), as
        Postfix delivers mail for ``mydestination`` locally."""
        rule = self._local_names
        return rule.stands_for(addr) if rule is not None else (addr,)

    def _admit(self, conn: _Connection) -> str | None:
        """Whether a new connection may be served: None, or the 421 that ends it (too
        many open at once, or from its address; a client in relay_networks counts
        towards max_connections only).  Said in the log at most once a minute."""
        cfg = self.config
        if len(self._connections) >= cfg.max_connections:
            self._reject("connection_limit")
            self._say_limit(conn, f"{cfg.max_connections} connections open (max_connections)")
            return f"421 4.7.0 {self._hostname} Error: too many connections; try again later\r\n"
        host = conn.peer[0] if isinstance(conn.peer, tuple) and conn.peer else None
        if not isinstance(host, str):
            return None
        conn.in_relay_networks = self._in_relay_networks(conn.peer)  # (RCPT asks again)
        if conn.in_relay_networks:
            return None
        if self._per_client[host] >= cfg.max_connections_per_client:
            self._reject("client_connection_limit")
            self._say_limit(
                conn,
                f"{cfg.max_connections_per_client} connections open from {host} "
                "(max_connections_per_client)",
            )
            return (
                f"421 4.7.0 {self._hostname} Error: too many connections from "
                f"{_clean(host, 64)}; try again later\r\n"
            )
        self._per_client[host] += 1
        conn.counted_as = host
        return None

    def _leave(self, conn: _Connection) -> None:
        host = conn.counted_as
        if host is not None:
            left = self._per_client[host] - 1
            if left > 0:
                self._per_client[host] = left
            else:
                del self._per_client[host]

    def _say_limit(self, conn: _Connection, what: str) -> None:
        now = time.monotonic()
        if now - self._limit_said >= _WARN_INTERVAL:
            self._limit_said = now
            how = "closed before its TLS handshake" if self._implicit else "421"
            log.warning("connection from %s refused (%s): %s", conn.peer, how, what)

    def _may_relay(self, conn: _Connection) -> bool:
        if conn.machine.authenticated:
            return True
        if conn.in_relay_networks is None:  # once a connection, not at every RCPT
            conn.in_relay_networks = self._in_relay_networks(conn.peer)
        return conn.in_relay_networks

    def _in_relay_networks(self, peer: Any) -> bool:
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if not isinstance(host, str):
            return False
        verdict = self._verdicts.get(host)
        if verdict is None:
            if len(self._verdicts) >= _VERDICTS_KEPT:
                self._verdicts.clear()
            verdict = self._verdicts[host] = self._look_up(host)
        return verdict

    def _look_up(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self._networks)

    def _is_local(self, value: str) -> bool:
        domain = value.rpartition("@")[2].lower().rstrip(".")
        return domain in self.config.local_domains

    def _received(self, conn: _Connection, event: MessageData, message_id: str) -> bytes:
        machine = conn.machine
        peer = conn.peer
        ip = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        helo = re.sub(r"[^A-Za-z0-9.:_\[\]-]", "", machine.helo_name or "")[:255] or "unknown"
        # RFC 3848, and RFC 6531 section 4.3 for a transaction under SMTPUTF8.
        protocol = "UTF8SMTP" if machine.utf8 else "ESMTP" if machine.extended else "SMTP"
        if machine.tls_active:
            protocol += "S"
        if machine.authenticated:
            protocol += "A"
        lines = [
            f"Received: from {helo} ([{_clean(_address_literal(str(ip)), 72)}])",
            f"\tby {_clean(self._hostname, 255)} (spoolbox) with {protocol} id {message_id}",
        ]
        if len(event.recipients) == 1:  # never list several: that would disclose Bcc
            lines.append(f"\tfor <{event.recipients[0]}>;")
        else:
            lines[-1] += ";"
        lines.append(f"\t{_date_now()}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")
