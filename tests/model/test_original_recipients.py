"""``NewMessage.original_recipients``: RFC 3461's ORCPT of each recipient, checked at
construction (a clear error naming what is wrong), kept in recipient order."""

from __future__ import annotations

import pytest

from spoolbox.model import Address, MessageError, NewMessage

BOB = Address("SMTP", "bob@example.org")
CAROL = Address("SMTP", "carol@example.org")
CONTENT = b"Subject: t\r\n\r\nbody\r\n"


def _message(originals: object, *recipients: Address) -> NewMessage:
    return NewMessage(
        None,
        recipients or (BOB, CAROL),
        CONTENT,
        original_recipients=originals,  # type: ignore[arg-type]
    )


def test_given_as_a_mapping_or_pairs_kept_in_recipient_order() -> None:
    from_map = _message({CAROL: "rfc822;c@old.example", BOB: "rfc822;b@old.example"})
    from_pairs = _message([(CAROL, "rfc822;c@old.example"), (BOB, "rfc822;b@old.example")])
    assert from_map.original_recipients == from_pairs.original_recipients
    assert from_map.original_recipients == (
        (BOB, "rfc822;b@old.example"),
        (CAROL, "rfc822;c@old.example"),
    )
    assert from_map.originals() == ["rfc822;b@old.example", "rfc822;c@old.example"]
    partial = _message(((CAROL, "x-local;carol"),))
    assert partial.originals() == [None, "x-local;carol"]
    assert (partial.original_of(BOB), partial.original_of(CAROL)) == (None, "x-local;carol")
    assert _message(()).originals() == [None, None]


def test_the_first_of_two_for_one_recipient_wins() -> None:
    message = _message([(BOB, "rfc822;first@old.example"), (BOB, "rfc822;second@old.example")])
    assert message.original_recipients == ((BOB, "rfc822;first@old.example"),)
    # a recipient named twice is kept once, with the first original given for it
    twice = _message([(BOB, "rfc822;b@old.example")], BOB, CAROL, BOB)
    assert twice.recipients == (BOB, CAROL)
    assert twice.originals() == ["rfc822;b@old.example", None]


@pytest.mark.parametrize(
    ("originals", "error"),
    [
        ({Address("SMTP", "dave@example.org"): "rfc822;d@x"}, "which is not a recipient"),
        ({BOB: "bob@old.example"}, "must be an address type, ';' and the address"),
        ({BOB: "rfc822;"}, "must be an address type"),
        ({BOB: "rfc 822;bob@old.example"}, "must be an address type"),
        ({BOB: "rfc822;bob@old.example\r\nX-Evil: 1"}, "without control characters"),
        ({BOB: "rfc822;bob\x00@old.example"}, "without control characters"),
        ({BOB: "rfc822;" + "b" * 500}, "(at most 500)"),
        ({BOB: 42}, "must be text, not 42"),
        ([BOB], "must map recipients to texts"),
        ("rfc822;bob@old.example", "must map recipients to texts"),
    ],
)
def test_a_bad_original_is_refused_saying_what_is_wrong(originals: object, error: str) -> None:
    with pytest.raises(MessageError, match=error.replace("(", r"\(").replace(")", r"\)")):
        _message(originals)
