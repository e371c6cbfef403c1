"""systemd's notify protocol (sd_notify(3)) in a few lines over ``$NOTIFY_SOCKET``.

With ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` (an AF_UNIX datagram socket; a
leading ``@`` names one in the abstract namespace) and waits for ``READY=1``; with
``WatchdogSec=`` it sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and restarts the
service unless ``WATCHDOG=1`` comes at least that often.  Without ``NOTIFY_SOCKET``
every call is a no-op, so the daemon runs the same from a terminal.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger("spoolbox.daemon")


class Notifier:
    """Sends state lines (``READY=1``, ``STOPPING=1``, ``STATUS=...``) to systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address if address.startswith(("/", "\0")) else None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send ``fields`` as one datagram (newline-separated); a failure is logged
        once, never raised: systemd going away must not stop the spooler."""
        if self._address is None:
            return
        data = "\n".join(fields).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                # Never block the event loop: a receiver whose queue is full loses this
                # datagram (the next WATCHDOG=1 comes soon).
                s.setblocking(False)
                s.connect(self._address)
                s.send(data)
        except BlockingIOError:
            return
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd on %r: %s", self._address, exc)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), in seconds; None
    when no watchdog is asked of this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000
