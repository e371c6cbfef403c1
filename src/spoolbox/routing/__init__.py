"""Routing: which transport takes a recipient — a pure decision, no I/O.

The rule is the original's (reference §8.3): transports are tried in *transport
order*; the first one whose address types contain the recipient's type, and which
has not already answered not-me for it, is responsible for it.  A transport that
serves ``*`` (any type) is tried after every specific one, whatever its place in
the order.  An empty set of types means "dispatch nothing to me by type".

When some configured transport is not logged on yet (or is down), its address
types are unknown; a recipient that no *known* transport serves then waits
(store-and-forward) instead of failing, because the missing transport may be the
one for it.  Only when every transport is known and none serves the recipient is
it a non-delivery: "no transport provider was available for this recipient".

A transport may also be limited to recipient domains (the profile's ``domains``, as
Postfix's ``transport_maps``): it then serves only the addresses of its types at those
domains (``example.org``; ``.example.org`` for every name under it), and such
transports are tried before those without a limit, whatever their place in the order,
so that ``corp.example``'s mail goes to the internal relay while the rest goes to the
smart host whichever is written first.  Among them the closest match wins, as in
Postfix's ``transport_maps``: ``mail.corp.example`` before ``.corp.example``, whatever
their order; two that name a domain as closely are taken in transport order.

The same decision, made when a message is submitted, refuses a recipient that
would fail at once (:func:`unroutable`): the local API and ``Client.submit`` refuse
the message, the SMTP listener answers ``550 5.1.2`` to its RCPT TO, ``sendmail``
exits 67.  A recipient that would only *wait* is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spoolbox._quick import quick_init

__all__ = [
    "ANY",
    "DomainError",
    "NoRoute",
    "Route",
    "RouteEntry",
    "RoutingTable",
    "Unroutable",
    "Wait",
    "describe_unroutable",
    "domain_of",
    "domains_entry",
    "refusal",
    "shadowed_domains",
    "unroutable",
]

#: The wildcard address type.
ANY = "*"


class DomainError(ValueError):
    """A ``domains`` entry that is not a domain name."""


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def domains_entry(text: str) -> str:
    """One ``domains`` entry as routing compares it: lower case, no final dot, a
    leading dot kept (``.example.org``: every name under it); IDNs as their ``xn--``
    form.  :class:`DomainError` for anything else."""
    raw = text.strip().rstrip(".").lower()
    under = raw.startswith(".")
    name = raw[1:] if under else raw
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise DomainError(f"{text!r} is not a domain name") from None
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        raise DomainError(
            f"{text!r} is not a domain name (example.org, or .example.org for the names under it)"
        )
    return f".{name}" if under else name


def domain_of(value: str) -> str | None:
    """The domain of an address's value (after its last ``@``), lower case, without a
    final dot, IDNs in their ``xn--`` form; None without one (``+15551234``)."""
    local, at, domain = value.rpartition("@")
    if not at or not local:
        return None
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("[") or not domain:
        return domain or None  # an address literal: no domains entry names one
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return domain
    return domain


def _in_domains(domains: frozenset[str], value: str | None) -> bool:
    domain = domain_of(value) if value is not None else None
    return domain is not None and _match(domains, domain) > 0


def _match(domains: frozenset[str], domain: str) -> int:
    """How closely ``domains`` name ``domain``: the labels of the entry that names it
    (the domain itself, else the nearest parent written with a dot), 0 if none does.
    ``mail.corp.example`` matches 3, ``.corp.example`` 2."""
    parts = domain.split(".")
    if domain in domains:
        return len(parts)
    for i in range(1, len(parts)):
        if "." + ".".join(parts[i:]) in domains:
            return len(parts) - i
    return 0


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One transport session in the order: its name and the types it serves.

    ``address_types`` is ``None`` while the transport is not logged on (unknown).
    ``domains``: only recipients at these domains (entries as :func:`domains_entry`
    makes them); None: any.
    """

    name: str
    address_types: frozenset[str] | None
    domains: frozenset[str] | None = None

    @property
    def wildcard(self) -> bool:
        return self.address_types is not None and ANY in self.address_types

    def serves_type(self, address_type: str) -> bool:
        types = self.address_types
        return types is not None and (address_type.upper() in types or ANY in types)

    def serves(self, address_type: str, value: str | None = None) -> bool:
        """Whether it takes a recipient of ``address_type`` (and ``value``, for a
        transport limited to ``domains``: without a value such a transport serves
        nothing)."""
        return self.serves_type(address_type) and self.serves_domain(value)

    def serves_domain(self, value: str | None) -> bool:
        """Whether its ``domains`` take an address's ``value`` (always, without a limit)."""
        return self.domains is None or _in_domains(self.domains, value)

    def describe(self) -> str:
        """``relay: SMTP`` / ``corp: SMTP at corp.example, .corp.example``."""
        types = self.address_types
        what = "types not known yet" if types is None else ", ".join(sorted(types)) or "none"
        if self.domains is not None:
            what += f" at {', '.join(sorted(self.domains))}"
        return f"{self.name}: {what}"


@quick_init
@dataclass(frozen=True, slots=True)
class Route:
    transport: str


@quick_init
@dataclass(frozen=True, slots=True)
class Wait:
    """No known transport serves it yet, but some transport is not known: keep it queued."""

    unknown: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NoRoute:
    reason: str


Decision = Route | Wait | NoRoute


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The transports in transport order, wildcard ones moved last (stable)."""

    entries: tuple[RouteEntry, ...]

    @classmethod
    def build(cls, entries: Iterable[RouteEntry]) -> RoutingTable:
        items = list(entries)
        names = [e.name for e in items]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"transport names must be unique; repeated: {sorted(dupes)}")
        limited = [e for e in items if e.domains is not None]
        others = [e for e in items if e.domains is None]
        ordered = [e for e in limited if not e.wildcard] + [e for e in limited if e.wildcard]
        ordered += [e for e in others if not e.wildcard] + [e for e in others if e.wildcard]
        return cls(tuple(ordered))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def entry(self, name: str) -> RouteEntry:
        """Transport ``name``'s entry (KeyError: none of that name)."""
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def decide(
        self, address_type: str, refused_by: Sequence[str] = (), value: str | None = None
    ) -> Decision:
        """Where a recipient of ``address_type`` (its address ``value``, for the
        transports limited to domains) goes, leaving out the transports in
        ``refused_by`` (those that answered not-me for it)."""
        refused = set(refused_by)
        # Of the transports limited to domains (first in the order), the one whose
        # entry names the address's domain most closely, as Postfix's transport_maps
        # (the name itself, then its nearest parent); equals in transport order.
        best: RouteEntry | None = None
        best_match = 0
        domain: str | None = None
        for entry in self.entries:
            if entry.name in refused:
                continue
            if entry.domains is None:
                if best is not None:
                    break
                if entry.serves_type(address_type):
                    return Route(entry.name)
                continue
            if not entry.serves_type(address_type):
                continue
            if domain is None:
                domain = (domain_of(value) if value is not None else None) or ""
            match = _match(entry.domains, domain) if domain else 0
            if match > best_match:
                best, best_match = entry, match
        if best is not None:
            return Route(best.name)
        unknown = tuple(
            e.name for e in self.entries if e.address_types is None and e.name not in refused
        )
        if unknown:
            return Wait(unknown)
        kind = address_type.upper()
        if refused:
            return NoRoute(
                f"no transport accepted address type {kind} "
                f"(declined by: {', '.join(sorted(refused))})"
            )
        limited = [e for e in self.entries if e.domains is not None and e.serves_type(kind)]
        if limited:
            domain = domain_of(value) if value is not None else None
            return NoRoute(
                f"no transport serves address type {kind} "
                + (f"at domain {domain}" if domain else "without a domain")
                + f" ({'; '.join(e.describe() for e in limited)})"
            )
        return NoRoute(f"no transport provider was available for address type {kind}")

    def routes_at_submit(self, addresses: Iterable[tuple[str, str]]) -> list[str | None]:
        """The transport of each recipient (``(type, value)``) whose route is already
        clear when it is submitted (stored in the same transaction); None leaves it to
        the router (it must wait for a transport, or has no route and fails there)."""
        routes: list[str | None] = []
        for address_type, value in addresses:
            d = self.decide(address_type, value=value)
            routes.append(d.transport if isinstance(d, Route) else None)
        return routes

    def serves_any(self, address_type: str) -> bool:
        return any(e.serves_type(address_type) for e in self.entries)


@dataclass(frozen=True, slots=True)
class Unroutable:
    """A recipient refused at submit: no transport serves its address type (or, with
    transports limited to domains, its domain) now.

    ``transports`` is each outbound transport (in order) with the types it serves,
    for the error text: what exists instead.  ``limited``: the router's words when
    transports of its type serve only other domains."""

    recipient: str
    address_type: str
    transports: tuple[tuple[str, tuple[str, ...]], ...]
    limited: str = ""

    @property
    def reason(self) -> str:
        """What is wrong, without the recipient: the type and what is served."""
        if self.limited:
            return self.limited
        served = "; ".join(
            f"{name} serves {', '.join(types) if types else 'no address type'}"
            for name, types in self.transports
        )
        return f"no transport serves address type {self.address_type} ({served})"

    def __str__(self) -> str:
        return f"{self.recipient}: {self.reason}"


def shadowed_domains(table: RoutingTable) -> tuple[str, ...]:
    """Where two transports limited to domains name the same domain for the same
    address type: the first in the order takes all of it, and the second gets that
    mail only when the first declines it (not me).  Allowed (a fallback), but seldom
    meant: ``spoolbox check`` says so.  One sentence per pair; transports whose types
    are known only at logon are left out."""
    limited = [e for e in table.entries if e.domains is not None and e.address_types is not None]
    found: list[str] = []
    for i, first in enumerate(limited):
        for later in limited[i + 1 :]:
            assert first.domains is not None and later.domains is not None
            assert first.address_types is not None and later.address_types is not None
            if first.wildcard:
                types = later.address_types
            elif later.wildcard:
                types = first.address_types
            else:
                types = first.address_types & later.address_types
            common = first.domains & later.domains
            if not types or not common:
                continue
            found.append(
                f"transports {first.name!r} and {later.name!r} both name "
                f"{', '.join(sorted(common))} for {', '.join(sorted(types))}: "
                f"{first.name!r} comes first and takes that mail; {later.name!r} gets it "
                f"only when {first.name!r} declines it (not me)"
            )
    return tuple(found)


def unroutable(table: RoutingTable, recipients: Iterable[str]) -> tuple[Unroutable, ...]:
    """The recipients (``TYPE:value`` strings, as ``str(Address)`` gives them) that
    ``table`` cannot route: those the router would fail at once (:class:`NoRoute`),
    every transport being known and none serving their type.  A recipient that
    would wait for a transport not logged on yet is not in it, and neither is any
    recipient when the table is empty (a daemon between two profiles sends its
    listener processes an empty table: a ``550`` then would refuse good mail for
    ever).  Pure; the one rule for refusing at submit (API, listener, sendmail)."""
    if not table.entries:
        return ()
    transports = tuple((e.name, tuple(sorted(e.address_types or ()))) for e in table.entries)
    refused: list[Unroutable] = []
    for recipient in recipients:
        address_type, _, value = recipient.partition(":")
        address_type = address_type.upper()
        decision = table.decide(address_type, value=value)
        if isinstance(decision, NoRoute):
            limited = decision.reason if table.serves_any(address_type) else ""
            refused.append(Unroutable(recipient, address_type, transports, limited))
    return tuple(refused)


def refusal(table: RoutingTable, recipient: str) -> str | None:
    """Why one recipient (``TYPE:value``) is refused at submit (:func:`unroutable`),
    or None: what the SMTP listener answers 550 5.1.2 with at RCPT TO."""
    refused = unroutable(table, (recipient,))
    return refused[0].reason if refused else None


def describe_unroutable(refused: Sequence[Unroutable]) -> str:
    """One error text for a refused submission: every unroutable recipient, and
    what to do."""
    return (
        "refused, nothing queued: "
        + "; ".join(str(u) for u in refused)
        + ". Add a transport for that address type to the profile, or write the "
        "recipient with a type a transport serves"
    )
