"""Maildir file names (https://cr.yp.to/proto/maildir.html): new unique names, and
the unique part of a name a reader has tagged with its ``:2,<flags>`` info.
"""

from __future__ import annotations

import itertools
import os
import time

from spoolbox.model import default_hostname

_counter = itertools.count(1)


def unique_name(host: str | None = None) -> str:
    """A Maildir file name: ``sec.M<usec>P<pid>Q<counter>.<host>``.

    The counter makes names from one process unique even within one microsecond;
    the pid and host make them unique across processes and machines (``host``: the
    session's ``Support.hostname``; default :func:`~spoolbox.model.default_hostname`).  ``/`` and
    ``:`` in the host name are written as ``\\057`` and ``\\072``, as the spec says.
    """
    usecs = time.time_ns() // 1000
    sec, usec = divmod(usecs, 1_000_000)
    where = (host or default_hostname()).replace("/", "\\057").replace(":", "\\072")
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{where}"


def _unique_part(name: str) -> str:
    """The name without its info (a reader moving a file to ``cur/`` appends
    ``:2,<flags>``): what stays the same for one message."""
    return name.split(":", 1)[0]
