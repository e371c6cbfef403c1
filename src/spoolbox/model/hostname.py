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

__all__ = ["default_hostname", "usable_hostname"]

_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "localhost6"})


def usable_hostname(name: str) -> bool:
    """Whether ``name`` may stand for this host in mail: a syntactically valid DNS
    name (labels of letters, digits and inner hyphens, 253 characters at most),
    not a loopback name such as ``localhost``."""
    name = name.rstrip(".")
    if not name or len(name) > 253 or name.lower() in _LOCAL_NAMES:
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
        if usable_hostname(name):
            return name.rstrip(".")
    return "localhost"
