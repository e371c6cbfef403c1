"""``spoolbox --help`` and ``import spoolbox`` import only what they need.

Counted in a fresh interpreter (``sys.modules`` after the command), not timed: the
lazy command group (spoolbox/cli/__init__.py) and the lazy public names
(spoolbox/__init__.py) keep the heavy modules out until a command needs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

import spoolbox
from spoolbox.api import client as api_client
from spoolbox.cli import COMMANDS, _common, cli

_HEAVY = (
    "rich",
    "aioimaplib",
    "uvloop",
    "asyncio",
    "sqlite3",
    "email",
    "ssl",
    "importlib.metadata",
    "spoolbox._core",
    "spoolbox.store",
    "spoolbox.profile",
    "spoolbox.api",
    "spoolbox.daemon",
    "spoolbox.model",
)

_PROBE = """
import json, sys
sys.argv = ["spoolbox", *json.loads(sys.argv[1])]
try:
    {run}
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def _modules(run: str, *args: str, cwd: Path | None = None) -> tuple[list[str], str]:
    """Every module ``run`` imported, and what it wrote to stderr."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE.format(run=run), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert r.returncode == 0, r.stderr
    modules: list[str] = json.loads(r.stdout.splitlines()[-1])
    return modules, r.stderr


def _loaded(run: str, *args: str) -> list[str]:
    """The heavy modules (:data:`_HEAVY`) and spoolbox.cli's that ``run`` imports."""
    modules, _ = _modules(run, *args)
    return [
        m
        for m in modules
        if m.startswith("spoolbox.cli.") or any(m == h or m.startswith(h + ".") for h in _HEAVY)
    ]


@pytest.mark.parametrize("args", [("--help",), ("--version",)])
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    loaded = _loaded("from spoolbox.cli import main; main()", *args)
    assert loaded == ["spoolbox.cli._common", "spoolbox.cli.os_errors"]


def test_import_spoolbox_imports_nothing_heavy() -> None:
    assert _loaded("import spoolbox") == []


def test_a_command_loads_its_module_only() -> None:
    loaded = _loaded("from spoolbox.cli import main; main()", "send", "--help")
    commands = [m for m in loaded if m.startswith("spoolbox.cli.")]
    assert commands == ["spoolbox.cli._common", "spoolbox.cli.messages", "spoolbox.cli.os_errors"]
    assert "rich" not in loaded
    assert "spoolbox.daemon" not in loaded


def test_an_offline_send_needs_no_event_loop_no_logging_and_no_provider_machinery(
    tmp_path: Path,
) -> None:
    """A ``send`` with no daemon commits one plain SQLite transaction: the async
    store, asyncio, logging, the flush machinery and the provider contract stay out
    (what kept ``spoolbox send`` slow)."""
    from spoolbox.profile import default_profile_text

    profile = tmp_path / "spoolbox.toml"
    profile.write_text(default_profile_text(tmp_path))
    imported, stderr = _modules(
        "from spoolbox.cli import main; main()",
        *("--profile", str(profile), "send", "--to", "MAILDIR:bob", "--body", "x"),
        cwd=tmp_path,
    )
    assert "queued in the store" in stderr
    modules = set(imported)
    for unwanted in (
        "asyncio",
        "logging",
        "importlib.metadata",
        "spoolbox.store.sqlite.store",
        "spoolbox.store.memory",
        "spoolbox.store.postgres_open",
        "psycopg",
        "spoolbox._core.flush",
        "spoolbox._core.runtime",
        "spoolbox.contract.provider",
        "spoolbox.contract.support",
    ):
        assert unwanted not in modules, unwanted
    assert "spoolbox.store.sqlite.transactions" in modules  # it did commit


def test_the_lazy_store_and_contract_names_still_resolve() -> None:
    import spoolbox.contract as contract
    import spoolbox.store as store
    import spoolbox.store.sqlite as sqlite_store

    assert store.SQLiteStore is sqlite_store.SQLiteStore
    assert store.MemoryStore.__name__ == "MemoryStore"
    assert contract.Support.__name__ == "Support"
    assert set(contract.__all__) <= set(dir(contract))
    for module in (store, sqlite_store, contract):
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            _ = module.Nope


def test_the_listed_short_helps_are_the_commands_own() -> None:
    ctx = click.Context(cli)
    for name, (_, _, short) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=1000) == short, name


def test_the_lazy_public_names_are_the_public_api() -> None:
    lazy = set(spoolbox._WHERE)
    assert lazy == set(spoolbox.__all__) - {"__version__"}
    for name in sorted(lazy):
        assert getattr(spoolbox, name) is not None
    assert set(spoolbox.__all__) <= set(dir(spoolbox))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = spoolbox.Nope  # type: ignore[attr-defined]


def test_the_exit_codes_repeated_for_help_agree_with_the_client() -> None:
    assert _common._EXIT_ERROR == api_client.EXIT_ERROR
    assert _common._EXIT_PROFILE == api_client.EXIT_PROFILE
    assert _common._EXIT_INTERRUPTED == api_client.EXIT_INTERRUPTED
