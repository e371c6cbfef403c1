"""Whether a recipient can be routed, as said to the one who submits it: the decision
``sendmail`` (exit 67, and ``-bv``), the local API and the listener (550 at RCPT)
take before a message is queued.  Pure: a :class:`~spoolbox.routing.RoutingTable`
in, a :class:`Verdict` out.

A recipient is refused only when no transport could ever take it: every transport's
address types are known (declared in the profile, or answered by its session) and
none serves the recipient's type.  While some transport's types are unknown it may
be the one: the recipient is accepted and waits for it (store-and-forward).  The rule
is :func:`spoolbox.routing.unroutable`'s (the router's :class:`NoRoute`), which the
API and the listener apply; this module adds the words for one address type."""

from __future__ import annotations

from dataclasses import dataclass

from spoolbox._quick import quick_init

from . import NoRoute, Route, RoutingTable

__all__ = ["Verdict", "verify"]


@quick_init
@dataclass(frozen=True, slots=True)
class Verdict:
    """What would happen to a recipient of one address type."""

    #: the transport that would take it now; None when it waits or has no route
    transport: str | None
    #: why it is refused at submit; None when it is accepted
    refusal: str | None
    #: one line for people (``sendmail -bv``)
    text: str

    @property
    def routable(self) -> bool:
        return self.refusal is None


def _served(table: RoutingTable) -> str:
    return "; ".join(e.describe() for e in table.entries) or "no outbound transport is configured"


def verify(table: RoutingTable, address_type: str, value: str | None = None) -> Verdict:
    """The verdict on a recipient of ``address_type`` (and address ``value``, which
    transports limited to domains look at) with the transports of ``table``."""
    kind = address_type.upper()
    decision = table.decide(kind, value=value)
    if isinstance(decision, Route):
        return Verdict(decision.transport, None, f"deliverable: transport {decision.transport}")
    if isinstance(decision, NoRoute):
        if table.serves_any(kind):  # only transports limited to other domains
            reason = decision.reason
        else:
            reason = f"no transport serves address type {kind} ({_served(table)})"
        return Verdict(None, reason, f"undeliverable: {reason}")
    waiting = ", ".join(decision.unknown)
    return Verdict(
        None,
        None,
        f"queued: waits for transport {waiting} (its address types are known once it logs on)",
    )
