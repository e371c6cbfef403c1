"""The SIGKILL crash harness shared by ``test_crash.py`` and ``test_crash_smtp.py``.

:class:`Harness` starts the spooler process (``worker.py``), SIGKILLs it at random
moments or lets it kill itself at a crash point, and after each run looks at the
database exactly as the process left it (:func:`snapshot`, read-only: the parent
repairs nothing), noting the recipients in flight (ACTIVE) at every kill.
:func:`verdict` compares what the worker acknowledged with the deliveries found by
the harness's ``scan`` (the Maildir by default, :func:`scan_maildir`; the SMTP test
passes its own) and with the store; :func:`soak` is the random-kill soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from spoolbox import MessageState, RecipientState, SQLiteStore

WORKER = Path(__file__).with_name("worker.py")


def _load_worker() -> ModuleType:
    # Imported by path under a unique name: tests/ is not a package.
    spec = importlib.util.spec_from_file_location("spoolbox_crash_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()

ACK = re.compile(r"^accepted (crash-\d{6})$", re.MULTILINE)
CRASH_POINT = re.compile(r"^crash-point (\S+) (\S+)$", re.MULTILINE)
HEADER_ID = re.compile(rb"^Message-ID: <(crash-\d{6})@crash\.spoolbox\.test>\r$", re.MULTILINE)
_PENDING = ("queued", "active", "parked", "held")
FINAL_TIMEOUT = 600.0  # a hung worker fails the test instead of hanging it


def index(mid: str) -> int:
    return int(mid.removeprefix("crash-"))


@dataclass
class Snapshot:
    """The database as a crash left it (read-only: the parent repairs nothing)."""

    states: dict[str, str] = field(default_factory=dict)  # message id -> recipient state
    active: list[str] = field(default_factory=list)  # ids of ACTIVE recipients
    problems: list[str] = field(default_factory=list)


def snapshot(db: Path) -> Snapshot:
    snap = Snapshot()
    if not db.exists():
        return snap  # killed before the store created its file
    uri = db.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
        check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if check != ["ok"]:
            snap.problems.append(f"integrity_check: {check[:5]}")
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
            tables = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
            if tables:
                snap.problems.append(f"schema version 0 with {tables} objects: a partial schema")
            return snap  # killed before the first migration committed
        conn.execute("BEGIN")  # one snapshot for every query below
        rows: dict[str, list[tuple[int, str]]] = {}
        for mid, is_report, idx, state in conn.execute(
            "SELECT m.id, m.is_report, r.idx, r.state FROM messages m "
            "LEFT JOIN recipients r ON r.message_id = m.id"
        ):
            if state == "active":
                snap.active.append(mid)
            if not is_report:
                rows.setdefault(mid, []).append((idx, state))
        for mid, recips in rows.items():
            if [i for i, _ in recips] != [0]:
                snap.problems.append(f"{mid}: recipient rows {recips}, expected exactly #0")
            snap.states[mid] = str(recips[0][1])
        content: dict[str, bytes] = dict.fromkeys(rows, b"")
        for mid, data in conn.execute(
            "SELECT m.id, c.data FROM messages m JOIN blob_chunks c ON c.blob_id = m.blob_id "
            "WHERE m.is_report = 0 ORDER BY m.id, c.seq"
        ):
            content[mid] += bytes(data)
        for mid, data in content.items():
            if data != worker.content(index(mid)):
                snap.problems.append(f"{mid}: stored content differs ({len(data)} bytes)")
        counted = dict(conn.execute("SELECT state, count(*) FROM recipients GROUP BY state"))
        kept = dict(conn.execute("SELECT state, n FROM recipient_counts"))
        if any(kept.get(s, 0) != counted.get(s, 0) for s in {*kept, *counted}):
            snap.problems.append(f"recipient_counts {kept} disagree with the rows {counted}")
        conn.execute("COMMIT")
    return snap


@dataclass
class Deliveries:
    """What reached the destination: whole copies by message id, and what is wrong."""

    copies: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    #: More figures for the verdict's line, after the common ones (in this order).
    extra: dict[str, int] = field(default_factory=dict)
    where: str = "the Maildir"  # for the verdict's problems


def scan_maildir(root: Path) -> Deliveries:
    """Deliveries in ``box/new`` by Message-ID, each checked byte for byte."""
    out = Deliveries()
    box = root / worker.BOX
    new = box / "new"
    if not new.is_dir():
        return out
    for path in new.iterdir():
        data = path.read_bytes()
        found = HEADER_ID.search(data)
        if found is None:
            out.problems.append(f"{path.name}: no crash-test Message-ID in {data[:200]!r}")
            continue
        mid = found.group(1).decode()
        trace = b"Return-Path: <%s>\r\nDelivered-To: MAILDIR:%s\r\n" % (
            worker.SENDER.encode(),
            os.fsencode(box),
        )
        if data != trace + worker.content(index(mid)):
            out.problems.append(f"{path.name}: delivered content of {mid} differs")
        out.copies[mid] += 1
    out.extra["tmp_leftovers"] = sum(1 for _ in (box / "tmp").iterdir())
    return out


@dataclass
class Run:
    mode: str
    rc: int
    acks: set[str]
    stderr: str
    delay: float | None = None
    active: list[str] = field(default_factory=list)
    delivered_during: int = 0

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL


class Harness:
    """Starts, kills and restarts the worker; keeps what the parent learnt."""

    def __init__(
        self,
        tmp_path: Path,
        count: int,
        *,
        worker_args: Sequence[str] = (),
        scan: Callable[[], Deliveries] | None = None,
    ) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "spool.sqlite3"
        self.root = tmp_path / "mail"
        self.count = count
        self.worker_args = list(worker_args)  # e.g. the transport to use
        self._scan = scan
        self.accepted: set[str] = set()
        self.runs: list[Run] = []
        self.problems: list[str] = []

    def scan(self) -> Deliveries:
        """The deliveries so far (the Maildir under ``root`` unless told otherwise)."""
        return self._scan() if self._scan is not None else scan_maildir(self.root)

    def first_unacknowledged(self) -> int:
        return next((i for i in range(self.count) if worker.message_id(i) not in self.accepted), 0)

    @contextlib.contextmanager
    def _spawn(self, mode: str, extra: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
        n = len(self.runs)
        out, err = self.dir / f"run{n}.out", self.dir / f"run{n}.err"
        cmd = [
            sys.executable,
            str(WORKER),
            f"--db={self.db}",
            f"--root={self.root}",
            f"--mode={mode}",
            f"--count={self.count}",
            f"--start={self.first_unacknowledged()}",
            *self.worker_args,
            *extra,
        ]
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, cwd=self.dir)
            try:
                yield proc, out
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()

    def _finish(self, mode: str, rc: int, delay: float | None) -> Run:
        n = len(self.runs)
        stdout = (self.dir / f"run{n}.out").read_text()
        stderr = (self.dir / f"run{n}.err").read_text(errors="replace")
        acks = set(ACK.findall(stdout))
        run = Run(mode, rc, acks, stderr, delay)
        self.accepted |= acks
        self.runs.append(run)
        return run

    def _after(self, run: Run, delivered_before: int) -> None:
        """Look at the store as the process left it; note what breaks a promise."""
        snap = snapshot(self.db)
        run.active = snap.active
        run.delivered_during = self.scan().copies.total() - delivered_before
        where = f"after run {len(self.runs) - 1} ({run.mode}, rc {run.rc})"
        self.problems += [f"{where}: {p}" for p in snap.problems]
        missing = sorted(self.accepted - snap.states.keys())
        if missing:
            self.problems.append(f"{where}: accepted but not in the store: {missing[:10]}")
        if not run.killed and run.rc != 0:
            self.problems.append(f"{where}: the worker failed:\n{run.stderr[-3000:]}")

    def run_killed(self, mode: str, delay: float) -> Run:
        """Start the worker, SIGKILL it after ``delay`` seconds (reading nothing first)."""
        before = self.scan().copies.total()
        with self._spawn(mode, []) as (proc, _):
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        run = self._finish(mode, rc, delay)
        self._after(run, before)
        return run

    def run_to_crash_point(self, point: str, n: int) -> tuple[Run, str]:
        """Run until the worker kills itself at the n-th ``point``; the id it was on."""
        before = self.scan().copies.total()
        with self._spawn("both", [f"--crash-at={point}:{n}", "--concurrency=4"]) as (proc, _):
            rc = proc.wait(timeout=FINAL_TIMEOUT)
        run = self._finish("both", rc, None)
        assert run.killed, f"the worker never reached {point} #{n} (rc {rc}):\n{run.stderr}"
        self._after(run, before)
        found = CRASH_POINT.findall(run.stderr)
        assert len(found) == 1 and found[0][0] == point, run.stderr
        return run, found[0][1]

    def run_to_end(self) -> Run:
        before = self.scan().copies.total()
        with self._spawn("both", []) as (proc, out):
            try:
                rc = proc.wait(timeout=FINAL_TIMEOUT)
            except subprocess.TimeoutExpired:
                rc = -1
                self.problems.append(f"the final run did not finish in {FINAL_TIMEOUT} s")
        run = self._finish("both", rc, None)
        self._after(run, before)
        if "done " not in out.read_text():
            self.problems.append(f"the final run did not finish its queue:\n{run.stderr[-3000:]}")
        return run

    @property
    def kills(self) -> list[Run]:
        return [r for r in self.runs if r.killed]


@dataclass
class Verdict:
    figures: dict[str, int]
    problems: list[str]
    duplicated: dict[str, int]


async def _final_store_state(
    db: Path,
) -> tuple[dict[str, RecipientState], list[bytes], dict[RecipientState, int]]:
    async with SQLiteStore(db) as store:
        counts = await store.counts()
        summaries = await store.list_messages(limit=10**7, now=time.time())
        states = {s.info.id: s.recipients[0].state for s in summaries if not s.info.is_report}
        reports = [
            await store.read_content(s.info.id)
            for s in summaries
            if s.info.is_report and s.state is not MessageState.CANCELLED
        ]
    return states, reports, counts


def verdict(h: Harness) -> Verdict:
    """Compare what was acknowledged with what was delivered and the store."""
    states, reports, counts = asyncio.run(_final_store_state(h.db))
    found = h.scan()
    problems = list(h.problems) + found.problems
    lost: list[str] = []
    reported = 0
    for mid in sorted(h.accepted):
        state = states.get(mid)
        if found.copies[mid]:
            if state is not RecipientState.DELIVERED:
                problems.append(f"{mid} is in {found.where} but {state} in the store")
            continue
        if state is RecipientState.FAILED and any(
            worker.header_id(mid).encode() in r for r in reports
        ):
            reported += 1  # failed, and the sender got a delivery report
        else:
            lost.append(mid)
    phantoms = sorted(found.copies.keys() - h.accepted)
    if phantoms:
        problems.append(f"delivered but never acknowledged: {phantoms[:10]}")
    unfinished = {str(s): n for s, n in counts.items() if str(s) in _PENDING and n}
    if unfinished:
        problems.append(f"recipients left unfinished: {unfinished}")
    expected = {worker.message_id(i) for i in range(h.count)}
    if h.accepted != expected:
        problems.append(f"{len(expected - h.accepted)} messages never acknowledged")
    # A message is delivered once more at most per kill that found it in flight.
    in_flight = Counter(mid for run in h.kills for mid in run.active)
    duplicated = {m: n - 1 for m, n in found.copies.items() if n > 1}
    for mid, extra in duplicated.items():
        if extra > in_flight[mid]:
            problems.append(
                f"{mid} delivered {extra + 1} times but in flight at {in_flight[mid]} kills"
            )
    kills = h.kills
    figures = {
        "kills": len(kills),
        "accepted": len(h.accepted),
        "delivered": found.copies.total(),
        "lost": len(lost),
        "duplicates": sum(duplicated.values()),
        "inflight_bound": sum(len(r.active) for r in kills),
        "reported": reported,
        "runs": len(h.runs),
        "kills_in_startup": sum(1 for r in kills if not r.acks and not r.delivered_during),
        "kills_while_submitting": sum(1 for r in kills if r.acks and r.mode in ("both", "submit")),
        "kills_while_delivering": sum(1 for r in kills if r.delivered_during),
        "kills_with_inflight": sum(1 for r in kills if r.active),
        **found.extra,
    }
    if lost:
        problems.append(f"lost: {lost[:20]}")
    return Verdict(figures, problems, duplicated)


def report(name: str, v: Verdict, record_property: Callable[[str, object], None]) -> None:
    line = " ".join(f"{k}={n}" for k, n in v.figures.items())
    print(f"\n{name}: {line}")
    for k, n in v.figures.items():
        record_property(k, n)


def soak(
    h: Harness,
    record_property: Callable[[str, object], None],
    *,
    name: str,
    kills: int,
    seed: int,
    judge: Callable[[Harness], Verdict] = verdict,
) -> Verdict:
    """Kill ``h``'s worker ``kills`` times at random moments, let it finish, judge.

    ``judge`` is :func:`verdict`, or a function that adds its own figures and
    problems to it.
    """
    rng = random.Random(seed)
    attempts = 0
    while len(h.kills) < kills and attempts < 4 * kills:
        attempts += 1
        # Mostly submitting while delivering; sometimes only one of the two.
        mode = rng.choices(("both", "submit", "run"), weights=(6, 2, 2))[0]
        h.run_killed(mode, rng.uniform(0.05, 0.6))
    h.run_to_end()
    v = judge(h)
    report(name, v, record_property)
    assert len(h.kills) == kills, f"only {len(h.kills)} of {kills} runs could be killed"
    assert not v.problems, "\n".join(v.problems)
    assert v.figures["lost"] == 0
    assert v.figures["accepted"] == h.count
    assert v.figures["duplicates"] <= v.figures["inflight_bound"]
    return v
