"""Direct delivery (``delivery = "mx"``): which servers take a domain's mail, from DNS.

RFC 5321 section 5.1: a domain's MX records in order of preference (equal ones in a
random order, to spread the load), each host's addresses (IPv4 first, then IPv6);
a domain with no MX record but addresses of its own is its own mail server (the
"implicit MX"); a domain whose one MX record is ``0 .`` accepts no mail (the null
MX of RFC 7505).  An address literal (``bob@[192.0.2.1]``, ``[IPv6:2001:db8::1]``)
needs no lookup.  At most :data:`ADDRESS_LIMIT` addresses are tried a delivery, as
Postfix's ``smtp_mx_address_limit``.

What the lookups can say, as the result of the domain's recipients
(:class:`~.failures.Failure`, no server having answered):

* the domain does not exist (NXDOMAIN), has neither MX nor address records, or is
  not a valid domain name: failed, 5.1.2 (bad destination system);
* a null MX: failed, 5.1.10 (the domain says it takes no mail);
* no answer in time, a server failure (SERVFAIL, REFUSED), no DNS server
  configured: deferred, 4.4.3 (directory server failure), tried again later;
* MX hosts none of which has an address: deferred, 4.4.4 (unable to route): a
  domain's DNS being fixed is more likely than its mail being meant to bounce.

:func:`order_mx` and :func:`literal_address` are pure; :class:`MXResolver` asks
dnspython's asynchronous resolver (the ``mx`` extra) and keeps each answer for its
time to live (at most :data:`CACHE_SECONDS`), so a run of messages to one domain
asks once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spoolbox.model.hostname import split_host_port

from .dane import TLSA
from .failures import Failure

if TYPE_CHECKING:
    import dns.asyncresolver

__all__ = [
    "ADDRESS_LIMIT",
    "CACHE_SECONDS",
    "Hop",
    "MXResolver",
    "literal_address",
    "order_mx",
    "parse_nameserver",
]

#: Addresses tried at most a delivery, over all of a domain's MX hosts.
ADDRESS_LIMIT = 5
#: An answer is kept for its DNS time to live, at most this long.
CACHE_SECONDS = 300.0
#: Domains whose answers are kept at most (the oldest go first).
_CACHE_SIZE = 10_000
#: What :meth:`MXResolver.validates` asks: the root zone's keys, which a resolver
#: that validates DNSSEC vouches for (the AD bit), whatever the domains it serves.
DNSSEC_PROBE = (".", "DNSKEY")


@dataclass(frozen=True, slots=True)
class Hop:
    """One address to try: the mail server's name (``host``, what the results and
    the TLS handshake name) and the IP address to connect to; ``secure``: DNSSEC
    vouched for both (the resolver said AD of the MX records and of the host's
    addresses: DANE may apply, :mod:`.dane`; never without ``dnssec``)."""

    host: str
    address: str
    secure: bool = False


def order_mx(records: Sequence[tuple[int, str]], rng: random.Random) -> list[str] | None:
    """The MX hosts of ``records`` (preference, host) in the order to try them, or None
    for a null MX (RFC 7505: a single ``0 .``).  Equal preferences are shuffled with
    ``rng``; a ``.`` among other records is left out; a host listed twice is tried
    once."""
    hosts = [(pref, host.rstrip(".").lower()) for pref, host in records]
    if hosts and all(host == "" for _, host in hosts):
        return None
    shuffled = [(pref, rng.random(), host) for pref, host in hosts if host]
    shuffled.sort()
    seen: set[str] = set()
    out: list[str] = []
    for _, _, host in shuffled:
        if host not in seen:
            seen.add(host)
            out.append(host)
    return out


def literal_address(domain: str) -> str | None:
    """The IP address of an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``),
    None for a domain name; a literal that is no address is a :class:`Failure`."""
    if not domain.startswith("["):
        return None
    inner = domain[1:-1] if domain.endswith("]") else ""
    v6 = inner[:5].lower() == "ipv6:"
    try:
        address = ipaddress.ip_address(inner[5:] if v6 else inner)
    except ValueError:
        address = None
    if address is None or (address.version == 6) != v6:
        raise Failure("5.1.2", f"x-spoolbox; {domain} is not an address literal", connected=False)
    return str(address)


def parse_nameserver(text: str) -> tuple[str, int]:
    """``"192.0.2.53"``, ``"192.0.2.53:5353"``, ``"2001:db8::53"`` or
    ``"[2001:db8::53]:5353"`` as (address, port); ValueError says what is wrong."""
    host, port = split_host_port(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address (a name server is given by address)"
        ) from None
    return host, 53 if port is None else port


class MXResolver:
    """A domain's :class:`Hop` list from DNS (module doc), answers cached."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]],
        timeout: float,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolv_conf: str = "/etc/resolv.conf",
        dnssec: bool = False,
    ) -> None:
        try:
            import dns.asyncresolver
            import dns.flags
            import dns.nameserver
            import dns.resolver
        except ImportError as exc:
            raise ValueError(
                f"smtp option 'delivery' = 'mx' needs dnspython: pip install 'spoolbox[mx]' ({exc})"
            ) from None
        try:
            resolver = dns.asyncresolver.Resolver(resolv_conf, configure=not nameservers)
        except dns.resolver.NoResolverConfiguration as exc:
            raise ValueError(
                "smtp option 'delivery' = 'mx': this system names no DNS server "
                f"({resolv_conf}: {exc}); set the option 'nameservers'"
            ) from None
        if nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in nameservers]
        resolver.lifetime = timeout
        servers = [
            (ns.answer_nameserver(), ns.answer_port())
            if isinstance(ns, dns.nameserver.Nameserver)
            else (str(ns), resolver.port)
            for ns in resolver.nameservers
        ]
        self._asked = ", ".join(f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in servers)
        resolver.timeout = min(timeout, 5.0)  # a server that does not answer: the next one
        #: DANE: each query asks for the AD bit (RFC 6840 section 5.7), whose answer
        #: says whether the resolver validated it with DNSSEC.
        self.dnssec = dnssec
        if dnssec:
            resolver.flags = dns.flags.RD | dns.flags.AD
        self._resolver: dns.asyncresolver.Resolver = resolver
        self.timeout = timeout
        self._rng = rng or random.Random()
        self._clock = clock
        self._cache: dict[str, tuple[float, tuple[Hop, ...]]] = {}
        self._tlsa: dict[str, tuple[float, tuple[TLSA, ...] | None]] = {}

    @property
    def nameservers(self) -> list[str]:
        """The DNS servers asked, ``address:port`` (the status object shows them)."""
        return self._asked.split(", ")

    def forget(self) -> None:
        """Drop every answer kept (a flush asks DNS again)."""
        self._cache.clear()
        self._tlsa.clear()

    async def hops(self, domain: str) -> tuple[Hop, ...]:
        """Where mail for ``domain`` may go, in order; a :class:`Failure` if nowhere."""
        literal = literal_address(domain)
        if literal is not None:  # the server is named by its address
            return (Hop(literal, literal),)
        key = domain.lower()
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        hops, ttl = await self._lookup(key)
        _keep(self._cache, key, now, ttl, hops)
        return hops

    async def validates(self) -> bool | None:
        """Whether the DNS servers validate DNSSEC (what DANE needs): True when they
        vouch for the root zone's keys (the AD bit), False when they answer without
        it, None when they give no answer (nothing can be told)."""
        name, rdtype = DNSSEC_PROBE
        try:
            answer = await self._query(name, rdtype, name, missing_ok=True)
        except Failure:
            return None
        return None if answer is None else _authenticated(answer)

    async def tlsa(self, host: str, port: int, domain: str) -> tuple[TLSA, ...] | None:
        """The TLSA records of MX host ``host`` for ``port`` (``_25._tcp.<host>``) when
        DNSSEC vouches for them, every one of them (None: none, or not authenticated:
        DANE does not apply); a :class:`Failure` when DNS cannot say (the host is
        then not used, :mod:`.dane`)."""
        name = f"_{port}._tcp.{host}"
        now = self._clock()
        cached = self._tlsa.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = await self._query(name, "TLSA", domain, missing_ok=True)
        found: tuple[TLSA, ...] | None = None
        ttl = CACHE_SECONDS
        if answer is not None:
            ttl = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
            if _authenticated(answer):
                found = tuple(
                    TLSA(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert)) for r in answer
                )
        _keep(self._tlsa, name, now, ttl, found)
        return found

    async def _lookup(self, domain: str) -> tuple[tuple[Hop, ...], float]:
        import dns.resolver

        answer = await self._query(domain, "MX", domain)
        if answer is None:  # no MX: the domain is its own mail server (implicit MX)
            addresses, ttl, secure = await self._addresses(domain, domain)
            if not addresses:
                raise Failure(
                    "5.1.2",
                    f"x-spoolbox; {domain} has no MX record and no address (DNS)",
                    connected=False,
                )
            return tuple(Hop(domain, a, secure) for a in addresses[:ADDRESS_LIMIT]), ttl
        assert isinstance(answer, dns.resolver.Answer)
        records = [(int(r.preference), r.exchange.to_text()) for r in answer]
        hosts = order_mx(records, self._rng)
        if hosts is None:
            raise Failure(
                "5.1.10",
                f"x-spoolbox; {domain} accepts no mail (its MX record is the null MX, RFC 7505)",
                connected=False,
            )
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
        mx_secure = self.dnssec and _authenticated(answer)
        found = await asyncio.gather(
            *(self._addresses(h, domain) for h in hosts), return_exceptions=True
        )
        hops: list[Hop] = []
        failures = []
        for host, result in zip(hosts, found, strict=True):
            if isinstance(result, Failure):
                failures.append(result)  # a host DNS did not answer for: the others
                ttl = 0.0  # and ask again next time
                continue
            if isinstance(result, BaseException):
                raise result
            addresses, host_ttl, secure = result
            hops.extend(Hop(host, a, mx_secure and secure) for a in addresses)
            if addresses:
                ttl = min(ttl, host_ttl)
        if not hops and failures:
            raise failures[0]
        if not hops:
            raise Failure(
                "4.4.4",
                f"x-spoolbox; no MX host of {domain} has an address "
                f"({', '.join(hosts)}: no A or AAAA record)",
                connected=False,
            )
        return tuple(hops[:ADDRESS_LIMIT]), ttl

    async def addresses(self, host: str, domain: str) -> list[str]:
        """The addresses of ``host`` (IPv4 first), looked up for ``domain``'s mail; a
        :class:`Failure` when DNS cannot say (MTA-STS's policy host)."""
        return (await self._addresses(host, domain))[0]

    async def txt(self, name: str, domain: str) -> list[str]:
        """The TXT records of ``name`` (each one's strings joined), none when it has
        none or does not exist; a :class:`Failure` when DNS cannot say."""
        answer = await self._query(name, "TXT", domain, missing_ok=True)
        if answer is None:
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def _addresses(self, host: str, domain: str) -> tuple[list[str], float, bool]:
        """The IPv4 then IPv6 addresses of ``host`` (none if it has none), the
        shorter of the two answers' TTLs (0 when one of the two queries failed: the
        addresses of the other are used, not kept), and whether DNSSEC vouched for
        every answer that had addresses.  A :class:`Failure` when a query
        failed and the other found nothing (a server that never answers AAAA
        queries does not stop the mail to a host with an A record)."""
        answers = await asyncio.gather(
            self._query(host, "A", domain, missing_ok=True),
            self._query(host, "AAAA", domain, missing_ok=True),
            return_exceptions=True,
        )
        addresses: list[str] = []
        ttls: list[float] = []
        failures = []
        secure = True
        for answer in answers:
            if isinstance(answer, Failure):
                failures.append(answer)
                ttls.append(0.0)
                continue
            if isinstance(answer, BaseException):
                raise answer
            if answer is None:
                continue
            addresses.extend(r.to_text() for r in answer)
            secure = secure and self.dnssec and _authenticated(answer)
            if answer.rrset is not None:
                ttls.append(float(answer.rrset.ttl))
        if failures and not addresses:
            raise failures[0]
        return addresses, min(ttls, default=0.0), secure and bool(addresses)

    async def _query(self, name: str, rdtype: str, domain: str, *, missing_ok: bool = False) -> Any:
        """The answer, None when the name has no record of ``rdtype`` (or, with
        ``missing_ok``, does not exist); DNS trouble as a :class:`Failure`."""
        import dns.exception
        import dns.name
        import dns.resolver

        what = (
            f"the {rdtype} record of {name}"
            if name == domain
            else (f"the {rdtype} record of {name} (an MX host of {domain})")
        )
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
            raise Failure(
                "5.1.2", f"x-spoolbox; {name} is not a valid domain name ({exc})", connected=False
            ) from None
        try:
            return await self._resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN:
            if missing_ok:
                return None
            raise Failure(
                "5.1.2", f"x-spoolbox; {name}: no such domain (DNS: NXDOMAIN)", connected=False
            ) from None
        except dns.exception.Timeout:
            raise Failure(
                "4.4.3",
                f"x-spoolbox; DNS: no answer for {what} within {self.timeout:g} s "
                f"(asked {self._asked})",
                connected=False,
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise Failure(
                "4.4.3",
                f"x-spoolbox; DNS: the servers failed to answer for {what} ({_servers_said(exc)})",
                connected=False,
            ) from None
        except dns.exception.DNSException as exc:
            raise Failure(
                "4.4.3", f"x-spoolbox; DNS lookup of {what} failed: {exc}", connected=False
            ) from None


def _authenticated(answer: Any) -> bool:
    """Whether the resolver said DNSSEC vouches for ``answer`` (its AD bit)."""
    import dns.flags

    response = getattr(answer, "response", None)
    return response is not None and bool(response.flags & dns.flags.AD)


def _keep(
    cache: dict[str, tuple[float, Any]], key: str, now: float, ttl: float, value: Any
) -> None:
    """Keep ``value`` for ``ttl`` seconds (at most :data:`CACHE_SECONDS`; not at all
    when 0), the oldest entry dropped when the cache is full."""
    if ttl <= 0:
        return
    cache.pop(key, None)
    if len(cache) >= _CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = (now + min(ttl, CACHE_SECONDS), value)


def _servers_said(exc: Exception) -> str:
    """What each server answered, from a NoNameservers error: ``127.0.0.1:53 answered
    REFUSED``."""
    errors = getattr(exc, "kwargs", {}).get("errors") or []
    said = []
    for error in errors:
        # (server, tcp, port, exception or rcode text, answer); the server as dnspython
        # names it: "Do53:127.0.0.1@53"
        try:
            server, _tcp, port, why = str(error[0]), error[1], error[2], error[3]
        except (IndexError, TypeError):
            continue
        address = server.removeprefix("Do53:").rsplit("@", 1)[0]
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        said.append(f"{where} answered {why}")
    return "; ".join(said) or str(exc)
