"""What a loaded profile is: frozen settings of the store, the daemon, the listeners,
and the spooler's :class:`~spoolbox.SpoolerConfig`.

See docs/operations.md for the reference of every key they come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import Address, HookConfig, SpoolerConfig
from ..ingress.local_names import LocalNames
from ..store.retention import Retention
from .secrets import MissingSecret, redact

__all__ = [
    "EVENT_LOOPS",
    "LOG_FORMATS",
    "MAX_LISTENER_PROCESSES",
    "MAX_WORKERS",
    "STORE_BACKENDS",
    "DaemonSettings",
    "ListenerSettings",
    "LogSettings",
    "Profile",
    "StoreSettings",
    "WebSettings",
]


#: ``[store] backend`` values.
STORE_BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: str  # one of STORE_BACKENDS
    path: Path  # the SQLite file (backend "sqlite")
    synchronous: str = "FULL"
    progress_synchronous: str = "NORMAL"
    #: ``keep_sent``, ``keep_failed``, ``keep_inbox`` (None: "forever")
    retention: Retention = field(default_factory=Retention)
    #: backend "postgres": the connection string, a Secret (``dsn``, ``dsn_env`` or
    #: ``dsn_file``); None when it could not be resolved (``dsn_missing`` says where
    #: it was looked for, and opening the store fails with that)
    dsn: str | None = field(default=None, repr=False)
    dsn_missing: str | None = None


#: ``[daemon] event_loop`` values.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
#: ``[listeners.NAME] processes``: at most this many listener processes
MAX_LISTENER_PROCESSES = 64
#: the most ``[daemon] workers`` (delivery worker processes) a profile may ask for
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    socket: Path
    pid_file: Path
    nice: int = 0  # 0 since issue 17: a niced relay falls behind on a busy machine
    log_level: str = "INFO"
    event_loop: str = "auto"  # "auto" (uvloop if installed), "uvloop" or "asyncio"
    #: the local API socket is 0660 and owned by this group (None: 0600, owner only)
    socket_group: str | None = None
    #: delivery worker processes besides the daemon's own spooler (0: none, as before)
    workers: int = 0
    #: on a PostgreSQL store, stand by while more nodes are up on this machine than
    #: it has CPUs and the first of them serve this node's transports
    #: (:mod:`spoolbox.daemon.crowding`); False: deliver, and warn
    standby_when_crowded: bool = False
    #: where members of ``socket_group`` leave mail while the daemon is down (None: no
    #: maildrop; :mod:`spoolbox.api.maildrop`)
    maildrop: Path | None = None


@dataclass(frozen=True, slots=True)
class WebSettings:
    """``[web]``: the web page and ``/metrics`` the daemon serves (off by default;
    loopback only unless ``host`` says otherwise)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8025


#: ``[log] format`` values (``auto``: journald when stderr is the journal, else text).
LOG_FORMATS = ("auto", "text", "journald", "json")


@dataclass(frozen=True, slots=True)
class LogSettings:
    """``[log]``: the daemon's log format and level (``[daemon] log_level`` is the older
    spelling of ``level``)."""

    format: str = "auto"  # "auto", "text", "journald" or "json"
    level: str = "INFO"


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    name: str
    kind: str
    enabled: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    #: 0: the listener runs on the daemon's event loop; N: in N processes of its own
    processes: int = 0
    #: user passwords that could not be resolved (``users.NAME``): the listener does
    #: not start while any is missing (its status row names them)
    missing: tuple[MissingSecret, ...] = ()


@dataclass(frozen=True, slots=True)
class Profile:
    path: Path
    data_dir: Path
    store: StoreSettings
    daemon: DaemonSettings
    spooler: SpoolerConfig
    idle: str = "always"
    listeners: tuple[ListenerSettings, ...] = ()
    missing: tuple[MissingSecret, ...] = ()
    secret_values: frozenset[str] = frozenset()
    #: transport name -> whether it may ask for missing credentials interactively
    logon_dialog: Mapping[str, bool] = field(default_factory=dict)
    #: The raw option tables (before secret resolution), to re-resolve after a dialog.
    raw_transports: tuple[Mapping[str, Any], ...] = ()
    log: LogSettings = LogSettings()
    web: WebSettings = WebSettings()
    #: ``[local_names]``: what a recipient without a domain becomes (None: refused)
    local_names: LocalNames | None = None

    @property
    def hooks(self) -> tuple[HookConfig, ...]:
        """``[[hooks]]``: the spooler hooks in order (:mod:`spoolbox.profile.hooks`)."""
        return self.spooler.hooks

    @property
    def default_sender(self) -> Address | None:
        ids = self.spooler.identities
        return ids[0] if ids else None

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``***``."""
        return redact(text, self.secret_values)
