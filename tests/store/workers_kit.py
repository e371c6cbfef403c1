"""What the delivery worker tests share: an SMTP sink (aiosmtpd) that can hold every
DATA until a gate opens, a profile relaying to it, ``spoolbox run`` as a subprocess,
the store's recipient states (SQLite or PostgreSQL) and who delivered what, read
from the daemon's log (each worker's lines are tagged ``[wN]``)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import postgres_cluster as pgc
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session
from relay_profile import write_relay_profile

from spoolbox import Address, NewMessage

CLI = [sys.executable, "-m", "spoolbox.cli"]
DEADLINE = 120.0
DSN_ENV = "SPOOLBOX_TEST_PG_DSN"
NODE = "wk"
#: connections per node to the sink: at most this many deliveries of one node are in
#: flight at once (its outbound lanes), the bound on duplicates when it is killed
MAX_CONNECTIONS = 2
#: the delivering processes of the daemons these tests run (``--workers 2``): they
#: share the profile's ``max_connections``, so it says ``MAX_CONNECTIONS`` for each
PROCESSES = 3
_DELIVERY = re.compile(r"spoolbox\.delivery(?:\[(w\d+)\])?: \S+: to=.*status=sent")


class Sink:
    """Records the recipients of every message handed over; with ``gated``, holds each
    DATA until :attr:`gate` is set (``waiting`` counts the DATA commands held)."""

    def __init__(self, *, gated: bool = False, delay: float = 0.0) -> None:
        self.received: list[str] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.delay = delay
        self.waiting = 0

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.waiting += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.02)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.extend(str(r) for r in envelope.rcpt_tos)
        return "250 OK"


@contextmanager
def running_sink(sink: Sink) -> Iterator[int]:
    """The sink on a free loopback port (yielded) while the block runs."""
    port = pgc.free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        sink.gate.set()
        controller.stop()


def write_profile(directory: Path, port: int, store: str, extra: str = "") -> Path:
    """A profile of node :data:`NODE` relaying SMTP: recipients to the sink on ``port``."""
    options = f"max_connections = {MAX_CONNECTIONS * PROCESSES}"
    return write_relay_profile(directory, NODE, store, port, options=options, tail=extra)


def lot(total: int, first: int = 0) -> list[NewMessage]:
    """``total`` messages, one recipient each (``user<i>@example.org``)."""
    return [
        NewMessage(
            sender=Address.parse("SMTP:postmaster@example.org"),
            recipients=(Address.parse(f"SMTP:user{i}@example.org"),),
            content=b"Subject: lot %d\r\n\r\nbody\r\n" % i,
        )
        for i in range(first, first + total)
    ]


def wait_until(what: str, predicate: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """``spoolbox run`` on a profile, as a subprocess; its log in ``daemon.log``."""

    def __init__(self, profile: Path, *args: str, dsn: str = "") -> None:
        self.profile = profile
        self.dsn = dsn
        self.log_path = profile.parent / "daemon.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*CLI, "--profile", str(profile), "run", "--no-nice", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=profile.parent,
            )
        try:
            wait_until("the daemon to answer", self._answers)
        except BaseException:
            self.kill()
            raise

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
        env["PYTHONWARNINGS"] = "error"
        env[DSN_ENV] = self.dsn
        return env

    def _answers(self) -> bool:
        """It answers, and has said it runs (its workers started: READY=1 then)."""
        if self.proc.poll() is not None:
            raise AssertionError(self.log())
        return " running (pid" in self.log() and self.run("status").returncode == 0

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--profile", str(self.profile), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=DEADLINE,
            cwd=self.profile.parent,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rows(self) -> dict[str, dict[str, Any]]:
        r = self.run("status", "--json")
        assert r.returncode == 0, r.stderr
        return {row["name"]: row for row in json.loads(r.stdout)["rows"]}

    def worker_pid(self, tag: str) -> int:
        """The pid of worker ``tag``, from its status row (``..., pid N)``)."""
        status = self.rows()[f"worker:{tag}"]["status"]
        match = re.search(r"pid (\d+)\)", status)
        assert match is not None, status
        return int(match.group(1))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def delivered_by(log: str) -> collections.Counter[str]:
    """Delivery lines with ``status=sent`` by process: ``w1``, ``w2`` ... for the
    workers, ``daemon`` for the daemon's own spooler."""
    return collections.Counter(m.group(1) or "daemon" for m in _DELIVERY.finditer(log))


def logged_deliveries(daemon: Daemon, n: int) -> collections.Counter[str]:
    """:func:`delivered_by` once the daemon's log has ``n`` delivery lines: a line is
    written after its settle commits, which comes after the server's 250 (and a
    moment after the store shows the recipient delivered), so a test that saw the
    sink or the store complete waits for the lines too."""
    wait_until(
        f"{n} delivery lines in the log", lambda: sum(delivered_by(daemon.log()).values()) >= n
    )
    return delivered_by(daemon.log())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Store:
    """Reads the recipients' states of the test's store (SQLite file or PostgreSQL)."""

    def __init__(self, sqlite_path: Path | None = None, dsn: str | None = None) -> None:
        self._path, self._dsn = sqlite_path, dsn

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        if self._dsn is not None:
            import psycopg

            with psycopg.connect(self._dsn) as conn:
                return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
        assert self._path is not None
        conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=30)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()

    def states(self) -> dict[str, int]:
        rows = self.query("SELECT state, count(*) FROM recipients GROUP BY state")
        return {str(state): int(n) for state, n in rows}

    def active_of(self, owner: str) -> int:
        rows = self.query(
            "SELECT count(*) FROM recipients WHERE state = 'active' AND owner = ?", owner
        )
        return int(rows[0][0])

    def delivered_addresses(self) -> set[str]:
        rows = self.query("SELECT address FROM recipients WHERE state = 'delivered'")
        return {str(address).split(":", 1)[1] for (address,) in rows}
