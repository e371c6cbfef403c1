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

Wall time on a shared machine varies with the load: compare medians taken together;
the CPU time (user + system) of each run is printed too, as it varies less.  The
commands run with the bytecode cache on (PYTHONDONTWRITEBYTECODE is dropped from
their environment), as an installed spoolbox runs.
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


def _time(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, from wait4) of one run."""
    start = time.perf_counter()
    child = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, _, usage = os.wait4(child.pid, 0)
    child.returncode = 0  # reaped by wait4: keep Popen from waiting for it again
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="runs per command (default 15)")
    parser.add_argument("--baseline", metavar="SRC", help="another tree's src directory")
    parser.add_argument("--json", metavar="PATH", help="write every per-run figure here")
    opts = parser.parse_args()
    # PYTHONDONTWRITEBYTECODE would make every run compile every module from source
    # (about 0.1 s of a `send`); an installed spoolbox has its bytecode cached.
    dropped = ("SPOOLBOX_PROFILE", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    trees = {"this tree": env}
    if opts.baseline:
        trees["baseline"] = {**env, "PYTHONPATH": str(Path(opts.baseline).resolve())}
    results: dict[str, dict[str, list[float]]] = {}
    cpu_results: dict[str, dict[str, list[float]]] = {}
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
        print(
            f"load average {os.getloadavg()[0]:.2f}; {opts.n} runs each; seconds "
            "(wall; cpu = user + system of the process); bytecode cache on"
        )
        for name, args in commands.items():
            times: dict[str, list[float]] = {tree: [] for tree in trees}
            cpu: dict[str, list[float]] = {tree: [] for tree in trees}
            for tree_env in trees.values():
                _time(args, home, tree_env)  # warm the page cache and the bytecode
            for i in range(opts.n):
                order = list(trees) if i % 2 == 0 else list(reversed(trees))
                for tree in order:
                    wall, used = _time(args, home, trees[tree])
                    times[tree].append(wall)
                    cpu[tree].append(used)
            results[name] = times
            cpu_results[name] = cpu
            for tree, got in times.items():
                print(
                    f"{name:20} {tree:10} median {statistics.median(got):.3f}  "
                    f"min {min(got):.3f}  max {max(got):.3f}  "
                    f"cpu median {statistics.median(cpu[tree]):.3f}"
                )
            if "baseline" in times:
                ratios = [b / t for b, t in zip(times["baseline"], times["this tree"], strict=True)]
                print(
                    f"{name:20} baseline / this tree, median of the runs: "
                    f"{statistics.median(ratios):.2f}x"
                )
    if opts.json:
        Path(opts.json).write_text(json.dumps({"wall": results, "cpu": cpu_results}, indent=2))


if __name__ == "__main__":
    main()
