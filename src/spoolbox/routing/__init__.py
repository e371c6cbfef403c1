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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["ANY", "NoRoute", "Route", "RouteEntry", "RoutingTable", "Wait"]

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
