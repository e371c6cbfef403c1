"""The spooler daemon (``spoolbox run``): the process, its local API server, its listeners."""

from .process import (
    Daemon,
    DaemonError,
    RedactingFilter,
    configure_logging,
    event_loop_runner,
    run_daemon,
)

__all__ = [
    "Daemon",
    "DaemonError",
    "RedactingFilter",
    "configure_logging",
    "event_loop_runner",
    "run_daemon",
]
