"""How long the ``spoolbox`` command takes to start: median wall time of N runs.

Runs, each as a fresh process (``python -m spoolbox.cli``, what the console script
does): ``--help``, ``send --help``, ``status`` with no daemon (exit 3), and ``send``
of a small message with no daemon (queued in the store), in a fresh data directory
made with ``spoolbox init``.  Prints the machine's Python version and CPU, and one
line per command and tree: median, min and max in seconds.

``--baseline SRC`` times another tree too (its ``src`` directory, put first on
``PYTHONPATH``; e.g. ``git archive main src | tar -x -C /tmp/main``): the two take
turns within every run, the order alternating, and the median of the per-run ratios
is printed.  ``--json PATH`` writes every per-run figure.

    .venv/bin/python bench/startup.py [-n 15] [--baseline /tmp/main/src] [--json PATH]

Wall time on a shared machine varies with the load: compare medians taken together.
``python -X importtime -m spoolbox.cli ARGS`` shows what each command imports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "spoolbox.cli"]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--baseline", metavar="SRC", help="another tree's src directory")
    parser.add_argument("--json", metavar="PATH", help="write every per-run figure here")
    opts = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("SPOOLBOX_PROFILE", "PYTHONPATH")}
    trees = {"this tree": env}
    if opts.baseline:
        trees["baseline"] = {**env, "PYTHONPATH": str(Path(opts.baseline).resolve())}
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "sbx"
        subprocess.run([*CLI, "init", "--dir", str(home)], check=True, stdout=subprocess.DEVNULL)
        profile = ["--profile", str(home / "spoolbox.toml")]
        commands = {
            "--help": [*CLI, "--help"],
            "send --help": [*CLI, "send", "--help"],
            "status (no daemon)": [*CLI, *profile, "status"],
            "send (no daemon)": [*CLI, *profile, "send", "--to", "MAILDIR:bob", "--body", "x"],
        }
        print(f"Python {platform.python_version()} on {_cpu()} ({os.cpu_count()} CPUs)")
        print(f"load average {os.getloadavg()[0]:.2f}; {opts.n} runs each; seconds")
        for name, args in commands.items():
            times: dict[str, list[float]] = {tree: [] for tree in trees}
            for tree_env in trees.values():
                _time(args, home, tree_env)  # warm the page cache and the bytecode
            for i in range(opts.n):
                order = list(trees) if i % 2 == 0 else list(reversed(trees))
                for tree in order:
                    times[tree].append(_time(args, home, trees[tree]))
            results[name] = times
            for tree, got in times.items():
                print(
                    f"{name:20} {tree:10} median {statistics.median(got):.3f}  "
                    f"min {min(got):.3f}  max {max(got):.3f}"
                )
            if "baseline" in times:
                ratios = [b / t for b, t in zip(times["baseline"], times["this tree"], strict=True)]
                print(
                    f"{name:20} baseline / this tree, median of the runs: "
                    f"{statistics.median(ratios):.2f}x"
                )
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
