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

The same decision, made when a message is submitted, refuses a recipient that
would fail at once (:func:`unroutable`): the local API and ``Client.submit`` refuse
the message, the SMTP listener answers ``550 5.1.2`` to its RCPT TO, ``sendmail``
exits 67.  A recipient that would only *wait* is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "ANY",
    "NoRoute",
    "Route",
    "RouteEntry",
    "RoutingTable",
    "Unroutable",
    "Wait",
    "describe_unroutable",
    "refusal",
    "unroutable",
]

#: The wildcard address type.
ANY = "*"


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One transport session in the order: its name and the types it serves.

    ``address_types`` is ``None`` while the transport is not logged on (unknown).
    """

    name: str
    address_types: frozenset[str] | None

    @property
    def wildcard(self) -> bool:
        return self.address_types is not None and ANY in self.address_types

    def serves(self, address_type: str) -> bool:
        types = self.address_types
        return types is not None and (address_type.upper() in types or ANY in types)


@dataclass(frozen=True, slots=True)
class Route:
    transport: str


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
        specific = [e for e in items if not e.wildcard]
        wild = [e for e in items if e.wildcard]
        return cls(tuple(specific + wild))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def decide(self, address_type: str, refused_by: Sequence[str] = ()) -> Decision:
        refused = set(refused_by)
        for entry in self.entries:
            if entry.name in refused:
                continue
            if entry.serves(address_type):
                return Route(entry.name)
        unknown = tuple(
            e.name for e in self.entries if e.address_types is None and e.name not in refused
        )
        if unknown:
            return Wait(unknown)
        if refused:
            return NoRoute(
                f"no transport accepted address type {address_type.upper()} "
                f"(declined by: {', '.join(sorted(refused))})"
            )
        return NoRoute(
            f"no transport provider was available for address type {address_type.upper()}"
        )

    def routes_at_submit(self, address_types: Iterable[str]) -> list[str | None]:
        """The transport of each recipient whose route is already clear when it is
        submitted (stored in the same transaction); None leaves it to the router (it
        must wait for a transport, or has no route and fails there)."""
        routes: list[str | None] = []
        for t in address_types:
            d = self.decide(t)
            routes.append(d.transport if isinstance(d, Route) else None)
        return routes

    def serves_any(self, address_type: str) -> bool:
        return any(e.serves(address_type) for e in self.entries)


@dataclass(frozen=True, slots=True)
class Unroutable:
    """A recipient refused at submit: no transport serves its address type now.

    ``transports`` is each outbound transport (in order) with the types it serves,
    for the error text: what exists instead."""

    recipient: str
    address_type: str
    transports: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def reason(self) -> str:
        """What is wrong, without the recipient: the type and what is served."""
        served = "; ".join(
            f"{name} serves {', '.join(types) if types else 'no address type'}"
            for name, types in self.transports
        )
        return f"no transport serves address type {self.address_type} ({served})"

    def __str__(self) -> str:
        return f"{self.recipient}: {self.reason}"


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
        address_type = recipient.partition(":")[0].upper()
        if isinstance(table.decide(address_type), NoRoute):
            refused.append(Unroutable(recipient, address_type, transports))
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
