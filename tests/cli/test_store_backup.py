"""``spoolbox store backup DEST``: a consistent copy of the SQLite store while the
daemon runs and a client submits, through the real command; the copy restored in
another data directory is the same queue."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import threading
from pathlib import Path

from conftest import Daemons, Home
from spoolbox import Address, NewMessage
from spoolbox.client import Client


def _submitting(home: Home, stop: threading.Event, ids: list[str]) -> None:
    client = Client(home.profile)
    i = 0
    while not stop.is_set():
        info = client.submit(
            NewMessage(
                sender=None,
                recipients=(Address.parse("MAILDIR:bob"),),
                content=b"Subject: during %d\r\n\r\n" % i + b"x" * 20_000,
            )
        )
        ids.append(str(info["id"]))
        i += 1


def test_a_backup_while_the_daemon_runs_and_a_client_submits(
    home: Home, daemons: Daemons, tmp_path: Path
) -> None:
    proc = daemons.start(home)
    for i in range(5):
        r = home.run("send", "--to", "MAILDIR:bob", "--subject", f"before {i}", "--body", "x")
        assert r.returncode == 0, r.stderr
    stop = threading.Event()
    submitted: list[str] = []
    writer = threading.Thread(target=_submitting, args=(home, stop, submitted))
    writer.start()
    try:
        dest = tmp_path / "backup.sqlite3"
        r = home.run("store", "backup", str(dest), "--json")
        dest_again = tmp_path / "again.sqlite3"
        r_text = home.run("store", "backup", str(dest_again))
    finally:
        stop.set()
        writer.join()
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["backup"] == str(dest)
    # A snapshot of a queue that grew meanwhile: the five, and some of the others.
    assert submitted, "the client submitted nothing while the backups ran"
    assert 5 <= report["messages"] <= 5 + len(submitted)
    assert r_text.returncode == 0, r_text.stderr
    assert re.fullmatch(
        rf".* -> {re.escape(str(dest_again))}: [\d.,]+ [KM]B, \d+ messages and 0 inbox entries, "
        r"in [\d.]+ s\n",
        r_text.stdout,
    ), r_text.stdout
    # One file, its owner's only, whole.
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not Path(f"{dest}-wal").exists() and not Path(f"{dest}-journal").exists()
    with sqlite3.connect(dest) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == report["messages"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert daemons.stop(proc) == 0

    # Restored into another data directory: the same messages, each whole.
    other = Home(tmp_path / "restored")
    shutil.copytree(home.path, other.path, ignore=shutil.ignore_patterns("spool.sqlite3*", "*.log"))
    text = other.profile.read_text().replace(str(home.path), str(other.path))
    other.profile.write_text(text)
    shutil.copy(dest, other.path / "spool.sqlite3")
    listed = other.json("queue", "list", "--all", "--limit", "10000")
    assert listed["total"] == report["messages"]
    subjects = {m["subject"] for m in listed["messages"]}
    assert {f"before {i}" for i in range(5)} <= subjects


def test_what_a_backup_refuses(home: Home, tmp_path: Path) -> None:
    assert home.run("send", "--to", "MAILDIR:bob", "--body", "x").returncode == 0
    dest = tmp_path / "b.sqlite3"
    assert home.run("store", "backup", str(dest)).returncode == 0
    r = home.run("store", "backup", str(dest))
    assert r.returncode == 1 and f"{dest} exists: pass --force to replace it" in r.stderr
    assert home.run("store", "backup", str(dest), "--force").returncode == 0
    store = home.path / "spool.sqlite3"
    r = home.run("store", "backup", str(store), "--force")
    assert r.returncode == 1 and "is the store itself" in r.stderr
    r = home.run("store", "backup", "/proc/no-such-dir/b.sqlite3")
    assert r.returncode == 1 and "cannot write the backup /proc/no-such-dir/b.sqlite3" in r.stderr
    assert os.path.exists(dest)


def test_a_postgresql_store_points_at_its_own_tools(home: Home, tmp_path: Path) -> None:
    text = home.profile.read_text()
    text = re.sub(
        r"(?ms)^\[store\]\n.*?(?=^\[)",
        '[store]\nbackend = "postgres"\ndsn = "host=/nonexistent dbname=spoolbox"\n\n',
        text,
        count=1,
    )
    home.profile.write_text(text)
    r = home.run("store", "backup", str(tmp_path / "b.sqlite3"))
    assert r.returncode == 1
    assert "pg_dump" in r.stderr
