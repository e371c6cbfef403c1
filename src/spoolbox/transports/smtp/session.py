"""One logon of the SMTP transport: a message's MAIL/RCPT/DATA transaction over a pooled
connection, the replies mapped to recipient results, the status row and counters."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from spoolbox.contract import (
    BaseTransportSession,
    FlushFlags,
    LogoffFlags,
    MessageCancelled,
    NetworkError,
    OptionError,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    SubmitFlags,
    Support,
    TransportNotifyFlags,
    ValidateFlags,
)
from spoolbox.model import Address, Notify
from spoolbox.smtp import xtext
from spoolbox.smtp.replies import Reply, enhanced_status, reply_text

from .._status import ReachabilityRow, results_text
from .connection import Connection
from .dane import TLSA, usable
from .failures import Failure, exception_failure, protocol_failure, reply_failure
from .mta_sts import Policy, PolicyFinder
from .mx import Hop, MXResolver, literal_address
from .pool import Pool
from .settings import SMTPSettings, dane_context, usable_helo

__all__ = ["ADDRESS_TYPE", "SMTPSession", "envelope_sender"]

ADDRESS_TYPE = "SMTP"
_CHUNK = 65536
#: Messages up to this size are read whole (``content()``); larger ones are streamed.
_WHOLE_LIMIT = 1 << 20
#: What cannot go into ``MAIL FROM:<...>`` or ``RCPT TO:<...>``.
_BAD_ADDRESS_RE = re.compile(r"[\s<>\x00-\x1f\x7f]")
#: A dot-atom local part (RFC 5321 section 4.1.2), ASCII: what a sender of another
#: address type (``MAILDIR:postmaster``) may be to be qualified with the host name.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
#: The longest address a path may hold (RFC 5321 section 4.5.3.1.3: 256 octets
#: with the angle brackets).
_PATH_MAX = 254
#: The idle connections are looked at this often at most (and at half the
#: ``idle_timeout`` when that is shorter): those unused for ``idle_timeout`` are
#: closed with QUIT, those the server closed are dropped, and the status row is
#: brought up to date (it said "connected" for as long as a connection the server
#: had closed stayed in the pool).
_SWEEP_EVERY = 5.0
#: Delivery "mx": a server that could not be used (no connection, a refusal at the
#: greeting, EHLO or TLS) is not tried again for this long: the next messages for its
#: domain go to its other servers, or wait, at once, instead of each spending the
#: connect timeout on it and holding a lane meanwhile (Postfix marks such a
#: destination dead the same way, for its minimal_backoff_time).
_MX_DEAD_FOR = 60.0
#: Delivery "mx": when the servers of this many domains could not even be connected
#: to since the last connection made to any server, the row says FAILURE and asks
#: whether this host's outgoing port is blocked (many cloud providers block 25):
#: one domain's servers being down is the domain's trouble, every domain's is ours.
_MX_BLOCKED_DOMAINS = 3


def envelope_sender(sender: Address | None, origin: str) -> str:
    """What goes into ``MAIL FROM:<...>`` for a message's sender.

    An SMTP address as it is; none (a delivery report) is the null sender ``<>``; an
    address of another type whose value is a plain local part (``MAILDIR:postmaster``,
    the default sender ``spoolbox init`` writes) is qualified with ``origin``, this
    host's mail name, as Postfix appends ``myorigin`` to a local sender and as
    ``spoolbox send`` shows it in From: ``postmaster@<hostname>``.  Anything else has
    no SMTP form and goes out as ``<>``.
    """
    if sender is None:
        return ""
    if sender.type == ADDRESS_TYPE:
        return sender.value
    if _LOCAL_PART_RE.fullmatch(sender.value):
        return f"{sender.value}@{origin}"
    return ""


class SMTPSession(BaseTransportSession):
    """One logon of the SMTP transport; see :mod:`spoolbox.transports.smtp`."""

    ADDRESS_TYPES: ClassVar[Collection[str]] = (ADDRESS_TYPE,)

    def __init__(
        self,
        support: Support,
        settings: SMTPSettings,
        tls_context: ssl.SSLContext | None,
        helo_name: str,
        mx: MXResolver | None = None,
        sts: PolicyFinder | None = None,
        verified_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(support)
        self.settings = settings
        self.concurrency = settings.max_connections
        self.destination_concurrency = settings.destination_concurrency
        self.destination_rate_delay = settings.destination_rate_delay
        self.pool = Pool(settings, tls_context, helo_name)
        #: Delivery "mx": the resolver, and a pool per server address (and TLS mode).
        self.mx = mx
        #: Delivery "mx": the domains' MTA-STS policies, and the context that verifies
        #: the MX hosts an ``enforce`` policy names.
        self.sts = sts
        self._verified_context = verified_context
        self._tls_context = tls_context
        self._helo = helo_name
        self._hop_pools: dict[tuple[str, str, str, tuple[TLSA, ...] | None], Pool] = {}
        self._dane_context = dane_context() if settings.dane else None
        #: With ``dane``: why DANE does not apply to any mail ("": nothing known against
        #: it), from the probe of the DNS servers made at the first delivery of a logon
        #: (and of a flush): see _probe_dnssec.
        self.dane_trouble = ""
        self._probe: asyncio.Task[None] | None = None
        self._opened_before = 0  # connections opened by the pools forgotten since
        self._sweeper: asyncio.Task[None] | None = None  # closes idle connections
        #: Server address -> (not tried again before, why), see _MX_DEAD_FOR.
        self._dead: dict[str, tuple[float, Failure]] = {}
        #: The servers (``conn.where``) that offered CHUNKING and answered BDAT as a
        #: command they do not know: sent with DATA from then on (this logon).
        self._no_bdat: set[str] = set()
        #: Messages a server took with BDAT (the status object's ``sent_with_bdat``).
        self.sent_with_bdat = 0
        #: Delivery "mx": domain -> why none of its servers took a TCP connection, for
        #: the domains tried since the last connection made (see _MX_BLOCKED_DOMAINS).
        self._unconnected: dict[str, str] = {}
        # Postfix's myorigin: a local sender (another address type) goes out as
        # local@<this host's mail name>; the EHLO name stands in for one that is not a
        # usable host name.
        origin = support.hostname
        self.origin = origin if usable_helo(origin) else helo_name
        self._origin_told = False
        self._cancelled: set[str] = set()
        self.counts = {"delivered": 0, "failed": 0, "deferred": 0, "messages": 0}
        self.last_error = ""
        #: Why the last connection could not be made or logged in ("" once one was):
        #: the row shows FAILURE while it is set (the spooler logs the change).
        self.unreachable = ""
        self._row = ReachabilityRow(support)

    def __repr__(self) -> str:
        where = "mx" if self.mx is not None else self.settings.where
        return f"<SMTPSession {where} tls={self.settings.tls}>"

    @property
    def t(self) -> Mapping[str, float]:
        return self.settings.timeouts

    @property
    def connections_opened(self) -> int:
        return self._opened_before + sum(p.opened for p in self._pools())

    def _pools(self) -> list[Pool]:
        return [self.pool, *self._hop_pools.values()]

    def _tell_origin(self, sender: str, mail_from: str) -> None:
        """Once a logon: a local sender went out under a host name that is not fully
        qualified (``vm``), which relays may refuse (Postfix: reject_non_fqdn_sender)."""
        self._origin_told = True
        if mail_from and "." not in self.origin:
            self.support.logger.warning(
                "smtp transport %r: the local sender %s goes out as MAIL FROM:<%s>, under "
                "a host name that is not fully qualified, which relays may refuse; set "
                "hostname in the profile (or send from an SMTP: address)",
                self.support.transport_name,
                sender,
                mail_from,
            )

    def describe(self) -> str:
        s = self.settings
        if self.mx is not None:
            dane = ", DANE" if s.dane else ""
            return f"delivering by MX lookup (port {s.port}, tls={s.tls}{dane})"
        auth = f", AUTH as {s.username}" if s.username else ""
        return f"relaying via {s.where} (tls={s.tls}{auth})"

    def status_object(self) -> Mapping[str, Any]:
        s = self.settings
        mx: dict[str, Any] = {} if self.mx is None else {"nameservers": self.mx.nameservers}
        if self.mx is not None:
            mx["mta_sts"] = self.sts is not None
            mx["dane"] = s.dane
            if self.dane_trouble:
                mx["dane_trouble"] = self.dane_trouble
            if self.sts is not None and self.sts.trouble:
                mx["mta_sts_trouble"] = dict(list(self.sts.trouble.items())[-10:])
        return {
            "delivery": s.delivery,
            "host": s.host,
            "port": s.port,
            "tls": s.tls,
            "verify": s.verify,
            **mx,
            "max_connections": s.max_connections,
            "chunking": s.chunking,
            "sent_with_bdat": self.sent_with_bdat,
            **(
                {"destination_concurrency": s.destination_concurrency}
                if s.destination_concurrency is not None
                else {}
            ),
            **(
                {"destination_rate_delay": s.destination_rate_delay}
                if s.destination_rate_delay is not None
                else {}
            ),
            "connections_open": sum(p.open_count for p in self._pools()),
            "connections_opened": self.connections_opened,
            **self.counts,
            "last_error": self.last_error,
        }

    def _update_status(self) -> None:
        if self.mx is not None:
            if len(self._unconnected) >= _MX_BLOCKED_DOMAINS:
                self._row.show(self._blocked_text(), unreachable=True)
                return
            alive = sum(p.alive_count for p in self._hop_pools.values())
            text = f"connected to {alive} mail server(s)" if alive else "idle"
            text += f", delivering by MX lookup, {self.counts['delivered']} sent"
            text += results_text(self.counts, self.last_error)
            self._row.show(f"{text}; {self.dane_trouble}" if self.dane_trouble else text)
            return
        where = self.settings.where
        if self.unreachable:
            # Every message is deferred until a connection is made: FAILURE, and why.
            self._row.show(f"cannot relay via {where}: {self.unreachable}", unreachable=True)
            return
        text = f"connected to {where}" if self.pool.any_alive else f"idle, relaying via {where}"
        text += f", {self.counts['delivered']} sent"
        self._row.show(text + results_text(self.counts, self.last_error))

    # -- ValidateState ------------------------------------------------------------------------
    async def validate_state(self, flags: ValidateFlags) -> None:
        """Can the smart host be reached now?  A connection is made (greeting, EHLO,
        STARTTLS and AUTH as configured), or an idle one checked with RSET, and kept
        in the pool for the next message; the status row says the result, as after a
        send.  A host that cannot be reached raises :class:`NetworkError` with why
        (``spoolbox check`` prints it).  Delivery "mx" connects nowhere; with
        ``dane``, DNS servers that answer without validating DNSSEC are the error
        (an :class:`OptionError` naming ``nameservers``: they cannot serve DANE)."""
        if self.mx is not None:
            # No one server to try: each domain's are found when there is mail for it
            # (the resolver was set up at logon).  With DANE, the resolver must validate
            # DNSSEC, or DANE never applies: said, not left to look "ok".
            if self.settings.dane and await self.mx.validates() is False:
                raise OptionError(
                    "nameservers",
                    f"cannot serve DANE (dane = true): {self._unvalidated()}; point "
                    "nameservers at a validating resolver (unbound), or set dane = false",
                    kind="smtp",
                )
            self._update_status()
            return
        ref = "\0validate_state"  # no message's reference
        try:
            conn = await self.pool.acquire(ref)
        except Failure as f:
            self.unreachable = f.text
            self._update_status()
            raise NetworkError(0, f.text.removeprefix("x-spoolbox; ")) from None
        self.unreachable = ""
        self.pool.release(ref, conn, True)
        self._sweep_later()
        self._update_status()

    async def flush_queues(self, flags: FlushFlags) -> None:
        """A flush is the user saying "now": delivery "mx" forgets the servers it
        holds back and the DNS answers it keeps (the user may just have fixed them),
        and with ``dane`` asks the DNS servers again whether they validate DNSSEC."""
        if flags & FlushFlags.UPLOAD and self.sts is not None:
            self.sts.forget_checks()
        if flags & FlushFlags.UPLOAD and self.mx is not None:
            self._dead.clear()
            self.mx.forget()
            if self._probe is not None and self._probe.done():
                self._probe = None  # the flush's first delivery probes again

    # -- DANE's resolver --------------------------------------------------------------------
    def _unvalidated(self) -> str:
        assert self.mx is not None
        return (
            f"the DNS server(s) {', '.join(self.mx.nameservers)} do not validate DNSSEC "
            "(their answer for the root zone's keys lacks the AD bit)"
        )

    def _probe_dnssec(self) -> None:
        """With ``dane``, at the first delivery of a logon (and of a flush): ask in the
        background whether the DNS servers validate DNSSEC, as Postfix's smtp client
        does when it starts (``dnssec_probe``).  DNS servers that answer without
        validating leave every domain without DANE: the mail still goes (as without
        DANE), so this is said, not an error: a warning, and the status row keeps it
        until a validated answer comes (:meth:`_validated`)."""
        if self._probe is None and self.mx is not None:
            self._probe = asyncio.get_running_loop().create_task(self._check_dnssec())

    async def _check_dnssec(self) -> None:
        assert self.mx is not None
        try:
            validates = await self.mx.validates()
        except Exception as exc:  # (validates says None for what DNS can do wrong)
            self.support.logger.debug("smtp transport: the DNSSEC probe failed: %r", exc)
            return
        if validates is False and not self.dane_trouble:
            self.dane_trouble = f"DANE does not apply: {self._unvalidated()}"
            self.support.logger.warning(
                "smtp transport %r: %s; mail goes as without DANE until they do: point "
                "nameservers at a validating resolver (unbound), or set dane = false",
                self.support.transport_name,
                self.dane_trouble,
            )
            self._update_status()
        elif validates is True:
            self._validated()

    def _validated(self) -> None:
        """A validated answer came: DANE applies again, if it was said not to."""
        if self.dane_trouble:
            self.dane_trouble = ""
            self.support.logger.info(
                "smtp transport %r: the DNS server(s) validate DNSSEC now: DANE applies",
                self.support.transport_name,
            )
            self._update_status()

    # -- notifications ------------------------------------------------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        if not flags & TransportNotifyFlags.CANCEL_MESSAGE or ref is None:
            return
        if any(pool.drop(ref) for pool in self._pools()):
            self._cancelled.add(ref)  # the send in progress fails at its next network await

    # -- outbound -------------------------------------------------------------------------------
    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        recipients = message.recipients
        if not recipients:
            return
        ref = message.ref
        results: dict[int, RecipientResult] = {}
        try:
            await self._send(message, recipients, results)
        except Failure as f:
            self._settle(recipients, results, f)
        finally:
            cancelled = ref in self._cancelled
            self._cancelled.discard(ref)
        if cancelled and not any(r.status.startswith("2") for r in results.values()):
            raise MessageCancelled(ref)
        ordered = [results[r.index] for r in recipients if r.index in results]
        await self.support.status_recips(message, ordered)
        self._count(ordered)

    def _settle(
        self,
        recipients: Sequence[OutboundRecipient],
        results: dict[int, RecipientResult],
        f: Failure,
        host: str | None = None,
    ) -> None:
        """Every recipient without a result yet gets the failure's; ``host`` is the
        server that answered (the smart host unless given)."""
        mta = f"dns; {host or self.settings.host}" if f.connected else None
        for r in recipients:
            if r.index in results:
                continue
            if f.status.startswith("5"):
                results[r.index] = RecipientResult.failed(
                    r, f.text, status=f.status, remote_mta=mta
                )
            else:
                results[r.index] = RecipientResult.deferred(
                    r, f.text, status=f.status, remote_mta=mta
                )

    def _count(self, results: Sequence[RecipientResult]) -> None:
        self.counts["messages"] += 1
        for res in results:
            self.counts[str(res.outcome)] += 1
            if not res.status.startswith("2"):
                self.last_error = res.diagnostic
        self._update_status()

    async def _send(
        self,
        message: OutboundMessage,
        recipients: Sequence[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> None:
        s = self.settings
        size = message.size
        if s.max_message_size is not None and size > s.max_message_size:
            raise Failure(
                "5.3.4",
                f"x-spoolbox; message of {size} bytes is over this transport's "
                f"max_message_size of {s.max_message_size} bytes",
            )
        sender = message.sender
        mail_from = envelope_sender(sender, self.origin)
        if sender is not None and sender.type != ADDRESS_TYPE and not self._origin_told:
            self._tell_origin(str(sender), mail_from)
        if _BAD_ADDRESS_RE.search(mail_from):
            raise Failure("5.1.7", f"x-spoolbox; sender {mail_from!r} cannot be used in MAIL FROM")
        todo: list[OutboundRecipient] = []
        for r in recipients:
            if _BAD_ADDRESS_RE.search(r.value):
                results[r.index] = RecipientResult.failed(
                    r, f"x-spoolbox; {r.value!r} cannot be used in RCPT TO", status="5.1.3"
                )
            else:
                todo.append(r)
        if not todo:
            return
        await self.support.spooler_yield()  # a cancel before we connect: MessageCancelled
        if self.mx is not None:
            await self._send_direct(message, mail_from, todo, results)
            return
        try:
            conn = await self.pool.acquire(message.ref)
        except Failure as f:
            self.unreachable = f.text  # connect, greeting, EHLO, TLS or AUTH
            raise
        self.unreachable = ""
        reusable = False
        try:
            reusable = await self._transaction(conn, message, mail_from, todo, results)
        finally:
            self.pool.release(message.ref, conn, reusable)
            self._sweep_later()

    # -- delivery "mx" ------------------------------------------------------------------------
    async def _send_direct(
        self,
        message: OutboundMessage,
        mail_from: str,
        todo: list[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> None:
        """One transaction per recipient domain, each with that domain's servers."""
        domains: dict[str, list[OutboundRecipient]] = {}
        for r in todo:
            local, at, domain = r.value.rpartition("@")
            if not at or not local or not domain:
                results[r.index] = RecipientResult.failed(
                    r, f"x-spoolbox; {r.value!r} has no domain to look up", status="5.1.3"
                )
                continue
            domains.setdefault(domain.lower(), []).append(r)
        for domain, group in domains.items():
            try:
                await self._to_domain(message, mail_from, domain, group, results)
            except Failure as f:
                self._settle(group, results, f)

    async def _to_domain(
        self,
        message: OutboundMessage,
        mail_from: str,
        domain: str,
        group: list[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> None:
        """``group``'s transaction with the first of ``domain``'s servers that takes the
        connection (greeting, EHLO, TLS); a :class:`Failure` when none does or DNS says
        no.  With tls "opportunistic" a server whose TLS fails is tried again without."""
        assert self.mx is not None
        if self.settings.dane:
            self._probe_dnssec()
        hops = await self.mx.hops(domain)
        if self.dane_trouble and any(h.secure for h in hops):
            self._validated()
        tries: tuple[str, ...] = (
            ("opportunistic", "none") if self.settings.tls == "opportunistic" else ()
        )
        policy = await self._enforced(domain, hops)
        if policy is not None:
            # MTA-STS: only the MX hosts the policy names, each over verified TLS.
            hops = tuple(h for h in hops if policy.matches(h.host))
            tries = ("verified",)
        failed: list[tuple[Hop, Failure]] = []
        for hop in hops:
            skipped = self._still_dead(hop)
            if skipped is not None:
                failed.append((hop, skipped))
                continue
            try:
                tlsa = await self._dane(hop, domain)
            except Failure as f:  # its TLSA records cannot be looked up: not used
                failed.append((hop, f))
                continue
            for tls in ("dane",) if tlsa is not None else tries or (self.settings.tls,):
                pool = self._hop_pool(hop, tls, tlsa)
                try:
                    conn = await pool.acquire(message.ref)
                except Failure as f:
                    failed.append((hop, f))
                    if tls == "opportunistic" and f.status.startswith("4.7."):
                        continue  # its TLS failed: the same server once more without
                    # A server that failed only the policy's verified TLS still takes
                    # the mail of domains without one: not held back for them.
                    if message.ref not in self._cancelled and (
                        tls not in ("verified", "dane") or not f.connected
                    ):
                        self._mark_dead(hop, f)
                    break  # the next server
                self._dead.pop(hop.address, None)
                self._connected(True, domain, failed)
                if conn.dane is not None:  # once a connection: DANE did its part
                    self.support.logger.info("%s: %s", conn.where, conn.dane)
                    conn.dane = None
                reusable = False
                try:
                    reusable = await self._transaction(conn, message, mail_from, group, results)
                except Failure as f:
                    self._settle(group, results, f, conn.host)
                finally:
                    pool.release(message.ref, conn, reusable)
                    self._sweep_later()
                return
            if message.ref in self._cancelled:
                break
        if message.ref not in self._cancelled:
            self._connected(False, domain, failed)
        how = "" if policy is None else f" as its MTA-STS policy asks ({policy.describe()})"
        raise _nowhere(domain, failed, how)

    async def _dane(self, hop: Hop, domain: str) -> tuple[TLSA, ...] | None:
        """With ``dane``: the usable TLSA records of ``hop`` (none usable: an empty
        tuple, TLS without a certificate check) when DNSSEC vouches for its MX record,
        addresses and TLSA records; None when DANE does not apply (:mod:`.dane`); a
        :class:`Failure` when the lookup failed."""
        if not self.settings.dane or not hop.secure or self.mx is None:
            return None
        records = await self.mx.tlsa(hop.host, self.settings.port, domain)
        return None if records is None else usable(records)

    async def _enforced(self, domain: str, hops: Sequence[Hop]) -> Policy | None:
        """``domain``'s MTA-STS policy when it is to be enforced (mode ``enforce``), else
        None; a :class:`Failure` (4.7.5, the mail waits) when it names none of the
        domain's MX hosts."""
        if self.sts is None or literal_address(domain) is not None:
            return None
        policy = await self.sts.policy(domain)
        if policy is None or policy.mode != "enforce":
            return None
        if not any(policy.matches(h.host) for h in hops):
            names = ", ".join(dict.fromkeys(h.host for h in hops))
            raise Failure(
                "4.7.5",
                f"x-spoolbox; no MX host of {domain} ({names}) is one its MTA-STS "
                f"policy names ({policy.describe()}): not sent, as the policy asks",
                connected=False,
            )
        return policy

    def _blocked_text(self) -> str:
        """The row's text while no domain's servers take a connection."""
        domains = list(self._unconnected)
        named = ", ".join(domains[-3:]) + (
            f" and {len(domains) - 3} more" if len(domains) > 3 else ""
        )
        last = self._unconnected[domains[-1]]
        return (
            f"cannot connect to the mail servers of {len(domains)} domains ({named}) since "
            f"the last connection made; is outgoing port {self.settings.port} blocked "
            f"here (many cloud providers block port 25)? The last, {last}"
        )

    def _connected(self, made: bool, domain: str, failed: Sequence[tuple[Hop, Failure]]) -> None:
        """Keep track of the domains none of whose servers took a TCP connection since
        one last did (``made``: a connection was made, whatever came of it)."""
        if made or any(f.connected for _, f in failed):
            self._unconnected.clear()
            return
        # (A DNS failure, such as a DANE host's TLSA lookup, is no connection tried.)
        failed = [(h, f) for h, f in failed if f.status != "4.4.3"]
        if failed:
            self._unconnected.pop(domain, None)  # (its place: the latest)
            why = failed[-1][1].text.removeprefix("x-spoolbox; ")
            self._unconnected[domain] = f"{domain}: {why}"
            if len(self._unconnected) > 100:
                del self._unconnected[next(iter(self._unconnected))]

    def _mark_dead(self, hop: Hop, why: Failure) -> None:
        now = time.monotonic()
        if len(self._dead) >= 1000:  # the servers of many domains failed: forget the past
            self._dead = {a: d for a, d in self._dead.items() if d[0] > now}
        self._dead[hop.address] = (now + _MX_DEAD_FOR, why)

    def _still_dead(self, hop: Hop) -> Failure | None:
        """Why ``hop`` is not tried now (it failed less than :data:`_MX_DEAD_FOR`
        seconds ago), or None."""
        dead = self._dead.get(hop.address)
        if dead is None:
            return None
        left = dead[0] - time.monotonic()
        if left <= 0:
            del self._dead[hop.address]
            return None
        why = dead[1]
        return Failure(
            why.status,
            f"{why.text} (not tried again for {left:.0f} s)",
            connected=why.connected,
        )

    def _hop_pool(self, hop: Hop, tls: str, tlsa: tuple[TLSA, ...] | None = None) -> Pool:
        """The connections to one server in one TLS mode: ``verified`` is STARTTLS
        required with the certificate verified for the MX host's name (MTA-STS);
        ``dane`` is STARTTLS required with the certificate matched against ``tlsa``
        (none: not checked)."""
        key = (hop.host, hop.address, tls, tlsa)
        pool = self._hop_pools.get(key)
        if pool is None:
            if tls == "dane":
                settings = replace(
                    self.settings,
                    host=hop.host,
                    address=hop.address,
                    tls="starttls",
                    verify=False,
                    tlsa=tlsa,
                )
                context: ssl.SSLContext | None = self._dane_context
            elif tls == "verified":
                settings = replace(
                    self.settings, host=hop.host, address=hop.address, tls="starttls", verify=True
                )
                context = self._verified_context
            else:
                settings = replace(self.settings, host=hop.host, address=hop.address, tls=tls)
                context = None if tls == "none" else self._tls_context
            pool = self._hop_pools[key] = Pool(settings, context, self._helo)
        return pool

    def _sweep_later(self) -> None:
        """Have idle connections closed once idle too long (a task, so that a
        connection nobody needs again is not held open until its server gives up on
        it, and the status row does not say "connected" after the server went)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """While a connection is idle, every :data:`_SWEEP_EVERY` seconds (or half the
        ``idle_timeout``): close those idle longer than ``idle_timeout`` or closed by
        their server, forget the domains' pools left with nothing open or wanted, and
        update the status row."""
        keep = self.settings.idle_timeout
        while any(p.idle for p in self._pools()):
            await asyncio.sleep(min(_SWEEP_EVERY, keep / 2))
            limit = time.monotonic() - keep
            await self.pool.quit_idle(limit)
            for key, pool in list(self._hop_pools.items()):
                await pool.quit_idle(limit)
                if pool.unused and self._hop_pools.get(key) is pool:
                    del self._hop_pools[key]
                    self._opened_before += pool.opened
            self._update_status()

    async def _transaction(
        self,
        conn: Connection,
        message: OutboundMessage,
        mail_from: str,
        todo: list[OutboundRecipient],
        results: dict[int, RecipientResult],
    ) -> bool:
        """One MAIL/RCPT/DATA (or BDAT) transaction; True when the connection may be
        reused.

        With PIPELINING the machine sends MAIL, every RCPT and DATA at once (or, to a
        server that offers CHUNKING, BDAT with the whole content); the replies are read
        here in the same order either way, so the results are the same.
        """
        where = conn.where
        mta = f"dns; {conn.host}"
        machine = conn.machine
        size = message.size
        limit = machine.size_limit
        if limit is not None and size > limit:
            raise Failure(
                "5.3.4",
                f"x-spoolbox; message of {size} bytes is over the limit of {limit} bytes "
                f"that {where} announces (SIZE)",
            )
        utf8 = "smtputf8" in machine.extensions
        if not mail_from.isascii() and not utf8:
            raise Failure(
                "5.6.7", f"x-spoolbox; sender {mail_from} is not ASCII and {where} lacks SMTPUTF8"
            )
        rcpts: list[OutboundRecipient] = []
        for r in todo:
            if r.value.isascii() or utf8:
                rcpts.append(r)
            else:
                results[r.index] = RecipientResult.failed(
                    r,
                    f"x-spoolbox; {r.value} is not ASCII and {where} lacks SMTPUTF8",
                    status="5.6.7",
                    remote_mta=mta,
                )
        if not rcpts:
            return True
        content: bytes | None = None
        if size <= _WHOLE_LIMIT:
            content = await message.content()
        options: list[bytes] = []
        if "size" in machine.extensions:
            options.append(f"SIZE={size}".encode())
        if "8bitmime" in machine.extensions and (content is None or not content.isascii()):
            options.append(b"BODY=8BITMIME")
        need_utf8 = not mail_from.isascii() or any(not r.value.isascii() for r in rcpts)
        if need_utf8:
            options.append(b"SMTPUTF8")
        enc = "utf-8" if need_utf8 else "ascii"
        # DSN (RFC 3461) to a server that offers it: the sender's wishes go on with the
        # message (NOTIFY=NEVER: the next hop sends no report either), and the next hop
        # reports what happens after it.
        dsn = "dsn" in machine.extensions
        rcpt_options: list[bytes] = []
        each_rcpt: list[list[bytes]] = []
        if dsn:
            info = message.info
            if info.return_content is not None:
                options.append(b"RET=FULL" if info.return_content else b"RET=HDRS")
            if info.envelope_id is not None:
                options.append(b"ENVID=" + xtext.encode(info.envelope_id).encode("ascii"))
            rcpt_options.append(b"NOTIFY=" + notify_keyword(info.notify))
            each_rcpt = [orcpt_option(r.original or _as_given(r.value)) for r in rcpts]

        # CHUNKING (RFC 3030): the content held whole goes as BDAT ... LAST, with
        # PIPELINING in the same write as MAIL and RCPT: one round trip, no dot stuffing.
        bdat = (
            content is not None
            and self.settings.chunking
            and machine.chunking
            and where not in self._no_bdat
        )
        mail_step = f"MAIL FROM:<{mail_from}>"
        machine.transaction(
            [mail_from.encode(enc), *options],
            [r.value.encode(enc) for r in rcpts],
            rcpt_options,
            each_rcpt,
            content if bdat else None,
        )
        if bdat:  # the content goes with the commands: a data block's time to write it
            await conn.flush("sending data", self.t["data_block"])
        reply = await self._checked(conn, mail_step, "mail")
        if reply.code == 503:
            # "Bad sequence of commands" to MAIL (Postfix's "nested MAIL command"): this
            # session is out of step with the server, which says nothing of the message.
            conn.close()
            raise Failure(
                "4.5.0",
                f"x-spoolbox; {where} answered MAIL out of sequence "
                f"({reply_text(reply)}): tried again on a new connection",
            )
        if reply.code != 250:
            refused = self._unexpected(conn, reply, mail_step)
            await self._after_refused_mail(conn, rcpts, bdat)
            self._settle(rcpts, results, refused)
            return True

        accepted: list[OutboundRecipient] = []
        for r in rcpts:
            reply = await self._checked(conn, f"RCPT TO:<{r.value}>", "rcpt")
            self._rcpt_result(conn, r, reply, results, accepted)

        if not accepted:  # every recipient has its result
            await self._after_no_recipient(conn, bdat)
            return True  # kept only if still open and in step, with an RSET before reuse

        if bdat:
            reply = await self._checked(conn, "BDAT", "data_term")
            if reply.code in (500, 502, 504):
                # CHUNKING offered, BDAT not known: the content may have been read as
                # commands, so the dialogue cannot be trusted; DATA from now on.
                self._no_bdat.add(where)
                conn.close()
                text = (
                    f"x-spoolbox; {where} offers CHUNKING but refused BDAT "
                    f"({reply_text(reply)}): sent with DATA next time"
                )
                for r in accepted:  # the server is up: its domain is not held back
                    results[r.index] = RecipientResult.deferred(
                        r, text, status="4.5.0", remote_mta=mta, recipient_only=True
                    )
                return False
            if reply.code != 250:  # refused after all of it: kept, as after DATA's refusal
                self._settle(accepted, results, self._unexpected(conn, reply, "BDAT"))
                return True
            self.sent_with_bdat += 1
            self._delivered(conn, reply, accepted, results, next_hop_reports=dsn)
            return True

        reply = await self._checked(conn, "DATA", "data_init")
        if reply.code != 354:
            # The transaction is over, the connection still good (RFC 5321 4.1.1.4):
            # kept, with an RSET before reuse, unless _unexpected closed it (421, a
            # reply that is not 4xx or 5xx).
            self._settle(accepted, results, self._unexpected(conn, reply, "DATA"))
            return True
        reply = await self._data(conn, message, content)
        if reply.code != 250:  # refused after all of it: kept as after DATA's refusal
            self._settle(accepted, results, self._unexpected(conn, reply, "end of data"))
            return True
        self._delivered(conn, reply, accepted, results, next_hop_reports=dsn)
        return True

    async def _after_refused_mail(
        self, conn: Connection, rcpts: list[OutboundRecipient], bdat: bool
    ) -> None:
        """MAIL was refused: read the replies to what was pipelined with it (errors such as
        503, to BDAT too: the server discards its chunk) to stay in step, or close if we
        are not.  MAIL's refusal is the result."""
        last = ("BDAT", "data_term") if bdat else ("DATA", "data_init")
        steps = [(f"RCPT TO:<{r.value}>", "rcpt") for r in rcpts] + [last]
        for step, timeout_key in steps:
            if not conn.alive or not conn.machine.awaiting:
                return
            try:
                reply = await self._checked(conn, step, timeout_key)
            except Failure:
                return  # closed
            if not 400 <= reply.code <= 599:
                conn.close()  # accepted without a MAIL, or not understood
                return

    async def _after_no_recipient(self, conn: Connection, bdat: bool) -> None:
        """Every RCPT was refused; with PIPELINING, DATA (or BDAT with the content) was
        sent all the same: read its reply (after 354 the machine ends the empty message,
        RFC 2920 section 3.1; BDAT's chunk the server discards, RFC 3030 section 2)."""
        if not conn.machine.awaiting:
            return  # DATA was never sent
        try:
            if bdat:
                reply = await self._checked(conn, "BDAT", "data_term")
                if not 400 <= reply.code <= 599:  # a message without recipients taken?
                    conn.close()
                return
            reply = await self._checked(conn, "DATA", "data_init")
            if reply.code == 354:
                await self._checked(conn, "end of data", "data_term")
            elif not 400 <= reply.code <= 599:
                conn.close()
        except Failure:
            conn.close()

    def _rcpt_result(
        self,
        conn: Connection,
        r: OutboundRecipient,
        reply: Reply,
        results: dict[int, RecipientResult],
        accepted: list[OutboundRecipient],
    ) -> None:
        """The reply to ``RCPT TO`` as the recipient's result (or accepted, for now)."""
        mta = f"dns; {conn.host}"
        if reply.code in (250, 251):
            accepted.append(r)
        elif 400 <= reply.code <= 499:
            results[r.index] = RecipientResult.deferred(
                r,
                f"smtp; {reply_text(reply)}",
                status=enhanced_status(reply, "4"),
                remote_mta=mta,
                # The server answered for this mailbox; 421 closes the whole session.
                recipient_only=reply.code != 421,
            )
        elif 500 <= reply.code <= 599:
            results[r.index] = RecipientResult.failed(
                r, f"smtp; {reply_text(reply)}", status=enhanced_status(reply, "5"), remote_mta=mta
            )
        else:
            conn.close()
            raise protocol_failure(reply, f"RCPT TO:<{r.value}>", conn.where)

    def _delivered(
        self,
        conn: Connection,
        reply: Reply,
        accepted: Sequence[OutboundRecipient],
        results: dict[int, RecipientResult],
        *,
        next_hop_reports: bool = False,
    ) -> None:
        """The 250 to the final dot: every accepted recipient delivered (to a server
        that got the message's NOTIFY and reports from there on: ``next_hop_reports``;
        else relayed: a server without DSN says nothing more of it)."""
        conn.messages += 1
        conn.clean = True
        status = enhanced_status(reply, "2")
        text = f"smtp; {reply_text(reply)}"
        mta = f"dns; {conn.host}"
        for r in accepted:
            results[r.index] = RecipientResult.delivered(
                r,
                text,
                status=status,
                remote_mta=mta,
                next_hop_reports=next_hop_reports,
                relayed=not next_hop_reports,
            )

    def _unexpected(self, conn: Connection, reply: Reply, step: str) -> Failure:
        if 400 <= reply.code <= 599:
            if reply.code == 421:
                conn.close()  # the server is closing the connection
            return reply_failure(reply, step)
        conn.close()  # a reply we do not understand: the dialogue is out of step
        return protocol_failure(reply, step, conn.where)

    async def _checked(self, conn: Connection, step: str, timeout_key: str) -> Reply:
        """The next reply, or the failure of ``step`` with the connection closed: a network
        error, a timeout, or 421 (the server is closing: everything open waits)."""
        reply = await conn.reply(step, self.t[timeout_key])
        if reply.code == 421:
            conn.close()
            raise reply_failure(reply, step)
        return reply

    async def _data(
        self, conn: Connection, message: OutboundMessage, content: bytes | None
    ) -> Reply:
        """Send the content after 354 and read the reply to the final dot.

        Content held whole goes out in one write with the final dot; streamed content
        chunk by chunk (with flow control), the final dot with the last chunk.
        """
        machine = conn.machine
        step, timeout = "sending data", self.t["data_block"]
        try:
            held = b""  # streamed: encoded, not yet written
            async for chunk in _chunks(message, content):
                machine.send_data(chunk)
                if content is not None:  # held whole (by the machine): one write at the end
                    if self.support.slice_spent():
                        await self.support.spooler_yield()
                    continue
                data = machine.data_to_send()
                if data:  # write the chunk before, keep this one back
                    if held:
                        await conn.write(held, step, timeout)
                    held = data
            machine.end_data()
            await conn.write(held + machine.data_to_send(), step, timeout)
        except OSError as exc:  # reading the content
            conn.close()
            raise exception_failure(exc, step, timeout, conn.where) from None
        except BaseException:
            conn.close()  # cancelled or failed mid-DATA: the stream is unusable
            raise
        return await conn.reply("after end of data", self.t["data_term"])

    # -- logoff ---------------------------------------------------------------------------------
    async def logoff(self, flags: LogoffFlags) -> None:
        for task in (self._sweeper, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for pool in self._pools():
            await pool.close(hurry=bool(flags & LogoffFlags.HURRY))
        where = "the mail servers" if self.mx is not None else self.settings.where
        self.support.modify_status_row(status_string=f"logged off from {where}")


def _nowhere(domain: str, failed: Sequence[tuple[Hop, Failure]], how: str = "") -> Failure:
    """No server of ``domain`` took the connection (``how``: under which rule, an
    MTA-STS policy's): the last one's failure (its status, so a refused TLS stays
    4.7.x), with every server's reason."""
    assert failed  # hops() returns one at least; each is tried or has its reason
    reasons = "; ".join(f.text.removeprefix("x-spoolbox; ") for _, f in failed)
    last = failed[-1][1]
    return Failure(
        last.status,
        f"x-spoolbox; no mail server of {domain} could be used{how}: {reasons}",
        connected=False,
    )


async def _chunks(message: OutboundMessage, content: bytes | None) -> AsyncIterator[bytes]:
    if content is None:
        async for chunk in message.iter_content(_CHUNK):
            yield chunk
        return
    view = memoryview(content)
    for i in range(0, len(view), _CHUNK):
        yield bytes(view[i : i + _CHUNK])


def _as_given(address: str) -> str | None:
    """The ORCPT of a recipient that came without one: its address as it was queued
    (RFC 3461 section 5.2.1 lets a relay add it; Postfix does), so that the next
    hop's reports name it even if a later one rewrites the address.  None for an
    address that is not ASCII, which ``rfc822;`` cannot carry (RFC 6533's ``utf-8``
    type is not used), and for one longer than a path may be (254 octets, RFC 5321
    section 4.5.3.1.3), which the server refuses whatever comes with it.  (Up to that,
    a local part of 64 octets, the xtext is at most 382 characters: with NOTIFY within
    the 500 that RFC 3461 lets the two add to a RCPT line.)"""
    if not address.isascii() or len(address) > _PATH_MAX:
        return None
    return f"rfc822;{address}"


def orcpt_option(original: str | None) -> list[bytes]:
    """RFC 3461's ``ORCPT=type;xtext`` for a recipient's original address as kept (its
    type, ``;``, the address), or nothing when it has none."""
    if original is None:
        return []
    kind, _, value = original.partition(";")
    return [b"ORCPT=" + f"{kind};{xtext.encode(value)}".encode("ascii")]


@functools.lru_cache(maxsize=16)  # a recipient's RCPT each; eight values in all
def notify_keyword(notify: Notify) -> bytes:
    """RFC 3461's ``NOTIFY=`` value for ``notify``: ``NEVER``, or its kinds in order."""
    words = [name for name in ("SUCCESS", "FAILURE", "DELAY") if notify & Notify[name]]
    return ",".join(words).encode("ascii") if words else b"NEVER"
