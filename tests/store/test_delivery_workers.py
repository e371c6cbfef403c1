"""``spoolbox run --workers 2``: the real daemon and its real delivery worker
processes, on SQLite (one WAL file) and on PostgreSQL (a private cluster), relaying to
aiosmtpd.  Every message arrives once and every worker delivers part of the lot; a
worker killed with SIGKILL mid-batch is started again, nothing is lost, duplicates
only for what it had in flight; SIGTERM drains the workers; SIGHUP reaches them, and
they share a transport's new limits after it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import postgres_cluster as pgc
import pytest
from workers_kit import (
    CLI,
    DSN_ENV,
    MAX_CONNECTIONS,
    NODE,
    Daemon,
    Sink,
    Store,
    alive,
    logged_deliveries,
    lot,
    running_sink,
    wait_until,
    write_profile,
)

from spoolbox.client import Client


@dataclass
class Backend:
    name: str
    toml: str  # the [store] table's body
    dsn: str
    store: Store


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        return Backend(
            "postgres", f'backend = "postgres"\ndsn_env = "{DSN_ENV}"', dsn, Store(dsn=dsn)
        )
    return Backend("sqlite", 'backend = "sqlite"', "", Store(tmp_path / "spool.sqlite3"))


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.kill()


def _expected(total: int, first: int = 0) -> list[str]:
    return sorted(f"user{i}@example.org" for i in range(first, first + total))


def test_two_workers_relay_every_message_once_and_each_delivers_part(
    tmp_path: Path, backend: Backend, daemons: list[Daemon]
) -> None:
    total = 300
    sink = Sink(delay=0.01)
    with running_sink(sink) as port:
        profile = write_profile(tmp_path, port, backend.toml)
        daemon = Daemon(profile, "--workers", "2", dsn=backend.dsn)
        daemons.append(daemon)
        pids = [daemon.worker_pid("w1"), daemon.worker_pid("w2")]
        assert daemon.proc.pid not in pids and pids[0] != pids[1]
        assert "INFO spoolbox.daemon: 2 delivery workers: w1 node " in daemon.log()
        client = Client(profile)
        for first in range(0, total, 100):
            assert client.submit_many(lot(100, first))["via"] == "daemon"
        wait_until("every message at the sink", lambda: len(sink.received) >= total)
        wait_until(
            "every recipient settled", lambda: backend.store.states().get("delivered") == total
        )
        assert sorted(sink.received) == _expected(total)  # each exactly once
        assert backend.store.states() == {"delivered": total}
        by = logged_deliveries(daemon, total)
        assert sum(by.values()) == total, by
        assert by["w1"] > 0 and by["w2"] > 0, by  # both workers took part of the lot

        def w1_counters() -> dict[str, Any]:
            counters: dict[str, Any] = daemon.rows()["worker:w1"]["counters"]
            return counters

        # A worker sends its row to the daemon on a timer of its own: wait for the row
        # that counts its deliveries (read at once, it could still say 0).
        wait_until(
            "worker w1's row counting its deliveries",
            lambda: w1_counters().get("delivered", 0) >= 1,
        )
        # Its store's counters come with it (claims and settles are commits).
        assert w1_counters().get("store_commits", 0) >= 1

        def relay_nodes() -> set[str]:
            r = daemon.run("status", "--json")
            assert r.returncode == 0, r.stderr
            return {row["node"] for row in json.loads(r.stdout)["rows"] if row["name"] == "relay"}

        # Each worker is a node of the store: its transport row is in the status too.
        want = {NODE, f"{NODE}-w1", f"{NODE}-w2"}
        wait_until("every node's relay row", lambda: relay_nodes() == want)
        assert daemon.stop() == 0
        assert not any(alive(pid) for pid in pids)


def test_a_worker_killed_mid_batch_is_started_again_and_nothing_is_lost(
    tmp_path: Path, backend: Backend, daemons: list[Daemon]
) -> None:
    total = 60
    sink = Sink(gated=True)
    with running_sink(sink) as port:
        # Small batches: some of the lot is left unclaimed while the sink holds DATA.
        profile = write_profile(tmp_path, port, backend.toml, "\n[policy]\nclaim_batch = 4\n")
        daemon = Daemon(profile, "--workers", "2", dsn=backend.dsn)
        daemons.append(daemon)
        first = daemon.worker_pid("w1")
        Client(profile).submit_many(lot(total))
        wait_until("w1 holding recipients", lambda: backend.store.active_of(f"{NODE}-w1") >= 1)
        wait_until("deliveries in flight", lambda: sink.waiting >= 1)
        os.kill(first, signal.SIGKILL)
        # The daemon returns what w1 held to the queue at once, then starts it again.
        wait_until("w1's recipients returned", lambda: f"node {NODE}-w1 held" in daemon.log())
        wait_until("w1 started again", lambda: "delivery worker w1 started again" in daemon.log())
        row = daemon.rows()["worker:w1"]
        assert "restarts 1" in row["detail"] and "status -9" in row["detail"]
        assert daemon.worker_pid("w1") != first
        sink.gate.set()
        wait_until(
            "every recipient delivered", lambda: backend.store.states() == {"delivered": total}
        )
        wait_until(
            "the sink has every message", lambda: set(sink.received) >= set(_expected(total))
        )
        assert set(sink.received) == set(_expected(total))  # lost: 0
        # Duplicates only for what w1 had in flight: at most one per connection of it.
        duplicates = len(sink.received) - total
        assert 0 <= duplicates <= MAX_CONNECTIONS, duplicates
        assert daemon.stop() == 0


def test_sigterm_drains_the_workers_then_the_rest_waits_in_the_queue(
    tmp_path: Path, backend: Backend, daemons: list[Daemon]
) -> None:
    total = 40
    sink = Sink(gated=True)
    with running_sink(sink) as port:
        profile = write_profile(tmp_path, port, backend.toml, "\n[policy]\nclaim_batch = 4\n")
        daemon = Daemon(profile, "--workers", "2", dsn=backend.dsn)
        daemons.append(daemon)
        pids = [daemon.worker_pid("w1"), daemon.worker_pid("w2")]
        Client(profile).submit_many(lot(total))
        # Each of the 3 nodes has 2 connections: 5 DATA held means both workers (and
        # maybe the daemon) are in the middle of a delivery.
        wait_until("deliveries in flight in both workers", lambda: sink.waiting >= 5)
        held = sink.waiting
        daemon.proc.send_signal(signal.SIGTERM)
        for tag in ("w1", "w2"):
            wait_until(
                f"{tag} draining",
                lambda t=tag: (
                    f"daemon[{t}]: stopping: finishing the deliveries in hand" in daemon.log()
                ),
            )
        sink.gate.set()  # the deliveries in hand may finish now
        assert daemon.proc.wait(timeout=60) == 0
        assert not any(alive(pid) for pid in pids)
        states = backend.store.states()
        assert "active" not in states  # nothing left claimed
        # What was in flight was finished and settled, not returned to be sent again.
        assert set(sink.received) == backend.store.delivered_addresses()
        assert len(sink.received) >= held >= 1
        assert states.get("queued", 0) == total - len(sink.received)
        # The rest goes out at the next start, and nothing twice.
        daemons.append(Daemon(profile, dsn=backend.dsn))
        wait_until("the rest delivered", lambda: backend.store.states() == {"delivered": total})
        assert sorted(sink.received) == _expected(total)


def test_one_worker_is_said_as_one(tmp_path: Path, daemons: list[Daemon]) -> None:
    with running_sink(Sink()) as port:
        profile = write_profile(tmp_path, port, 'backend = "sqlite"')
        daemon = Daemon(profile, "--workers", "1")
        daemons.append(daemon)
        pid = daemon.worker_pid("w1")
        assert "INFO spoolbox.daemon: 1 delivery worker: w1 node " in daemon.log()
        assert f"pid {pid}" in daemon.log()
        assert daemon.stop() == 0


def test_sighup_reaches_the_workers(tmp_path: Path, daemons: list[Daemon]) -> None:
    old, new = Sink(), Sink(delay=0.01)
    with running_sink(old) as old_port, running_sink(new) as new_port:
        profile = write_profile(tmp_path, old_port, 'backend = "sqlite"')
        daemon = Daemon(profile, "--workers", "2")
        daemons.append(daemon)
        profile.write_text(profile.read_text().replace(f"port = {old_port}", f"port = {new_port}"))
        daemon.proc.send_signal(signal.SIGHUP)
        for tag in ("w1", "w2"):
            wait_until(
                f"{tag} reloaded", lambda t=tag: f"daemon[{t}]: profile reloaded" in daemon.log()
            )
        Client(profile).submit_many(lot(120))
        wait_until("the lot at the new sink", lambda: len(new.received) >= 120)
        assert old.received == []
        by = logged_deliveries(daemon, 120)
        assert by["w1"] > 0 and by["w2"] > 0, by  # the workers relayed to the new port
        assert daemon.stop() == 0


def test_a_reload_shares_the_new_limits_among_the_workers(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """``max_connections = 2`` with ``--workers 2``: w2 has no part of the relay and
    delivers none of a first lot; after SIGHUP with 6, each of the three processes
    has 2 and w2 delivers part of the next lot (the daemon and each worker share the
    new limit when they reload)."""
    sink = Sink(delay=0.01)
    with running_sink(sink) as port:
        profile = write_profile(tmp_path, port, 'backend = "sqlite"')
        text = profile.read_text()
        assert f"max_connections = {MAX_CONNECTIONS * 3}" in text
        profile.write_text(
            text.replace(f"max_connections = {MAX_CONNECTIONS * 3}", "max_connections = 2")
        )
        daemon = Daemon(profile, "--workers", "2")
        daemons.append(daemon)
        Client(profile).submit_many(lot(60))
        wait_until("the first lot at the sink", lambda: len(sink.received) >= 60)
        first = logged_deliveries(daemon, 60)
        assert sum(first.values()) == 60 and first["w2"] == 0, first
        profile.write_text(
            profile.read_text().replace("max_connections = 2", "max_connections = 6")
        )
        daemon.proc.send_signal(signal.SIGHUP)
        for tag in ("w1", "w2"):
            wait_until(
                f"{tag} reloaded", lambda t=tag: f"daemon[{t}]: profile reloaded" in daemon.log()
            )
        Client(profile).submit_many(lot(120, first=60))
        wait_until("the second lot at the sink", lambda: len(sink.received) >= 180)
        assert sorted(sink.received) == _expected(180)
        second = logged_deliveries(daemon, 180) - first
        assert second["w2"] > 0, second
        assert daemon.stop() == 0


def test_idle_workers_are_woken_by_what_the_daemon_commits(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = Sink(gated=True)
    with running_sink(sink) as port:
        # The nodes look at the queue on their own only every 5 h: a worker claims
        # now only if the daemon tells it of the submission.
        extra = '\n[policy]\nclaim_batch = 4\nrouter_interval = "1h"\n'
        profile = write_profile(tmp_path, port, 'backend = "sqlite"', extra)
        daemon = Daemon(profile, "--workers", "2")
        daemons.append(daemon)
        store = Store(tmp_path / "spool.sqlite3")
        wait_until("the workers' transports to log on", lambda: _logged_on(daemon, 2))
        Client(profile).submit_many(lot(40))
        for tag in ("w1", "w2"):
            wait_until(f"{tag} claiming", lambda t=tag: store.active_of(f"{NODE}-{t}") >= 1)
        sink.gate.set()
        wait_until("every recipient delivered", lambda: store.states() == {"delivered": 40})
        assert daemon.stop() == 0


def _logged_on(daemon: Daemon, workers: int) -> bool:
    """Each worker's transport has logged on (its log says so; its first look at the
    queue follows at once)."""
    log = daemon.log()
    return all(
        f"daemon[w{i}]: transports logged on: relay yes" in log for i in range(1, workers + 1)
    )


def test_systemd_hears_ready_once_the_workers_run_and_stopping_at_the_drain(
    tmp_path: Path,
) -> None:
    profile = write_profile(tmp_path, pgc.free_port(), 'backend = "sqlite"')
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
        env.update({"PYTHONWARNINGS": "error", "NOTIFY_SOCKET": address})
        with open(tmp_path / "daemon.log", "wb") as log:
            proc = subprocess.Popen(
                [*CLI, "--profile", str(profile), "run", "--no-nice", "--workers", "2"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=tmp_path,
            )
        try:
            ready = sock.recv(4096).decode().splitlines()
            assert "READY=1" in ready, ready
            r = subprocess.run(
                [*CLI, "--profile", str(profile), "status", "--json"],
                capture_output=True,
                text=True,
                env=env | {"NOTIFY_SOCKET": ""},
                timeout=60,
            )
            rows = {row["name"]: row for row in json.loads(r.stdout)["rows"]}
            for tag in ("w1", "w2"):  # both started before READY=1
                assert rows[f"worker:{tag}"]["status"].startswith("delivering (node wk-"), rows
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode().splitlines()[0] == "STOPPING=1"
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
