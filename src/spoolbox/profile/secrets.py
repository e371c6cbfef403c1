"""The profile's secrets: inline, from the environment or from a file; never shown.

A transport option may be given inline (``password = "..."``), from the environment
(``password_env = "SMTP_PASSWORD"``) or from a file (``password_file =
"/etc/spoolbox/smtp.pw"``, trailing newline stripped); so may a listener user's
password (``users = { ann = { password_env = "ANN_PW" } }``).  Resolved values are
:class:`Secret` strings, whose ``repr`` is ``'***'``, and every one is collected so
the daemon can scrub them from logs and status output (:func:`redact`).  One that
cannot be resolved is a :class:`MissingSecret`: a transport missing one gets a
stand-in provider whose logon raises :class:`~spoolbox.contract.Unconfigured`
(:func:`unconfigured_provider`); :func:`ask_missing_secrets` is the logon dialog.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..contract.errors import Unconfigured
from ..model import LogonFlags
from .tables import ProfileError, Table, toml_type

if TYPE_CHECKING:
    from ..contract.support import Support

__all__ = [
    "MissingSecret",
    "Secret",
    "ask_missing_secrets",
    "listener_users",
    "redact",
    "store_dsn",
    "transport_options",
    "unconfigured_provider",
]

#: Option names whose inline value is a secret (besides anything from *_env / *_file);
#: ``pin`` is a SIM PIN (the sms transport).
_SECRET_NAMES = re.compile(r"(^|_)(password|passwd|secret|token|api_key|apikey|credentials?|pin)$")


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


#: A secret at least this long is hidden wherever it appears; a shorter one (a SIM's
#: 4-digit PIN) only where it stands alone, so that ``+15551234567`` is not shown as
#: ``+1555***567`` because the PIN is 1234.
_ANYWHERE = 8


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``: a long one wherever
    it appears, a short one where no letter or digit touches it."""
    for value in secrets:
        if not value or value not in text:
            continue
        if len(value) >= _ANYWHERE:
            text = text.replace(value, "***")
        else:
            text = re.sub(rf"(?<![^\W_]){re.escape(value)}(?![^\W_])", "***", text)
    return text


def transport_options(
    t: Table,
    transport: str,
    base: Path,
    environ: Mapping[str, str],
    extra: Mapping[tuple[str, str], str],
) -> tuple[dict[str, Any], list[MissingSecret], set[str]]:
    """A transport's ``options`` table with its secrets resolved: the options, the
    secrets that could not be, and the values of those that could."""
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
    t: Table, key: str, value: object, base: Path, environ: Mapping[str, str]
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


def listener_users(
    lt: Table, listener: str, base: Path, environ: Mapping[str, str]
) -> tuple[dict[str, Secret], list[MissingSecret], set[str]]:
    """``users = { ann = "pw", bob = { password_env = "BOB_PW" } }``: each user's
    password inline, or from the environment or a file as a transport's secrets are.
    A password that cannot be resolved leaves that user out and is listed as missing
    (the listener then does not start: see ``ListenerSettings.missing``)."""
    raw = lt.data["users"]
    if not isinstance(raw, dict):
        raise lt.error("users", f"expected a table of user = password, got {toml_type(raw)}")
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
            ut = Table(lt.path, where, spec)
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
                f"got {toml_type(spec)}",
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


def unconfigured_provider(name: str, missing: list[MissingSecret]) -> type:
    """A provider class for transport ``name`` that only fails logon, naming ``missing``."""
    cls_name = "Unconfigured_" + re.sub(r"\W", "_", name)
    return type(cls_name, (_MissingSecretProvider,), {"missing": tuple(missing)})


class _Asked(Protocol):
    """What the logon dialog reads of a :class:`~spoolbox.profile.Profile`."""

    @property
    def missing(self) -> tuple[MissingSecret, ...]: ...

    @property
    def logon_dialog(self) -> Mapping[str, bool]: ...


def ask_missing_secrets(profile: _Asked, ask: Callable[[str], str]) -> dict[tuple[str, str], str]:
    """The logon dialog: ask for each missing secret of a transport that allows it.

    Returns ``(transport, option) -> value`` to pass to
    :func:`~spoolbox.profile.load_profile` as ``extra_secrets``.  An empty answer
    leaves the secret missing.
    """
    answers: dict[tuple[str, str], str] = {}
    for m in profile.missing:
        if not profile.logon_dialog.get(m.transport, True):
            continue
        value = ask(f"{m.option} for transport {m.transport!r} (not found in {m.source}): ")
        if value:
            answers[(m.transport, m.option)] = value
    return answers


def store_dsn(
    t: Table, base: Path, environ: Mapping[str, str]
) -> tuple[Secret | None, str | None, set[str]]:
    """``[store] dsn`` / ``dsn_env`` / ``dsn_file`` (exactly one, for the PostgreSQL
    backend): the DSN as a :class:`Secret`, or None and where it was looked for; and
    the values to scrub from output (the DSN, and its password on its own)."""
    given = [k for k in ("dsn", "dsn_env", "dsn_file") if t.has(k)]
    if len(given) != 1:
        raise t.error(
            given[1] if given else "dsn",
            'backend "postgres" needs exactly one of dsn, dsn_env, dsn_file '
            "(a libpq connection string or a postgresql:// URL)",
        )
    (key,) = given
    if key == "dsn":
        got: str | None = t.text("dsn")
        source = "[store] dsn"
    else:
        got, source = _secret_source(t, key, t.raw(key), base, environ)
    if not got:
        return None, source, set()
    return Secret(got), None, {got, *_dsn_passwords(got)}


def _dsn_passwords(dsn: str) -> set[str]:
    """The password in a DSN, as written and decoded (for scrubbing; no validation)."""
    found: set[str] = set()
    if "://" in dsn:
        with contextlib.suppress(ValueError):
            raw = urllib.parse.urlsplit(dsn).password
            if raw:
                found |= {raw, urllib.parse.unquote(raw)}
    for m in re.finditer(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn):
        value = m.group(1)
        found.add(value)
        if value.startswith("'"):
            found.add(re.sub(r"\\(.)", r"\1", value[1:-1]))
    return {p for p in found if p}
