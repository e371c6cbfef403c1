"""Peak memory per path of a large message: how many times the message each step holds.

What it measures
----------------
Each step of a message's way through spoolbox runs alone in a fresh process
(``tests/memory/worker.py``, shared with ``tests/memory/test_memory.py``): submit
through the Python API, the SQLite store's write, read and streamed read, the memory
store, the SMTP listener taking the message from a client process on a loopback
port, the SMTP transport relaying it to Postfix's ``smtp-sink``, the Maildir
transport delivering it and picking it up into the inbox, the failure report that
returns it (in full up to 10 MiB), ``Client.submit`` into the store (as ``spoolbox
submit FILE`` does), a submit through a running daemon's local API (client and
daemon) and ``spoolbox sendmail`` reading it from stdin.  The figure is the growth
of the process's peak RSS (the kernel's high-water mark, reset just before the
step) over its RSS before the step, in MiB and as a multiple of the message size.
Where the caller hands the message over as bytes its own copy is counted (1x).

Run it::

    .venv/bin/python bench/memory.py [--sizes 1,10,50] [--steps api,listener,...]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "memory" / "worker.py"


def _worker_steps() -> tuple[str, ...]:
    # The worker's own list, imported by path (tests/ is not a package).
    spec = importlib.util.spec_from_file_location("spoolbox_memory_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    steps: tuple[str, ...] = module.STEPS
    return steps


STEPS = _worker_steps()
MIB = 1024 * 1024


def run_step(step: str, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="spoolbox-memory-") as work:
        proc = subprocess.run(
            [sys.executable, str(WORKER), step, str(size), work],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if proc.returncode != 0:
        return {"step": step, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def cell(growth: int | None, size: int) -> str:
    if growth is None:
        return "-"
    return f"{growth / MIB:7.1f} MiB {growth / size:5.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,50", help="message sizes in MiB")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    sizes = [int(float(s) * MIB) for s in args.sizes.split(",")]
    steps = args.steps.split(",")
    rows: list[dict[str, Any]] = []
    header = f"{'step':<16}" + "".join(f"{s / MIB:>20.0f} MiB" for s in sizes)
    print(header)
    for step in steps:
        results = [run_step(step, size) for size in sizes]
        rows += results
        names = [(step, "growth")]
        if step == "daemon":
            names = [("daemon (client)", "growth"), ("daemon (daemon)", "daemon_growth")]
        for name, key in names:
            line = f"{name:<16}"
            for r in results:
                line += f"{'error' if 'error' in r else cell(r.get(key), r['size']):>24}"
            print(line, flush=True)
        for r in results:
            if "error" in r:
                print(f"  {step} {r['size'] // MIB} MiB: {r['error']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
