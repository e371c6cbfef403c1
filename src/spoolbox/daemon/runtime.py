"""What both programs of the daemon set up, the daemon and a listener worker: logging
with every secret value redacted, and the event loop ``[daemon] event_loop`` names.

Both sides import this module and neither imports the other (the daemon starts the
worker as a program, ``python -m spoolbox.daemon.listener_worker``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["RedactingFilter", "configure_logging", "event_loop_runner"]


class RedactingFilter(logging.Filter):
    """Replaces every secret value of the profile in log records by ``***``."""

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
            for secret in secrets:
                if secret:
                    text = text.replace(secret, "***")
                    exc_text = exc_text.replace(secret, "***")
            record.msg, record.args = text, None
            if record.exc_info:
                record.exc_info = None
                record.exc_text = exc_text
        return True


def configure_logging(level: str, secrets: Callable[[], frozenset[str]]) -> None:
    """Log to stderr with the values ``secrets()`` gives redacted."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


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
