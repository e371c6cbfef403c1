"""This host's mail name: the default of the profile's ``hostname`` key.

Postfix calls it ``myhostname``.  spoolbox uses one name for the SMTP transport's
EHLO, the listener's banner and ``Received:`` lines (sendmail's too), the
``Reporting-MTA`` and ``MAILER-DAEMON`` address of delivery reports, the Message-IDs
it makes and the unique names of Maildir files.  The profile's top-level
``hostname`` sets it; this module computes the default once per process: the fully
qualified name (:func:`socket.getfqdn`), else the host name
(:func:`socket.gethostname`), and ``localhost`` only when neither is a usable name
(``getfqdn`` answers ``localhost.localdomain`` on a machine whose name resolves to a
loopback alias first: the host name is then the better answer).  The one lookup it
does, the resolver call behind ``getfqdn``, is made on first use and remembered;
:func:`my_hostname` is the same decision with the lookups as arguments.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Callable

__all__ = ["default_hostname", "is_hostname", "my_hostname", "split_host_port"]

_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOCAL_LABELS = frozenset({"localhost", "localhost4", "localhost6"})


def is_hostname(name: str) -> bool:
    """Whether ``name`` is a syntactically valid DNS host name: labels of ASCII
    letters, digits and inner hyphens, 253 characters at most (a final dot allowed)."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    return all(_NAME_RE.fullmatch(label) for label in name.split("."))


def split_host_port(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address as (host, port or
    None), the host unchecked; ValueError (naming ``text``) for a bracket not closed,
    or a port that is not a number from 1 to 65535."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected HOST, HOST:PORT or [IPv6]:PORT")
        digits = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
    else:
        host, digits = text, None
    if digits is None:
        return host, None
    if not digits.isdigit() or not 1 <= int(digits) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return host, int(digits)


def _is_local(name: str) -> bool:
    """Whether ``name`` says nothing about this host (``localhost``,
    ``localhost.localdomain``, ``localhost6`` ...)."""
    return name.lower().split(".", 1)[0] in _LOCAL_LABELS


def my_hostname(
    fqdn: Callable[[], str] = socket.getfqdn, hostname: Callable[[], str] = socket.gethostname
) -> str:
    """The FQDN if it is a valid name of this host, else the host name, else
    ``localhost``.  A name without a dot is kept as it is (not every host has a
    domain); a final dot is dropped."""
    for lookup in (fqdn, hostname):
        try:
            name = lookup().strip().rstrip(".")
        except OSError:
            continue
        if is_hostname(name) and not _is_local(name):
            return name
    return "localhost"


@functools.cache
def default_hostname() -> str:
    """:func:`my_hostname` of this machine, computed once."""
    return my_hostname()
