"""Drain from the API: spoolbox against django-mailer and django-post-office.

What it measures, on one machine, against one Postfix ``smtp-sink`` on 127.0.0.1
(no TLS, ``-c`` so it counts completed transactions and stores nothing), with N
messages of about 2.3 KB (the same 2 KB plain-text body for every system):

* ``enqueue x1``: one submitter queues N messages, one at a time, each call returning
  only once its row is committed;
* ``enqueue x10``: ten concurrent submitters (tasks for spoolbox, threads for the
  Django peers, each thread with its own database connection) queue N messages;
* ``enqueue bulk``: one call of each system's API for many messages queues all N:
  ``Spooler.submit_many`` (one transaction), django-post-office's ``mail.send_many``
  (Django's ``bulk_create``, one transaction), django-mailer's ``send_mass_mail``
  (a loop of ``send_mail``: one commit per message); timed from the plain strings
  to the committed lot, building the messages included;
* ``drain``: the N messages queued by ``enqueue x1`` delivered to the sink.

Systems:

* ``spoolbox``: ``Spooler`` in this process on a ``SQLiteStore`` (WAL,
  ``synchronous=FULL`` for submissions, group commit; its defaults, so claims and
  settles at ``progress_synchronous=NORMAL``) with the ``smtp`` transport (``tls="none"``,
  ``max_connections=4``).  Enqueue is ``await spooler.submit(...)``.  The messages
  are submitted and routed under ``spooler.foreground_busy()``, which holds the
  transport back; the drain is timed from releasing it until the sink has counted
  all N (``drain``) and until the store has committed all N recipients delivered
  (``drain committed``).  The spooler was started before the clock starts.
* ``django-mailer``: ``mailer.send_mail(...)`` to enqueue; ``python manage.py
  send_mail`` to drain (one SMTP connection, one transaction per message that logs
  and deletes it).
* ``django-post-office``: ``post_office.mail.send(..., priority="medium")`` to
  enqueue; ``python manage.py send_queued_mail`` to drain (its defaults: batches of
  100, 5 sending threads, each with its own SMTP connection; the batch's status
  rows are committed after the batch was sent).

The Django peers live in their own virtualenv (``bench/.peers-venv``, created on
first use with ``pip install django django-mailer django-post-office``); their
project is written into a temporary directory: SQLite database, the SMTP email
backend pointed at the sink, and a ``connection_created`` handler that runs
``PRAGMA journal_mode=WAL`` and ``PRAGMA synchronous=FULL`` on every connection,
the same durability settings as spoolbox's store (the enqueue driver reads both
pragmas back and the report prints them).  Django runs in autocommit mode, so every
``send_mail`` / ``mail.send`` is its own committed transaction.  A peer's drain is
the wall time of its management command, which includes starting Python and
Django; the report also gives that start-up cost (the command on an empty queue).

Every run uses fresh databases; the order of the systems rotates from run to run.
Every drain is checked: the sink's counter must have grown by N, and the queue must
be empty (spoolbox: N recipients delivered; django-mailer: no ``Message`` left;
django-post-office: N ``Email`` rows with status sent).  Reported: medians over
runs, and ratios of spoolbox to the faster peer, each a median of per-run ratios.

Run it::

    .venv/bin/python bench/drain_vs_django.py --runs 5 [--messages 2000] [--json out.json]
        [--event-loop asyncio|uvloop]   # spoolbox's process loop; asyncio by default
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import venv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spoolbox import (
    Address,
    AlwaysIdle,
    NewMessage,
    Policy,
    RecipientState,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)

HOST = "127.0.0.1"
SMTP_SINK = "/usr/sbin/smtp-sink"
PEERS = ("django-mailer", "django-post-office")
SYSTEMS = ("spoolbox", *PEERS)
PEER_PACKAGES = ("django", "django-mailer", "django-post-office")
DEFAULT_VENV = Path(__file__).resolve().parent / ".peers-venv"
SENDER = "bench@example.org"
#: The body every system sends: 26 lines of 76 characters plus CRLF (2,028 bytes).
BODY = "".join(
    f"{i:02d} " + "abcdefghijklmnopqrstuvwxyz" * 2 + "x" * 21 + "\r\n" for i in range(26)
)
WAIT = 600.0

SETTINGS_PY = """\
import os

from django.db.backends.signals import connection_created


def _durable(sender, connection, **kwargs):
    if connection.vendor == "sqlite":
        with connection.cursor() as cur:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")


connection_created.connect(_durable)

SECRET_KEY = "bench"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "mailer", "post_office"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["BENCH_DB"],
        "OPTIONS": {"timeout": 60},
    }
}
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = int(os.environ["BENCH_SMTP_PORT"])
EMAIL_USE_TLS = False
DEFAULT_FROM_EMAIL = "bench@example.org"
MAILER_LOCK_PATH = os.environ["BENCH_LOCK"]
POST_OFFICE = {"LOCK_FILE_NAME": os.environ["BENCH_LOCK"]}
LOGGING = {"version": 1, "disable_existing_loggers": False}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
"""

MANAGE_PY = """\
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsettings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

ENQUEUE_PY = """\
import json
import os
import sys
import threading
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsettings")
import django

django.setup()
from django.db import connection, connections

kind, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = os.environ["BENCH_BODY"]
if kind == "django-mailer":
    from mailer import send_mail, send_mass_mail

    def one(i):
        send_mail(f"bench {i}", body, "bench@example.org", [f"r{i}@example.org"])

    def bulk(n):  # threads == 0: the API for many messages at once
        send_mass_mail(
            [(f"bench {i}", body, "bench@example.org", [f"r{i}@example.org"]) for i in range(n)]
        )

else:
    from post_office import mail

    def one(i):
        mail.send(
            [f"r{i}@example.org"],
            "bench@example.org",
            subject=f"bench {i}",
            message=body,
            priority="medium",
        )

    def bulk(n):
        mail.send_many([
            dict(recipients=[f"r{i}@example.org"], sender="bench@example.org",
                 subject=f"bench {i}", message=body, priority="medium")
            for i in range(n)
        ])

with connection.cursor() as cur:  # opens the connection (and runs the pragmas) first
    journal = cur.execute("PRAGMA journal_mode").fetchone()[0]
    sync = cur.execute("PRAGMA synchronous").fetchone()[0]
per = n // max(threads, 1)
errors = []


def worker(k):
    try:
        for i in range(k * per, (k + 1) * per):
            one(i)
    except BaseException as exc:
        errors.append(repr(exc))
    finally:
        if threads > 1:
            connections.close_all()


t0 = time.perf_counter()
if threads == 0:
    per, threads = n, 1
    try:
        bulk(n)
    except BaseException as exc:
        errors.append(repr(exc))
elif threads == 1:
    worker(0)
else:
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
took = time.perf_counter() - t0
print(json.dumps({"n": per * threads, "seconds": took, "journal_mode": journal,
                  "synchronous": sync, "errors": errors}))
"""

CHECK_PY = """\
import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsettings")
import django

django.setup()
from mailer.models import Message
from post_office.models import STATUS, Email

print(json.dumps({"mailer_left": Message.objects.count(),
                  "post_office_sent": Email.objects.filter(status=STATUS.sent).count(),
                  "post_office_total": Email.objects.count()}))
"""


# -- the sink -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Sink:
    """Postfix ``smtp-sink -c`` on a free port: accepts everything, counts, keeps nothing."""

    def __init__(self, directory: Path) -> None:
        self.out = directory / "sink.out"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None

    def start(self) -> None:
        args = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        for _ in range(5):
            self.port = _free_port()
            with self.out.open("wb") as fh:
                self.proc = subprocess.Popen(
                    [*args, f"{HOST}:{self.port}", "256"], stdout=fh, stderr=fh
                )
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.2):
                    return
                time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"smtp-sink did not start: {self.out.read_text(errors='replace')}")

    def count(self) -> int:
        """Transactions completed so far (the last ``mesg=`` of its ``-c`` counter).

        Read through one descriptor kept open: the drain polls this every 10 ms from
        spoolbox's own process, so it should cost that process as little as it can."""
        if self._fd is None:
            self._fd = os.open(self.out, os.O_RDONLY)
        end = os.fstat(self._fd).st_size
        tail = os.pread(self._fd, 256, max(0, end - 256))
        i = tail.rfind(b"mesg=")
        if i < 0:
            return 0
        digits = tail[i + 5 :].split(b"\r", 1)[0].split(b"\n", 1)[0]
        return int(digits) if digits.isdigit() else 0

    def stop(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


# -- the Django peers ---------------------------------------------------------------------------
def peers_python(venv_dir: Path) -> Path:
    """The peers' interpreter; the virtualenv is created (and filled) on first use."""
    python = venv_dir / "bin" / "python"
    marker = venv_dir / ".installed"
    if not marker.exists():
        print(f"creating {venv_dir} with {', '.join(PEER_PACKAGES)}", file=sys.stderr)
        venv.create(venv_dir, with_pip=True, clear=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
        marker.touch()
    return python


def peer_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json;"
        f"print(json.dumps({{p: m.version(p) for p in {list(PEER_PACKAGES)!r}}}))"
    )
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


class DjangoProject:
    """The peers' minimal Django project in ``directory``, one database per use."""

    def __init__(self, python: Path, directory: Path, smtp_port: int) -> None:
        self.python = python
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "benchsettings.py").write_text(SETTINGS_PY)
        (self.dir / "manage.py").write_text(MANAGE_PY)
        (self.dir / "enqueue.py").write_text(ENQUEUE_PY)
        (self.dir / "check.py").write_text(CHECK_PY)
        self.port = smtp_port

    def env(self, db: Path) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_DB": str(db),
            "BENCH_SMTP_PORT": str(self.port),
            "BENCH_LOCK": str(db.with_suffix(".lock")),
            "BENCH_BODY": BODY,
            "PYTHONPATH": str(self.dir),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(self, db: Path, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.python), *args],
            cwd=self.dir,
            env=self.env(db),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def fresh_db(self, name: str) -> Path:
        db = self.dir / f"{name}.sqlite3"
        for p in self.dir.glob(f"{name}.sqlite3*"):
            p.unlink()
        self.run(db, "manage.py", "migrate", "-v", "0")
        return db

    def enqueue(self, db: Path, kind: str, n: int, threads: int) -> dict[str, Any]:
        res = json.loads(self.run(db, "enqueue.py", kind, str(n), str(threads)).stdout)
        if res["errors"]:
            raise RuntimeError(f"{kind} enqueue x{threads}: {res['errors'][:3]}")
        return dict(res)

    def drain_command(self, kind: str) -> tuple[str, ...]:
        return ("manage.py", "send_mail" if kind == "django-mailer" else "send_queued_mail")

    def check(self, db: Path) -> dict[str, int]:
        return dict(json.loads(self.run(db, "check.py").stdout))


def peer_run(
    project: DjangoProject, sink: Sink, kind: str, n: int, run: int
) -> dict[str, float | str]:
    db10 = project.fresh_db(f"{kind}-{run}-x10")
    e10 = project.enqueue(db10, kind, n, 10)
    for p in project.dir.glob(f"{kind}-{run}-x10.*"):
        p.unlink()
    dbb = project.fresh_db(f"{kind}-{run}-bulk")
    eb = project.enqueue(dbb, kind, n, 0)
    state = project.check(dbb)
    queued = state["mailer_left"] if kind == "django-mailer" else state["post_office_total"]
    if queued != n:
        raise RuntimeError(f"{kind} enqueue bulk: {queued} of {n} queued ({state})")
    for p in project.dir.glob(f"{kind}-{run}-bulk.*"):
        p.unlink()
    db = project.fresh_db(f"{kind}-{run}")
    e1 = project.enqueue(db, kind, n, 1)
    before = sink.count()
    t0 = time.perf_counter()
    project.run(db, *project.drain_command(kind))
    took = time.perf_counter() - t0
    time.sleep(0.2)  # the sink's counter line for the last transaction
    sent = sink.count() - before
    state = project.check(db)
    ok = (
        state["mailer_left"] == 0
        if kind == "django-mailer"
        else state["post_office_sent"] == state["post_office_total"] == n
    )
    if sent != n or not ok:
        raise RuntimeError(f"{kind} drain: the sink counted {sent} of {n}; queue state {state}")
    t0 = time.perf_counter()
    project.run(db, *project.drain_command(kind))  # nothing left: start-up cost only
    startup = time.perf_counter() - t0
    for p in project.dir.glob(f"{kind}-{run}.*"):
        p.unlink()
    return {
        "enqueue x1": e1["n"] / e1["seconds"],
        "enqueue x10": e10["n"] / e10["seconds"],
        "enqueue bulk": eb["n"] / eb["seconds"],
        "drain": n / took,
        "drain command s": took,
        "empty drain command s": startup,
        "sqlite": f"journal_mode={e1['journal_mode']} synchronous={e1['synchronous']}",
    }


# -- spoolbox -----------------------------------------------------------------------------------
def _msg(i: int) -> NewMessage:
    content = (
        f"From: {SENDER}\r\nTo: r{i}@example.org\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench-{i}@spoolbox.bench>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
        + BODY
    ).encode()
    return NewMessage(Address("SMTP", SENDER), (Address("SMTP", f"r{i}@example.org"),), content)


def spoolbox_config(sink_port: int, max_connections: int) -> SpoolerConfig:
    options = {
        "host": HOST,
        "port": sink_port,
        "tls": "none",
        "max_connections": max_connections,
        "helo_name": "bench.example.org",
    }
    return SpoolerConfig(
        transports=(TransportConfig("smtp", "smtp", options=options),),
        policy=Policy(router_interval=0.05),
        node="bench",
    )


def _remove(directory: Path, pattern: str) -> None:
    for p in directory.glob(pattern):
        p.unlink()


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's event-loop thread and store thread (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"loop": 0.0, "store": 0.0}
    for t in threading.enumerate():
        if t is threading.main_thread():
            kind = "loop"
        elif t.name.startswith("spoolbox-sqlite"):
            kind = "store"
        else:
            continue
        if t.native_id is None:
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            out[kind] += (int(fields[11]) + int(fields[12])) / tick
    return out


async def spoolbox_enqueue(sp: Spooler, n: int, concurrency: int) -> float:
    per = n // concurrency

    async def one(k: int) -> None:
        for i in range(k * per, (k + 1) * per):
            await sp.submit(_msg(i))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(concurrency)))
    return per * concurrency / (time.perf_counter() - t0)


async def spoolbox_enqueue_bulk(sp: Spooler, n: int) -> float:
    t0 = time.perf_counter()
    infos = await sp.submit_many([_msg(i) for i in range(n)])
    took = time.perf_counter() - t0
    if len(infos) != n:
        raise RuntimeError(f"spoolbox enqueue bulk: {len(infos)} of {n}")
    return n / took


async def spoolbox_run(
    directory: Path, sink: Sink, n: int, max_connections: int, profile: Path | None
) -> dict[str, float | str]:
    cfg = spoolbox_config(sink.port, max_connections)
    # The enqueue-only runs hold the transport back (nothing is delivered), so the
    # spooler routes what comes in and does nothing else meanwhile.
    enqueued: dict[str, float] = {}
    for name, enqueue in (
        ("enqueue x10", lambda sp: spoolbox_enqueue(sp, n, 10)),
        ("enqueue bulk", lambda sp: spoolbox_enqueue_bulk(sp, n)),
    ):
        dbe = directory / "spoolbox-enqueue.db"
        async with Spooler.open(
            cfg, store=SQLiteStore(dbe), idle=AlwaysIdle(), close_store=True
        ) as sp:
            with sp.foreground_busy():
                await sp.wait_ready(timeout=30)
                enqueued[name] = await enqueue(sp)
                if (await sp.store.counts())[RecipientState.QUEUED] != n:
                    raise RuntimeError(f"spoolbox {name}: not all {n} queued")
        _remove(directory, "spoolbox-enqueue.db*")

    db = directory / "spoolbox.db"
    store = SQLiteStore(db)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        with sp.foreground_busy():
            await sp.wait_ready(timeout=30)
            e1 = await spoolbox_enqueue(sp, n, 1)
            await sp.route_now()
            before = sink.count()
            commits0 = int(str(store.statistics()["commits"]))
        profiler = _profiler(profile)
        cpu0 = _thread_cpu()
        t0 = time.perf_counter()
        t_sink = t_store = None
        async with asyncio.timeout(WAIT):
            while t_sink is None or t_store is None:
                if t_sink is None and sink.count() - before >= n:
                    t_sink = time.perf_counter() - t0
                    cpu1 = _thread_cpu()
                if t_store is None:
                    counts = await sp.store.counts()
                    if counts[RecipientState.DELIVERED] >= n:
                        t_store = time.perf_counter() - t0
                await asyncio.sleep(0.01)
        _profiler_done(profiler, profile)
        commits = int(str(store.statistics()["commits"])) - commits0
        counts = await sp.store.counts()
    _remove(directory, "spoolbox.db*")
    if counts[RecipientState.DELIVERED] != n or sink.count() - before != n:
        raise RuntimeError(f"spoolbox drain: store {dict(counts)}, sink {sink.count() - before}")
    return {
        "enqueue x1": e1,
        "enqueue x10": enqueued["enqueue x10"],
        "enqueue bulk": enqueued["enqueue bulk"],
        "drain": n / t_sink,
        "drain committed": n / t_store,
        "drain commits per message": commits / n,
        # Share of one CPU each thread of this process used until the sink had all
        # (the event loop, the store's thread): together they cannot pass 100% by
        # much, since both run Python under one GIL.
        "drain cpu loop": (cpu1["loop"] - cpu0["loop"]) / t_sink,
        "drain cpu store": (cpu1["store"] - cpu0["store"]) / t_sink,
        "sqlite": "journal_mode=wal synchronous=2 (FULL), progress NORMAL",
    }


def _profiler(path: Path | None) -> Any:
    if path is None:
        return None
    from pyinstrument import Profiler  # only with --profile: pip install pyinstrument

    profiler = Profiler(async_mode="disabled")
    profiler.start()
    return profiler


def _profiler_done(profiler: Any, path: Path | None) -> None:
    if profiler is None or path is None:
        return
    profiler.stop()
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    print(f"profile of the drain written to {path}", file=sys.stderr)


# -- report -------------------------------------------------------------------------------------
FIGURES = ("enqueue x1", "enqueue x10", "enqueue bulk", "drain", "drain committed")


def report(runs: list[dict[str, dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    med: dict[str, dict[str, float]] = {}
    for system in SYSTEMS:
        med[system] = {}
        extra = (
            "drain command s",
            "empty drain command s",
            "drain commits per message",
            "drain cpu loop",
            "drain cpu store",
        )
        for fig in (*FIGURES, *extra):
            values = [r[system][fig] for r in runs if fig in r[system]]
            if values:
                med[system][fig] = statistics.median(values)
    ratios: dict[str, float] = {}
    for fig in FIGURES:
        peer_fig = "drain" if fig == "drain committed" else fig
        ratios[fig] = statistics.median(
            r["spoolbox"][fig] / max(r[p][peer_fig] for p in PEERS) for r in runs
        )
    print(f"\nN = {args.messages} messages, {len(runs)} runs, medians (messages per second)\n")
    print("| system | " + " | ".join(FIGURES) + " |")
    print("|---|" + "---:|" * len(FIGURES))
    for system in SYSTEMS:
        m = med[system]
        cells = [f"{m[f]:,.0f}" if f in m else "(= drain)" for f in FIGURES]
        print(f"| {system} | " + " | ".join(cells) + " |")
    print("\n| spoolbox / faster peer (median of per-run ratios) | ratio | goal |")
    print("|---|---:|---:|")
    goals = {f: 3.0 if f.startswith("drain") else 5.0 for f in FIGURES}
    for fig in FIGURES:
        print(f"| {fig} | {ratios[fig]:.2f} | {goals[fig]:.0f}x |")
    print(
        f"\nspoolbox: {med['spoolbox']['drain commits per message']:.2f} store commits "
        "(write transactions) per message during the drain; CPU of one core used by "
        f"its event-loop thread {med['spoolbox']['drain cpu loop']:.0%} and by its store "
        f"thread {med['spoolbox']['drain cpu store']:.0%}"
    )
    for p in PEERS:
        print(
            f"\n{p}: drain command {med[p]['drain command s']:.2f} s median, of which "
            f"{med[p]['empty drain command s']:.2f} s is the command on an empty queue; "
            f"sqlite {runs[0][p]['sqlite']}"
        )
    return {"medians": med, "ratios": ratios}


def uvloop_run() -> Any:
    import uvloop  # a dependency of spoolbox on Linux

    return uvloop.run


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="drain from the API: spoolbox vs Django mailers")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--max-connections", type=int, default=4)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--only", choices=SYSTEMS, action="append", help="run only these systems")
    p.add_argument("--profile", type=Path, default=None, help="pyinstrument the spoolbox drain")
    p.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the loop spoolbox's process runs on (the application's choice when embedded)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not os.path.exists(SMTP_SINK):
        print("smtp-sink not installed: apt-get install postfix", file=sys.stderr)
        return 2
    systems = tuple(args.only or SYSTEMS)
    python = peers_python(args.peers_venv) if set(systems) & set(PEERS) else None
    versions = peer_versions(python) if python is not None else {}
    print(
        f"python {platform.python_version()}, {platform.platform()}, peers {versions}, "
        f"spoolbox on {args.event_loop}"
    )
    runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="drain-bench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        sink = Sink(root)
        try:
            sink.start()
            project = DjangoProject(python, root / "django", sink.port) if python else None
            for r in range(args.runs):
                order = systems[r % len(systems) :] + systems[: r % len(systems)]
                res: dict[str, dict[str, Any]] = {}
                for system in order:
                    if system == "spoolbox":
                        runner = asyncio.run if args.event_loop == "asyncio" else uvloop_run()
                        res[system] = runner(
                            spoolbox_run(
                                root,
                                sink,
                                args.messages,
                                args.max_connections,
                                args.profile if r == 0 else None,
                            )
                        )
                    else:
                        assert project is not None
                        res[system] = peer_run(project, sink, system, args.messages, r)
                runs.append(res)
                print(
                    f"run {r + 1}: "
                    + "; ".join(
                        f"{s}: "
                        + ", ".join(f"{k} {v:,.0f}/s" for k, v in res[s].items() if k in FIGURES)
                        for s in order
                    ),
                    file=sys.stderr,
                )
        finally:
            sink.stop()
            shutil.rmtree(root / "django", ignore_errors=True)
    if set(systems) == set(SYSTEMS):
        summary = report(runs, args)
    else:
        summary = {}
        for s in systems:
            print(
                s, {k: statistics.median(r[s][k] for r in runs) for k in FIGURES if k in runs[0][s]}
            )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"runs": runs, "summary": summary, "peers": versions}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
