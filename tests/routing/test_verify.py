"""The verdict at submit (spoolbox.routing.verify): refused only when every transport's
types are known and none serves the recipient's type."""

from __future__ import annotations

from spoolbox.routing import RouteEntry, RoutingTable
from spoolbox.routing.verify import Verdict, verify


def table(*entries: tuple[str, set[str] | None]) -> RoutingTable:
    return RoutingTable.build(
        RouteEntry(name, None if types is None else frozenset(types)) for name, types in entries
    )


def test_a_served_type_is_routed_to_its_transport() -> None:
    t = table(("local", {"MAILDIR"}), ("relay", {"SMTP"}))
    assert verify(t, "smtp") == Verdict("relay", None, "deliverable: transport relay")
    assert verify(t, "SMTP").refusal is None
    assert verify(t, "SMTP").routable


def test_no_transport_for_the_type_is_refused_naming_what_each_serves() -> None:
    t = table(("local", {"MAILDIR"}), ("fax", set()))
    v = verify(t, "smtp")
    assert v.transport is None
    assert v.refusal == "no transport serves address type SMTP (local: MAILDIR; fax: none)"
    assert v.text == "undeliverable: " + v.refusal
    assert not v.routable
    assert verify(t, "SMTP").refusal == v.refusal


def test_a_transport_of_unknown_types_may_be_the_one_so_it_waits() -> None:
    t = table(("local", {"MAILDIR"}), ("later", None))
    v = verify(t, "SMTP")
    assert v == Verdict(
        None,
        None,
        "queued: waits for transport later (its address types are known once it logs on)",
    )
    assert verify(t, "SMTP").refusal is None


def test_no_transport_at_all_is_refused() -> None:
    assert verify(table(), "SMTP").refusal == (
        "no transport serves address type SMTP (no outbound transport is configured)"
    )


def test_a_wildcard_serves_every_type() -> None:
    assert verify(table(("local", {"MAILDIR"}), ("any", {"*"})), "FAX").transport == "any"
