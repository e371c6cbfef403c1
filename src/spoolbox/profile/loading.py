"""Finding and loading the TOML profile: the file read, every table checked, the
settings built into a :class:`~spoolbox.profile.Profile` (whose ``spooler`` is a
:class:`~spoolbox.SpoolerConfig`).

``load_profile(path)`` reads the file with :mod:`tomllib` and validates every key:
an unknown key, a value of the wrong type or a bad value raises
:class:`~spoolbox.profile.ProfileError`, whose text names the file, the key
(``[transports.local] options.root``) and what was expected.  Relative paths in
``data_dir`` are taken relative to the profile's directory; the store and daemon
paths relative to the data directory.  Secrets are resolved as
:mod:`spoolbox.profile.secrets` says; a listener's keys are checked against the
types of :class:`~spoolbox.ingress.config.ListenerConfig`.

See docs/operations.md for the reference of every key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import Address, AddressError, Policy, RateLimit, SpoolerConfig, TransportConfig
from ..contract import LogonFlags
from ..contract.options import Check
from ..ingress.config import ListenerConfig
from ..ingress.local_names import LocalNameError, LocalNames
from ..model import default_hostname, is_hostname
from ..routing import DomainError, domains_entry
from ..store.retention import FOREVER, Retention
from .hooks import read_hooks
from .schema import (
    EVENT_LOOPS,
    LOG_FORMATS,
    MAX_LISTENER_PROCESSES,
    MAX_WORKERS,
    STORE_BACKENDS,
    DaemonSettings,
    ListenerSettings,
    LogSettings,
    Profile,
    StoreSettings,
    WebSettings,
)
from .secrets import (
    MissingSecret,
    listener_users,
    store_dsn,
    transport_options,
    unconfigured_provider,
)
from .tables import FLAG, INTEGER, STRINGS, ProfileError, Table, parse_duration

__all__ = ["DEFAULT_PROFILE_NAME", "PROFILE_ENV", "SYSTEM_PROFILE", "find_profile", "load_profile"]

DEFAULT_PROFILE_NAME = "spoolbox.toml"
PROFILE_ENV = "SPOOLBOX_PROFILE"
#: The host's profile, for programs that run spoolbox (its sendmail) with neither
#: $SPOOLBOX_PROFILE nor a profile in their working directory: cron, as
#: /etc/postfix/main.cf is Postfix's.
SYSTEM_PROFILE = Path("/etc/spoolbox/spoolbox.toml")

_NICE = Check.of(int, low=0, high=19, what="an integer from 0 to 19")
_PORT = Check.of(int, low=1, high=65535, what="a TCP port from 1 to 65535")
#: ``[log] level`` and ``[daemon] log_level`` values.
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PROCESSES = Check.of(
    int,
    low=0,
    high=MAX_LISTENER_PROCESSES,
    what=f"0 (on the daemon's own loop) to {MAX_LISTENER_PROCESSES}",
)
_WORKERS = Check.of(
    int, low=0, high=MAX_WORKERS, what=f"0 (the daemon delivers alone) to {MAX_WORKERS}"
)


def find_profile(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The profile to use: ``explicit``, else $SPOOLBOX_PROFILE, else ./spoolbox.toml
    when it exists, else :data:`SYSTEM_PROFILE` when it exists, else ./spoolbox.toml
    (which loading then says is missing)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(PROFILE_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_PROFILE_NAME)
    if not local.exists() and SYSTEM_PROFILE.exists():
        return SYSTEM_PROFILE
    return local


def load_profile(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    extra_secrets: Mapping[tuple[str, str], str] | None = None,
) -> Profile:
    """Read and validate a profile; raises :class:`~spoolbox.profile.ProfileError`.

    ``extra_secrets`` maps ``(transport, option)`` to values typed into the logon
    dialog; they fill secrets the profile could not resolve.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        hint = "create one with `spoolbox init`, or pass --profile"
        if str(p) == DEFAULT_PROFILE_NAME:  # found by nothing: say where it was looked for
            hint += f" (looked for ${PROFILE_ENV}, ./{DEFAULT_PROFILE_NAME}, {SYSTEM_PROFILE})"
        raise ProfileError(p, f"no such profile ({hint})") from None
    except OSError as exc:
        raise ProfileError(p, f"cannot read the profile: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(p, f"not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(p, f"invalid TOML: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ProfileError(p, "invalid TOML: arrays or tables nested too deeply") from None
    return _build(p, data, os.environ if environ is None else environ, extra_secrets or {})


def _build(
    path: Path,
    data: dict[str, Any],
    environ: Mapping[str, str],
    extra: Mapping[tuple[str, str], str],
) -> Profile:
    top = Table(path, "", data)
    base = path.resolve().parent
    data_dir = base / top.pathname("data_dir", ".")
    data_dir = Path(os.path.normpath(data_dir.expanduser()))
    node = top.text("node") or socket.gethostname()
    hostname = _hostname(top)
    reporting_mta = top.text("reporting_mta") or hostname
    under_data = functools.partial(_under, data_dir)
    store, store_secrets = _store(top.table("store"), under_data, base, environ)
    daemon = _daemon(top.table("daemon"), under_data)
    log_settings = _log(top.table("log"), daemon.log_level)
    web = _web(top.table("web"))
    pol = top.table("policy")
    idle = pol.text("idle", "always") or "always"
    if idle not in ("always", "loop-lag"):
        raise pol.error("idle", f'expected "always" or "loop-lag", got {idle!r}')
    policy = _policy(pol)
    pol.done()
    identities = _identities(top.table("identities"))
    local_names = _local_names(top.table("local_names"), hostname)
    raw_ts = top.raw("transports")
    if raw_ts is None:
        raw_ts = []
    if not isinstance(raw_ts, list):
        raise top.error("transports", "expected an array of tables ([[transports]])")
    transports = _Transports(path, base, environ, extra)
    for i, t in enumerate(raw_ts):
        transports.add(Table(path, f"[[transports]] #{i + 1}", t))
    listeners, listener_secrets = _listeners(top.table("listeners"), base, environ)
    hooks = read_hooks(top, base)
    top.done()
    try:
        config = SpoolerConfig(
            transports=tuple(transports.configs),
            policy=policy,
            node=node,
            identities=tuple(identities),
            hostname=hostname,
            reporting_mta=reporting_mta,
            retention=store.retention,
            hooks=hooks,
            local_recipients=local_names.at_this_host if local_names is not None else None,
        )
    except ValueError as exc:
        raise ProfileError(path, str(exc), "transports") from None
    return Profile(
        path=path,
        data_dir=data_dir,
        store=store,
        daemon=daemon,
        spooler=config,
        idle=idle,
        listeners=tuple(listeners),
        missing=tuple(transports.missing),
        secret_values=frozenset(transports.secrets | listener_secrets | store_secrets),
        logon_dialog=transports.dialog,
        raw_transports=tuple(raw_ts),
        log=log_settings,
        web=web,
        local_names=local_names,
    )


def _hostname(top: Table) -> str:
    """The top-level ``hostname`` (Postfix's myhostname); default: the FQDN."""
    name = top.text("hostname")
    if not name:  # absent or "" (as for node): the default
        return default_hostname()
    if not is_hostname(name):
        raise top.error(
            "hostname",
            f"expected this host's DNS name (letters, digits, '-' and '.'), not {name!r}",
        )
    return name.rstrip(".")


def _under(data_dir: Path, value: str) -> Path:
    return Path(os.path.normpath(data_dir / Path(value).expanduser()))


#: ``[store]`` keys that only the SQLite backend reads.
_SQLITE_KEYS = ("path", "synchronous", "progress_synchronous")


def _store(
    st: Table, under_data: Callable[[str], Path], base: Path, environ: Mapping[str, str]
) -> tuple[StoreSettings, set[str]]:
    """``[store]``, and the secrets it holds (a PostgreSQL DSN)."""
    backend = st.text("backend", "sqlite") or "sqlite"
    if backend not in STORE_BACKENDS:
        raise st.error("backend", f'expected "sqlite" or "postgres", got {backend!r}')
    dsn: str | None = None
    dsn_missing: str | None = None
    secrets: set[str] = set()
    if backend == "postgres":
        dsn, dsn_missing, secrets = store_dsn(st, base, environ)
        # The file and its fsync levels are SQLite's (PostgreSQL's durability is the
        # server's synchronous_commit): a profile switched from init's still has them.
        sqlite_only = [k for k in _SQLITE_KEYS if st.has(k)]
        if sqlite_only:
            raise st.error(
                sqlite_only[0],
                f'{", ".join(sqlite_only)}: only for backend = "sqlite" (the file and its '
                "fsync levels; PostgreSQL's durability is the server's synchronous_commit): "
                "remove them",
            )
    else:
        for key in ("dsn", "dsn_env", "dsn_file"):
            if st.has(key):
                raise st.error(key, 'only for backend = "postgres"')
    sync = (st.text("synchronous", "FULL") or "FULL").upper()
    if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise st.error("synchronous", f'expected "FULL", "NORMAL", "EXTRA" or "OFF", got {sync!r}')
    progress = (st.text("progress_synchronous", "NORMAL") or "NORMAL").upper()
    if progress not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise st.error(
            "progress_synchronous",
            f'expected "NORMAL", "FULL", "EXTRA" or "OFF", got {progress!r}',
        )
    defaults = Retention()
    retention = Retention(
        keep_sent=_keep(st, "keep_sent", defaults.keep_sent),
        keep_failed=_keep(st, "keep_failed", defaults.keep_failed),
        keep_inbox=_keep(st, "keep_inbox", defaults.keep_inbox),
    )
    path = under_data(st.pathname("path", "spool.sqlite3"))
    store = StoreSettings(
        backend, path, sync, progress, retention, dsn=dsn, dsn_missing=dsn_missing
    )
    st.done()
    return store, secrets


def _keep(st: Table, name: str, default: float | None) -> float | None:
    """A ``[store] keep_*`` key: a duration, or "forever" (None)."""
    value = st.raw(name)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lower() == FOREVER:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise st.error(name, f'{exc}, or "{FOREVER}"') from None


def _daemon(dm: Table, under_data: Callable[[str], Path]) -> DaemonSettings:
    """``[daemon]``."""
    level = (dm.text("log_level", "info") or "info").upper()
    if level not in _LEVELS:
        raise dm.error(
            "log_level", f'expected "debug", "info", "warning" or "error", got {level!r}'
        )
    nice = dm.integer("nice", 0, _NICE)
    event_loop = dm.text("event_loop", "auto") or "auto"
    if event_loop not in EVENT_LOOPS:
        raise dm.error("event_loop", f'expected "auto", "uvloop" or "asyncio", got {event_loop!r}')
    daemon = DaemonSettings(
        socket=under_data(dm.pathname("socket", "spoolbox.sock")),
        pid_file=under_data(dm.pathname("pid_file", "spoolbox.pid")),
        nice=nice,
        log_level=level,
        event_loop=event_loop,
        socket_group=dm.text("socket_group"),
        workers=dm.integer("workers", 0, _WORKERS),
        standby_when_crowded=dm.flag("standby_when_crowded", False),
        maildrop=under_data(maildrop) if (maildrop := dm.pathname("maildrop", "")) else None,
    )
    if daemon.maildrop is not None and daemon.socket_group is None:
        raise dm.error(
            "maildrop",
            "needs socket_group: the group whose members may leave mail there while the "
            "daemon is down",
        )
    if len(os.fsencode(daemon.socket)) > 100:
        raise dm.error(
            "socket", f"the socket path {str(daemon.socket)!r} is too long for a Unix socket"
        )
    dm.done()
    return daemon


def _web(wb: Table) -> WebSettings:
    """``[web]``: ``enabled``, ``host`` (loopback by default), ``port``."""
    web = WebSettings(
        enabled=wb.flag("enabled", False),
        host=wb.text("host", "127.0.0.1") or "127.0.0.1",
        port=wb.integer("port", 8025, _PORT),
    )
    wb.done()
    return web


def _policy(pol: Table) -> Policy:
    """``[policy]``: each :class:`~spoolbox.Policy` field, a duration unless its type
    says otherwise (``false`` turns off an optional one)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Policy):
        if not pol.has(f.name):
            pol.taken.add(f.name)
            continue
        ftype = str(f.type)
        if ftype == "bool":
            values[f.name] = pol.read(f.name, FLAG)
            continue
        if ftype == "int":
            values[f.name] = pol.read(f.name, INTEGER)
            continue
        v = pol.raw(f.name)
        try:
            values[f.name] = None if v is False and ftype == "float | None" else parse_duration(v)
        except ValueError as exc:
            raise pol.error(f.name, str(exc)) from None
    try:
        return Policy(**values)
    except ValueError as exc:
        raise ProfileError(pol.path, str(exc), "[policy]") from None


def _identities(ids: Table) -> list[Address]:
    """``[identities]``: the local senders."""
    identities: list[Address] = []
    for i, text in enumerate(ids.str_list("senders") or []):
        try:
            identities.append(Address.parse(text))
        except AddressError as exc:
            raise ids.error(f"senders[{i}]", f"expected a TYPE:value address: {exc}") from None
    ids.done()
    return identities


def _local_names(table: Table, hostname: str) -> LocalNames | None:
    """``[local_names]``: what a recipient without a domain becomes; None when the
    table is absent or empty (such a recipient is refused).  ``host_names`` defaults
    to the profile's ``hostname`` and ``localhost``."""
    domain = table.text("domain") or None
    address_type = table.text("address_type") or None
    raw = table.raw("aliases")
    host_names = table.str_list("host_names")
    table.done()
    if raw is None and domain is None and address_type is None and host_names is None:
        return None
    if raw is not None and not isinstance(raw, dict):
        raise table.error("aliases", 'expected a table of names, e.g. { root = "you@example.org" }')
    aliases: dict[str, str | list[str]] = {}
    for name, value in (raw or {}).items():
        if not (
            isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise table.error(
                f"aliases.{name}", f"expected an address or an array of addresses, got {value!r}"
            )
        aliases[name] = value
    try:
        return LocalNames.build(
            aliases,
            domain=domain,
            address_type=address_type,
            host_names=[hostname, "localhost"] if host_names is None else host_names,
        )
    except LocalNameError as exc:
        key, sep, rest = str(exc).partition(": ")
        if sep and (
            key in ("domain", "address_type")
            or key.startswith("aliases")
            or key.startswith("host_names")
        ):
            raise table.error(key, rest) from None  # [local_names] aliases.root
        raise ProfileError(table.path, str(exc), table.where) from None


class _Transports:
    """``[[transports]]``, one table at a time, in transport order."""

    def __init__(
        self,
        path: Path,
        base: Path,
        environ: Mapping[str, str],
        extra: Mapping[tuple[str, str], str],
    ) -> None:
        self.path, self.base, self.environ, self.extra = path, base, environ, extra
        self.configs: list[TransportConfig] = []
        self.missing: list[MissingSecret] = []
        self.secrets: set[str] = set()
        self.dialog: dict[str, bool] = {}
        self.names: set[str] = set()

    def add(self, tt: Table) -> None:
        name = tt.text("name")
        if not name:
            raise tt.error("name", "expected a transport name (letters, digits, '-_.')")
        tt.where = f"[transports.{name}]"
        if name in self.names:
            raise tt.error("name", f"the transport name {name!r} is used twice")
        self.names.add(name)
        provider = tt.text("provider")
        if not provider:
            raise tt.error(
                "provider", 'expected a provider: an entry-point name ("maildir") or "module:Class"'
            )
        types = tt.str_list("address_types")
        domains = _domains(tt)
        max_rate = _max_rate(tt)
        options, miss, found = transport_options(
            tt.table("options"), name, self.base, self.environ, self.extra
        )
        options = _from_profile_dir(options, ("ca_file",), self.base)
        self.missing.extend(miss)
        self.secrets |= found
        self.dialog[name] = tt.flag("logon_dialog", True)
        kwargs: dict[str, Any] = {
            "outbound": tt.flag("outbound", True),
            "inbound": tt.flag("inbound", True),
            "address_types": tuple(t.upper() for t in types) if types is not None else None,
            "logon_flags": LogonFlags.NO_DIALOG,
            "isolate": tt.flag("isolate", False),
            "domains": domains,
            "max_rate": max_rate,
        }
        tt.done()
        spec: str | type = provider
        if miss:
            spec = unconfigured_provider(name, miss)
            kwargs["isolate"] = False  # its stand-in (which only fails logon) runs here
        try:
            self.configs.append(TransportConfig(name, spec, options=options, **kwargs))
        except ValueError as exc:
            raise tt.error("name", str(exc)) from None


def _max_rate(tt: Table) -> RateLimit | None:
    """``[[transports]] max_rate``: at most N messages in any period (``"14/s"``)."""
    text = tt.text("max_rate")
    if text is None:
        return None
    try:
        return RateLimit.parse(text)
    except ValueError as exc:
        raise tt.error("max_rate", str(exc)) from None


def _domains(tt: Table) -> frozenset[str] | None:
    """``[[transports]] domains``: the recipient domains the transport is limited to."""
    listed = tt.str_list("domains")
    if listed is None:
        return None
    try:
        domains = frozenset(domains_entry(d) for d in listed)
    except DomainError as exc:
        raise tt.error("domains", str(exc)) from None
    if not domains:
        raise tt.error(
            "domains", "empty: the transport would serve nothing (leave it out for every domain)"
        )
    return domains


def _listeners(
    ls: Table, base: Path, environ: Mapping[str, str]
) -> tuple[list[ListenerSettings], set[str]]:
    """``[listeners.NAME]``: the listeners, and the values of their users' passwords."""
    listeners: list[ListenerSettings] = []
    secrets: set[str] = set()
    for lname in list(ls.data):
        lt = ls.table(lname)
        lt.where = f"[listeners.{lname}]"
        kind = lt.text("kind", "smtp") or "smtp"
        if kind != "smtp":
            raise lt.error("kind", f'expected "smtp" (the submission listener), got {kind!r}')
        enabled = lt.flag("enabled", True)
        processes = lt.integer("processes", 0, _PROCESSES)
        opts = {k: lt.raw(k) for k in list(lt.data) if k not in ("kind", "enabled", "processes")}
        missing: list[MissingSecret] = []
        if "users" in opts:
            users, missing, found = listener_users(lt, lname, base, environ)
            opts["users"] = users
            secrets |= found
        _check_listener(lt, opts, missing)
        opts = _from_profile_dir(opts, ("tls_cert", "tls_key"), base)
        listeners.append(
            ListenerSettings(lname, kind, enabled, opts, processes, missing=tuple(missing))
        )
    ls.done()
    return listeners, secrets


def _from_profile_dir(options: dict[str, Any], keys: tuple[str, ...], base: Path) -> dict[str, Any]:
    """``options`` with the file names under ``keys`` made absolute: a relative one is
    taken from the profile's directory (``base``), as ``*_file`` secrets are, not from
    wherever the daemon was started (systemd starts it in ``/``)."""
    out = dict(options)
    for key in keys:
        value = out.get(key)
        if isinstance(value, str) and value:
            out[key] = str(base / os.path.expanduser(value))
    return out


def _check_listener(lt: Table, opts: Mapping[str, Any], missing: list[MissingSecret]) -> None:
    """Check listener keys, the type of each value, then the values with ListenerConfig."""
    checks = _listener_checks()
    for key, value in opts.items():
        if key not in checks:
            raise lt.error(
                key,
                "unknown key; expected one of: enabled, kind, processes, "
                + ", ".join(sorted(checks)),
            )
        check = checks[key]
        if check is not None:
            lt.check(key, check, value)
    checked = dict(opts)
    if missing:  # validate as if they were there: the listener reports them at start
        checked["users"] = {**checked.get("users", {}), **{m.option: "?" for m in missing}}
    try:
        ListenerConfig(**checked)
    except (TypeError, ValueError) as exc:
        raise ProfileError(lt.path, str(exc), lt.where) from None


@functools.cache
def _listener_checks() -> dict[str, Check | None]:
    """Each ListenerConfig field's check, worded as the profile's own (None: ``users``,
    read by :func:`~spoolbox.profile.secrets.listener_users`)."""
    hints = typing.get_type_hints(ListenerConfig)
    checks: dict[str, Check | None] = {}
    for f in dataclasses.fields(ListenerConfig):
        check = Check.of(hints[f.name], empty=True)
        checks[f.name] = {"int": INTEGER, "strs": STRINGS, "map": None}.get(check.kind, check)
    return checks


def _log(lg: Table, daemon_level: str) -> LogSettings:
    """``[log]``: ``format`` and ``level`` (by default ``[daemon] log_level``'s)."""
    fmt = lg.text("format", "auto") or "auto"
    if fmt not in LOG_FORMATS:
        raise lg.error("format", f'expected "auto", "text", "journald" or "json", got {fmt!r}')
    level = (lg.text("level") or daemon_level).upper()
    if level not in _LEVELS:
        raise lg.error("level", f'expected "debug", "info", "warning" or "error", got {level!r}')
    lg.done()
    return LogSettings(format=fmt, level=level)
