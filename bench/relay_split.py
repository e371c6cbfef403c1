"""Relay: one daemon as ``spoolbox init`` writes it, against two daemons on one SQLite
file that each take and deliver their own mail.

The shipped profile splits the work in two processes: a listener process takes
smtp-source's mail and commits it, the daemon claims and delivers it.  The other way
to use two CPUs is two whole daemons (two nodes on one store, each with its listener
on its own loop), each taking half of smtp-source's sessions and handing each message
it takes to its own free lane in the transaction that commits it (no claim
transaction, no process in between).  This bench runs both, alternating, on the same
smtp-sink: ``one`` (``spoolbox init``, ``processes = 1``) with ``smtp-source -s 10``,
``two`` (each daemon ``processes = 0``, its own node name, the same store file) with
``smtp-source -s 5`` to each.  Reported: msg/s from the first message sent to the
sink holding them all, per run.

Run it::

    .venv/bin/python bench/relay_split.py [--messages 3000] [--runs 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _mta import Sink, free_port, smtp_source

SPOOLBOX = Path(sys.executable).parent / "spoolbox"


def _profile(directory: Path, sink_port: int, store: Path, node: str, processes: int) -> int:
    """``spoolbox init --relay`` to the sink (no TLS), the store at ``store``; the
    listener's port."""
    port = free_port()
    relay = f"127.0.0.1:{sink_port}"
    init = [str(SPOOLBOX), "init", "--dir", str(directory), "--smtp-port", str(port)]
    subprocess.run([*init, "--relay", relay], check=True, capture_output=True)
    path = directory / "spoolbox.toml"
    text = path.read_text()
    text = text.replace(f"port = {sink_port}\n", f'port = {sink_port}\ntls = "none"\n', 1)
    text = text.replace('path = "spool.sqlite3"', f'path = "{store}"')
    text = re.sub(r"processes = \d+ ", f"processes = {processes} ", text)
    path.write_text(f'node = "{node}"\n' + text)
    return port


def _start(directory: Path, port: int) -> subprocess.Popen[bytes]:
    log = (directory / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [str(SPOOLBOX), "-p", str(directory / "spoolbox.toml"), "run", "--no-dialog"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the daemon in {directory} did not listen on {port}")


def run(mode: str, n: int, root: Path) -> float:
    store = root / "shared.sqlite3"
    with Sink() as sink:
        if mode == "one":
            daemons = [(root / "a", _profile(root / "a", sink.port, store, "a", 1))]
        else:
            daemons = [(root / x, _profile(root / x, sink.port, store, x, 0)) for x in "ab"]
        procs = [_start(d, p) for d, p in daemons]
        try:
            ports = [p for _, p in daemons]
            for port in ports:  # warm-up
                smtp_source(port, 100, 5, 2048).wait()
            sink.wait_for(100 * len(ports), 60)
            base = sink.count
            per = n // len(ports)
            t0 = time.perf_counter()
            sources = [smtp_source(port, per, 10 // len(ports), 2048) for port in ports]
            for source in sources:
                source.wait()
            t1 = sink.wait_for(base + per * len(ports), 120)
            return per * len(ports) / (t1 - t0)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--runs", type=int, default=2, help="pairs of runs (the order alternates)")
    args = p.parse_args()
    for k in range(args.runs):
        for mode in ("one", "two") if k % 2 == 0 else ("two", "one"):
            root = Path(tempfile.mkdtemp(prefix=f"relay-split-{mode}-"))
            try:
                rate = run(mode, args.messages, root)
                print(f"run {k + 1}: {mode} {rate:,.0f} msg/s", flush=True)
            finally:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
