"""The spooler daemon, ``spoolbox run``: the process (:mod:`.process`), its local API
server (:mod:`.api_server`, :mod:`.api_ops`), its listeners (:mod:`.listeners`) and the
listener worker processes (:mod:`.listener_processes`, :mod:`.listener_worker`,
:mod:`.worker_protocol`); :mod:`.runtime` is what the daemon and a worker both set up."""

from .process import Daemon, DaemonError, run_daemon
from .runtime import RedactingFilter, configure_logging, event_loop_runner

__all__ = [
    "Daemon",
    "DaemonError",
    "RedactingFilter",
    "configure_logging",
    "event_loop_runner",
    "run_daemon",
]
