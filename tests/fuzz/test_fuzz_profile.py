"""Fuzz target: the profile loader (:func:`spoolbox.profile.load_profile`).

Hypothesis writes TOML documents from the profile's own keys (and unknown ones), with
values of every TOML type, odd strings (``~`` paths, NUL, very long), huge and
non-finite numbers, deep nesting, and plain garbage.  Whatever the file holds:

* ``load_profile`` returns a :class:`~spoolbox.profile.Profile` or raises
  :class:`~spoolbox.profile.ProfileError`, never anything else;
* when the file is valid TOML, the error names a key (``ProfileError.key``), and its
  text starts with the file and that key;
* a profile that loads has sane values: durations are finite numbers, ``nice`` and
  ``processes`` in range, the store is SQLite.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import tomllib
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from fuzz_settings import budget
from hypothesis import example, given
from hypothesis import strategies as st

from spoolbox import Policy
from spoolbox.profile import MAX_LISTENER_PROCESSES, Profile, ProfileError, load_profile


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml(value: Any) -> str:
    """``value`` as an inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_toml_string(k)} = {_toml(v)}" for k, v in value.items()) + "}"


_STRINGS = st.one_of(
    st.sampled_from(
        [
            "",
            "x",
            "sqlite",
            "FULL",
            "normal",
            "info",
            "auto",
            "uvloop",
            "always",
            "loop-lag",
            "smtp",
            "maildir",
            "SMTP:a@b.c",
            "MAILDIR:postmaster",
            "no type",
            "30s",
            "250ms",
            "5d",
            "1.5h",
            "9" * 400,
            "~",
            "~/x",
            "~nobody/x",
            "~\x00",
            "a\x00b",
            "/",
            ".",
            "..",
            "x" * 120,
            "127.0.0.1",
            "::1/128",
            "10.0.0.0/33",
            "module:Class",
            "a\nb",
        ]
    ),
    st.text(max_size=20),
)
_SCALARS = st.one_of(
    _STRINGS,
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 19, 20, 64, 65, 65536, 2**63 - 1, 10**400]),
    st.floats(),
    st.dates(),
    st.datetimes(),
    st.times(),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)

_POLICY_KEYS = [f.name for f in dataclasses.fields(Policy)] + ["idle"]
_LISTENER_KEYS = [
    "kind",
    "enabled",
    "processes",
    "host",
    "port",
    "max_message_size",
    "max_recipients",
    "max_line_length",
    "require_auth",
    "users",
    "allow_plain_auth",
    "relay_networks",
    "local_domains",
    "hostname",
    "default_address_type",
    "tls_cert",
    "tls_key",
    "idle_timeout",
    "shutdown_grace",
]
_OPTION_KEYS = [
    "root",
    "host",
    "port",
    "password",
    "password_env",
    "password_file",
    "token_file",
    "ca_file",
    "pickup",
]


def _table(keys: list[str], extra: st.SearchStrategy[Any] = _VALUES) -> st.SearchStrategy[Any]:
    """A table of some of ``keys`` (and maybe an unknown one), or now and then not a table."""
    table = st.dictionaries(st.sampled_from([*keys, "unknown"]), extra, max_size=4)
    return st.one_of(table, table, table, _SCALARS)


_TRANSPORT = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["local", "relay", "local"]) | _STRINGS,
        "provider": st.sampled_from(["maildir", "smtp"]) | _STRINGS,
    },
    optional={
        "address_types": _VALUES,
        "options": _table(_OPTION_KEYS),
        "logon_dialog": _VALUES,
        "outbound": _VALUES,
        "inbound": _VALUES,
        "unknown": _VALUES,
    },
)
_DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "data_dir": _VALUES,
        "node": _VALUES,
        "reporting_mta": _VALUES,
        "store": _table(["backend", "path", "synchronous", "progress_synchronous"]),
        "daemon": _table(["socket", "pid_file", "nice", "log_level", "event_loop"]),
        "policy": _table(_POLICY_KEYS),
        "identities": _table(["senders"]),
        "transports": st.one_of(st.lists(_TRANSPORT | _VALUES, max_size=3), _SCALARS),
        "listeners": st.dictionaries(_STRINGS, _table(_LISTENER_KEYS), max_size=2) | _SCALARS,
        "unknown": _VALUES,
    },
)


def _as_text(document: dict[str, Any]) -> str:
    return "".join(f"{_toml_string(k)} = {_toml(v)}\n" for k, v in document.items())


_TEXT = st.one_of(
    st.builds(_as_text, _DOCUMENT),
    st.builds(_as_text, _DOCUMENT),
    st.builds(_as_text, _DOCUMENT),
    st.builds(lambda n: "a = " + "[" * n + "]" * n + "\n", st.integers(1, 3000)),
    st.builds(lambda n: "a = " + "{b = " * n + "1" + "}" * n + "\n", st.integers(1, 3000)),
    st.text(max_size=200),
)


def _check_loaded(profile: Profile) -> None:
    for path in (
        profile.data_dir,
        profile.store.path,
        profile.daemon.socket,
        profile.daemon.pid_file,
    ):
        assert "\x00" not in str(path), f"a path no system call can take: {path!r}"
    assert profile.store.backend == "sqlite"
    assert 0 <= profile.daemon.nice <= 19
    for field in dataclasses.fields(Policy):
        value = getattr(profile.spooler.policy, field.name)
        if isinstance(value, float):
            assert math.isfinite(value), f"policy.{field.name} = {value}"
    for listener in profile.listeners:
        assert 0 <= listener.processes <= MAX_LISTENER_PROCESSES


@budget(100)
@given(text=_TEXT)
@example(text="a = " + "[" * 2000 + "]" * 2000 + "\n").via("deep nesting: RecursionError")
@example(text='[store]\npath = "~\\u0000"\n').via("a NUL after ~: ValueError from expanduser")
@example(text='data_dir = "a\\u0000b"\n').via("a NUL in the data directory")
@example(
    text='[[transports]]\nname = "r"\nprovider = "smtp"\n[transports.options]\n'
    'password_file = "a\\u0000b"\n'
).via("a NUL in a secret's file name: ValueError from open")
@example(text="[listeners.s]\nlocal_domains = [1]\n").via("local_domains not strings")
@example(text="[policy]\nlifetime = nan\n").via("a NaN duration")
@example(text="[policy]\nretry_cap = 1" + "0" * 400 + "\n").via("an int too large for a float")
def test_profile_loads_or_raises_profile_error_naming_the_key(text: str) -> None:
    try:
        document: dict[str, Any] | None = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        document = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spoolbox.toml"
        path.write_text(text, encoding="utf-8")
        error: ProfileError | None = None
        try:
            profile = load_profile(path, environ={})
        except ProfileError as exc:
            error = exc
    if error is None:
        _check_loaded(profile)
    elif document is not None:
        assert error.key, f"no key named in {error}"
        assert str(error).startswith(f"{path}: {error.key}: ")


def test_a_secret_file_that_is_not_utf8_is_a_profile_error(tmp_path: Path) -> None:
    """Found reading the loader for this target: ``read_text`` raised UnicodeDecodeError."""
    (tmp_path / "pw").write_bytes(b"\xff\xfe secret")
    path = tmp_path / "spoolbox.toml"
    path.write_text(
        '[[transports]]\nname = "r"\nprovider = "smtp"\n'
        '[transports.options]\npassword_file = "pw"\n'
    )
    with pytest.raises(ProfileError, match="not UTF-8") as caught:
        load_profile(path, environ={})
    assert caught.value.key == "[transports.r] options.password_file"
