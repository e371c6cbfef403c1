"""``spoolbox run`` on a PostgreSQL store: the real daemon, as a subprocess, relays a
message sent through it to a real SMTP server (aiosmtpd), and the DSN's password never
shows in its output; a profile with ``[store] backend = "postgres"`` is read and
checked as the reference says."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import postgres_cluster as pgc
import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session
from relay_profile import write_relay_profile

from spoolbox import Address, NewMessage
from spoolbox.client import Client
from spoolbox.profile import ProfileError, load_profile
from spoolbox.store.postgres import SCHEMA_VERSION, PostgresStore

CLI = [sys.executable, "-m", "spoolbox.cli"]
DEADLINE = 60.0
DSN_ENV = "SPOOLBOX_TEST_PG_DSN"


class _Sink:
    """Records every message an SMTP client hands over."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), content))
        return "250 OK"


@pytest.fixture
def sink() -> Iterator[tuple[_Sink, int]]:
    handler = _Sink()
    port = pgc.free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _profile(directory: Path, smtp_port: int, store: str, node: str = "pg-node-1") -> Path:
    return write_relay_profile(directory, node, store, smtp_port)


def _env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    env["PYTHONWARNINGS"] = "error"
    env[DSN_ENV] = dsn
    return env


def _run(profile: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--profile", str(profile), *args],
        capture_output=True,
        text=True,
        env=_env(dsn),
        timeout=DEADLINE,
        cwd=profile.parent,
    )


def _wait(what: str, predicate: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _start(profile: Path, dsn: str) -> subprocess.Popen[bytes]:
    """``spoolbox run`` on ``profile``, once it answers (its log: daemon.log beside)."""
    log_path = profile.parent / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [*CLI, "--profile", str(profile), "run", "--no-nice"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(dsn),
            cwd=profile.parent,
        )

    def answers() -> bool:
        if daemon.poll() is not None:
            raise AssertionError(log_path.read_text())
        return _run(profile, dsn, "status").returncode == 0

    try:
        _wait("the daemon to answer", answers)
    except BaseException:
        daemon.kill()
        daemon.wait()
        raise
    return daemon


def test_the_daemon_relays_a_message_through_a_postgres_store(
    tmp_path: Path, pg_dsn: str, sink: tuple[_Sink, int]
) -> None:
    handler, port = sink
    profile = _profile(tmp_path, port, f'backend = "postgres"\ndsn_env = "{DSN_ENV}"')
    log_path = tmp_path / "daemon.log"
    daemon = _start(profile, pg_dsn)
    try:
        r = _run(profile, pg_dsn, "send", "--to", "SMTP:bob@example.org", "--subject", "via pg")
        assert r.returncode == 0, r.stderr
        mid = r.stdout.strip()
        _wait("the message at the SMTP server", lambda: len(handler.received) == 1)
        sender, rcpts, content = handler.received[0]
        assert (sender, rcpts) == ("postmaster@example.org", ["bob@example.org"])
        assert b"Subject: via pg" in content
        # The outcome is in PostgreSQL, where another node would see it.
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT state, status FROM recipients WHERE message_id = %s", (mid,)
            ).fetchall()
        assert [state for state, _ in rows] == ["delivered"]
        assert str(rows[0][1]).startswith("2")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=DEADLINE) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    output = log_path.read_text()
    assert pgc.PASSWORD not in output
    assert pgc.PASSWORD not in r.stdout + r.stderr


def test_a_daemon_whose_dsn_is_refused_says_so_without_the_password(
    tmp_path: Path, pg_cluster: pgc.Cluster
) -> None:
    profile = _profile(tmp_path, 25, f'backend = "postgres"\ndsn_env = "{DSN_ENV}"')
    bad = pg_cluster.dsn("postgres", password="not the password")
    r = subprocess.run(
        [*CLI, "--profile", str(profile), "run", "--no-nice"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(bad),
        timeout=DEADLINE,
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert "password authentication failed" in r.stderr
    assert f"{pg_cluster.host}:{pg_cluster.port}/postgres" in r.stderr
    assert "not the password" not in r.stderr + r.stdout


# -- the profile's [store] keys ------------------------------------------------------------


def test_a_postgres_store_profile_reads_the_dsn_from_env_file_or_inline(tmp_path: Path) -> None:
    dsn = "host=db.example.org dbname=spool user=sb password='pa ss'"
    from_env = load_profile(
        _profile(tmp_path, 25, 'backend = "postgres"\ndsn_env = "PGDSN"'),
        environ={"PGDSN": dsn},
    )
    assert (from_env.store.backend, from_env.store.dsn) == ("postgres", dsn)
    assert "pa ss" not in repr(from_env.store)
    assert {dsn, "pa ss"} <= set(from_env.secret_values)
    (tmp_path / "dsn").write_text("postgresql://sb:p%40w@db/spool\n")
    from_file = load_profile(
        _profile(tmp_path, 25, 'backend = "postgres"\ndsn_file = "dsn"'), environ={}
    )
    assert from_file.store.dsn == "postgresql://sb:p%40w@db/spool"
    assert {"p%40w", "p@w"} <= set(from_file.secret_values)
    unset = load_profile(
        _profile(tmp_path, 25, 'backend = "postgres"\ndsn_env = "PGDSN"'), environ={}
    )
    assert unset.store.dsn is None
    assert unset.store.dsn_missing == "environment variable PGDSN"


@pytest.mark.parametrize(
    ("store", "key", "message"),
    [
        ('backend = "postgres"', "[store] dsn", "exactly one of dsn, dsn_env, dsn_file"),
        (
            'backend = "postgres"\ndsn = "host=a"\ndsn_env = "X"',
            "[store] dsn_env",
            "exactly one of",
        ),
        ('dsn = "host=a"', "[store] dsn", 'only for backend = "postgres"'),
        (  # init's profile with only its backend line changed
            'backend = "postgres"\ndsn = "host=a"\npath = "spool.sqlite3"\n'
            'synchronous = "FULL"\nprogress_synchronous = "NORMAL"',
            "[store] path",
            'path, synchronous, progress_synchronous: only for backend = "sqlite"',
        ),
        (
            'backend = "postgres"\ndsn = "host=a"\nprogress_synchronous = "OFF"',
            "[store] progress_synchronous",
            'progress_synchronous: only for backend = "sqlite"',
        ),
        ('backend = "mysql"', "[store] backend", 'expected "sqlite" or "postgres"'),
    ],
)
def test_bad_store_keys_are_named(tmp_path: Path, store: str, key: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(_profile(tmp_path, 25, store), environ={})
    assert info.value.key == key


def test_listener_processes_are_accepted_on_a_postgres_store(tmp_path: Path) -> None:
    path = _profile(tmp_path, 25, 'backend = "postgres"\ndsn = "host=a"')
    path.write_text(
        path.read_text() + '\n[listeners.sub]\nkind = "smtp"\nport = 2525\nprocesses = 2\n'
    )
    (listener,) = load_profile(path, environ={}).listeners
    assert (listener.name, listener.processes) == ("sub", 2)


def _two_nodes(tmp_path: Path, handler: _Sink, extra: str = "") -> tuple[Controller, list[Path]]:
    """An SMTP sink (started) and the profiles of two nodes on the test's database."""
    port = pgc.free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    store = f'backend = "postgres"\ndsn_env = "{DSN_ENV}"'
    profiles = [_profile(tmp_path / f"node{i}", port, store, f"pg-node-{i}") for i in (1, 2)]
    for p in profiles:
        p.write_text(p.read_text() + extra)
    return controller, profiles


def _lot(total: int) -> list[NewMessage]:
    """``total`` messages, one recipient each (``user<i>@example.org``)."""
    return [
        NewMessage(
            sender=Address.parse("SMTP:postmaster@example.org"),
            recipients=(Address.parse(f"SMTP:user{i}@example.org"),),
            content=b"Subject: lot %d\r\n\r\nbody\r\n" % i,
        )
        for i in range(total)
    ]


class _SlowSink(_Sink):
    """A sink that takes a moment per message, so one node cannot drain a batch
    alone before the other has heard of it."""

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(0.02)
        return await super().handle_DATA(server, session, envelope)


def test_two_nodes_on_one_database_share_a_batch_and_deliver_each_recipient_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    handler = _SlowSink()
    controller, profiles = _two_nodes(tmp_path, handler)
    daemons = [_start(p, pg_dsn) for p in profiles]
    try:
        total = 120
        lot = _lot(total)
        assert Client(profiles[0]).submit_many(lot)["via"] == "daemon"
        _wait("every message at the sink", lambda: len(handler.received) >= total)
        rcpts = [r for _, tos, _ in handler.received for r in tos]
        assert sorted(rcpts) == sorted(f"user{i}@example.org" for i in range(total))

        def states() -> dict[str, int]:
            with psycopg.connect(pg_dsn) as conn:
                rows = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state")
                return dict(rows.fetchall())

        # The sink has them all a moment before their settles commit (several of one
        # loop turn go out together): wait for the store to say so, then nothing else.
        _wait("every recipient settled", lambda: states().get("delivered") == total)
        assert states() == {"delivered": total}
        sent = [
            Client(p).statistics()["transports"]["relay"]["counters"].get("delivered", 0)
            for p in profiles
        ]
        assert sum(sent) == total
        assert all(n > 0 for n in sent), sent  # each node delivered part of the batch
        for d in daemons:
            d.send_signal(signal.SIGTERM)
        assert [d.wait(timeout=DEADLINE) for d in daemons] == [0, 0]
    finally:
        controller.stop()
        for d in daemons:
            if d.poll() is None:
                d.kill()
                d.wait()


def test_an_idle_daemon_is_woken_by_work_another_node_commits(
    tmp_path: Path, pg_dsn: str, sink: tuple[_Sink, int]
) -> None:
    handler, port = sink
    profile = _profile(tmp_path, port, f'backend = "postgres"\ndsn_env = "{DSN_ENV}"')
    # Polls every 5 h: only a wake-up through the database can bring the message.
    profile.write_text(profile.read_text() + '\n[policy]\nrouter_interval = "1h"\n')
    daemon = _start(profile, pg_dsn)
    try:

        async def submit_as_another_node() -> None:
            async with PostgresStore(pg_dsn) as other:
                message = NewMessage(
                    sender=Address.parse("SMTP:postmaster@example.org"),
                    recipients=(Address.parse("SMTP:dora@example.org"),),
                    content=b"Subject: from another node\r\n\r\nhi\r\n",
                )
                await other.submit(message, now=time.time(), lifetime=3600, routes=["relay"])

        asyncio.run(submit_as_another_node())
        _wait("the message at the SMTP server", lambda: len(handler.received) == 1)
        assert handler.received[0][1] == ["dora@example.org"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=DEADLINE)


# -- spoolbox store migrate ---------------------------------------------------------------


def test_store_migrate_checks_and_migrates_a_postgres_database(
    tmp_path: Path, pg_cluster: pgc.Cluster
) -> None:
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    profile = _profile(tmp_path, 25, f'backend = "postgres"\ndsn_env = "{DSN_ENV}"')
    check = _run(profile, dsn, "store", "migrate", "--check")
    assert check.returncode == 1, check.stderr
    assert f"migrations to run: {', '.join(map(str, range(1, SCHEMA_VERSION + 1)))}" in check.stdout
    with psycopg.connect(dsn) as conn:  # --check changed nothing
        assert conn.execute("SELECT to_regclass('spoolbox_schema')").fetchone() == (None,)
    done = _run(profile, dsn, "store", "migrate", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["backend"], report["before"], report["after"]) == ("postgres", 0, SCHEMA_VERSION)
    assert report["applied"] == list(range(1, SCHEMA_VERSION + 1))
    assert pgc.PASSWORD not in done.stdout + done.stderr
    again = _run(profile, dsn, "store", "migrate", "--check")
    assert again.returncode == 0, again.stderr
    assert f"schema version {SCHEMA_VERSION}, current" in again.stdout
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE spoolbox_schema SET version = 99")
    newer = _run(profile, dsn, "store", "migrate")
    assert newer.returncode == 1
    assert "schema version 99" in newer.stderr
    assert "newer spoolbox" in newer.stderr


def test_store_migrate_on_a_sqlite_profile_creates_and_checks_the_file(tmp_path: Path) -> None:
    profile = _profile(tmp_path, 25, 'backend = "sqlite"')
    assert _run(profile, "", "store", "migrate", "--check").returncode == 1
    done = _run(profile, "", "store", "migrate")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "spool.sqlite3").exists()
    again = _run(profile, "", "store", "migrate", "--check", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["pending"] == []


def test_store_compact_vacuums_a_postgres_database_and_reports_its_size(
    tmp_path: Path, pg_cluster: pgc.Cluster
) -> None:
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    profile = _profile(tmp_path, 25, f'backend = "postgres"\ndsn_env = "{DSN_ENV}"')
    assert _run(profile, dsn, "store", "migrate").returncode == 0
    check = _run(profile, dsn, "store", "compact", "--check", "--json")
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert (report["backend"], report["compacted"]) == ("postgres", False)
    assert report["size"] > 0  # the empty tables and their indexes take pages too
    done = _run(profile, dsn, "store", "compact")
    assert done.returncode == 0, done.stderr
    assert "VACUUM (ANALYZE) done" in done.stdout and "VACUUM FULL" in done.stdout
    assert pgc.PASSWORD not in done.stdout + done.stderr
    with psycopg.connect(dsn) as conn:  # vacuumed and analyzed just now
        (analyzed,) = conn.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'recipients'"
        ).fetchone()
    assert analyzed


class _GatedSink(_Sink):
    """Holds every DATA until ``gate`` is set (so a node can be killed mid-delivery);
    ``waiting`` counts the DATA commands held."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        self.waiting += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.05)
        return await super().handle_DATA(server, session, envelope)


def test_a_node_killed_mid_delivery_is_taken_over_once_its_leases_expire(
    tmp_path: Path, pg_dsn: str
) -> None:
    handler = _GatedSink()
    controller, profiles = _two_nodes(
        tmp_path, handler, '\n[policy]\nlease = "3s"\nhousekeeping_interval = "1s"\n'
    )
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        daemons.append(_start(profiles[0], pg_dsn))
        total = 6
        lot = _lot(total)
        Client(profiles[0]).submit_many(lot)
        _wait("node 1 in the middle of a delivery", lambda: handler.waiting >= 1)
        daemons[0].kill()  # SIGKILL: its leases stay in the database until they expire
        daemons[0].wait()
        in_flight = handler.waiting
        with psycopg.connect(pg_dsn) as conn:
            leased = conn.execute(
                "SELECT count(*) FROM recipients WHERE state = 'active' AND owner = 'pg-node-1'"
            ).fetchone()
        assert leased is not None and leased[0] >= 1
        handler.gate.set()
        daemons.append(_start(profiles[1], pg_dsn))

        def all_delivered() -> bool:
            with psycopg.connect(pg_dsn) as conn:
                rows = conn.execute("SELECT state, count(*) FROM recipients GROUP BY state")
                return dict(rows.fetchall()) == {"delivered": total}

        _wait("node 2 to deliver what node 1 held", all_delivered)
        rcpts = [r for _, tos, _ in handler.received for r in tos]
        assert set(rcpts) == {f"user{i}@example.org" for i in range(total)}  # lost: 0
        # Duplicates only for what was in flight when node 1 died.
        assert len(rcpts) - total <= in_flight
        daemons[1].send_signal(signal.SIGTERM)
        assert daemons[1].wait(timeout=DEADLINE) == 0
    finally:
        handler.gate.set()
        controller.stop()
        for d in daemons:
            if d.poll() is None:
                d.kill()
                d.wait()
