"""Example tables for routing: tables written out by hand and the transport each
address type must go to (reference §8.3), without asking the code under test which
entries serve which type."""

from __future__ import annotations

import re

import pytest

from spoolbox.routing import ANY, NoRoute, Route, RouteEntry, RoutingTable, Wait


def table(*entries: tuple[str, set[str] | None]) -> RoutingTable:
    return RoutingTable.build(
        RouteEntry(name, None if types is None else frozenset(types)) for name, types in entries
    )


#: A wildcard relay first in the order, two specific transports after it.
MIXED = table(("relay", {"*"}), ("smtp", {"SMTP"}), ("fax", {"FAX"}))


def test_wildcards_move_after_every_specific_transport_keeping_their_order() -> None:
    assert MIXED.names == ("smtp", "fax", "relay")
    t = table(
        ("w1", {"*"}),
        ("s1", {"SMTP"}),
        ("w2", {"*", "FAX"}),
        ("u", None),
        ("s2", {"FAX", "SMS"}),
    )
    assert t.names == ("s1", "u", "s2", "w1", "w2")
    assert [e.name for e in t.entries] == ["s1", "u", "s2", "w1", "w2"]


@pytest.mark.parametrize(
    ("address_type", "refused", "decision"),
    [
        ("SMTP", (), Route("smtp")),
        ("smtp", (), Route("smtp")),  # address types are case-insensitive
        ("Fax", (), Route("fax")),
        ("X400", (), Route("relay")),  # nobody specific: the wildcard
        ("SMTP", ("smtp",), Route("relay")),  # not-me: the next willing one
        ("FAX", ("relay",), Route("fax")),
        (
            "SMTP",
            ("smtp", "relay"),
            NoRoute("no transport accepted address type SMTP (declined by: relay, smtp)"),
        ),
        (
            "x400",
            ("relay", "nobody"),
            NoRoute("no transport accepted address type X400 (declined by: nobody, relay)"),
        ),
    ],
)
def test_decisions_with_a_wildcard(
    address_type: str, refused: tuple[str, ...], decision: object
) -> None:
    assert MIXED.decide(address_type, refused) == decision


def test_the_first_specific_transport_wins_over_a_later_one() -> None:
    t = table(("a", {"FAX"}), ("b", {"SMTP", "FAX"}), ("c", {"FAX"}))
    assert t.decide("FAX") == Route("a")
    assert t.decide("FAX", ["a"]) == Route("b")
    assert t.decide("FAX", ["a", "b"]) == Route("c")
    assert t.decide("SMTP") == Route("b")
    # A wildcard that also names the type explicitly is still a wildcard: last.
    w = table(("w", {"*", "FAX"}), ("f", {"FAX"}))
    assert w.decide("FAX") == Route("f")


@pytest.mark.parametrize(
    ("address_type", "refused", "decision"),
    [
        ("FAX", (), Route("fax")),  # known and willing: no need to wait
        ("SMTP", (), Wait(("u1", "u2"))),  # maybe one of the unknown ones
        ("SMTP", ("u1",), Wait(("u2",))),  # one that said not-me is not waited for
        (
            "SMTP",
            ("u1", "u2"),
            NoRoute("no transport accepted address type SMTP (declined by: u1, u2)"),
        ),
    ],
)
def test_unknown_transports_make_a_recipient_wait(
    address_type: str, refused: tuple[str, ...], decision: object
) -> None:
    t = table(("u1", None), ("fax", {"FAX"}), ("u2", None))
    assert t.decide(address_type, refused) == decision


@pytest.mark.parametrize(
    "t",
    [
        table(),  # no transport at all
        table(("fax", {"FAX"})),
        table(("quiet", set())),  # an empty set: dispatch nothing by type
    ],
)
def test_nobody_serves_it_and_everyone_is_known(t: RoutingTable) -> None:
    assert t.decide("sms") == NoRoute("no transport provider was available for address type SMS")


def test_routes_at_submit_keeps_only_the_clear_decisions() -> None:
    t = table(("u", None), ("smtp", {"SMTP"}), ("relay", {"*"}))
    assert t.routes_at_submit([("SMTP", "a@x"), ("smtp", "b@x"), ("FAX", "1")]) == [
        "smtp",
        "smtp",
        "relay",
    ]
    t = table(("u", None), ("smtp", {"SMTP"}))
    assert t.routes_at_submit([("SMTP", "a@x"), ("FAX", "1")]) == ["smtp", None]  # FAX waits
    assert table(("smtp", {"SMTP"})).routes_at_submit([("FAX", "1"), ("SMTP", "a@x")]) == [
        None,
        "smtp",
    ]
    assert t.routes_at_submit([]) == []


def test_serves_any() -> None:
    t = table(("u", None), ("smtp", {"SMTP"}))
    assert t.serves_any("smtp")
    assert not t.serves_any("FAX")  # an unknown transport serves nothing yet
    assert table(("u", None), ("relay", {"*"})).serves_any("FAX")
    assert not table().serves_any("SMTP")


def test_route_entries() -> None:
    unknown = RouteEntry("u", None)
    assert not unknown.wildcard and not unknown.serves("SMTP") and not unknown.serves(ANY)
    smtp = RouteEntry("s", frozenset({"SMTP"}))
    assert smtp.serves("SMTP") and smtp.serves("smtp") and not smtp.serves("FAX")
    assert not smtp.wildcard
    relay = RouteEntry("r", frozenset({ANY}))
    assert relay.wildcard and relay.serves("FAX") and relay.serves("anything")
    assert not RouteEntry("q", frozenset()).serves("SMTP")


@pytest.mark.parametrize(
    ("names", "repeated"),
    [(["a", "b", "a"], "['a']"), (["b", "a", "b", "a", "c"], "['a', 'b']")],
)
def test_transport_names_must_be_unique(names: list[str], repeated: str) -> None:
    message = f"transport names must be unique; repeated: {repeated}"
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        RoutingTable.build(RouteEntry(n, frozenset({"SMTP"})) for n in names)
    assert str(err.value) == message
