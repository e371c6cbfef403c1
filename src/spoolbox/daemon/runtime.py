"""What both programs of the daemon set up, the daemon and a listener worker: logging
in the ``[log] format`` (:mod:`.log_format`) with every secret value redacted, and
the event loop ``[daemon] event_loop`` names.

Both sides import this module and neither imports the other (the daemon starts the
worker as a program, ``python -m spoolbox.daemon.listener_worker``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from ..profile.secrets import redact
from .log_format import FIELDS_ATTR, make_formatter

__all__ = ["RedactingFilter", "configure_logging", "event_loop_runner", "set_log_level"]

#: Libraries whose own warnings repeat what spoolbox says in one line of its own (the
#: pool's "discarding closed connection" for each connection a PostgreSQL restart cut,
#: where the store logs "the store is unavailable: ..." once): shown at DEBUG only.
_CHATTY_LIBRARIES = ("psycopg", "psycopg.pool")


class RedactingFilter(logging.Filter):
    """Replaces every secret value of the profile in log records by ``***``: in the
    message, the traceback and the structured fields (every format writes only
    these), so it is the one place that redacts."""

    def __init__(self, secrets: Callable[[], frozenset[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets()
        if not secrets:
            return True
        text = record.getMessage()
        exc_text = ""
        if record.exc_info:
            exc_text = logging.Formatter().formatException(record.exc_info)
        if any(secret in text or secret in exc_text for secret in secrets if secret):
            record.msg, record.args = redact(text, secrets), None
            if record.exc_info:
                record.exc_info = None
                record.exc_text = redact(exc_text, secrets)
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            setattr(
                record,
                FIELDS_ATTR,
                {k: redact(v, secrets) if isinstance(v, str) else v for k, v in fields.items()},
            )
        return True


def configure_logging(
    level: str,
    secrets: Callable[[], frozenset[str]],
    fmt: str = "text",
    *,
    worker: str | None = None,
    delivery: str | None = None,
) -> None:
    """Log to stderr in format ``fmt`` (text, journald, json; see :mod:`.log_format`)
    with the values ``secrets()`` gives redacted; ``worker`` names a listener worker,
    ``delivery`` a delivery worker."""
    # No format of ours shows a record's thread, process or process name (a listener
    # worker's pid is written into its format once): logging need not look them up
    # for every record (its documented switches; a line a delivered message).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(fmt, worker=worker, delivery=delivery))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_log_level(level)


def set_log_level(level: str) -> None:
    """Log at ``level`` (a name: ``INFO``) from now on; at any level above DEBUG the
    chatty libraries say only their errors."""
    logging.getLogger().setLevel(level)
    quiet = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.NOTSET)


def event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run`` or ``uvloop.run`` for ``[daemon] event_loop``.

    ``auto`` takes uvloop when it is installed (the ``uvloop`` extra), else asyncio's:
    libuv's event loop and transports cut the per-message cost of the daemon's
    network I/O (see docs/benchmarks.md, relay).
    ``uvloop`` insists on it; ``asyncio`` is the standard library's loop.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ImportError(
                    '"uvloop" is asked for, but uvloop is not installed '
                    "(pip install 'spoolbox[uvloop]', or event_loop = \"auto\")"
                ) from None
        else:
            return uvloop.run
    return asyncio.run
