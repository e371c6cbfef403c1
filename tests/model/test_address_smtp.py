"""``Address.parse`` refuses what is not an SMTP address (issue 15).

``SMTP:Web <web@example.org>`` used to be accepted at submit and to fail later at the
SMTP transport with 5.1.7 (sender) or 5.1.3 (recipient).  The rule is
:func:`spoolbox.model.smtp_value_error`: an RFC 5321 path without its brackets, so
no white space, ``<`` or ``>`` outside a quoted local part.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox.model import Address, AddressError, NewMessage, smtp_value_error

# What no RFC 5321 path holds outside a quoted local part (and control characters).
_NOT_A_PATH = re.compile(r"[\s<>\x00-\x1f\x7f]")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"(?=@|$)', re.DOTALL)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "SMTP:Web <web@example.org>",
            "display names are not part of an address: use SMTP:web@example.org",
        ),
        (
            'smtp:"Web Team" <web@example.org>',
            "display names are not part of an address: use SMTP:web@example.org",
        ),
        ("SMTP:<web@example.org>", "angle brackets are not part of an address: use SMTP:web"),
        ("SMTP:web@example.org>", "contains '>' at position 15"),
        ("SMTP:web @example.org", "contains ' ' at position 3"),
        ("SMTP:web\t@example.org", "control character"),
        ("SMTP:a<b@example.org", "contains '<' at position 1"),
        ('SMTP:"john doe" @example.org', "contains ' ' at position 5"),
        ('SMTP:"john"doe x@example.org', "contains ' ' at position 9"),
    ],
)
def test_an_smtp_address_that_is_not_bare_is_refused_saying_what_to_write(
    text: str, error: str
) -> None:
    with pytest.raises(AddressError, match=re.escape(error)):
        Address.parse(text)


@pytest.mark.parametrize(
    ("text", "default_type"),
    [("Web <web@example.org>", "SMTP"), ("SMTP:Web <web@example.org>", "MAILDIR")],
)
def test_the_rule_holds_for_a_default_type_too(text: str, default_type: str) -> None:
    with pytest.raises(AddressError, match="display names"):
        Address.parse(text, default_type=default_type)


@pytest.mark.parametrize(
    "text",
    [
        "SMTP:web@example.org",
        "SMTP:root",  # local mail, a cron job's "From: root"
        "SMTP:a+b.c@[192.0.2.1]",
        'SMTP:"john doe"@example.org',  # a quoted local part may hold spaces
        'SMTP:"a<b>\\" c"@example.org',
        "MAILDIR:Web <web>",  # other types keep their values as they are
        "X400:c=us;a= ;p=x",
    ],
)
def test_bare_addresses_and_other_types_are_accepted(text: str) -> None:
    assert str(Address.parse(text)).partition(":")[2] == text.partition(":")[2]


def test_an_address_stored_before_the_rule_reads_back_with_strict_false() -> None:
    assert Address.parse("SMTP:Web <web@x.org>", strict=False) == Address("SMTP", "Web <web@x.org>")


def test_a_message_with_a_display_name_in_its_recipients_is_refused() -> None:
    from spoolbox.model import MessageError

    with pytest.raises(MessageError, match="display names"):
        NewMessage.from_bytes(
            b"From: a@x.org\r\n\r\nhi\r\n", recipients=["SMTP:Web <web@example.org>"]
        )


@given(st.text(st.sampled_from("ab@.<> \t\"'\\x\u00e9\u3000"), min_size=1, max_size=16))
@example('"\t"')  # a control character inside a quoted local part: refused too
def test_nothing_that_is_not_an_smtp_path_is_accepted(value: str) -> None:
    problem = smtp_value_error(value)
    has_control = "\t" in value  # the only control character in the alphabet
    if problem is not None or value != value.strip() or has_control:
        with pytest.raises(AddressError, match=r"."):
            Address.parse(f"SMTP:{value}")
        return
    address = Address.parse(f"SMTP:{value}")
    quoted = _QUOTED.match(address.value)
    assert _NOT_A_PATH.search(address.value[quoted.end() if quoted else 0 :]) is None


@pytest.mark.parametrize(
    ("value", "fact"),
    [
        ("bad address@x", "the SMTP address 'bad address@x' contains ' ' at position 3"),
        ("Bob <bob@example.org>", "display names are not part of an address"),
    ],
)
def test_without_advice_the_reason_says_what_and_where_and_nothing_of_spoolbox_notation(
    value: str, fact: str
) -> None:
    """For the listener's peer, an SMTP client: the same verdict, without the advice
    to write ``SMTP:bob@example.org``, which only means something to spoolbox's API."""
    advised = smtp_value_error(value)
    assert advised is not None and advised.startswith(fact + ": ") and "SMTP:" in advised
    assert smtp_value_error(value, advice=False) == fact
