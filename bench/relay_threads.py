"""Where the relay's CPU goes, thread by thread: ``spoolbox init``'s profile relaying
one batch (``bench/relay.py``'s ``spoolbox-init`` system: smtp-source -> the daemon's
listener process -> the daemon -> smtp-sink), and for each thread of the daemon and of
its listener process the user and system CPU time and the voluntary and involuntary
context switches per message, read from ``/proc/PID/task/TID/{stat,status}`` before
and after the batch (the warm-up batch not counted).

The event loop's thread and the store's thread of each process show apart (the
threads are named ``spoolbox``/``python`` and by their ids; the busier one of a
process is its loop).  A thread's context switches per message say how often it
waited (voluntary: for the GIL, the store's queue, the disk) or was preempted
(involuntary: the two CPUs were busy).

    .venv/bin/python bench/relay_threads.py --messages 3000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import relay  # bench/ is on the path: this script's directory
from _counts import process_tree

_TICK = os.sysconf("SC_CLK_TCK")


def snapshot(pids: list[int]) -> dict[tuple[int, int], tuple[str, int, int, int, int]]:
    """Per (pid, tid): name, utime and stime (clock ticks), voluntary and involuntary
    context switches."""
    out: dict[tuple[int, int], tuple[str, int, int, int, int]] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                head, tail = (task / "stat").read_text().rsplit(")", 1)
                status = (task / "status").read_text()
            except OSError:
                continue  # ended meanwhile
            fields = tail.split()
            vol = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
            invol = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
            name = head.split("(", 1)[1]
            out[(pid, int(task.name))] = (name, int(fields[11]), int(fields[12]), vol, invol)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    args = p.parse_args(argv)
    n = args.messages

    def one(name: str, workdir: Path, bench_args: Any) -> dict[str, float]:
        with relay._warmed(name, workdir, bench_args) as (port, sink, root):
            pids = process_tree(root)
            before = snapshot(pids)
            relay.batch(port, sink, n, bench_args)
            time.sleep(1.0)  # the last settles
            after = snapshot(pids)
        print(f"{n} messages; CPU in ms a message, context switches a message")
        print("| process | thread | user | system | voluntary | involuntary |")
        print("|---|---|---:|---:|---:|---:|")
        for key, (tname, ut, st, vol, inv) in sorted(after.items()):
            if key not in before:
                continue
            _, ut0, st0, vol0, inv0 = before[key]
            if (ut - ut0) + (st - st0) + (vol - vol0) + (inv - inv0) == 0:
                continue
            who = "daemon" if key[0] == root else f"child {key[0]}"
            print(
                f"| {who} | {tname} {key[1]} | {(ut - ut0) * 1000 / _TICK / n:.3f} "
                f"| {(st - st0) * 1000 / _TICK / n:.3f} | {(vol - vol0) / n:.2f} "
                f"| {(inv - inv0) / n:.2f} |"
            )
        raise SystemExit(0)

    relay.one = one  # type: ignore[assignment]
    return relay.main(["--runs", "1", "--systems", "spoolbox-init", "--fsync-runs", "0"])


if __name__ == "__main__":
    sys.exit(main())
