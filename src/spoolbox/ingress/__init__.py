"""Ingress: the ways messages enter the spooler from outside the Python API.

* :class:`SubmissionListener` is an SMTP submission listener (RFC 5321, on our own
  state machine in ``spoolbox.smtp.server``) so any program that speaks SMTP to localhost can
  queue mail; it answers ``250`` to DATA only after the message is durably committed.
* :func:`run_sendmail` is a ``sendmail``-compatible entry point: the message on
  stdin, the recipients as arguments or (``-t``) from the headers, sysexits exit codes.

Both take a ``submit`` callable (``spooler.submit``, or a store's submit bound to a
clock) so they depend on :mod:`spoolbox.model` only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ListenerConfig
    from .listener import SubmissionListener
    from .local_names import LocalNames
    from .sendmail import (
        EX_DATAERR,
        EX_NOINPUT,
        EX_NOPERM,
        EX_NOUSER,
        EX_OK,
        EX_SOFTWARE,
        EX_TEMPFAIL,
        EX_UNAVAILABLE,
        EX_USAGE,
        run_sendmail,
    )

#: Public name -> the module that defines it, imported on first use (PEP 562): reading
#: a profile needs ListenerConfig, not the listener's machinery.
_WHERE = {
    "ListenerConfig": "config",
    "LocalNames": "local_names",
    "SubmissionListener": "listener",
    **{
        name: "sendmail"
        for name in (
            "EX_DATAERR",
            "EX_NOINPUT",
            "EX_NOPERM",
            "EX_NOUSER",
            "EX_OK",
            "EX_SOFTWARE",
            "EX_TEMPFAIL",
            "EX_UNAVAILABLE",
            "EX_USAGE",
            "run_sendmail",
        )
    },
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "EX_DATAERR",
    "EX_NOINPUT",
    "EX_NOPERM",
    "EX_NOUSER",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "ListenerConfig",
    "LocalNames",
    "SubmissionListener",
    "run_sendmail",
]
