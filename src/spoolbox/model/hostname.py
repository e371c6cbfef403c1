"""This host's mail name: the default of the profile's ``hostname`` key.

Postfix calls it ``myhostname``.  spoolbox uses one name for the SMTP transport's
EHLO, the listener's banner and ``Received:`` lines, the ``Reporting-MTA`` and
``MAILER-DAEMON`` address of delivery reports, the Message-IDs it makes and the
unique names of Maildir files.  The profile's top-level ``hostname`` sets it; this
module computes the default once per process: the fully qualified name
(:func:`socket.getfqdn`), else the host name (:func:`socket.gethostname`), and
``localhost`` only when neither is a usable name.  (The one lookup it does, the
resolver call behind ``getfqdn``, is made on first use and remembered.)
"""

from __future__ import annotations

import functools
import re
import socket

__all__ = ["default_hostname", "is_hostname"]

_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "localhost6"})


def is_hostname(name: str) -> bool:
    """Whether ``name`` is a syntactically valid DNS host name: labels of ASCII
    letters, digits and inner hyphens, 253 characters at most (a final dot allowed)."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    return all(_NAME_RE.fullmatch(label) for label in name.split("."))


@functools.cache
def default_hostname() -> str:
    """The FQDN, else the host name, else ``localhost`` (computed once, see above)."""
    for lookup in (socket.getfqdn, socket.gethostname):
        try:
            name = lookup()
        except OSError:
            continue
        if is_hostname(name) and name.rstrip(".").lower() not in _LOCAL_NAMES:
            return name.rstrip(".")
    return "localhost"
