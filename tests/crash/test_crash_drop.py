"""Nothing half-deleted: a message its settle deletes (``[store] keep_sent = 0``) goes
whole or not at all, whenever the process dies.

A real process (``drop_worker.py``) submits messages of two recipients to a SQLite
store and settles each with ``drop_finished={SENT}``; the parent SIGKILLs it at
random moments, and once inside the settle transaction itself, between deleting the
message's rows and its content.  After every kill the database, opened read-only,
passes ``PRAGMA integrity_check`` and has no orphans (a recipient without its
message, a message without its content or with missing chunks, content or chunks of
no message), its counters agree with its rows, every message is whole (both
recipients), and no message whose settle returned is left.  A last run finishes:
nothing of any message is left.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from drop_worker import message, message_id

WORKER = Path(__file__).with_name("drop_worker.py")
COUNT = 150


def _problems(db: Path) -> list[str]:
    """What is half-deleted or inconsistent in the store (read-only)."""
    problems: list[str] = []
    uri = db.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
        check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if check != ["ok"]:
            problems.append(f"integrity_check: {check[:5]}")
        conn.execute("BEGIN")  # one snapshot for every query below
        queries = {
            "recipients of no message": "SELECT count(*) FROM recipients "
            "WHERE message_id NOT IN (SELECT id FROM messages)",
            "messages without their content": "SELECT count(*) FROM messages "
            "WHERE blob_id NOT IN (SELECT id FROM blobs)",
            "content of no message or inbox entry": "SELECT count(*) FROM blobs "
            "WHERE id NOT IN (SELECT blob_id FROM messages) "
            "AND id NOT IN (SELECT blob_id FROM inbox)",
            "chunks of no content": "SELECT count(*) FROM blob_chunks "
            "WHERE blob_id NOT IN (SELECT id FROM blobs)",
            "content with chunks missing": "SELECT count(*) FROM blobs b "
            "WHERE b.chunks != (SELECT count(*) FROM blob_chunks c WHERE c.blob_id = b.id)",
            "messages without both recipients": "SELECT count(*) FROM messages m "
            "WHERE (SELECT count(*) FROM recipients r WHERE r.message_id = m.id) != 2",
        }
        for what, sql in queries.items():
            n = int(conn.execute(sql).fetchone()[0])
            if n:
                problems.append(f"{n} {what}")
        counted = dict(conn.execute("SELECT state, count(*) FROM recipients GROUP BY state"))
        kept = dict(conn.execute("SELECT state, n FROM recipient_counts"))
        if any(kept.get(s, 0) != counted.get(s, 0) for s in {*kept, *counted}):
            problems.append(f"recipient_counts {kept} disagree with the rows {counted}")
        conn.execute("COMMIT")
    return problems


def _ids(db: Path) -> set[str]:
    uri = db.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
        return {str(r[0]) for r in conn.execute("SELECT id FROM messages")}


def _spawn(db: Path, start: int, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(WORKER), f"--db={db}", f"--start={start}", f"--count={COUNT}"]
    return subprocess.Popen([*cmd, *extra], stdout=subprocess.PIPE, text=True)


def _read(proc: subprocess.Popen[str], lines: int | None) -> list[tuple[str, str]]:
    """``lines`` lines of the worker's output (all of it when None) as (word, id)."""
    assert proc.stdout is not None
    out: list[tuple[str, str]] = []
    while lines is None or len(out) < lines:
        line = proc.stdout.readline()
        if not line:
            break
        word, _, mid = line.strip().partition(" ")
        out.append((word, mid))
    return out


def _reap(proc: subprocess.Popen[str]) -> int:
    rc = proc.wait(60)
    assert proc.stdout is not None
    proc.stdout.close()
    return rc


def _finish(db: Path, start: int) -> None:
    """A last run to the end: nothing of any message is left."""
    proc = _spawn(db, start)
    _read(proc, None)
    assert _reap(proc) == 0
    assert _problems(db) == []
    uri = db.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
        left = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _TABLES}
        counters = sum(n for (n,) in conn.execute("SELECT n FROM recipient_counts"))
    assert left == dict.fromkeys(_TABLES, 0)
    assert counters == 0


_TABLES = ("messages", "recipients", "blobs", "blob_chunks")


def test_a_dropping_settle_killed_at_random_leaves_nothing_half_deleted(tmp_path: Path) -> None:
    rng = random.Random(20261203)
    db = tmp_path / "spool.sqlite3"
    accepted: list[str] = []
    settled: set[str] = set()
    for _ in range(6):
        proc = _spawn(db, len(accepted))
        for word, mid in _read(proc, rng.randint(5, 40)):
            (accepted.append if word == "accepted" else settled.add)(mid)
        proc.send_signal(signal.SIGKILL)
        _reap(proc)
        assert _problems(db) == []
        left = _ids(db)
        assert not left & settled, "a message whose dropping settle returned is still there"
        assert left <= set(accepted) | {message_id(len(accepted))}
    assert settled, "no settle returned before the kills: the test tested nothing"
    _finish(db, len(accepted))


def test_a_kill_inside_the_dropping_settle_keeps_the_message_whole(tmp_path: Path) -> None:
    db = tmp_path / "spool.sqlite3"
    proc = _spawn(db, 0, "--crash-in-drop=3")
    out = _read(proc, None)
    assert _reap(proc) == -signal.SIGKILL
    # Each message is settled right after its submit: the third drop was m00002's.
    assert out[-1] == ("accepted", message_id(2))
    assert ("settled", message_id(1)) in out
    assert _problems(db) == []
    assert _ids(db) == {message_id(2)}
    uri = db.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
        states = [r[0] for r in conn.execute("SELECT state FROM recipients ORDER BY idx")]
        data = b"".join(
            bytes(r[0])
            for r in conn.execute(
                "SELECT data FROM blob_chunks c JOIN messages m ON c.blob_id = m.blob_id "
                "ORDER BY c.seq"
            )
        )
    assert states == ["active", "active"]  # the settle rolled back whole
    assert data == message(2).content
    _finish(db, 3)
