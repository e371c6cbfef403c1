"""SIGKILL of a real ``spoolbox run`` talking to the simulated modem (which lives in
this test process, so it outlives the daemon): during an AT+CMGS exchange, and during
inbound reading (while the SIM is listed, and between the inbox commit and AT+CMGD).
No SMS is lost, no received SMS is in the inbox twice.

What a modem does with a PDU when its host dies mid-exchange is the modem's business:
both cases are tested, "the SMS went out" (then it goes out again after the restart:
sending is at least once, the one message in flight may be sent twice) and "it did not"
(then exactly once).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spoolbox import SQLiteStore
from spoolbox.transports.sms.simulator import ModemSimulator

CLI = [sys.executable, "-m", "spoolbox.cli"]
DEADLINE = 60.0

PROFILE = """\
data_dir = "."
node = "kill-test"

[store]
backend = "sqlite"
path = "spool.sqlite3"

[daemon]
socket = "spoolbox.sock"
pid_file = "spoolbox.pid"
log_level = "debug"

[policy]
idle = "always"
retry_base = "1h"
router_interval = "100ms"
poll_interval = "500ms"

[identities]
senders = ["SMTP:ops@example.org"]

[[transports]]
name = "gsm"
provider = "sms"
address_types = ["SMS"]
outbound = true
inbound = true
[transports.options]
port = "{port}"
timeout = 2
send_timeout = 2
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    env["PYTHONWARNINGS"] = "error"
    return env


def wait_until(what: str, predicate: Callable[[], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Home:
    def __init__(self, path: Path, sim: ModemSimulator) -> None:
        self.path = path
        self.profile = path / "spoolbox.toml"
        self.profile.write_text(PROFILE.format(port=sim.port))
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str) -> str:
        proc = subprocess.run(
            [*CLI, "--profile", str(self.profile), *args],
            capture_output=True,
            env=_env(),
            timeout=DEADLINE,
            cwd=self.path,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout.decode()

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.path / f"daemon-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [*CLI, "--profile", str(self.profile), "run", "--no-nice"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=self.path,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.path.glob("daemon-*.log")))

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0, self.log()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def inbox(self) -> list[bytes]:
        async def read() -> list[bytes]:
            store = SQLiteStore(self.path / "spool.sqlite3")
            await store.open()
            try:
                return [await store.read_inbox(e.id) for e in await store.list_inbox()]
            finally:
                await store.close()

        return asyncio.run(read())


@pytest.fixture
def home(tmp_path: Path, sim: ModemSimulator) -> Iterator[Home]:
    h = Home(tmp_path, sim)
    try:
        yield h
    finally:
        h.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=DEADLINE) == -signal.SIGKILL


@pytest.mark.parametrize("went_out", [True, False], ids=["sms-went-out", "sms-lost-in-modem"])
def test_sigkill_during_at_cmgs_loses_no_sms(
    home: Home, sim: ModemSimulator, went_out: bool
) -> None:
    sim.hold_send.clear()  # the modem keeps the first PDU without answering
    if not went_out:
        sim.reset_on_send = 1  # ... and then restarts: that SMS never left
    for n in range(3):
        home.cli("send", "--to", f"SMS:+1555000000{n}", "--subject", f"kill {n}")
    daemon = home.start()
    wait_until("the modem to hold an AT+CMGS", sim.holding.is_set)
    assert sim.sent == []
    _kill(daemon)
    sim.hold_send.set()  # the modem finishes (or drops) that PDU; its answer reaches no one
    wait_until("the held PDU to be done", lambda: not sim.holding.is_set())
    daemon = home.start()
    wanted = {(f"+1555000000{n}", f"kill {n}") for n in range(3)}
    wait_until("every SMS to go out", lambda: wanted <= set(sim.texts()))
    home.stop(daemon)
    texts = sim.texts()
    assert set(texts) == wanted  # none lost, nothing else sent
    if went_out:  # at least once: only the one in the modem at the kill went twice
        assert len(texts) == 4 and texts.count(texts[0]) == 2
    else:
        assert len(texts) == 3


@pytest.mark.parametrize(
    ("hold", "delete_lost"),
    [("hold_list", False), ("hold_delete", False), ("hold_delete", True)],
    ids=["while-listing", "before-delete-done", "before-delete-lost"],
)
def test_sigkill_during_inbound_reading_delivers_each_sms_once(
    home: Home, sim: ModemSimulator, hold: str, delete_lost: bool
) -> None:
    sim.receive("+4915112345678", "first")
    sim.receive("+15557654321", "a long one " * 20)  # two parts
    getattr(sim, hold).clear()  # AT+CMGL (before any commit) or AT+CMGD (after one) hangs
    daemon = home.start()
    wait_until(f"the modem to hold ({hold})", sim.holding.is_set)
    _kill(daemon)
    if delete_lost:
        sim.fail_delete = 1  # the AT+CMGD in the modem at the kill never takes effect
    getattr(sim, hold).set()
    if hold == "hold_delete":  # the first one is in the inbox, maybe still on the SIM
        wait_until("the held AT+CMGD", lambda: not sim.holding.is_set())
    daemon = home.start()
    wait_until("the SIM to be emptied", lambda: not list(sim.stored()))
    home.stop(daemon)
    if delete_lost:  # the restarted daemon found it on the SIM, already in the inbox
        assert sim.commands.count("AT+CMGD=1") == 2
    inbox = home.inbox()
    senders = sorted(line for m in inbox for line in m.split(b"\r\n") if line.startswith(b"X-SMS"))
    assert senders == [b"X-SMS-Sender: +15557654321", b"X-SMS-Sender: +4915112345678"]
