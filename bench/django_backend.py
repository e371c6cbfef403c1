"""Django's own mail code on two queueing backends: spoolbox.django.EmailBackend
against django-post-office, in one run.

The same Django project (the drain bench's: SQLite in WAL mode with
``synchronous=FULL``, autocommit) runs the same code, ``django.core.mail.send_mail``
once per message and ``send_mass_mail`` for a batch, with ``EMAIL_BACKEND`` set to
each system's backend; post-office's own ``mail.send`` / ``mail.send_many`` are
measured too (its native API, what the drain bench measures).  N messages of about
2.3 KB (the drain bench's body), one recipient each:

* ``enqueue x1``: N ``send_mail`` calls one after the other, each returning once its
  message is committed (post-office: an ``Email`` row; spoolbox: a store transaction
  with the daemon down, or a local API request with the daemon up);
* ``enqueue bulk``: one ``send_mass_mail`` of N (spoolbox: one ``submit_many``
  transaction; post-office's backend: a row per message) or ``mail.send_many``;
* ``drain``: the N messages of ``enqueue x1`` delivered to Postfix's ``smtp-sink``:
  post-office's ``manage.py send_queued_mail`` (its defaults: batches of 100, 5
  threads), spoolbox's ``spoolbox run`` started on the store (``nice = 0``, the relay
  with ``max_connections = 4``), each timed from the start of the program until all N
  are sent (post-office: the command's exit; spoolbox: the sink's count);
* ``end to end``: N / (enqueue x1 + drain); with the daemon up (it delivers while the
  messages come in), from the first ``send_mail`` until the sink counted N.

Every figure is checked: the queue holds N after an enqueue (post-office: N
``Email`` rows; spoolbox: ``spoolbox queue list``), the sink counted N after a drain.
The Django code runs in the peers' virtualenv (``bench/.peers-venv``, as the drain
bench makes it) with this tree's ``src`` on ``PYTHONPATH`` (spoolbox.django needs
only Django); the spoolbox daemon runs from this project's venv.  The raw ``write +
fsync`` rate of the disk is measured at the start of every run.

Run it::

    .venv/bin/python bench/django_backend.py --runs 5 [--messages 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drain_vs_django import (
    DEFAULT_VENV,
    SMTP_SINK,
    WAIT,
    DjangoProject,
    Sink,
    peer_versions,
    peers_python,
)
from spoolbox.client import Client
from store_throughput import fsync_rate

SRC = Path(__file__).resolve().parents[1] / "src"
SYSTEMS = ("post-office mail.send", "post-office backend", "spoolbox (daemon down)",
           "spoolbox (daemon up)")  # fmt: skip
FIGURES = ("enqueue x1", "enqueue bulk", "drain", "end to end")

#: The drain bench's settings, with the backend chosen by the environment.
SETTINGS_PY = """\
import os

from benchsettings import *  # noqa: F403

EMAIL_BACKEND = os.environ["BENCH_BACKEND"]
SPOOLBOX_PROFILE = os.environ.get("BENCH_PROFILE")
# post-office sends through the SMTP backend (its EmailBackend only queues)
POST_OFFICE = {
    "LOCK_FILE_NAME": os.environ["BENCH_LOCK"],
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
}
"""

#: One enqueue: ``kind`` is ``backend`` (Django's send_mail / send_mass_mail, through
#: EMAIL_BACKEND) or ``native`` (post-office's mail.send / mail.send_many).
ENQUEUE_PY = """\
import json
import os
import sys
import time

import django

django.setup()
from django.core import mail

kind, how, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = os.environ["BENCH_BODY"]
sender = "bench@example.org"
if kind == "native":
    from post_office import mail as po

started = time.time()
t0 = time.perf_counter()
if kind == "backend" and how == "x1":
    for i in range(n):
        mail.send_mail(f"bench {i}", body, sender, [f"r{i}@example.org"])
elif kind == "backend":
    mail.send_mass_mail(
        [(f"bench {i}", body, sender, [f"r{i}@example.org"]) for i in range(n)]
    )
elif how == "x1":
    for i in range(n):
        po.send([f"r{i}@example.org"], sender, subject=f"bench {i}", message=body,
                priority="medium")
else:
    po.send_many([dict(recipients=[f"r{i}@example.org"], sender=sender,
                       subject=f"bench {i}", message=body, priority="medium")
                  for i in range(n)])
print(json.dumps({"seconds": time.perf_counter() - t0, "started": started}))
"""

PROFILE = """\
data_dir = "."
node = "bench"
[store]
path = "spool.sqlite3"
synchronous = "FULL"
[daemon]
socket = "spoolbox.sock"
nice = 0
log_level = "warning"
[policy]
idle = "always"
router_interval = "50ms"
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
inbound = false
[transports.options]
host = "127.0.0.1"
port = {port}
tls = "none"
max_connections = 4
"""


class Project(DjangoProject):
    """The drain bench's project with the backend settings module and spoolbox's source."""

    def __init__(self, python: Path, directory: Path, smtp_port: int) -> None:
        super().__init__(python, directory, smtp_port)
        (self.dir / "backendsettings.py").write_text(SETTINGS_PY)
        (self.dir / "backend_enqueue.py").write_text(ENQUEUE_PY)
        self.backend = "post_office.EmailBackend"
        self.profile: Path | None = None

    def env(self, db: Path) -> dict[str, str]:
        env = super().env(db)
        env["PYTHONPATH"] = f"{self.dir}{os.pathsep}{SRC}"
        env["DJANGO_SETTINGS_MODULE"] = "backendsettings"
        env["BENCH_BACKEND"] = self.backend
        env.pop("SPOOLBOX_PROFILE", None)
        if self.profile is not None:
            env["BENCH_PROFILE"] = str(self.profile)
        return env

    def send(self, db: Path, kind: str, how: str, n: int) -> dict[str, float]:
        out = self.run(db, "backend_enqueue.py", kind, how, str(n)).stdout
        return dict(json.loads(out))


class Daemon:
    """``spoolbox run`` (this venv's) on ``profile``."""

    def __init__(self, profile: Path) -> None:
        self.log = (profile.parent / "daemon.log").open("ab")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spoolbox.cli", "-p", str(profile), "run", "--no-dialog"],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = Client(profile)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while not self.client.running():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("spoolbox run did not start; see daemon.log")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        self.log.close()


def wait_sink(sink: Sink, target: int) -> float:
    """time.time() once the sink has counted ``target`` transactions."""
    deadline = time.monotonic() + WAIT
    while sink.count() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sink counted {sink.count()} of {target}")
        time.sleep(0.01)
    return time.time()


def queued(profile: Path) -> int:
    return int(Client(profile).queue_listing(all=True, limit=1)["total"])


def post_office(project: Project, sink: Sink, kind: str, n: int, run: int) -> dict[str, float]:
    project.backend = "post_office.EmailBackend"
    project.profile = None
    name = f"po-{kind}-{run}"
    bulk_db = project.fresh_db(f"{name}-bulk")
    bulk = project.send(bulk_db, kind, "bulk", n)
    if project.check(bulk_db)["post_office_total"] != n:
        raise RuntimeError(f"post-office {kind} bulk: not {n} queued")
    db = project.fresh_db(name)
    one = project.send(db, kind, "x1", n)
    if project.check(db)["post_office_total"] != n:
        raise RuntimeError(f"post-office {kind} x1: not {n} queued")
    before = sink.count()
    t0 = time.perf_counter()
    project.run(db, "manage.py", "send_queued_mail")
    drain = time.perf_counter() - t0
    time.sleep(0.2)  # the sink's counter line for the last transaction
    state = project.check(db)
    if sink.count() - before != n or state["post_office_sent"] != n:
        raise RuntimeError(f"post-office {kind} drain: sink {sink.count() - before}, {state}")
    for p in project.dir.glob(f"{name}*"):
        p.unlink()
    return {
        "enqueue x1": n / one["seconds"],
        "enqueue bulk": n / bulk["seconds"],
        "drain": n / drain,
        "end to end": n / (one["seconds"] + drain),
    }


def spoolbox_runs(project: Project, sink: Sink, root: Path, n: int, run: int) -> dict[str, Any]:
    """The daemon-down figures, then the daemon-up ones, each on a fresh store."""
    project.backend = "spoolbox.django.EmailBackend"
    db = project.fresh_db(f"sb-{run}")  # Django wants its database; spoolbox does not use it
    results: dict[str, dict[str, float]] = {}
    for up in (False, True):
        home = root / f"spoolbox-{run}-{'up' if up else 'down'}"
        home.mkdir()
        profile = home / "spoolbox.toml"
        profile.write_text(PROFILE.format(port=sink.port))
        project.profile = profile
        figures: dict[str, float] = {}
        if not up:
            bulk_home = root / f"spoolbox-{run}-bulk"
            bulk_home.mkdir()
            (bulk_home / "spoolbox.toml").write_text(PROFILE.format(port=sink.port))
            project.profile = bulk_home / "spoolbox.toml"
            bulk = project.send(db, "backend", "bulk", n)
            if queued(project.profile) != n:
                raise RuntimeError(f"spoolbox bulk: not {n} queued")
            figures["enqueue bulk"] = n / bulk["seconds"]
            shutil.rmtree(bulk_home)
            project.profile = profile
        before = sink.count()
        daemon = Daemon(profile) if up else None
        try:
            if daemon is not None:
                daemon.wait_ready()
            one = project.send(db, "backend", "x1", n)
            figures["enqueue x1"] = n / one["seconds"]
            if daemon is None:
                if queued(profile) != n:
                    raise RuntimeError(f"spoolbox x1: not {n} queued")
                daemon = Daemon(profile)
                done = wait_sink(sink, before + n)
                figures["drain"] = n / (done - daemon.started)
                figures["end to end"] = n / (one["seconds"] + done - daemon.started)
            else:
                figures["end to end"] = n / (wait_sink(sink, before + n) - one["started"])
        finally:
            if daemon is not None:
                daemon.close()
        time.sleep(0.2)
        if sink.count() - before != n:
            raise RuntimeError(f"spoolbox: the sink counted {sink.count() - before} of {n}")
        shutil.rmtree(home)
        results["spoolbox (daemon up)" if up else "spoolbox (daemon down)"] = figures
    for p in project.dir.glob(f"sb-{run}*"):
        p.unlink()
    return results


def report(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    med = {
        s: {f: statistics.median(r[s][f] for r in runs) for f in FIGURES if f in runs[0][s]}
        for s in SYSTEMS
    }
    fsync = statistics.median(r["fsync"] for r in runs)
    print(f"\nN = {n} messages, {len(runs)} runs, medians (messages per second); "
          f"disk: {fsync:,.0f} fsyncs/s (median of the runs' probes)\n")  # fmt: skip
    print("| system | " + " | ".join(FIGURES) + " |")
    print("|---|" + "---:|" * len(FIGURES))
    for s in SYSTEMS:
        cells = [f"{med[s][f]:,.0f}" if f in med[s] else "" for f in FIGURES]
        print(f"| {s} | " + " | ".join(cells) + " |")
    ratios = {}
    for s in SYSTEMS[2:]:
        for f in FIGURES:
            if f in med[s]:
                ratios[f"{s} / post-office backend, {f}"] = statistics.median(
                    r[s][f] / r["post-office backend"][f] for r in runs
                )
    print("\n| ratio (median of per-run ratios) | value |\n|---|---:|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    return {"medians": med, "ratios": ratios, "fsync": fsync}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Django's mail API: spoolbox vs post-office")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--peers-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the sink and daemons
    if not os.path.exists(SMTP_SINK):
        print("smtp-sink not installed: apt-get install postfix", file=sys.stderr)
        return 2
    python = peers_python(args.peers_venv)
    versions = peer_versions(python)
    print(f"python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs, "
          f"peers {versions}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    runs: list[dict[str, Any]] = []
    n = args.messages
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="django-backend-bench-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        sink = Sink(root)
        try:
            sink.start()
            project = Project(python, root / "django", sink.port)
            for r in range(args.runs):
                res: dict[str, Any] = {"fsync": fsync_rate(root, 300)}
                order = ["native", "backend", "spoolbox"]
                order = order[r % 3 :] + order[: r % 3]
                for which in order:
                    if which == "spoolbox":
                        res.update(spoolbox_runs(project, sink, root, n, r))
                    else:
                        label = "post-office mail.send" if which == "native" else SYSTEMS[1]
                        res[label] = post_office(project, sink, which, n, r)
                runs.append(res)
                print(f"run {r + 1} (fsync {res['fsync']:,.0f}/s, load "
                      f"{os.getloadavg()[0]:.1f}): " + "; ".join(
                          f"{s}: " + ", ".join(f"{k} {v:,.0f}" for k, v in res[s].items())
                          for s in SYSTEMS), file=sys.stderr)  # fmt: skip
        finally:
            sink.stop()
    summary = report(runs, n)
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary, "peers": versions}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
