"""The library installs and runs without its extras (pyproject.toml), and the
``spoolbox`` command says which extra it needs instead of a traceback.

Two proofs of the same thing: this Python with the extras' packages blocked
(``sys.modules[name] = None``: an import of them fails as if they were not
installed), and a fresh virtual environment where only spoolbox is installed,
by pip, from a copy of this tree (so pip installs whatever the core declares).
tests/core_only_check.py is what runs in both.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spoolbox.__main__ import CLI_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
CHECK = Path(__file__).with_name("core_only_check.py")
EXTRAS = ("click", "rich", "aioimaplib", "uvloop")
HINT = "pip install 'spoolbox[cli]'"


def _blocked(code: str) -> str:
    return f"import sys\nfor name in {EXTRAS!r}:\n    sys.modules[name] = None\n{code}"


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def _assert_cli_hint(done: subprocess.CompletedProcess[str], missing: str) -> None:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"spoolbox: the command line needs the cli extra ({missing} not installed): {HINT}"
    ]


def test_the_core_declares_no_dependency_outside_an_extra() -> None:
    requires = importlib.metadata.requires("spoolbox") or []
    assert requires, "no extras in the installed metadata"
    assert [r for r in requires if "extra ==" not in r] == []
    # the cli extra is exactly what the console script checks for
    cli = [r.split(";")[0] for r in requires if 'extra == "cli"' in r]
    assert sorted(r.split(">")[0].split("<")[0].strip() for r in cli) == sorted(CLI_PACKAGES)


def test_the_library_runs_with_the_extras_blocked(tmp_path: Path) -> None:
    code = _blocked(f"import runpy\nsys.argv = ['check', {str(tmp_path)!r}]\n")
    code += f"runpy.run_path({str(CHECK)!r}, run_name='__main__')\n"
    done = _run([sys.executable, "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pip install 'spoolbox[imap]'" in done.stdout
    assert done.stdout.endswith("core ok\n")


@pytest.mark.parametrize("argv", [["--help"], ["send", "--to", "MAILDIR:bob"], []])
def test_the_command_without_click_and_rich_names_the_cli_extra(
    tmp_path: Path, argv: list[str]
) -> None:
    code = _blocked(
        f"sys.argv = ['spoolbox', *{argv!r}]\nfrom spoolbox.__main__ import main\nmain()\n"
    )
    _assert_cli_hint(_run([sys.executable, "-c", code], tmp_path), "click, rich")


def test_the_command_without_rich_alone_names_it(tmp_path: Path) -> None:
    code = "import sys\nsys.modules['rich'] = None\nsys.argv = ['spoolbox', 'status']\n"
    code += "from spoolbox.__main__ import main\nmain()\n"
    _assert_cli_hint(_run([sys.executable, "-c", code], tmp_path), "rich")


def test_a_fresh_venv_with_spoolbox_alone(tmp_path: Path) -> None:
    """pip installs spoolbox (no extra) into an empty venv: the library works, the
    command says which extra it needs.  Needs PyPI for the build backend (or pip's
    cache)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    venv = tmp_path / "venv"
    done = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    done = _run([*pip, "--disable-pip-version-check", str(tree)], tmp_path)
    assert done.returncode == 0, done.stderr

    work = tmp_path / "work"
    work.mkdir()
    done = _run([str(python), str(CHECK), str(work)], work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("core ok\n")

    _assert_cli_hint(_run([str(venv / "bin" / "spoolbox"), "--help"], work), "click, rich")
