"""This host's name for mail (Postfix's ``myhostname``): the fully qualified name,
else the host name, never ``localhost`` where a real name exists.

Pure but for two stdlib look-ups (``socket.getfqdn``, ``socket.gethostname``), which
:func:`my_hostname` takes as arguments so that tests can give it any answer."""

from __future__ import annotations

import socket
from collections.abc import Callable

__all__ = ["my_hostname"]


def _is_local(name: str) -> bool:
    """Whether ``name`` says nothing about this host (``localhost``, ``localhost.localdomain``,
    ``localhost6``...)."""
    return not name or name.lower().split(".", 1)[0] in ("localhost", "localhost4", "localhost6")


def my_hostname(
    fqdn: Callable[[], str] = socket.getfqdn, hostname: Callable[[], str] = socket.gethostname
) -> str:
    """The FQDN if it names this host, else the host name, else ``localhost``.

    ``socket.getfqdn()`` answers ``localhost`` (or ``localhost.localdomain``) on a
    machine whose name resolves to a loopback alias first: the host name is then the
    better answer.  A name without a dot is kept as it is (not every host has a
    domain)."""
    for lookup in (fqdn, hostname):
        try:
            name = lookup().strip().rstrip(".")
        except OSError:
            continue
        if not _is_local(name):
            return name
    return "localhost"
