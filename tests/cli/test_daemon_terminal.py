"""The daemon never reads the terminal unless it is the foreground job on it.

The real ``spoolbox run`` in a subprocess with a pseudo-terminal as its controlling
terminal: started as a background job of a job-control "shell" (another process
group of the same session), and in the foreground with ``--no-dialog``.  A daemon
that asked for the missing password would be stopped by SIGTTOU/SIGTTIN (or block
reading), and never answer ``status``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CLI, Home, _env, wait_until

# A minimal job-control shell: a session leader that takes the pty given as argv[1]
# as its controlling terminal (so its own process group is the foreground one), then
# starts the command after "--" in a process group of its own: a background job.
_SHELL = r"""
import os, subprocess, sys
tty = os.open(sys.argv[1], os.O_RDWR)  # a session leader's first tty becomes its ctty
assert os.tcgetpgrp(tty) == os.getpgrp()
with open(sys.argv[2], "ab") as log:
    job = subprocess.Popen(sys.argv[4:], stdin=tty, stdout=log, stderr=log, process_group=0)
print(job.pid, flush=True)
sys.exit(job.wait())
"""

_UNSET = "SPOOLBOX_TEST_UNSET_PASSWORD"


def _add_relay(home: Home) -> None:
    extra = f"""
[[transports]]
name = "relay"
provider = "maildir"
address_types = ["RELAY"]
[transports.options]
root = "{home.path / "relay"}"
password_env = "{_UNSET}"
"""
    text = home.profile.read_text()
    cut = text.index("[listeners.submission]")
    home.profile.write_text(text[:cut] + extra + "\n" + text[cut:])


def _relay_row(home: Home) -> dict[str, object] | None:
    r = home.run("status", "--json")
    if r.returncode != 0:
        return None

    rows = {row["name"]: row for row in json.loads(r.stdout)["rows"]}
    relay = rows.get("relay")
    return relay if relay and relay.get("detail") else None


def _state(pid: int) -> str:
    # /proc/PID/stat: "pid (comm) S ..."; T is stopped (SIGTTOU/SIGTTIN).
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _check_offline_with_reason(home: Home, pid: int, log: Path) -> None:
    def answers() -> bool:
        assert _state(pid) != "T", "the daemon was stopped by the terminal: " + log.read_text()
        return _relay_row(home) is not None

    wait_until("the daemon to answer with the relay's row", answers)
    row = _relay_row(home)
    assert row is not None
    assert "OFFLINE" in row["status_bits"]  # type: ignore[operator]
    assert "not configured" in str(row["detail"])
    assert _UNSET in str(row["detail"])
    text = log.read_text()
    assert "not asking for missing credentials" in text
    assert f"transport 'relay': password is not configured (environment variable {_UNSET}" in text
    assert "password for transport" not in text  # the dialog's prompt


@pytest.fixture
def pty_pair() -> tuple[int, int]:
    master, slave = os.openpty()
    yield master, slave  # type: ignore[misc]
    os.close(master)
    os.close(slave)


def test_a_background_job_never_asks_and_keeps_the_transport_offline(
    home: Home, pty_pair: tuple[int, int]
) -> None:
    _add_relay(home)
    _master, slave = pty_pair
    log = home.path / "daemon.log"
    env = _env()
    env.pop(_UNSET, None)
    shell = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SHELL,
            os.ttyname(slave),
            str(log),
            "--",
            *CLI,
            "--profile",
            str(home.profile),
            "run",
            "--no-nice",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
        env=env,
        cwd=home.path,
    )
    try:
        assert shell.stdout is not None
        pid = int(shell.stdout.readline())
        assert os.getpgid(pid) == pid != os.getsid(pid)  # its own group, not the leader
        _check_offline_with_reason(home, pid, log)
        # The other transports run.
        mid = home.run("send", "--to", "MAILDIR:bob", "--body", "x").stdout.strip()
        wait_until("delivery", lambda: home.json("queue", "show", mid)["state"] == "sent")
        os.kill(pid, signal.SIGTERM)
        assert shell.wait(timeout=60) == 0
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
        assert shell.stdout is not None
        shell.stdout.close()


def test_no_dialog_in_the_foreground_never_asks(home: Home, pty_pair: tuple[int, int]) -> None:
    _add_relay(home)
    master, slave = pty_pair
    log = home.path / "daemon.log"
    env = _env()
    env.pop(_UNSET, None)
    with open(log, "wb") as out:
        # A session of its own with the pty as controlling terminal: the foreground job.
        proc = subprocess.Popen(
            [*CLI, "--profile", str(home.profile), "run", "--no-nice", "--no-dialog"],
            stdin=slave,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=lambda: os.close(os.open(os.ttyname(0), os.O_RDWR)),
            env=env,
            cwd=home.path,
        )
    try:
        _check_offline_with_reason(home, proc.pid, log)
        assert os.tcgetpgrp(master) == proc.pid  # it was the foreground job
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
