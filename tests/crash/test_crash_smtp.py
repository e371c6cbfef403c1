"""Nothing accepted is lost on the way to a real SMTP server: the spooler SIGKILLed.

The crash soak of ``test_crash.py`` (``harness.py``), with the worker relaying
through the SMTP transport (``worker.py --transport smtp``) to Postfix's
``smtp-sink``, which dumps every mail transaction it accepted into a file of its
own.  One sink runs for the whole test and survives every kill of the worker.  At
the end the dump files are counted by Message-ID:

* every message the worker acknowledged reached the sink whole (byte for byte, from
  the right sender to the right recipient), or failed with a report: ``lost`` is 0;
* a message reached the sink twice only if it was in flight (its recipient ACTIVE
  in the store) at a kill, at most once more per such kill: ``duplicates`` is at
  most ``inflight_bound``;
* the sink holds no partial transaction, and as many dump files as it counted
  transactions (``-c``): none was overwritten.

A second test kills the worker on cue after the sink answered the final dot and
before the transport reported the delivery: that message is sent again, once.
Without ``/usr/sbin/smtp-sink`` (package ``postfix``) the tests are skipped, loudly.
Run ``pytest -s`` to see the figures; they are also in the report's properties.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Deliveries, Harness, Verdict, index, report, soak, verdict, worker

HOST = "127.0.0.1"
SMTP_SINK = "/usr/sbin/smtp-sink"
#: What smtp-sink writes before the message: its X- records, then a 3-line Received.
SINK_HEADERS = re.compile(
    rb"\A(?P<records>(?:X-[A-Za-z-]+: [^\n]*\n)*)Received: [^\n]*\n\t[^\n]*\n\t[^\n]*\n"
)
MESSAGE_ID = re.compile(rb"\AMessage-ID: <(crash-\d{6})@crash\.spoolbox\.test>\n")
COUNTERS = re.compile(r"mesg=(\d+)")
SENDER = worker.SMTP_SENDER.removeprefix("SMTP:")
RECIPIENT = worker.SMTP_RECIPIENT.removeprefix("SMTP:")
SETTLE = 10.0  # seconds the sink may take to finish with the last connections


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Sink:
    """A running ``smtp-sink``: its port, dump directory and output (``-c``)."""

    port: int
    dump: Path
    out: Path
    proc: subprocess.Popen[bytes]

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def transactions(self) -> int:
        """Mail transactions the sink completed (its ``mesg=`` counter), so far."""
        counts = COUNTERS.findall(self.output())
        return int(counts[-1]) if counts else 0

    def worker_args(self) -> list[str]:
        return ["--transport=smtp", f"--smtp-port={self.port}"]


def _sink_path() -> str:
    path = shutil.which("smtp-sink") or (SMTP_SINK if os.path.exists(SMTP_SINK) else None)
    if path is None:
        pytest.skip(
            "NOT RUN: Postfix's smtp-sink is not installed (no /usr/sbin/smtp-sink); "
            "install the 'postfix' package (apt-get install postfix) to run the SMTP crash test"
        )
    return path


def _start_sink(path: str, dump: Path, out: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """Start smtp-sink on a free port (trying again if another process took it)."""
    args = [path, "-c", "-d", f"{dump}/%Y%m%d%H/%M."]
    if os.geteuid() == 0:
        args += ["-u", "nobody"]  # required as root; hence the 0o777 dump directory
    for _ in range(5):
        port = _free_port()
        with out.open("wb") as fh:
            proc = subprocess.Popen([*args, f"{HOST}:{port}", "100"], stdout=fh, stderr=fh)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                return port, proc
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    pytest.fail(f"smtp-sink did not start: {out.read_text(errors='replace')}")


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[Sink]:
    path = _sink_path()
    # smtp-sink drops to "nobody" when run as root: the dump directory must be
    # writable for it, which pytest's private tmp_path is not.
    dump = Path(tempfile.mkdtemp(prefix="spoolbox-crash-sink-"))
    try:
        dump.chmod(0o777)
        out = tmp_path / "sink.out"
        port, proc = _start_sink(path, dump, out)
        try:
            yield Sink(port, dump, out, proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    finally:
        shutil.rmtree(dump, ignore_errors=True)


def scan_sink(sink: Sink) -> Deliveries:
    """The transactions in the sink's dump files by Message-ID, each checked whole."""
    out = Deliveries(where="the sink")
    files = partial = reports = 0
    for path in sorted(p for p in sink.dump.rglob("*") if p.is_file()):
        files += 1
        data = path.read_bytes()
        name = path.relative_to(sink.dump)
        head = SINK_HEADERS.match(data)
        if head is None:
            partial += 1  # a transaction in progress, or what is left of one
            continue
        records: dict[bytes, list[bytes]] = {}
        for line in head.group("records").splitlines():
            key, _, value = line.partition(b": ")
            records.setdefault(key, []).append(value)
        body = data[head.end() :]
        # The paths only: the spooler passes DSN's NOTIFY= on to smtp-sink, which offers DSN.
        rcpts = [r.decode(errors="replace").split(" ")[0] for r in records.get(b"X-Rcpt-Args", [])]
        mail = b"".join(records.get(b"X-Mail-Args", [])).decode(errors="replace")
        if rcpts == [f"<{SENDER}>"]:
            reports += 1  # a delivery report to the sender: counted from the store
            continue
        if rcpts != [f"<{RECIPIENT}>"] or mail.split(" ")[0] != f"<{SENDER}>":
            out.problems.append(f"{name}: envelope MAIL {mail!r} RCPT {rcpts}")
        found = MESSAGE_ID.match(body)
        if found is None:
            out.problems.append(f"{name}: no crash-test Message-ID in {body[:200]!r}")
            continue
        mid = found.group(1).decode()
        # The sink writes lines ending in LF and an empty line after the message.
        expected = worker.content(index(mid)).replace(b"\r\n", b"\n") + b"\n"
        if body != expected:
            if expected.startswith(body):
                partial += 1  # still being received
                continue
            out.problems.append(f"{name}: delivered content of {mid} differs")
        out.copies[mid] += 1
    out.extra.update(sink_files=files, sink_partial=partial, sink_reports=reports)
    return out


def _settle(sink: Sink) -> None:
    """Wait until the sink is done: no partial dump, every transaction in its file."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        d = scan_sink(sink)
        if not d.extra["sink_partial"] and sink.transactions() == d.extra["sink_files"]:
            return
        time.sleep(0.1)


def _judge(h: Harness, sink: Sink) -> Verdict:
    _settle(sink)
    v = verdict(h)
    v.figures["sink_transactions"] = sink.transactions()
    files = v.figures["sink_files"]
    if v.figures["sink_partial"]:
        v.problems.append(f"{v.figures['sink_partial']} partial transactions left in the sink")
    if v.figures["sink_transactions"] != files:
        v.problems.append(
            f"the sink counted {v.figures['sink_transactions']} transactions but "
            f"{files} dump files are there (overwritten?)"
        )
    if sink.proc.poll() is not None:
        v.problems.append(f"smtp-sink died (rc {sink.proc.returncode}): {sink.output()[-2000:]}")
    return v


def _smtp_soak(
    tmp_path: Path,
    sink: Sink,
    record_property: Callable[[str, object], None],
    *,
    name: str,
    count: int,
    kills: int,
    seed: int,
) -> Verdict:
    h = Harness(tmp_path, count, worker_args=sink.worker_args(), scan=lambda: scan_sink(sink))
    # soak() asserts: no problem (the sink's own checks included), nothing lost, and
    # no more duplicates than recipients in flight at the kills.
    return soak(
        h, record_property, name=name, kills=kills, seed=seed, judge=lambda h: _judge(h, sink)
    )


def test_smtp_sigkill_soak_quick(
    tmp_path: Path, smtp_sink: Sink, record_property: Callable[[str, object], None]
) -> None:
    _smtp_soak(
        tmp_path, smtp_sink, record_property, name="crash smtp", count=1000, kills=8, seed=25
    )


@pytest.mark.slow
def test_smtp_sigkill_soak_long(
    tmp_path: Path, smtp_sink: Sink, record_property: Callable[[str, object], None]
) -> None:
    _smtp_soak(
        tmp_path, smtp_sink, record_property, name="crash smtp long", count=3000, kills=30, seed=587
    )


def test_smtp_kill_after_final_dot(
    tmp_path: Path, smtp_sink: Sink, record_property: Callable[[str, object], None]
) -> None:
    # One connection: no other message can be between the final dot and its report.
    args = [*smtp_sink.worker_args(), "--smtp-connections=1"]
    h = Harness(tmp_path, 40, worker_args=args, scan=lambda: scan_sink(smtp_sink))
    run, mid = h.run_to_crash_point("after-publish", 5)
    assert not h.problems, "\n".join(h.problems)
    # The sink has the message; the store still has it in flight.
    assert run.active.count(mid) == 1
    assert scan_sink(smtp_sink).copies[mid] == 1
    h.run_to_end()
    v = _judge(h, smtp_sink)
    report("kill after the final dot", v, record_property)
    assert not v.problems, "\n".join(v.problems)
    assert v.figures["lost"] == 0
    assert v.figures["accepted"] == 40
    assert v.figures["inflight_bound"] == len(run.active)
    assert v.duplicated == {mid: 1}
