"""Mutation testing of the core's decision modules, one module at a time.

mutmut 3 mutates the files its configuration names and, for each mutant, runs the
tests that called the mutated function (found in a first run of the selected tests).
Its configuration is read from ``pyproject.toml`` in the working directory, so to run
one module with the tests that exercise it, this script makes a scratch directory
``mutants/<module>/`` holding links to ``src/`` and ``tests/`` and a copy of
``pyproject.toml`` whose ``[tool.mutmut]`` table is the shared one plus
``only_mutate`` (the module) and ``pytest_add_cli_args_test_selection`` (its tests).
Each module keeps its own mutmut cache there, so a second run re-tests only the
functions that changed.

    python scripts/mutation.py policy            # run, then list the survivors
    python scripts/mutation.py policy --show     # ... with the diff of each survivor
    python scripts/mutation.py --list            # the modules and their tests

``make mutation MODULE=policy`` does the first.  The scores and the survivors judged
equivalent are in docs/testing.md; run this before calling a change to one of these
modules done (it is too slow for CI).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: module key -> (the file mutated, the tests that exercise it).
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "policy": (
        "src/spoolbox/_core/policy.py",
        (
            "tests/model/test_pure_core.py",
            "tests/model/test_policy_examples.py",
            "tests/core/test_policy_ladder.py",
        ),
    ),
    "states": (
        "src/spoolbox/model/states.py",
        ("tests/model/test_pure_core.py", "tests/model/test_states_examples.py"),
    ),
    "smtp_client": (
        "src/spoolbox/smtp/client.py",
        ("tests/smtp/test_client_machine.py",),
    ),
    "routing": (
        "src/spoolbox/routing/__init__.py",
        ("tests/model/test_pure_core.py", "tests/routing/test_routing_examples.py"),
    ),
    "critsec": (
        "src/spoolbox/_core/critsec.py",
        ("tests/core/test_critsec.py",),
    ),
    "slices": (
        "src/spoolbox/_core/slices.py",
        (
            "tests/core/test_slices.py",
            "tests/core/test_scheduler.py",
            "tests/core/test_watchdog_figures.py",
            "tests/core/test_slices_mutants.py",
        ),
    ),
    "flush": (
        "src/spoolbox/_core/flush.py",
        (
            "tests/core/test_scheduler.py",
            "tests/core/test_flush_protocol.py",
            "tests/core/test_flush_outcomes.py",
            "tests/core/test_flush_mutants.py",
        ),
    ),
    "smtp_server": (
        "src/spoolbox/smtp/server.py",
        (
            "tests/smtp/test_smtp_server_machine.py",
            "tests/smtp/test_smtp_server_transcripts.py",
            "tests/smtp/test_smtp_server_mutants.py",
        ),
    ),
}


def _toml_value(value: object) -> str:
    # JSON strings, numbers, booleans and arrays of them are valid TOML values.
    return json.dumps(value)


def _pyproject_for(module: str, tests: tuple[str, ...]) -> str:
    """The repository's pyproject.toml with a per-module ``[tool.mutmut]`` table."""
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    shared = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    table = {
        **shared,
        "only_mutate": [module],
        "pytest_add_cli_args_test_selection": [t for t in tests if (ROOT / t).exists()],
    }
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items())
    # Drop the shared table (from its header to the next table) and append ours.
    stripped = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[)", "", text)
    return f"{stripped.rstrip()}\n\n[tool.mutmut]\n{body}"


def _scratch(key: str) -> tuple[Path, bool]:
    """The module's scratch directory, and whether its configuration changed (mutmut
    then tests every mutant again)."""
    module, tests = MODULES[key]
    work = ROOT / "mutants" / key
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    config = work / "pyproject.toml"
    text = _pyproject_for(module, tests)
    changed = not config.exists() or config.read_text("utf-8") != text
    config.write_text(text, "utf-8")
    return work, changed


def _mutmut(work: Path, *args: str, capture: bool = False) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        sys.exit(f"mutmut is not installed beside {sys.executable}: pip install -e '.[dev]'")
    done = subprocess.run(
        [str(exe), *args],
        cwd=work,
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if done.returncode != 0 and not capture:
        sys.exit(f"mutmut {' '.join(args)} failed in {work} (exit {done.returncode})")
    return done.stdout or ""


def _statuses(work: Path) -> dict[str, str]:
    """mutant name -> mutmut's verdict (killed, survived, no tests, timeout...)."""
    lines = _mutmut(work, "results", "--all", "true", capture=True).splitlines()
    return dict(line.strip().rsplit(": ", 1) for line in lines if ": " in line)


def _report(key: str, work: Path, show: bool) -> None:
    status = _statuses(work)
    counts = collections.Counter(status.values())
    killed = counts.get("killed", 0)
    total = sum(counts.values())
    print(f"\n{key}: {MODULES[key][0]}")
    print("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" ({total} mutants)")
    if total:
        print(f"  killed {killed}/{total} = {100 * killed / total:.1f}% (before equivalents)")
    for name, s in sorted(status.items()):
        if s != "killed":
            print(f"  {s}: {name}")
            if show:
                print(_mutmut(work, "show", name, capture=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(MODULES))
    parser.add_argument("--list", action="store_true", help="list the modules and their tests")
    parser.add_argument("--show", action="store_true", help="print each survivor's diff")
    parser.add_argument("--report", action="store_true", help="report the last run only")
    parser.add_argument("--max-children", type=int, help="parallel mutants (mutmut's default)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    if args.list or not args.modules:
        for key, (module, tests) in MODULES.items():
            print(f"{key:12} {module}\n{'':12} tests: {' '.join(tests)}")
        return
    for key in args.modules:
        work, changed = _scratch(key)
        if not args.report:
            extra = ["--max-children", str(args.max_children)] if args.max_children else []
            earlier = (work / "mutants").exists() and not changed
            before = _statuses(work) if earlier else {}
            _mutmut(work, "run", *extra)
            # mutmut keeps a verdict until the mutated function changes; a survivor of
            # an earlier run may be killed by a test written since: test it again.
            after = _statuses(work)
            again = [n for n, s in before.items() if s != "killed" and after.get(n) == s]
            if again:
                _mutmut(work, "run", *extra, *again)
        _report(key, work, args.show)


if __name__ == "__main__":
    main()
