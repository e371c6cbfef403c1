"""Which recipients are refused at submit: ``unroutable`` / ``refusal`` by example.

The rule: exactly those the router would fail at once (``NoRoute``); never one that
would wait for a transport whose types are unknown; nothing with an empty table.
"""

from __future__ import annotations

import pytest

from spoolbox.routing import RouteEntry, RoutingTable, describe_unroutable, refusal, unroutable


def table(*entries: tuple[str, set[str] | None]) -> RoutingTable:
    return RoutingTable.build(
        RouteEntry(name, None if types is None else frozenset(types)) for name, types in entries
    )


LOCAL = table(("local", {"MAILDIR"}))


@pytest.mark.parametrize(
    ("routes", "recipient", "refused"),
    [
        (LOCAL, "MAILDIR:bob", None),
        (LOCAL, "maildir:bob", None),  # types compare upper-case
        (
            LOCAL,
            "SMTP:bob@example.org",
            "no transport serves address type SMTP (local serves MAILDIR)",
        ),
        (
            LOCAL,
            "smtp:bob@example.org",
            "no transport serves address type SMTP (local serves MAILDIR)",
        ),
        (table(("local", {"MAILDIR"}), ("later", None)), "SMTP:bob@x.org", None),  # may wait
        (table(("relay", {"*"})), "FAX:+1555", None),  # a wildcard serves all
        (
            table(("in", set()), ("local", {"MAILDIR", "X400"})),
            "FAX:+1555",
            "no transport serves address type FAX (in serves no address type; "
            "local serves MAILDIR, X400)",
        ),
        (RoutingTable(()), "SMTP:bob@x.org", None),  # a daemon between two profiles
    ],
)
def test_refusal(routes: RoutingTable, recipient: str, refused: str | None) -> None:
    assert refusal(routes, recipient) == refused


def test_unroutable_names_each_refused_recipient_in_order() -> None:
    refused = unroutable(LOCAL, ["SMTP:a@x.org", "MAILDIR:b", "FAX:+1"])
    assert [(u.recipient, u.address_type) for u in refused] == [
        ("SMTP:a@x.org", "SMTP"),
        ("FAX:+1", "FAX"),
    ]
    assert describe_unroutable(refused) == (
        "refused, nothing queued: "
        "SMTP:a@x.org: no transport serves address type SMTP (local serves MAILDIR); "
        "FAX:+1: no transport serves address type FAX (local serves MAILDIR). "
        "Add a transport for that address type to the profile, or write the recipient "
        "with a type a transport serves"
    )
