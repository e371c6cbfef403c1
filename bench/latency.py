"""Relay latency: submit one message to an idle system, time until it is at the sink.

What it measures
----------------
One message at a time (N sequential messages, default 200, about 2 KB each, with a
pause between them so the system under test is idle when each arrives), the time from
the start of the submission until ``smtp-sink`` has received the message's final dot
(the sink's own ``-c`` counter, read from its output by a thread that timestamps each
change with ``time.perf_counter``).  Reported per system: p50, p99 and max of that
latency in ms, and the p50 of the time until the submission returned (``250`` to the
final dot, or the API call returned).

Systems, each with a fresh sink, data directory and process per run (order rotates):

* ``wire``: ``smtplib`` straight to smtp-sink (a new connection per message): the
  floor of this measurement on this machine;
* ``spoolbox api``: ``spoolbox.client.Client.submit`` (the daemon's local API over its
  Unix socket; returns once the message is durably committed) to the ``spoolbox run``
  daemon relaying to the sink through the ``smtp`` transport (same profile as
  ``bench/relay.py``: SQLite ``synchronous = "FULL"``, ``tls = "none"``,
  ``max_connections = 10``, ``idle = "always"``, ``nice = 0``);
* ``spoolbox smtp``: ``smtplib`` to the daemon's SMTP submission listener;
* ``postfix smtp``: ``smtplib`` to a private Postfix instance relaying to the sink
  (the instance of ``bench/relay.py``).

Before the timed messages every system relays a few warm-up messages (connections to
the sink are open, code paths are warm).  The table shows medians over runs of each
run's percentiles.

Run it (as root, for the private Postfix instance; installs Postfix if missing)::

    .venv/bin/python bench/latency.py [--messages 200] [--runs 3] [--gap-ms 50]
        [--dir /path/on/the/disk] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import smtplib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path

from _mta import PostfixRelay, Sink, SpoolboxDaemon, ensure_peers, log, machine
from spoolbox import Address, NewMessage
from spoolbox.client import Client

SYSTEMS = ("wire", "spoolbox api", "spoolbox smtp", "postfix smtp")
SENDER = "from@example.org"
RECIPIENT = "to@example.org"

Submit = Callable[[int], None]


def content(i: int) -> bytes:
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: latency {i}\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <lat{i}.{time.time_ns()}@bench>\r\n\r\n"
    )
    line = b"x" * 76 + b"\r\n"
    return head.encode() + line * 26


def smtp_submit(port: int) -> Submit:
    def submit(i: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.sendmail(SENDER, [RECIPIENT], content(i))

    return submit


def api_submit(profile: Path) -> Submit:
    client = Client(profile)

    def submit(i: int) -> None:
        msg = NewMessage(Address("SMTP", SENDER), (Address("SMTP", RECIPIENT),), content(i))
        client.submit(msg, fallback=False)

    return submit


@contextmanager
def system_under_test(name: str, workdir: Path, sink: Sink) -> Iterator[Submit]:
    if name == "wire":
        yield smtp_submit(sink.port)
    elif name.startswith("spoolbox"):
        with SpoolboxDaemon(workdir, sink.port) as sb:
            yield api_submit(sb.profile) if name == "spoolbox api" else smtp_submit(sb.port)
    else:
        with PostfixRelay(workdir, sink.port) as pf:
            yield smtp_submit(pf.port)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def one(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    latencies: list[float] = []
    accepted: list[float] = []
    with Sink() as sink, system_under_test(name, workdir, sink) as submit:
        for i in range(args.warmup + args.messages):
            time.sleep(args.gap_ms / 1000)
            base = sink.count
            t0 = time.perf_counter()
            submit(i)
            t_accept = time.perf_counter()
            t_wire = sink.wait_for(base + 1, args.timeout)
            if i >= args.warmup:
                latencies.append(1000 * (t_wire - t0))
                accepted.append(1000 * (t_accept - t0))
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "accept p50": percentile(accepted, 50),
        "accept p99": percentile(accepted, 99),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="relay latency against Postfix")
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--gap-ms", type=float, default=50.0, help="pause before each message")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := set(systems) - set(SYSTEMS):
        p.error(f"unknown systems: {', '.join(sorted(unknown))}")
    ensure_peers()
    runs: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="spoolbox-latency-", dir=args.dir) as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the postfix user must reach its queue directory
        for r in range(args.runs):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            res = {n: one(n, root / f"run{r}-{n.replace(' ', '-')}", args) for n in order}
            runs.append(res)
            log(
                f"run {r + 1}: "
                + ", ".join(f"{k} p50 {v['p50']:.2f} p99 {v['p99']:.2f} ms" for k, v in res.items())
            )

    def med(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in runs)

    def ratio(name: str, key: str) -> str:
        if "postfix smtp" not in systems:
            return "-"
        return f"{statistics.median(r[name][key] / r['postfix smtp'][key] for r in runs):.2f}"

    print(
        f"\n{args.messages} sequential messages, {args.gap_ms:g} ms apart, "
        f"{len(runs)} runs (medians of the per-run figures), ms; {machine()}"
    )
    print(
        "| system | p50 | p99 | max | submit returned p50 "
        "| p50 ratio to postfix | p99 ratio to postfix |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in systems:
        print(
            f"| {n} | {med(n, 'p50'):.2f} | {med(n, 'p99'):.2f} | {med(n, 'max'):.2f} "
            f"| {med(n, 'accept p50'):.2f} | {ratio(n, 'p50')} | {ratio(n, 'p99')} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args), "runs": runs}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
