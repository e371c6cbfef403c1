"""Transports limited to recipient domains (the profile's ``domains``, as Postfix's
``transport_maps``): tables written out by hand and where each address goes."""

from __future__ import annotations

import pytest

from spoolbox.routing import (
    DomainError,
    NoRoute,
    Route,
    RouteEntry,
    RoutingTable,
    Wait,
    domain_of,
    domains_entry,
    refusal,
    shadowed_domains,
    unroutable,
)
from spoolbox.routing.verify import verify

#: The smart host first in the order; an internal relay for corp.example and the
#: names under it; SMS by its own type, one gateway for one operator's domain.
TABLE = RoutingTable.build(
    [
        RouteEntry("relay", frozenset({"SMTP"})),
        RouteEntry("corp", frozenset({"SMTP"}), frozenset({"corp.example", ".corp.example"})),
        RouteEntry("sms", frozenset({"SMS"})),
        RouteEntry("anywhere", frozenset({"*"}), frozenset({"lab.test"})),
    ]
)


def test_limited_transports_come_first_whatever_their_place() -> None:
    assert TABLE.names == ("corp", "anywhere", "relay", "sms")


@pytest.mark.parametrize(
    ("address_type", "value", "transport"),
    [
        ("SMTP", "ann@corp.example", "corp"),
        ("SMTP", "ann@CORP.Example.", "corp"),  # case and a final dot do not matter
        ("SMTP", "ann@mail.eu.corp.example", "corp"),  # .corp.example: names under it
        ("SMTP", "ann@notcorp.example", "relay"),  # a suffix is not a parent domain
        ("SMTP", "ann@corp.example.org", "relay"),
        ("SMTP", "ann@example.org", "relay"),
        ("SMTP", '"a@corp.example"@example.org', "relay"),  # the last @ counts
        ("SMS", "+15551234", "sms"),
        ("SMS", "x@lab.test", "anywhere"),  # limited comes before the specific type
        ("FAX", "x@lab.test", "anywhere"),
        ("FAX", "x@sub.lab.test", None),  # lab.test without a dot: only itself
    ],
)
def test_each_address_goes_where_its_domain_says(
    address_type: str, value: str, transport: str | None
) -> None:
    decision = TABLE.decide(address_type, value=value)
    if transport is None:
        assert isinstance(decision, NoRoute), decision
    else:
        assert decision == Route(transport)


def test_without_a_value_a_limited_transport_serves_nothing() -> None:
    assert TABLE.decide("SMTP") == Route("relay")
    only = RoutingTable.build(
        [RouteEntry("corp", frozenset({"SMTP"}), frozenset({"corp.example"}))]
    )
    decision = only.decide("SMTP")
    assert isinstance(decision, NoRoute)
    assert decision.reason == (
        "no transport serves address type SMTP without a domain (corp: SMTP at corp.example)"
    )


def test_a_domain_no_transport_serves_is_refused_at_submit_saying_which_are() -> None:
    only = RoutingTable.build(
        [
            RouteEntry("corp", frozenset({"SMTP"}), frozenset({"corp.example", ".corp.example"})),
            RouteEntry("maildir", frozenset({"MAILDIR"})),
        ]
    )
    assert unroutable(only, ["SMTP:a@corp.example", "MAILDIR:root"]) == ()
    [refused] = unroutable(only, ["SMTP:bob@example.org"])
    expected = (
        "no transport serves address type SMTP at domain example.org "
        "(corp: SMTP at .corp.example, corp.example)"
    )
    assert refused.reason == expected
    assert str(refused) == f"SMTP:bob@example.org: {expected}"
    assert refusal(only, "SMTP:bob@example.org") == expected
    assert verify(only, "SMTP", "bob@example.org").text == f"undeliverable: {expected}"
    assert verify(only, "SMTP", "a@x.corp.example").transport == "corp"
    # Not about domains: the old words, every transport listed.
    assert refusal(only, "FAX:1") == (
        "no transport serves address type FAX (corp serves SMTP; maildir serves MAILDIR)"
    )


def test_a_transport_not_logged_on_may_be_the_one() -> None:
    waiting = RoutingTable.build(
        [
            RouteEntry("corp", frozenset({"SMTP"}), frozenset({"corp.example"})),
            RouteEntry("later", None),
        ]
    )
    assert waiting.decide("SMTP", value="a@example.org") == Wait(("later",))
    assert unroutable(waiting, ["SMTP:a@example.org"]) == ()


#: Postfix's transport_maps by hand: a parent domain, a name under it, the name
#: itself, written in an order that is not the closest first.
NESTED = RoutingTable.build(
    [
        RouteEntry("relay", frozenset({"SMTP"})),
        RouteEntry("corp", frozenset({"SMTP"}), frozenset({".corp.example"})),
        RouteEntry("eu", frozenset({"SMTP"}), frozenset({".eu.corp.example"})),
        RouteEntry("mx1", frozenset({"SMTP"}), frozenset({"mx1.eu.corp.example"})),
        RouteEntry("also-corp", frozenset({"SMTP"}), frozenset({".corp.example"})),
        RouteEntry("any", frozenset({"*"}), frozenset({"lab.corp.example"})),
    ]
)


@pytest.mark.parametrize(
    ("value", "transport"),
    [
        ("a@x.corp.example", "corp"),  # as close as also-corp: the first in the order
        ("a@eu.corp.example", "corp"),  # .eu.corp.example: only the names under it
        ("a@x.eu.corp.example", "eu"),
        ("a@mx1.eu.corp.example", "mx1"),  # the name itself: closest of all
        ("a@y.mx1.eu.corp.example", "eu"),  # mx1 without a dot: only itself
        ("a@lab.corp.example", "any"),  # its own name, a transport of any type
        ("a@corp.example", "relay"),  # .corp.example: not corp.example itself
        ("a@example.org", "relay"),
    ],
)
def test_the_closest_domain_entry_wins_whatever_the_order(value: str, transport: str) -> None:
    assert NESTED.decide("SMTP", value=value) == Route(transport)


def test_a_transport_that_declined_passes_to_the_next_closest() -> None:
    value = "a@mx1.eu.corp.example"
    assert NESTED.decide("SMTP", ["mx1"], value) == Route("eu")
    assert NESTED.decide("SMTP", ["mx1", "eu"], value) == Route("corp")
    assert NESTED.decide("SMTP", ["mx1", "eu", "corp"], value) == Route("also-corp")
    assert NESTED.decide("SMTP", ["mx1", "eu", "corp", "also-corp"], value) == Route("relay")


def test_a_transport_that_declined_is_passed_over() -> None:
    assert TABLE.decide("SMTP", ("corp",), value="a@corp.example") == Route("relay")


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        (".Corp.Example", ".corp.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a-b.c1", "a-b.c1"),
    ],
)
def test_domain_entries_are_written_as_routing_compares_them(text: str, entry: str) -> None:
    assert domains_entry(text) == entry


@pytest.mark.parametrize("text", ["", ".", "a b.org", "-a.org", "a..org", "@x.org", "*.x.org"])
def test_a_domain_entry_that_is_no_domain_is_refused(text: str) -> None:
    with pytest.raises(DomainError, match="is not a domain name"):
        domains_entry(text)


def test_the_domain_of_an_address() -> None:
    assert domain_of("ann@Example.ORG.") == "example.org"
    assert domain_of("jörg@bücher.example") == "xn--bcher-kva.example"
    assert domain_of("+15551234") is None
    assert domain_of("@example.org") is None
    assert domain_of("x@[192.0.2.1]") == "[192.0.2.1]"


def test_two_transports_naming_one_domain_for_one_type_are_said() -> None:
    """``corp2`` names corp.example for SMTP as ``corp`` does before it: it gets that
    mail only when ``corp`` declines it; a wildcard transport overlaps every type;
    other domains, other types, unknown types and parent/child entries say nothing."""
    table = RoutingTable.build(
        [
            RouteEntry("corp", frozenset({"SMTP"}), frozenset({"corp.example", ".corp.example"})),
            RouteEntry("eu", frozenset({"SMTP"}), frozenset({"eu.corp.example"})),
            RouteEntry("corp2", frozenset({"SMTP", "X400"}), frozenset({"corp.example"})),
            RouteEntry("fax", frozenset({"FAX"}), frozenset({"corp.example"})),
            RouteEntry("later", None, frozenset({"corp.example"})),
            RouteEntry("lab", frozenset({"*"}), frozenset({"corp.example", "lab.test"})),
            RouteEntry("relay", frozenset({"SMTP"})),
        ]
    )
    assert shadowed_domains(table) == (
        "transports 'corp' and 'corp2' both name corp.example for SMTP: 'corp' comes "
        "first and takes that mail; 'corp2' gets it only when 'corp' declines it (not me)",
        "transports 'corp' and 'lab' both name corp.example for SMTP: 'corp' comes "
        "first and takes that mail; 'lab' gets it only when 'corp' declines it (not me)",
        "transports 'corp2' and 'lab' both name corp.example for SMTP, X400: 'corp2' "
        "comes first and takes that mail; 'lab' gets it only when 'corp2' declines it "
        "(not me)",
        "transports 'fax' and 'lab' both name corp.example for FAX: 'fax' comes first "
        "and takes that mail; 'lab' gets it only when 'fax' declines it (not me)",
    )
    assert shadowed_domains(TABLE) == ()
