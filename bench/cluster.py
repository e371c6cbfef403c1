"""Issue 16's performance figures: PostgreSQL with several nodes against SQLite.

Three measurements, in one run, on one private PostgreSQL (the tests' helper,
``tests/store/postgres_cluster.py``: ``initdb`` + ``pg_ctl`` on a free loopback port in
a temporary directory, ``fsync = on``) and Postfix's ``smtp-sink -c`` (``bench/_mta.py``):

* ``drain``: the nodes are started on a fresh store and waited for (each answers,
  its ``relay`` transport has logged on, every delivery worker delivers); then N
  messages (about 2 KB, one recipient each, routed to the ``relay`` transport) go
  in through node 1's API in one ``Client.submit_many`` call (one transaction; the
  other nodes hear of it by NOTIFY, the workers from their daemon), and the drain
  lasts until the sink has N.  No process's start-up is in the drain (session 11:
  before, the messages were committed first and the processes started on them,
  so the nodes and workers that started later counted their start-up in it).
  Systems: PostgreSQL with 1, 2 and 4 nodes (separate ``spoolbox run`` processes,
  each with its own profile and node name, on one database) and SQLite with one
  node and with ``workers = 1, 2, 4`` (``spoolbox run`` with delivery worker
  processes on one WAL file).  Each process relays with ``max_connections`` (default:
  the smtp transport's own, 10, what a user gets; 4 before session 12; the profile of
  a daemon with workers says that many times its delivering processes, which share
  it) to the sink
  (the ``relay`` transport of ``bench/_mta.py``).  Reported: msg/s
  from the sink's first message to its last (the drain itself, without Python's
  start-up) and seconds from the submission to the last message; then
  the ratio PostgreSQL 1 node / SQLite 1 node and whether more nodes or workers were
  ever slower than fewer.  With ``--standby`` every node's profile says
  ``[daemon] standby_when_crowded = true`` and the drain starts once the nodes beyond
  the CPUs stand by (their spooler rows say ``Standing by``).  For SQLite also, per
  message (``_counts.per_message``):
  the CPU of the daemon and its workers from the sink's first message on, the store's commits,
  waits for the write lock and time holding it; for PostgreSQL, per message from the
  sink's first message on: the nodes' CPU, the server's (the postmaster and its
  children, ``_counts.postgres_cpu_seconds``) and the commits of the nodes' stores
  (each node's ``statistics()``).
* ``claims``: M recipients are committed into a fresh PostgreSQL database, then K =
  1, 2, 4, 8 processes (this file run as ``_claimer``) run the store's loop directly,
  each as a node of its own: claim a batch (``claim_batch`` 8, as a node's default),
  settle each job delivered (the settles of one batch at once: the store commits them
  as one group), until the queue is empty.  Reported: claim calls' latency p50/p99,
  recipients claimed (and settled) per second by all K together.
* ``latency``: one message at a time through the client (``Client.submit``, the
  daemon's API) to node 1 of an idle system, the time until smtp-sink has it (p50,
  p99, as ``bench/latency.py``): PostgreSQL with 1 and 2 nodes (the other node hears
  of it by LISTEN/NOTIFY and may claim it) against SQLite with one node.

* ``relay`` (not in the default ``--only``): smtp-source (``-s --sessions``, 2 KB,
  ``--relay-messages``) -> the system -> smtp-sink, after ``--warmup-relay``
  messages: PostgreSQL with ``--relay-nodes`` nodes (node 1 has the SMTP listener,
  ``processes = --listener-processes``; the other nodes hear of its commits by
  NOTIFY and claim from the database; with ``--relay-listen all`` every node has a
  listener of its own and smtp-source's sessions and messages are split among them,
  one smtp-source a node, as mail reaches several nodes behind MX records or a load
  balancer) against a private Postfix
  (``bench/_mta.py``'s, ``smtp_destination_concurrency_limit = --max-connections``).
  Reported: msg/s from smtp-source's start to the sink's last message, and the ratio
  to Postfix in the same run.  ``--relay-waiting N`` first queues N messages for the
  same transport that wait a day (as behind a destination that is down).
* ``roundtrips``: what the PostgreSQL store sends per message, counted by the store
  (``statistics()``: transactions, statements, round trips; these do not depend on
  the load): the *idle* path (each message submitted alone, claimed, settled alone,
  as on an idle node) and the *drain* path (``--messages`` committed at once, then
  claimed 8 at a time and the 8 settled at once, as a node's loop does), each in one
  process on a fresh database.

Beside every figure: the load average (1 min) at its start and end, and the disk's
fsync rate (``bench/_counts.py``) measured at the start.  Medians over ``--runs``; the
order of the systems rotates from run to run.  Run it::

    .venv/bin/python bench/cluster.py [--runs 3] [--messages 1000] [--claims 4000]
        [--latency-messages 100] [--json out.json]

Needs ``postgresql`` (Debian package), ``postfix`` (smtp-sink) and psycopg
(``pip install 'spoolbox[postgres]'``).  As root, PostgreSQL runs as the ``postgres``
user (the helper does it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _counts import (
    COUNT_KEYS,
    cpu_seconds,
    daemon_store_counters,
    fsync_rate,
    per_message,
    postgres_cpu_seconds,
    process_tree,
)
from _mta import (
    _SINK_TRANSPORT,
    PostfixRelay,
    Sink,
    ensure_peers,
    free_port,
    log,
    machine,
    smtp_source,
)
from _pgwire import WireProxy
from latency import content, percentile
from spoolbox import Address, NewMessage
from spoolbox.client import Client
from spoolbox.transports.smtp.settings import DEFAULT_MAX_CONNECTIONS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "store"))
import postgres_cluster as pgc  # the tests' private PostgreSQL

CLI = [sys.executable, "-m", "spoolbox.cli"]
DSN_ENV = "SPOOLBOX_BENCH_PG_DSN"
SENDER, RECIPIENT = "from@example.org", "to@example.org"
WAIT = 600.0
CLAIM_BATCH = 8
_COUNTED = ("transactions", "statements", "round_trips")


def _load() -> float:
    return os.getloadavg()[0]


def _message(i: int) -> NewMessage:
    return NewMessage(Address("SMTP", SENDER), (Address("SMTP", RECIPIENT),), content(i))


# -- the systems ----------------------------------------------------------------------------
def _profile(
    directory: Path,
    node: str,
    store: str,
    sink_port: int,
    args: Any,
    workers: int,
    listener_port: int | None = None,
) -> Path:
    directory.mkdir(parents=True)
    path = directory / "spoolbox.toml"
    path.write_text(
        f"""\
data_dir = "."
node = "{node}"

[store]
{store}

[daemon]
nice = 0
log_level = "warning"
workers = {workers}
{"standby_when_crowded = true" if args.standby else ""}

[policy]
idle = "always"
{f"claim_batch = {args.claim_batch}" if args.claim_batch else ""}

[identities]
senders = ["SMTP:{SENDER}"]

{_SINK_TRANSPORT.format(port=sink_port)}max_connections = {args.max_connections * (workers + 1)}
"""
    )
    if listener_port is not None:  # the relay part: node 1 takes smtp-source's mail
        with path.open("a") as f:
            f.write(
                f'\n[listeners.submission]\nkind = "smtp"\nhost = "127.0.0.1"\n'
                f"port = {listener_port}\nprocesses = {args.listener_processes}\n"
            )
    return path


@dataclass
class System:
    """``spoolbox run`` processes on one store: K PostgreSQL nodes, or one SQLite
    daemon with W delivery workers."""

    name: str
    backend: str  # "postgres" or "sqlite"
    count: int  # PostgreSQL: nodes; SQLite: workers

    @property
    def processes(self) -> int:
        return self.count if self.backend == "postgres" else self.count + 1


class Running:
    """The profiles of one system on a fresh store, and its processes once started."""

    def __init__(
        self,
        system: System,
        root: Path,
        pg: Any,
        sink_port: int,
        args: Any,
        listener_ports: Sequence[int] = (),
    ) -> None:
        self.system = system
        self.env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
        if system.backend == "postgres":
            self.db = pg.new_database()
            self.dsn = pg.dsn(self.db)
            self.env[DSN_ENV] = self.dsn
            store = f'backend = "postgres"\ndsn_env = "{DSN_ENV}"'
            self.profiles = [
                _profile(
                    root / f"node{k}",
                    f"node{k}",
                    store,
                    sink_port,
                    args,
                    0,
                    listener_ports[k - 1] if k <= len(listener_ports) else None,
                )
                for k in range(1, system.count + 1)
            ]
        else:
            store = 'backend = "sqlite"\npath = "spool.sqlite3"'
            self.profiles = [
                _profile(
                    root / "node1",
                    "node1",
                    store,
                    sink_port,
                    args,
                    system.count,
                    listener_ports[0] if listener_ports else None,
                )
            ]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._pg = pg
        self._args = args

    def store(self) -> Any:
        if self.system.backend == "postgres":
            from spoolbox.store.postgres import PostgresStore

            return PostgresStore(self.dsn, pool_size=1)
        from spoolbox import SQLiteStore

        return SQLiteStore(self.profiles[0].parent / "spool.sqlite3")

    def fill(self, n: int, send_at: float | None = None) -> None:
        """Commit ``n`` messages routed to ``relay`` with no node running (to be sent
        at ``send_at``: until then they wait, as after a failed attempt)."""

        async def fill() -> None:
            store = self.store()
            await store.open()
            try:
                for first in range(0, n, 1000):
                    lot = [
                        dataclasses.replace(_message(i), send_at=send_at)
                        for i in range(first, min(n, first + 1000))
                    ]
                    await store.submit_many(
                        lot, now=time.time(), lifetime=86400.0, routes=[["relay"]] * len(lot)
                    )
            finally:
                await store.close()

        asyncio.run(fill())

    def delivered(self) -> int:
        sql = "SELECT count(*) FROM recipients WHERE state = 'delivered'"
        if self.system.backend == "postgres":
            import psycopg

            with psycopg.connect(self.dsn) as conn:
                row = conn.execute(sql).fetchone()
        else:
            path = self.profiles[0].parent / "spool.sqlite3"
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                row = conn.execute(sql).fetchone()
            finally:
                conn.close()
        assert row is not None
        return int(row[0])

    def start(self) -> None:
        for profile in self.profiles:
            with (profile.parent / "daemon.log").open("ab") as out:
                self.procs.append(
                    subprocess.Popen(
                        [*CLI, "--profile", str(profile), "run", "--no-nice"],
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=self.env,
                        cwd=profile.parent,
                    )
                )

    def ready(self) -> None:
        """Every node answers, its ``relay`` transport is logged on and each delivery
        worker's status row says it delivers (``worker:wN`` available)."""
        deadline = time.monotonic() + 120
        for profile in self.profiles:
            while True:
                self.check_alive()
                try:
                    rows = Client(profile).status()
                    workers = [r for r in rows if r["name"].startswith("worker:")]
                    if (
                        any(r["name"] == "relay" and r["status_code"] & 1 for r in rows)
                        and len(workers)
                        == (self.system.count if self.system.backend == "sqlite" else 0)
                        and all(r["status_code"] & 1 for r in workers)
                    ):
                        break
                except Exception:  # not answering yet
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{profile.parent.name} of {self.system.name} not ready")
                time.sleep(0.1)
        if self.system.backend == "postgres" and self._args.standby:
            # [daemon] standby_when_crowded: the nodes beyond the CPUs stand by once
            # they have seen the others' transports (within a look or two, 10 s each).
            expected = max(0, self.system.count - len(os.sched_getaffinity(0)))
            while True:
                rows = Client(self.profiles[0]).status()
                standing = [
                    r for r in rows if r["name"] == "spooler" and r["status"] == "Standing by"
                ]
                if len(standing) == expected:
                    break
                if time.monotonic() > deadline + 60:
                    raise RuntimeError(
                        f"{self.system.name}: {len(standing)} nodes stand by, not {expected}"
                    )
                time.sleep(0.2)

    def submit(self, n: int) -> None:
        """``n`` messages routed to ``relay`` through node 1's API, in one transaction."""
        reply = Client(self.profiles[0]).submit_many([_message(i) for i in range(n)])
        if reply.get("via") != "daemon" or len(reply["ids"]) != n:
            raise RuntimeError(f"{self.system.name}: the daemon did not take them: {reply}")

    def commits(self) -> int:
        """PostgreSQL: the transactions the nodes' stores committed so far, as each
        node's store counts them (``Client.statistics()``; PostgreSQL's own
        ``pg_stat_database`` reports a backend's counts a second or more late)."""
        return sum(
            int(Client(profile).statistics()["store"]["commits"]) for profile in self.profiles
        )

    def cpu(self) -> float:
        """CPU seconds used so far by the system's processes (with their workers)."""
        return cpu_seconds(pid for proc in self.procs for pid in process_tree(proc.pid))

    def check_alive(self) -> None:
        for proc, profile in zip(self.procs, self.profiles, strict=False):
            if proc.poll() is not None:
                tail = (profile.parent / "daemon.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.system.name}: a process exited:\n{tail}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.system.backend == "postgres":
            self._pg.drop_database(self.db)


@contextmanager
def running(
    system: System, root: Path, pg: Any, sink: Sink, args: Any, listener_ports: Sequence[int] = ()
) -> Iterator[Running]:
    r = Running(system, root, pg, sink.port, args, listener_ports)
    try:
        yield r
    finally:
        r.close()


# -- the measurements -----------------------------------------------------------------------
def drain(system: System, root: Path, pg: Any, sink: Sink, args: Any) -> dict[str, float]:
    n = args.messages
    load = _load()
    with running(system, root, pg, sink, args) as r:
        r.start()
        r.ready()
        base = sink.count
        t0 = time.perf_counter()
        r.submit(n)
        deadline = t0 + WAIT
        cpu0: float | None = None  # at the sink's first message: start-up left out
        server0, commits0 = 0.0, 0
        while sink.count < base + n:
            r.check_alive()
            if cpu0 is None and sink.count > base:
                cpu0 = r.cpu()
                if system.backend == "postgres":
                    server0, commits0 = postgres_cpu_seconds(pg.data), r.commits()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{system.name}: the sink has {sink.count - base} of {n}")
            time.sleep(0.05)
        first, last = sink.seen[base + 1], sink.wait_for(base + n, 1)
        while r.delivered() < n:  # every recipient settled as delivered
            r.check_alive()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{system.name}: not every recipient settled delivered")
            time.sleep(0.1)
        cpu = r.cpu() - (cpu0 or 0.0)
        sqlite = system.backend == "sqlite"
        counters = daemon_store_counters(r.profiles[0]) if sqlite else {}
        server = postgres_cpu_seconds(pg.data) - server0 if not sqlite else 0.0
        commits = r.commits() - commits0 if not sqlite else 0
    out = {
        "msg/s": (n - 1) / (last - first),
        "from submit s": last - t0,
        "load start": load,
        "load end": _load(),
    }
    if counters:  # SQLite: per message, whatever the load
        out.update(per_message(cpu, counters, n))
    elif system.backend == "postgres":  # from the sink's first message on
        out.update(
            {
                "cpu ms/msg": cpu * 1000 / n,
                "server cpu ms/msg": server * 1000 / n,
                "commits/msg": commits / n,
            }
        )
    return out


def claims(k: int, root: Path, pg: Any, args: Any) -> dict[str, float]:
    """K claimer processes on one database holding ``args.claims`` recipients."""
    load = _load()
    system = System(f"claims {k}", "postgres", 1)
    r = Running(system, root, pg, 25, args)
    try:
        r.fill(args.claims)
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "_claimer", f"claimer{i}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=r.env,
                text=True,
            )
            for i in range(k)
        ]
        for proc in procs:  # each has opened its store
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a claimer did not start")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=WAIT)[0]) for proc in procs]
    finally:
        r.close()
    latencies = [x for res in results for x in res["latencies"]]
    claimed = sum(res["claimed"] for res in results)
    if claimed != args.claims:
        raise RuntimeError(f"{k} claimers claimed {claimed} of {args.claims}")
    wall = max(res["end"] for res in results) - min(res["start"] for res in results)
    return {
        "claim p50 ms": percentile(latencies, 50),
        "claim p99 ms": percentile(latencies, 99),
        "claims/s": claimed / wall,
        "load start": load,
        "load end": _load(),
    }


async def _claimer(owner: str) -> None:
    """The store's loop of one node, without transports: claim, settle delivered."""
    from spoolbox import RecipientState
    from spoolbox.store.base import RecipientUpdate
    from spoolbox.store.postgres import PostgresStore

    store = PostgresStore(os.environ[DSN_ENV], pool_size=2)
    await store.open()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    latencies: list[float] = []
    claimed = 0
    start = time.monotonic()

    async def settle(job: Any) -> None:
        updates = [
            RecipientUpdate(r.index, RecipientState.DELIVERED, status="2.0.0", count_attempt=True)
            for r in job.recipients
        ]
        await store.settle(job.message.id, updates, owner=owner, now=time.time(), claim=job.claim)

    while True:
        t0 = time.perf_counter()
        jobs = await store.claim(
            "relay", owner=owner, now=time.time(), lease=60.0, limit=CLAIM_BATCH
        )
        latencies.append(1000 * (time.perf_counter() - t0))
        if not jobs:
            break
        claimed += sum(len(job.recipients) for job in jobs)
        await asyncio.gather(*(settle(job) for job in jobs))
    end = time.monotonic()
    await store.close()
    print(json.dumps({"latencies": latencies[:-1], "claimed": claimed, "start": start, "end": end}))


def relay(name: str, root: Path, pg: Any, sink: Sink, args: Any) -> dict[str, float]:
    """smtp-source -> the system -> the sink: PostgreSQL nodes (node 1 listens and the
    others hear of its commits by NOTIFY, or with ``--relay-listen all`` every node
    listens and gets its share of the sessions) or a private Postfix
    (``bench/relay.py``'s)."""
    load = _load()
    n = args.relay_messages

    def one_batch(ports: Sequence[int], count: int) -> tuple[float, float]:
        base = sink.count
        t0 = time.perf_counter()
        k = len(ports)
        procs = [
            smtp_source(port, share(count, k, i), share(args.sessions, k, i), 2048)
            for i, port in enumerate(ports)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=WAIT)
            if proc.returncode != 0:
                raise RuntimeError(f"smtp-source exited {proc.returncode}: {err.decode()}")
        return t0, sink.wait_for(base + count, WAIT)

    if name == "postfix":
        root.mkdir(parents=True)
        for d in (root, root.parent):  # the postfix user must reach its queue directory
            d.chmod(0o755)
        with PostfixRelay(root, sink.port, args.max_connections) as pf:
            one_batch([pf.port], args.warmup_relay)
            t0, done = one_batch([pf.port], n)
    else:
        k = int(name.split()[1])
        ports = [free_port() for _ in range(k if args.relay_listen == "all" else 1)]
        system = System(name, "postgres", k)
        with running(system, root, pg, sink, args, ports) as r:
            if args.relay_waiting:
                r.fill(args.relay_waiting, send_at=time.time() + 86400)
            r.start()
            r.ready()
            one_batch(ports, args.warmup_relay)
            t0, done = one_batch(ports, n)
    return {"msg/s": n / (done - t0), "load start": load, "load end": _load()}


def share(total: int, parts: int, i: int) -> int:
    """Part ``i`` of ``total`` split into ``parts`` as evenly as whole numbers go."""
    return total // parts + (1 if i < total % parts else 0)


def roundtrips(pg: Any, n: int) -> dict[str, dict[str, float]]:
    """Per message, by phase: what went over the wire (:mod:`_pgwire`, any tree) and
    what the store counted (``statistics()``, where it counts)."""
    db = pg.new_database()
    try:
        return asyncio.run(_roundtrips(pg, db, n))
    finally:
        pg.drop_database(db)


async def _roundtrips(pg: Any, db: str, n: int) -> dict[str, dict[str, float]]:
    from spoolbox import RecipientState
    from spoolbox.store.base import RecipientUpdate
    from spoolbox.store.postgres import PostgresStore

    out: dict[str, dict[str, float]] = {}
    async with WireProxy(pg.host, pg.port) as proxy:
        dsn = f"host=127.0.0.1 port={proxy.port} dbname={db} user={pgc.ADMIN} "
        dsn += f"password='{pgc.PASSWORD}' sslmode=disable"
        async with PostgresStore(dsn, pool_size=2) as store:
            last: dict[str, float] = {}

            def now_counted() -> dict[str, float]:
                stats = store.statistics()
                mine = {f"store {k}": float(stats[k]) for k in _COUNTED if k in stats}  # type: ignore[arg-type]
                return {
                    "wire round_trips": float(proxy.counts.round_trips),
                    "wire statements": float(proxy.counts.statements),
                    **mine,
                }

            def phase(name: str, messages: int) -> None:
                counted = now_counted()
                out[name] = {k: (v - last.get(k, 0.0)) / messages for k, v in counted.items()}
                last.update(counted)

            async def settle(job: Any) -> None:
                done = [
                    RecipientUpdate(r.index, RecipientState.DELIVERED, status="2.0.0")
                    for r in job.recipients
                ]
                await store.settle(
                    job.message.id, done, owner="bench", now=time.time(), claim=job.claim
                )

            phase("open", 1)
            for i in range(n):  # the idle path: one message at a time
                await store.submit(_message(i), now=time.time(), lifetime=86400.0, routes=["relay"])
            phase("idle: submit", n)
            for _ in range(n):
                [job] = await store.claim("relay", owner="bench", now=time.time(), lease=60.0)
                await settle(job)
            phase("idle: claim 1 + settle", n)
            lot = [_message(i) for i in range(n, 2 * n)]
            await store.submit_many(lot, now=time.time(), lifetime=86400.0, routes=[["relay"]] * n)
            phase("drain: submit_many", n)
            while jobs := await store.claim(
                "relay", owner="bench", now=time.time(), lease=60.0, limit=CLAIM_BATCH
            ):
                await asyncio.gather(*(settle(job) for job in jobs))
            phase(f"drain: claim {CLAIM_BATCH} + settle together", n)
    return out


def latency(system: System, root: Path, pg: Any, sink: Sink, args: Any) -> dict[str, float]:
    load = _load()
    times: list[float] = []
    with running(system, root, pg, sink, args) as r:
        r.start()
        r.ready()
        client = Client(r.profiles[0])
        for i in range(args.warmup + args.latency_messages):
            time.sleep(args.gap_ms / 1000)
            base = sink.count
            t0 = time.perf_counter()
            client.submit(_message(i), fallback=False)
            wire = sink.wait_for(base + 1, 60)
            if i >= args.warmup:
                times.append(1000 * (wire - t0))
    return {
        "p50 ms": percentile(times, 50),
        "p99 ms": percentile(times, 99),
        "load start": load,
        "load end": _load(),
    }


# -- the report -----------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _rotations(names: Sequence[str], runs: int) -> Iterator[tuple[int, list[str]]]:
    for r in range(runs):
        k = r % len(names)
        yield r, [*names[k:], *names[:k]]


def _medians(runs: list[dict[str, dict[str, float]]], name: str) -> dict[str, float]:
    keys = runs[0][name].keys()
    return {key: statistics.median(run[name][key] for run in runs) for key in keys}


def _loads(runs: list[dict[str, dict[str, float]]], name: str) -> str:
    lo = min(min(run[name]["load start"], run[name]["load end"]) for run in runs)
    hi = max(max(run[name]["load start"], run[name]["load end"]) for run in runs)
    return f"{lo:.1f}-{hi:.1f}"


def _measure(
    names: Sequence[str], runs: int, one: Callable[[str, int], dict[str, float]]
) -> list[dict[str, dict[str, float]]]:
    out: list[dict[str, dict[str, float]]] = []
    for r, order in _rotations(names, runs):
        res = {}
        for name in order:
            res[name] = one(name, r)
            log(f"run {r + 1}: {name}: {res[name]}")
        out.append(res)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="PostgreSQL nodes against SQLite (issue 16)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=1000, help="drain: messages per run")
    p.add_argument("--nodes", type=_ints, default=[1, 2, 4], help="drain: PostgreSQL nodes")
    p.add_argument("--workers", type=_ints, default=[0, 1, 2, 4], help="drain: SQLite workers")
    p.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="per process (default: the smtp transport's own default)",
    )
    p.add_argument(
        "--claim-batch",
        type=int,
        default=0,
        help="drain, latency, relay: [policy] claim_batch of every process (0: its default)",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="drain, relay: [daemon] standby_when_crowded = true in every node's profile "
        "(the nodes beyond the CPUs stand by; the drain starts once they do)",
    )
    p.add_argument("--claims", type=int, default=4000, help="claims: recipients per run")
    p.add_argument("--claimers", type=_ints, default=[1, 2, 4, 8])
    p.add_argument("--latency-messages", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--gap-ms", type=float, default=50.0)
    p.add_argument("--only", default="drain,claims,latency,roundtrips", help="the parts to run")
    p.add_argument("--roundtrip-messages", type=int, default=200, help="roundtrips: messages")
    p.add_argument("--relay-messages", type=int, default=1000, help="relay: messages per run")
    p.add_argument("--relay-nodes", type=_ints, default=[1, 2], help="relay: PostgreSQL nodes")
    p.add_argument(
        "--relay-listen",
        choices=("first", "all"),
        default="first",
        help="relay: node 1 takes all of smtp-source's mail (first) or every node its share (all)",
    )
    p.add_argument("--warmup-relay", type=int, default=100, help="relay: warm-up messages")
    p.add_argument(
        "--relay-waiting",
        type=int,
        default=0,
        help="relay: messages for the same transport waiting a day, queued first",
    )
    p.add_argument("--sessions", type=int, default=10, help="relay: smtp-source -s")
    p.add_argument(
        "--listener-processes", type=int, default=1, help="relay: node 1's listener processes"
    )
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    if pgc.find_bindir() is None:
        print(pgc.SKIP_REASON, file=sys.stderr)
        return 2
    ensure_peers()
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="spoolbox-cluster-", dir=args.dir) as tmp:
        root = Path(tmp)
        rate = fsync_rate(root)
        print(f"{machine()}\nfsync rate of the disk: {rate:,.0f}/s; load average {_load():.1f}")
        report["fsync/s"] = rate
        pg = pgc.start_cluster()
        try:
            with Sink() as sink:
                report.update(_run(args, parts, root, pg, sink))
        finally:
            pgc.remove_cluster(pg)
    print(f"load average at the end {_load():.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _print_per_message(
    title: str, keys: Sequence[str], runs: list[dict[str, dict[str, float]]], names: list[str]
) -> None:
    """A table of per-message figures (medians), one row per system of ``names``."""
    if not names:
        return
    print(f"\n{title}")
    print(f"| system | {' | '.join(keys)} |")
    print(f"|---|{'---:|' * len(keys)}")
    for name in names:
        m = _medians(runs, name)
        print(f"| {name} | {' | '.join(f'{m[k]:.3f}' for k in keys)} |")


#: The PostgreSQL drain's per-message figures, from the sink's first message on: the
#: nodes' CPU, the PostgreSQL server's (every backend, the writers), the commits.
_POSTGRES_KEYS = ("cpu ms/msg", "server cpu ms/msg", "commits/msg")


def _run(args: Any, parts: set[str], root: Path, pg: Any, sink: Sink) -> dict[str, Any]:
    out: dict[str, Any] = {}
    made = iter(range(10**6))
    if "drain" in parts:
        systems = {
            s.name: s
            for s in [
                System(f"postgres {k} node{'s' * (k > 1)}", "postgres", k) for k in args.nodes
            ]
            + [System(f"sqlite --workers {w}", "sqlite", w) for w in args.workers]
        }
        runs = _measure(
            list(systems),
            args.runs,
            lambda name, r: drain(systems[name], root / f"d{next(made)}", pg, sink, args),
        )
        print(f"\ndrain: the nodes ready, then {args.messages} messages submitted; medians")
        print("| system | processes | msg/s | submit to last message s | load |")
        print("|---|---:|---:|---:|---|")
        for name, s in systems.items():
            m = _medians(runs, name)
            print(
                f"| {name} | {s.processes} | {m['msg/s']:,.0f} | {m['from submit s']:.2f} "
                f"| {_loads(runs, name)} |"
            )
        pg1, sq1 = "postgres 1 node", "sqlite --workers 0"
        if pg1 in systems and sq1 in systems:
            ratios = [run[pg1]["msg/s"] / run[sq1]["msg/s"] for run in runs]
            print(
                f"PostgreSQL 1 node / SQLite 1 node: {statistics.median(ratios):.2f}x (goal 0.7x)"
            )
        for family in ("postgres", "sqlite"):
            names = [n for n, s in systems.items() if s.backend == family]
            rates = [_medians(runs, n)["msg/s"] for n in names]
            slower = [
                f"{names[i + 1]} < {names[i]}"
                for i in range(len(names) - 1)
                if rates[i + 1] < rates[i]
            ]
            print(f"{family}: more processes slower than fewer: {', '.join(slower) or 'never'}")
        # SQLite: the daemon's and its workers' CPU from the sink's first message on,
        # their store's commits, waits for the write lock and time holding it.
        _print_per_message(
            "SQLite drain, per message (medians)",
            COUNT_KEYS,
            runs,
            [n for n, s in systems.items() if s.backend == "sqlite"],
        )
        _print_per_message(
            "PostgreSQL drain, per message (medians; cpu: the nodes')",
            _POSTGRES_KEYS,
            runs,
            [n for n, s in systems.items() if s.backend == "postgres"],
        )
        out["drain"] = runs
    if "claims" in parts:
        runs = _measure(
            [str(k) for k in args.claimers],
            args.runs,
            lambda name, r: claims(int(name), root / f"c{next(made)}", pg, args),
        )
        print(f"\nclaims: {args.claims} recipients, claim batch {CLAIM_BATCH}; medians")
        print("| claiming processes | claim p50 ms | claim p99 ms | claims/s | load |")
        print("|---:|---:|---:|---:|---|")
        for k in args.claimers:
            m = _medians(runs, str(k))
            print(
                f"| {k} | {m['claim p50 ms']:.2f} | {m['claim p99 ms']:.2f} "
                f"| {m['claims/s']:,.0f} | {_loads(runs, str(k))} |"
            )
        out["claims"] = runs
    if "latency" in parts:
        systems = {
            "postgres 1 node": System("postgres 1 node", "postgres", 1),
            "postgres 2 nodes": System("postgres 2 nodes", "postgres", 2),
            "sqlite 1 node": System("sqlite 1 node", "sqlite", 0),
        }
        runs = _measure(
            list(systems),
            args.runs,
            lambda name, r: latency(systems[name], root / f"l{next(made)}", pg, sink, args),
        )
        print(
            f"\nsubmit to wire, idle: {args.latency_messages} messages one at a time, "
            f"{args.gap_ms:g} ms apart; medians of the runs' percentiles"
        )
        print("| system | p50 ms | p99 ms | load |")
        print("|---|---:|---:|---|")
        for name in systems:
            m = _medians(runs, name)
            print(f"| {name} | {m['p50 ms']:.2f} | {m['p99 ms']:.2f} | {_loads(runs, name)} |")
        out["latency"] = runs
    if "relay" in parts:
        names = [f"postgres {k} node{'s' * (k > 1)}" for k in args.relay_nodes] + ["postfix"]
        runs = _measure(
            names,
            args.runs,
            lambda name, r: relay(name, root / f"r{next(made)}", pg, sink, args),
        )
        who = "every node listens" if args.relay_listen == "all" else "node 1 listens"
        print(
            f"\nrelay: smtp-source -s {args.sessions} -m {args.relay_messages} -> system "
            f"-> smtp-sink ({who}); medians"
        )
        print("| system | msg/s | / Postfix (median of the runs' ratios) | load |")
        print("|---|---:|---:|---|")
        for name in names:
            m = _medians(runs, name)
            ratio = statistics.median(run[name]["msg/s"] / run["postfix"]["msg/s"] for run in runs)
            print(f"| {name} | {m['msg/s']:,.0f} | {ratio:.2f}x | {_loads(runs, name)} |")
        out["relay"] = runs
    if "roundtrips" in parts:
        counted = roundtrips(pg, args.roundtrip_messages)
        print(f"\nPostgreSQL store, per message ({args.roundtrip_messages} messages)")
        keys = [k for k in counted["open"] if k != "open"]
        print(f"| phase | {' | '.join(keys)} |")
        print(f"|---|{'---:|' * len(keys)}")
        for name, c in counted.items():
            if name != "open":
                print(f"| {name} | {' | '.join(f'{c[k]:.2f}' for k in keys)} |")
        out["roundtrips"] = counted
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["_claimer"]:
        asyncio.run(_claimer(sys.argv[2]))
    else:
        raise SystemExit(main())
