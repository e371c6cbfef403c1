"""The TOML profile: the store, the transports in their order, listeners, identities
and policies, parsed into a :class:`Profile` (whose ``spooler`` is a
:class:`~spoolbox.SpoolerConfig`).

``load_profile(path)`` reads the file with :mod:`tomllib` and validates every key:
an unknown key, a value of the wrong type or a bad value raises
:class:`ProfileError`, whose text names the file, the key (``[transports.local]
options.root``) and what was expected.  Relative paths in ``data_dir`` are taken
relative to the profile's directory; the store and daemon paths relative to the
data directory.

Secrets.  A transport option may be given inline (``password = "..."``), from the
environment (``password_env = "SMTP_PASSWORD"``) or from a file
(``password_file = "/etc/spoolbox/smtp.pw"``, trailing newline stripped).  Resolved
values are :class:`Secret` strings, whose ``repr`` is ``'***'``, and the profile
remembers them (:attr:`Profile.secret_values`) so the daemon can scrub them from
logs and status output.  A secret that cannot be resolved (the variable is unset,
the file is missing) does not fail the load: it is listed in
:attr:`Profile.missing` and the transport's logon reports it as *not configured*
(MAPI_E_UNCONFIGURED), which leaves that one transport's status row failed while
the rest of the spooler runs.  :func:`ask_missing_secrets` is the logon dialog:
run interactively, the daemon asks for them (unless ``logon_dialog = false``).
A listener user's password may come from ``password_env`` or ``password_file`` too
(``users = { ann = { password_env = "ANN_PW" } }``); one that cannot be resolved is
listed in :attr:`ListenerSettings.missing`, and the daemon does not start that
listener.  Every listener key is checked for its type, named in the error.

See docs/operations.md for the reference of every key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import Address, AddressError, Policy, SpoolerConfig, TransportConfig
from ..contract import LogonFlags, Support, Unconfigured

__all__ = [
    "DEFAULT_PROFILE_NAME",
    "DaemonSettings",
    "ListenerSettings",
    "MissingSecret",
    "Profile",
    "ProfileError",
    "Secret",
    "StoreSettings",
    "ask_missing_secrets",
    "default_profile_text",
    "find_profile",
    "load_profile",
    "parse_duration",
]

DEFAULT_PROFILE_NAME = "spoolbox.toml"
PROFILE_ENV = "SPOOLBOX_PROFILE"

#: Option names whose inline value is a secret (besides anything from *_env / *_file).
_SECRET_NAMES = re.compile(r"(^|_)(password|passwd|secret|token|api_key|apikey|credentials?)$")


class ProfileError(Exception):
    """The profile is missing or invalid; the text names the file and the key."""

    def __init__(self, path: Path | str, message: str, key: str | None = None) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)
        self.path = str(path)
        self.key = key


class Secret(str):
    """A secret string: behaves as ``str`` but its ``repr`` never shows the value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True, slots=True)
class MissingSecret:
    transport: str
    option: str
    source: str  # "environment variable X" / "file Y"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: str
    path: Path
    synchronous: str = "FULL"
    progress_synchronous: str = "NORMAL"


#: ``[daemon] event_loop`` values.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
#: ``[listeners.NAME] processes``: at most this many listener processes
MAX_LISTENER_PROCESSES = 64


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    socket: Path
    pid_file: Path
    nice: int = 10
    log_level: str = "INFO"
    event_loop: str = "auto"  # "auto" (uvloop if installed), "uvloop" or "asyncio"


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

    @property
    def default_sender(self) -> Address | None:
        ids = self.spooler.identities
        return ids[0] if ids else None

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``***``."""
        for value in self.secret_values:
            if value and value in text:
                text = text.replace(value, "***")
        return text


# -- small typed readers ------------------------------------------------------------------
def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"250ms"``, ``"30s"``, ``"5m"``, ``"4h"``,
    ``"5d"``; raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, not a boolean")
    seconds: float | None = None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float
            seconds = math.inf
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h|d)?\s*", value)
        if m:
            unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]
            seconds = float(m.group(1)) * unit
    if seconds is not None and math.isfinite(seconds):
        return seconds
    if seconds is not None:
        raise ValueError(f"expected a finite duration, not {value!r}")
    raise ValueError(
        f'expected a duration (seconds, or a string like "30s", "4h", "5d"), not {value!r}'
    )


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Table:
    """One TOML table being read: every key must be taken, or it is unknown."""

    def __init__(self, path: Path, where: str, data: object) -> None:
        self.path = path
        self.where = where
        if not isinstance(data, dict):
            raise ProfileError(path, f"expected a table, got {_kind(data)}", where or None)
        self.data: dict[str, Any] = data
        self.taken: set[str] = set()

    def key(self, name: str) -> str:
        if not self.where:
            return name
        return f"{self.where} {name}" if self.where.endswith("]") else f"{self.where}.{name}"

    def error(self, name: str, message: str) -> ProfileError:
        return ProfileError(self.path, message, self.key(name))

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.taken.add(name)
        return self.data.get(name)

    def text(self, name: str, default: str | None = None) -> str | None:
        v = self.raw(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.error(name, f"expected a string, got {_kind(v)} {v!r}")
        return v

    def pathname(self, name: str, default: str) -> str:
        """A string that names a file: a NUL in it could never be opened."""
        v = self.text(name, default) or default
        if "\x00" in v:
            raise self.error(name, f"expected a path, got a string with a NUL character {v!r}")
        return v

    def flag(self, name: str, default: bool) -> bool:
        v = self.raw(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.error(name, f"expected true or false, got {_kind(v)} {v!r}")
        return v

    def integer(self, name: str, default: int) -> int:
        v = self.raw(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(name, f"expected an integer, got {_kind(v)} {v!r}")
        return v

    def str_list(self, name: str) -> list[str] | None:
        v = self.raw(name)
        if v is None:
            return None
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.error(name, f"expected an array of strings, got {v!r}")
        return list(v)

    def table(self, name: str) -> _Table:
        v = self.raw(name)
        where = f"[{name}]" if not self.where else self.key(name)
        return _Table(self.path, where, {} if v is None else v)

    def done(self, allowed_hint: str = "") -> None:
        unknown = sorted(set(self.data) - self.taken)
        if unknown:
            known = ", ".join(sorted(self.taken))
            raise self.error(
                unknown[0],
                "unknown key" + (f"; expected one of: {known}" if known else "") + allowed_hint,
            )


# -- loading ------------------------------------------------------------------------------
def find_profile(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The profile to use: ``explicit``, else $SPOOLBOX_PROFILE, else ./spoolbox.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(PROFILE_ENV)
    if env:
        return Path(env)
    return Path(DEFAULT_PROFILE_NAME)


def load_profile(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    extra_secrets: Mapping[tuple[str, str], str] | None = None,
) -> Profile:
    """Read and validate a profile; raises :class:`ProfileError`.

    ``extra_secrets`` maps ``(transport, option)`` to values typed into the logon
    dialog; they fill secrets the profile could not resolve.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ProfileError(
            p, "no such profile (create one with `spoolbox init`, or pass --profile)"
        ) from None
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
    top = _Table(path, "", data)
    base = path.resolve().parent
    data_dir = base / top.pathname("data_dir", ".")
    data_dir = Path(os.path.normpath(data_dir.expanduser()))
    node = top.text("node") or socket.gethostname()
    reporting_mta = top.text("reporting_mta") or socket.getfqdn()

    def under_data(value: str) -> Path:
        return Path(os.path.normpath(data_dir / Path(value).expanduser()))

    # [store]
    st = top.table("store")
    backend = st.text("backend", "sqlite") or "sqlite"
    if backend != "sqlite":
        raise st.error("backend", f'expected "sqlite" (the only backend so far), got {backend!r}')
    sync = (st.text("synchronous", "FULL") or "FULL").upper()
    if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise st.error("synchronous", f'expected "FULL", "NORMAL", "EXTRA" or "OFF", got {sync!r}')
    progress = (st.text("progress_synchronous", "NORMAL") or "NORMAL").upper()
    if progress not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise st.error(
            "progress_synchronous",
            f'expected "NORMAL", "FULL", "EXTRA" or "OFF", got {progress!r}',
        )
    store = StoreSettings(backend, under_data(st.pathname("path", "spool.sqlite3")), sync, progress)
    st.done()

    # [daemon]
    dm = top.table("daemon")
    level = (dm.text("log_level", "info") or "info").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise dm.error(
            "log_level", f'expected "debug", "info", "warning" or "error", got {level!r}'
        )
    nice = dm.integer("nice", 10)
    if not 0 <= nice <= 19:
        raise dm.error("nice", f"expected an integer from 0 to 19, got {nice}")
    event_loop = dm.text("event_loop", "auto") or "auto"
    if event_loop not in EVENT_LOOPS:
        raise dm.error("event_loop", f'expected "auto", "uvloop" or "asyncio", got {event_loop!r}')
    daemon = DaemonSettings(
        socket=under_data(dm.pathname("socket", "spoolbox.sock")),
        pid_file=under_data(dm.pathname("pid_file", "spoolbox.pid")),
        nice=nice,
        log_level=level,
        event_loop=event_loop,
    )
    if len(os.fsencode(daemon.socket)) > 100:
        raise dm.error(
            "socket", f"the socket path {str(daemon.socket)!r} is too long for a Unix socket"
        )
    dm.done()

    # [policy]
    pol = top.table("policy")
    idle = pol.text("idle", "always") or "always"
    if idle not in ("always", "loop-lag"):
        raise pol.error("idle", f'expected "always" or "loop-lag", got {idle!r}')
    policy = _policy(pol)
    pol.done()

    # [identities]
    ids = top.table("identities")
    identities: list[Address] = []
    for i, text in enumerate(ids.str_list("senders") or []):
        try:
            identities.append(Address.parse(text))
        except AddressError as exc:
            raise ids.error(f"senders[{i}]", f"expected a TYPE:value address: {exc}") from None
    ids.done()

    # [[transports]]
    raw_ts = top.raw("transports")
    if raw_ts is None:
        raw_ts = []
    if not isinstance(raw_ts, list):
        raise top.error("transports", "expected an array of tables ([[transports]])")
    transports: list[TransportConfig] = []
    missing: list[MissingSecret] = []
    secrets: set[str] = set()
    dialog: dict[str, bool] = {}
    seen: set[str] = set()
    for i, t in enumerate(raw_ts):
        tt = _Table(path, f"[[transports]] #{i + 1}", t)
        name = tt.text("name")
        if not name:
            raise tt.error("name", "expected a transport name (letters, digits, '-_.')")
        tt.where = f"[transports.{name}]"
        if name in seen:
            raise tt.error("name", f"the transport name {name!r} is used twice")
        seen.add(name)
        provider = tt.text("provider")
        if not provider:
            raise tt.error(
                "provider", 'expected a provider: an entry-point name ("maildir") or "module:Class"'
            )
        types = tt.str_list("address_types")
        opts_t = tt.table("options")
        options, miss, found = _options(opts_t, name, base, environ, extra)
        missing.extend(miss)
        secrets |= found
        dialog[name] = tt.flag("logon_dialog", True)
        kwargs: dict[str, Any] = {
            "outbound": tt.flag("outbound", True),
            "inbound": tt.flag("inbound", True),
            "address_types": tuple(t.upper() for t in types) if types is not None else None,
            "logon_flags": LogonFlags.NO_DIALOG,
            "isolate": tt.flag("isolate", False),
        }
        tt.done()
        spec: str | type = provider
        if miss:
            spec = _unconfigured_provider(name, miss)
            kwargs["isolate"] = False  # its stand-in (which only fails logon) runs here
        try:
            transports.append(TransportConfig(name, spec, options=options, **kwargs))
        except ValueError as exc:
            raise tt.error("name", str(exc)) from None

    # [listeners.NAME]
    ls = top.table("listeners")
    listeners: list[ListenerSettings] = []
    for lname in list(ls.data):
        lt = ls.table(lname)
        lt.where = f"[listeners.{lname}]"
        kind = lt.text("kind", "smtp") or "smtp"
        if kind != "smtp":
            raise lt.error("kind", f'expected "smtp" (the submission listener), got {kind!r}')
        enabled = lt.flag("enabled", True)
        processes = lt.integer("processes", 0)
        if not 0 <= processes <= MAX_LISTENER_PROCESSES:
            raise lt.error(
                "processes",
                f"expected 0 (on the daemon's own loop) to {MAX_LISTENER_PROCESSES}, "
                f"got {processes}",
            )
        opts = {k: lt.raw(k) for k in list(lt.data) if k not in ("kind", "enabled", "processes")}
        lmissing: list[MissingSecret] = []
        if "users" in opts:
            users, lmissing, found = _listener_users(lt, lname, base, environ)
            opts["users"] = users
            secrets |= found
        _check_listener(lt, opts, lmissing)
        listeners.append(
            ListenerSettings(lname, kind, enabled, opts, processes, missing=tuple(lmissing))
        )
    ls.done()
    top.done()
    try:
        config = SpoolerConfig(
            transports=tuple(transports),
            policy=policy,
            node=node,
            identities=tuple(identities),
            reporting_mta=reporting_mta,
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
        missing=tuple(missing),
        secret_values=frozenset(secrets),
        logon_dialog=dialog,
        raw_transports=tuple(raw_ts),
    )


def _policy(pol: _Table) -> Policy:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Policy):
        if not pol.has(f.name):
            pol.taken.add(f.name)
            continue
        v = pol.raw(f.name)
        ftype = str(f.type)
        try:
            if ftype == "bool":
                if not isinstance(v, bool):
                    raise ValueError(f"expected true or false, got {_kind(v)} {v!r}")
                values[f.name] = v
            elif ftype == "int":
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"expected an integer, got {_kind(v)} {v!r}")
                values[f.name] = v
            elif ftype == "float | None":
                values[f.name] = None if v is False else parse_duration(v)
            else:
                values[f.name] = parse_duration(v)
        except ValueError as exc:
            raise pol.error(f.name, str(exc)) from None
    try:
        return Policy(**values)
    except ValueError as exc:
        raise ProfileError(pol.path, str(exc), "[policy]") from None


def _options(
    t: _Table,
    transport: str,
    base: Path,
    environ: Mapping[str, str],
    extra: Mapping[tuple[str, str], str],
) -> tuple[dict[str, Any], list[MissingSecret], set[str]]:
    options: dict[str, Any] = {}
    missing: list[MissingSecret] = []
    secrets: set[str] = set()
    for key in list(t.data):
        value = t.raw(key)
        # Only secret-named options come from the environment or a file: ``ca_file``
        # or ``pickup_file`` are plain options that happen to end the same way.
        if key.endswith(("_env", "_file")) and _SECRET_NAMES.search(key.rpartition("_")[0]):
            target = key.rpartition("_")[0]
            got, source = _secret_source(t, key, value, base, environ)
        else:
            if key in options:
                raise t.error(key, "given twice (inline and from the environment or a file)")
            options[key] = _secret_if_named(key, value, secrets)
            continue
        if target in options or target in t.data:
            raise t.error(key, f"{target!r} is given twice (inline and as {key!r})")
        if not got:
            got = extra.get((transport, target))
        if got:
            secret = Secret(got)
            secrets.add(got)
            options[target] = secret
        else:
            missing.append(MissingSecret(transport, target, source))
    return options, missing, secrets


def _secret_source(
    t: _Table, key: str, value: object, base: Path, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """The secret named by ``key`` (``X_env`` or ``X_file``) and ``value``, or None when
    the variable is unset or the file cannot be read; and where it was looked for."""
    if key.endswith("_env"):
        if not isinstance(value, str) or not value:
            raise t.error(key, f"expected the name of an environment variable, got {value!r}")
        return environ.get(value), f"environment variable {value}"
    if not isinstance(value, str) or not value or "\x00" in value:
        raise t.error(key, f"expected the path of a file holding the secret, got {value!r}")
    fpath = base / Path(value).expanduser()
    try:
        got: str | None = fpath.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError:
        got = None
    except UnicodeDecodeError:
        raise t.error(key, f"the file {fpath} is not UTF-8 text") from None
    return got, f"file {fpath}"


#: ``[listeners.NAME] users``: how one user's password may be given
_USER_KEYS = ("password", "password_env", "password_file")


def _listener_users(
    lt: _Table, listener: str, base: Path, environ: Mapping[str, str]
) -> tuple[dict[str, Secret], list[MissingSecret], set[str]]:
    """``users = { ann = "pw", bob = { password_env = "BOB_PW" } }``: each user's
    password inline, or from the environment or a file as a transport's secrets are.
    A password that cannot be resolved leaves that user out and is listed as missing
    (the listener then does not start: see :attr:`ListenerSettings.missing`)."""
    raw = lt.data["users"]
    if not isinstance(raw, dict):
        raise lt.error("users", f"expected a table of user = password, got {_kind(raw)}")
    users: dict[str, Secret] = {}
    missing: list[MissingSecret] = []
    secrets: set[str] = set()
    for user, spec in raw.items():
        where = lt.key(f"users.{user}")
        if isinstance(spec, str):
            if not spec:
                raise ProfileError(lt.path, "expected a password, got an empty string", where)
            got: str | None = spec
        elif isinstance(spec, dict):
            ut = _Table(lt.path, where, spec)
            for key in spec:
                if key not in _USER_KEYS:
                    raise ut.error(key, "unknown key; expected one of: " + ", ".join(_USER_KEYS))
            given = [k for k in _USER_KEYS if k in spec]
            if len(given) != 1:
                raise ut.error(
                    given[1] if given else "password",
                    "expected exactly one of: " + ", ".join(_USER_KEYS),
                )
            (key,) = given
            if key == "password":
                got = ut.text(key)
            else:
                got, source = _secret_source(ut, key, ut.raw(key), base, environ)
                if not got:
                    missing.append(MissingSecret(f"listener:{listener}", f"users.{user}", source))
            ut.done()
        else:
            raise ProfileError(
                lt.path,
                f"expected a password string or a table with password_env or password_file, "
                f"got {_kind(spec)}",
                where,
            )
        if got:
            users[user] = Secret(got)
            secrets.add(got)
    return users, missing, secrets


def _secret_if_named(key: str, value: Any, secrets: set[str]) -> Any:
    if isinstance(value, str) and _SECRET_NAMES.search(key):
        secrets.add(value)
        return Secret(value)
    return value


def _check_listener(lt: _Table, opts: Mapping[str, Any], missing: list[MissingSecret]) -> None:
    """Check listener keys, the type of each value, then the values with ListenerConfig,
    when the module is there."""
    try:
        from ..ingress.listener import ListenerConfig
    except ImportError:
        return
    if not dataclasses.is_dataclass(ListenerConfig):
        return
    hints = typing.get_type_hints(ListenerConfig)
    names = {f.name for f in dataclasses.fields(ListenerConfig)}
    for key, value in opts.items():
        if key not in names:
            raise lt.error(
                key,
                "unknown key; expected one of: enabled, kind, processes, "
                + ", ".join(sorted(names)),
            )
        expected = _expected_kind(hints[key], value)
        if expected is not None:
            raise lt.error(key, f"expected {expected}, got {_kind(value)} {value!r}")
    checked = dict(opts)
    if missing:  # validate as if they were there: the listener reports them at start
        checked["users"] = {**checked.get("users", {}), **{m.option: "?" for m in missing}}
    try:
        ListenerConfig(**checked)
    except (TypeError, ValueError) as exc:
        raise ProfileError(lt.path, str(exc), lt.where) from None


def _expected_kind(hint: Any, value: object) -> str | None:
    """None when ``value`` (from TOML) fits the type ``hint``; else what was expected."""
    args = set(typing.get_args(hint))
    if type(None) in args and len(args) == 2:  # X | None: TOML has no null
        (hint,) = args - {type(None)}
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    origin = typing.get_origin(hint)
    if origin is tuple:
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
        return None if ok else "an array of strings"
    return None  # users: checked by _listener_users


class _MissingSecretProvider:
    """Stands in for a transport whose credentials could not be resolved: its logon
    raises :class:`Unconfigured` naming the missing options (never their values)."""

    missing: tuple[MissingSecret, ...] = ()

    async def logon(self, support: Support, config: Mapping[str, Any], flags: LogonFlags) -> Any:
        raise Unconfigured(
            [m.option for m in self.missing],
            "; ".join(f"{m.option}: set {m.source}" for m in self.missing),
        )

    async def shutdown(self) -> None:
        return None


def _unconfigured_provider(name: str, missing: list[MissingSecret]) -> type:
    cls_name = "Unconfigured_" + re.sub(r"\W", "_", name)
    return type(cls_name, (_MissingSecretProvider,), {"missing": tuple(missing)})


def ask_missing_secrets(profile: Profile, ask: Callable[[str], str]) -> dict[tuple[str, str], str]:
    """The logon dialog: ask for each missing secret of a transport that allows it.

    Returns ``(transport, option) -> value`` to pass to :func:`load_profile` as
    ``extra_secrets``.  An empty answer leaves the secret missing.
    """
    answers: dict[tuple[str, str], str] = {}
    for m in profile.missing:
        if not profile.logon_dialog.get(m.transport, True):
            continue
        value = ask(f"{m.option} for transport {m.transport!r} (not found in {m.source}): ")
        if value:
            answers[(m.transport, m.option)] = value
    return answers


# -- the profile `spoolbox init` writes ------------------------------------------------------
def default_profile_text(data_dir: Path, *, smtp_port: int = 2525) -> str:
    """A commented profile that works at once: SQLite store in ``data_dir``, a Maildir
    transport delivering under ``data_dir/mail``, the SMTP listener on loopback."""
    mail = (data_dir / "mail").resolve()
    return f'''\
# spoolbox profile (TOML). Reference: docs/operations.md, "Profile reference".
# Relative paths: data_dir is relative to this file; the store path and the daemon's
# socket and pid file are relative to data_dir.

data_dir = "."
# node = "{socket.gethostname()}"   # this spooler's name in leases (default: host name)
# reporting_mta = "mail.example.org" # Reporting-MTA in delivery reports (default: FQDN)

[store]
backend = "sqlite"          # the embedded default
path = "spool.sqlite3"
synchronous = "FULL"        # FULL: every message taken on survives power loss
progress_synchronous = "NORMAL"  # claims and settles: a power cut may redo them (FULL: no)

[daemon]
socket = "spoolbox.sock"    # the local API (a Unix socket, mode 0600)
pid_file = "spoolbox.pid"
nice = 10                   # CPU priority is lowered by this much (0: not at all)
log_level = "info"
event_loop = "auto"         # "auto": uvloop if installed (faster), else asyncio's own

[policy]
idle = "always"             # "always" (the daemon runs at a lowered priority) or "loop-lag"
slice_budget = "5ms"        # how long a provider may run between yields
lifetime = "5d"             # give up on a message after this long in the queue
retry_base = "60s"          # first retry after a temporary failure ...
retry_factor = 2.0          # ... then doubled ...
retry_cap = "4h"            # ... up to this
router_interval = "1s"      # look for messages submitted while the daemon was away
shutdown_grace = "10s"      # on SIGTERM, let in-flight work finish this long

[identities]
# The local senders: delivery reports for them go to the inbox. The first one is
# the default sender of `spoolbox send`.
senders = ["MAILDIR:postmaster"]

# The transports, in transport order: a recipient goes to the first one that serves
# its address type.
[[transports]]
name = "local"
provider = "maildir"        # an entry point of spoolbox.transports, or "module:Class"
address_types = ["MAILDIR"]
outbound = true
inbound = true
[transports.options]
root = "{mail}"     # MAILDIR:bob is delivered to <root>/bob
# pickup = "/path/to/maildir"   # inbound: pick up messages dropped here

# An SMTP relay, for example (secrets from the environment or a file, never inline):
# [[transports]]
# name = "relay"
# provider = "smtp"
# address_types = ["SMTP"]
# logon_dialog = true       # `spoolbox run` on a terminal may ask for a missing password
# [transports.options]
# host = "smtp.example.org"
# port = 587
# username = "me@example.org"
# password_env = "SMTP_PASSWORD"        # or: password_file = "/etc/spoolbox/smtp.pw"

[listeners.submission]
kind = "smtp"               # the SMTP submission listener
enabled = true
host = "127.0.0.1"          # loopback only
port = {smtp_port}
# processes = 1             # a busy relay: the listener in a process of its own
#                           # (1.3-1.4x the messages a second here; docs/operations.md)
'''
