"""Addresses in the form ``TYPE:value`` (MAPI's PR_ADDRTYPE + PR_EMAIL_ADDRESS).

A recipient is routed to a transport by its *address type* alone, so the type is
part of the address: ``SMTP:bob@example.org``, ``MAILDIR:/var/mail/bob``,
``FAX:+15551234``.  Types are case-insensitive and kept upper-case.  Values are
opaque to the spooler except that they may never contain control characters
(CR, LF, NUL and the rest): an address ends up in headers and protocol lines,
and a line break inside one is header injection.

:meth:`Address.parse` (what a submitter's text goes through) is stricter for
``SMTP`` addresses: the value is an RFC 5321 path without its angle brackets, so a
display name (``SMTP:Web <web@example.org>``), angle brackets or white space are
refused at once (:func:`smtp_value_error` says why) instead of being queued and
failing at the SMTP transport (``5.1.7``/``5.1.3``).  The constructor stays as it
was, so that an address stored before the rule can still be read back
(``parse(..., strict=False)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spoolbox._quick import quick_init

__all__ = ["Address", "AddressError", "destination", "smtp_value_error"]

_SMTP = "SMTP"  # the Internet mail address type

_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,31}\Z")  # \Z: "$" would allow a final \n
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_VALUE = 998  # RFC 5322 line limit; no address value is ever longer
#: What an SMTP path cannot carry outside a quoted local part.
_NOT_IN_SMTP_RE = re.compile(r"[\s<>]")
_QUOTED_LOCAL_RE = re.compile(r'"(?:[^"\\]|\\.)*"(?=@|\Z)', re.DOTALL)  # RFC 5321 Quoted-string
_DISPLAY_FORM_RE = re.compile(r"([^<>]*?)\s*<([^<>\s]+)>\s*", re.DOTALL)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def destination(value: str) -> str:
    """The destination of an address value: the domain after its last "@" in ASCII
    lower case (``Bob@Example.ORG`` -> ``example.org``), or the whole value when it
    has no "@" (``+15551234``).  A transport's back-off and its
    ``destination_concurrency`` count by it; the stores compute the same in their
    claims (only ASCII letters are folded, so that a database's own ``lower`` and
    its collation never make a different key)."""
    at = value.rfind("@")
    return value if at < 0 else value[at + 1 :].translate(_ASCII_LOWER)


def smtp_value_error(value: str, *, advice: bool = True) -> str | None:
    """Why ``value`` cannot be the value of an ``SMTP`` address, or None if it can;
    with ``advice``, what to write instead in spoolbox's own notation (the API, the
    profile, the command line: ``SMTP:bob@example.org``), which an SMTP client, the
    listener's peer, has no use for.

    The value is the address as MAIL FROM and RCPT TO carry it, without angle
    brackets (RFC 5321 ``Mailbox``): no display name, no ``<>``, no white space
    except inside a quoted local part (``"john doe"@example.org`` is an address).
    A missing ``@`` is allowed (``SMTP:root``: local mail, as a cron job's
    ``From: root`` gives it).
    """
    quoted = _QUOTED_LOCAL_RE.match(value)
    rest = value[quoted.end() :] if quoted is not None else value
    found = _NOT_IN_SMTP_RE.search(rest)
    if found is None:
        return None
    position = found.start() + (quoted.end() if quoted is not None else 0)
    form = _DISPLAY_FORM_RE.fullmatch(value)
    if form is not None:
        what = "display names are" if form.group(1) else "angle brackets are"
        said = f"{what} not part of an address"
        return f"{said}: use {_SMTP}:{form.group(2)}" if advice else said
    said = f"the {_SMTP} address {value!r} contains {found.group()!r} at position {position}"
    return f"{said}: write the bare address, e.g. {_SMTP}:bob@example.org" if advice else said


class AddressError(ValueError):
    """An address string is malformed; the message says what and where."""


@quick_init
@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A typed address. Build with :meth:`parse` or :meth:`of`; ``str()`` gives it back."""

    type: str
    value: str

    def __post_init__(self) -> None:
        if not _TYPE_RE.match(self.type):
            raise AddressError(
                f"invalid address type {self.type!r}: expected a letter followed by up to 31 "
                "letters, digits or '_.+-'"
            )
        if self.type != self.type.upper():
            object.__setattr__(self, "type", self.type.upper())
        if not self.value:
            raise AddressError(f"empty address value for type {self.type}")
        if len(self.value) > _MAX_VALUE:
            raise AddressError(
                f"address value for type {self.type} is {len(self.value)} characters long; "
                f"the limit is {_MAX_VALUE}"
            )
        bad = _CONTROL_RE.search(self.value)
        if bad is not None:
            raise AddressError(
                f"address {self.type}:{self.value[: bad.start()]!s}… contains the control "
                f"character {bad.group()!r} at position {bad.start()} (header injection?)"
            )
        if self.value != self.value.strip():
            raise AddressError(f"address value {self.value!r} has leading or trailing spaces")

    @classmethod
    def parse(cls, text: str, *, default_type: str | None = None, strict: bool = True) -> Address:
        """Parse ``TYPE:value``.

        With ``default_type`` a bare value without a type prefix is accepted
        (``bob@example.org`` with ``default_type="SMTP"``).  A colon inside the
        value is fine once a type is present (``MAILDIR:/a:b``).  An ``SMTP``
        value must be a bare address (:func:`smtp_value_error`); ``strict=False``
        skips that check, for reading back what was stored before it existed.
        """
        if not isinstance(text, str):
            raise AddressError(f"address must be a str, not {type(text).__name__}")
        head, sep, tail = text.partition(":")
        if sep and _TYPE_RE.match(head):
            address = cls(head, tail)
        elif default_type is not None:
            address = cls(default_type, text)
        else:
            raise AddressError(
                f"address {text!r} has no type: write it as TYPE:value, e.g. SMTP:{text}"
            )
        if strict and address.type == _SMTP:
            problem = smtp_value_error(address.value)
            if problem is not None:
                raise AddressError(problem)
        return address

    @classmethod
    def of(cls, type_: str, value: str) -> Address:
        return cls(type_, value)

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"
