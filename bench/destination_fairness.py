"""Direct delivery's ``destination_concurrency``: how long mail for one domain waits
behind a long queue for another, slow one, and what the limit costs the slow one;
spoolbox against Postfix, in the same run.

What it measures
----------------
Two mail servers on loopback addresses, aiosmtpd in a process of their own: the one
of ``slow.test`` (127.0.0.2) holds every message ``--slow-seconds`` (0.5 s) at the
final dot before its 250, as a busy provider or a tarpit does; the one of
``fast.test`` (127.0.0.3) answers at once.  Each writes down when it took each
recipient.  A system gets ``--slow`` (200) messages for ``slow.test``, then, half a
second after the last was accepted, ``--fast`` (20) for ``fast.test``, one at a
time.  Reported per system, the median over ``--runs`` (3) runs, the systems
taking turns in an order that rotates:

* ``fast wait`` (p50 and max, s): from a ``fast.test`` message's acceptance (the
  submit's return, or Postfix's 250) until its server took it;
* ``slow drain`` (s): from the first ``slow.test`` message's acceptance until its
  server took the last; its floor is ``slow x slow-seconds / connections to
  slow.test``, printed beside it.

The systems, each with a fresh store or queue:

* ``spoolbox 10/10``: a spooler (SQLite store; the smtp transport with ``delivery
  = "mx"``, a real DNS server, dnsmasq, naming the two servers; TLS off, messages
  submitted through the Python API) with ``max_connections = 10`` and
  ``destination_concurrency = 10``: one domain may take every connection, what
  spoolbox did before the option (10 was then the default of both modes);
* ``spoolbox 10/5``: the same with 5 to one domain;
* ``spoolbox shipped``: direct delivery's defaults, 100 connections and 20 to one
  domain;
* ``postfix 10/5``: a private Postfix (``bench/_mta.py``), the messages sent to its
  smtpd over SMTP, ``transport_maps`` sending each domain to its server, with the
  same limits: 10 smtp processes (``default_process_limit``) and 5 a destination
  (``default_destination_concurrency_limit``);
* ``postfix shipped``: Postfix's own defaults, 100 processes and 20 a destination.

The machine's limits are printed with the figures: its CPUs and its disk's fsyncs
a second.

Run it
------
::

    .venv/bin/python bench/destination_fairness.py [--runs 3] [--slow 200] [--fast 20]
        [--slow-seconds 0.5] [--systems ...] [--json out.json]

It needs dnsmasq (Debian's ``dnsmasq-base``), Postfix (``bench/_mta.py`` installs
it), root (a private Postfix instance) and the ``mx`` and ``test`` extras.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import smtplib
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _counts import fsync_rate
from _mta import PostfixRelay, ensure_peers
from spoolbox import Address, AlwaysIdle, NewMessage, Spooler, SpoolerConfig, TransportConfig
from spoolbox.store import SQLiteStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dns_server import dnsmasq  # the tests' dnsmasq runner (on the path just above)

SLOW_HOST, FAST_HOST = "127.0.0.2", "127.0.0.3"
RECORDS = [
    "--mx-host=slow.test,mx.slow.test,10",
    "--mx-host=fast.test,mx.fast.test,10",
    f"--host-record=mx.slow.test,{SLOW_HOST}",
    f"--host-record=mx.fast.test,{FAST_HOST}",
]
CONTENT = b"From: bench@example.org\r\nSubject: fairness\r\n\r\n" + b"a line of text\r\n" * 20
SYSTEMS = (
    "spoolbox 10/10",
    "spoolbox 10/5",
    "spoolbox shipped",
    "postfix 10/5",
    "postfix shipped",
)
#: Each system's connections in all and to one domain (shipped: their defaults).
LIMITS = {
    "spoolbox 10/10": (10, 10),
    "spoolbox 10/5": (10, 5),
    "spoolbox shipped": (100, 20),
    "postfix 10/5": (10, 5),
    "postfix shipped": (100, 20),
}


def _common_port() -> int:
    """A port free on both servers' addresses."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((SLOW_HOST, 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s:
                s.bind((FAST_HOST, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on both addresses")


def _serve(port: int, slow_seconds: float, log: Path, ready: Any) -> None:
    """The two servers (in a process of their own): aiosmtpd, slow.test's holding
    each message ``slow_seconds`` at the final dot; each recipient taken is written
    to ``log`` with the time (``time.time()``) of the 250."""
    from aiosmtpd.smtp import SMTP

    out = log.open("a", buffering=1)

    class Handler:
        def __init__(self, delay: float) -> None:
            self.delay = delay

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            if self.delay:
                await asyncio.sleep(self.delay)
            now = time.time()
            out.write("".join(f"{rcpt} {now}\n" for rcpt in envelope.rcpt_tos))
            return "250 2.0.0 taken"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for host, delay in ((SLOW_HOST, slow_seconds), (FAST_HOST, 0.0)):
            handler = Handler(delay)
            await loop.create_server(
                lambda h=handler: SMTP(h, hostname="bench.invalid"), host=host, port=port
            )
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


class Taken:
    """The servers' log: when each recipient was taken."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def times(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            rcpt, _, when = line.partition(" ")
            out[rcpt] = float(when)
        return out

    async def all_of(self, rcpts: Iterator[str] | list[str], timeout: float) -> dict[str, float]:
        wanted = set(rcpts)
        deadline = time.monotonic() + timeout
        while True:
            times = self.times()
            if wanted <= times.keys():
                return {r: times[r] for r in wanted}
            if time.monotonic() > deadline:
                missing = len(wanted - times.keys())
                raise RuntimeError(f"{missing} of {len(wanted)} messages not taken in {timeout} s")
            await asyncio.sleep(0.05)


def _message(rcpt: str) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:bench@example.org"),
        recipients=(Address.parse(f"SMTP:{rcpt}"),),
        content=CONTENT,
    )


def _figures(
    slow_at: float, fast_at: dict[str, float], taken: dict[str, float]
) -> dict[str, float]:
    waits = [taken[r] - at for r, at in fast_at.items()]
    slow_last = max(t for r, t in taken.items() if r.endswith("@slow.test"))
    return {
        "fast_wait_p50": statistics.median(waits),
        "fast_wait_max": max(waits),
        "slow_drain": slow_last - slow_at,
    }


async def _spoolbox(
    system: str, tag: str, workdir: Path, nameserver: str, port: int, taken: Taken, args: Any
) -> dict[str, float]:
    options: dict[str, Any] = {
        "delivery": "mx",
        "nameservers": [nameserver],
        "port": port,
        "tls": "none",
        "mta_sts": False,
    }
    if not system.endswith("shipped"):
        options["max_connections"], options["destination_concurrency"] = LIMITS[system]
    config = SpoolerConfig(
        transports=(TransportConfig("internet", "smtp", options=options),),
        node="bench",
        hostname="bench.example.org",
    )
    store = SQLiteStore(workdir / f"{tag}.sqlite3")
    slow = [f"{tag}-s{i}@slow.test" for i in range(args.slow)]
    fast = [f"{tag}-f{i}@fast.test" for i in range(args.fast)]
    async with Spooler.open(config, store=store, idle=AlwaysIdle()) as sp:
        assert await sp.wait_ready(timeout=30) == {"internet": True}
        slow_at = time.time()
        await sp.submit_many(_message(r) for r in slow)
        await asyncio.sleep(0.5)
        fast_at: dict[str, float] = {}
        for rcpt in fast:
            await sp.submit(_message(rcpt))
            fast_at[rcpt] = time.time()
        times = await taken.all_of([*slow, *fast], timeout=600)
    return _figures(slow_at, fast_at, times)


async def _postfix(
    system: str, tag: str, workdir: Path, port: int, taken: Taken, args: Any
) -> dict[str, float]:
    lines = [
        "relayhost =",
        "transport_maps = inline:{ "
        f"slow.test=smtp:[{SLOW_HOST}]:{port}, fast.test=smtp:[{FAST_HOST}]:{port} }}",
    ]
    total, one = LIMITS[system]
    if not system.endswith("shipped"):
        lines += [
            f"default_process_limit = {total}",
            f"default_destination_concurrency_limit = {one}",
        ]
    slow = [f"{tag}-s{i}@slow.test" for i in range(args.slow)]
    fast = [f"{tag}-f{i}@fast.test" for i in range(args.fast)]
    # (PostfixRelay's smtp_destination_concurrency_limit, its relay setting, is
    # given again as the limit here.)
    with PostfixRelay(workdir / tag, 0, concurrency=one, main_cf=lines) as pf:
        loop = asyncio.get_running_loop()

        def inject() -> tuple[float, dict[str, float]]:
            with smtplib.SMTP("127.0.0.1", pf.port, timeout=60) as smtp:
                slow_at = time.time()
                for rcpt in slow:
                    smtp.sendmail("bench@example.org", [rcpt], CONTENT)
                time.sleep(0.5)
                fast_at: dict[str, float] = {}
                for rcpt in fast:
                    smtp.sendmail("bench@example.org", [rcpt], CONTENT)
                    fast_at[rcpt] = time.time()
            return slow_at, fast_at

        slow_at, fast_at = await loop.run_in_executor(None, inject)
        times = await taken.all_of([*slow, *fast], timeout=600)
    return _figures(slow_at, fast_at, times)


def _prepare(workdir: Path, log: Path) -> None:
    workdir.chmod(0o755)  # the postfix user must reach its queue
    log.touch()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    systems = list(args.systems)
    if any(s.startswith("postfix") for s in systems):
        ensure_peers()
    port = _common_port()
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        log = workdir / "taken.log"
        _prepare(workdir, log)
        taken = Taken(log)
        ready = multiprocessing.Event()
        servers = multiprocessing.Process(
            target=_serve, args=(port, args.slow_seconds, log, ready), daemon=True
        )
        servers.start()
        try:
            if not ready.wait(20):
                raise RuntimeError("the SMTP servers did not start")
            fsyncs = fsync_rate(workdir)
            with dnsmasq(RECORDS, workdir) as dns:
                for r in range(args.runs):
                    order = systems[r % len(systems) :] + systems[: r % len(systems)]
                    for system in order:
                        tag = f"r{r}-{SYSTEMS.index(system)}"
                        if system.startswith("spoolbox"):
                            got = await _spoolbox(
                                system, tag, workdir, dns.nameserver, port, taken, args
                            )
                        else:
                            got = await _postfix(system, tag, workdir, port, taken, args)
                        runs[system].append(got)
                        print(f"run {r + 1}, {system}: {got}", flush=True)
        finally:
            servers.kill()
            servers.join()
    summary = {
        s: {key: statistics.median(run[key] for run in runs[s]) for key in runs[s][0]}
        for s in systems
    }
    return {
        "machine": {"cpus": multiprocessing.cpu_count(), "fsyncs_per_s": round(fsyncs)},
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "runs": runs,
        "summary": summary,
        "slow_drain_floor": {s: args.slow * args.slow_seconds / LIMITS[s][1] for s in systems},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--fast", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=0.5)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(_main(args))
    machine = result["machine"]
    print(f"\nmachine: {machine['cpus']} CPUs, disk {machine['fsyncs_per_s']:,} fsyncs/s")
    print(
        f"{args.slow} messages to slow.test ({args.slow_seconds} s each at its server), "
        f"then {args.fast} to fast.test; medians of {args.runs} runs"
    )
    print(
        f"{'system':>16} {'fast wait p50':>14} {'fast wait max':>14} "
        f"{'slow drain':>11} {'its floor':>10}"
    )
    for system, row in result["summary"].items():
        floor = result["slow_drain_floor"][system]
        print(
            f"{system:>16} {row['fast_wait_p50']:>13.2f}s {row['fast_wait_max']:>13.2f}s "
            f"{row['slow_drain']:>10.1f}s {floor:>9.1f}s"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
