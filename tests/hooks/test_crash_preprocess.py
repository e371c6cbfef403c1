"""A preprocessor that changes the content, and a SIGKILL right after it: a real
``spoolbox run`` process, a real SMTP peer (aiosmtpd) counting what arrives.

The first daemon signs the message in its preprocessor and is killed before the
send; the second one runs the preprocessor again from the stored original, and the
message reaches the sink once, with one DKIM signature, which verifies."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from hookkit import rsa_key

HERE = Path(__file__).parent
SPOOLBOX = Path(sys.executable).with_name("spoolbox")


class Sink:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(envelope.content)
        return "250 2.0.0 queued"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def _profile(tmp: Path, port: int, key: Path) -> Path:
    profile = tmp / "spoolbox.toml"
    profile.write_text(
        f"""
data_dir = "{tmp}"
node = "crash-node"
[store]
path = "spool.sqlite3"
[daemon]
socket = "spoolbox.sock"
pid_file = "spoolbox.pid"
nice = 0
[policy]
router_interval = "0.1s"
[identities]
senders = ["SMTP:alice@example.org"]
[[transports]]
name = "out"
provider = "signing_smtp:SigningSMTPProvider"
address_types = ["SMTP"]
inbound = false
[transports.options]
host = "127.0.0.1"
port = {port}
tls = "none"
[transports.options.signing]
domain = "example.org"
selector = "s1"
key_file = "{key}"
marker = "{tmp / "killed"}"
log = "{tmp / "runs"}"
"""
    )
    return profile


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def _wait(predicate: Callable[[], object], what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{log.read_text()}")


def _daemon(run: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(run, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_sigkill_after_preprocessing_sends_once_signed_once(
    sink: tuple[Sink, int], tmp_path: Path
) -> None:
    handler, port = sink
    key = tmp_path / "dkim.key"
    txt = rsa_key(key).encode()
    profile = _profile(tmp_path, port, key)
    env = _env()
    sent = subprocess.run(
        [str(SPOOLBOX), "-p", str(profile), "send", "--to", "bob@example.net",
         "--subject", "signed once", "--body", "hello"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    mid = sent.stdout.strip().split()[-1]

    run = [str(SPOOLBOX), "-p", str(profile), "run", "--no-nice", "--no-dialog"]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _daemon(run, env, first_log)
    try:
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL, first_log.read_text()
    assert (tmp_path / "killed").read_text() == mid  # killed right after signing it
    assert handler.messages == []  # ... and before anything was sent

    second = _daemon(run, env, second_log)
    try:
        _wait(lambda: handler.messages, "the message at the sink", second_log)
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    [got] = handler.messages
    assert (tmp_path / "runs").read_text().split() == [mid, mid]  # ran again from the original
    assert got.count(b"DKIM-Signature:") == 1  # signed once
    assert dkim.verify(got, dnsfunc=lambda name, timeout=5: txt)  # and it verifies
    assert b"Subject: signed once" in got
