"""Helpers for driving the ``spoolbox`` command as a user would: subprocesses in tmp dirs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "spoolbox.cli"]
DEADLINE = 60.0


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    env["PYTHONWARNINGS"] = "error"
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


class Home:
    """A data directory made with ``spoolbox init --dir``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.profile = path / "spoolbox.toml"
        self.mail = path / "mail"

    def run(
        self,
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = DEADLINE,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*CLI, "--profile", str(self.profile), *args],
            input=input,
            capture_output=True,
            env=_env(env),
            timeout=timeout,
            cwd=self.path,
        )
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
        )

    def json(self, *args: str, expect: int = 0) -> Any:
        r = self.run(*args, "--json")
        assert r.returncode == expect, (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout)

    def listener_port(self, name: str = "submission") -> int:
        """The port the daemon's listener ``name`` listens on, once its row says so."""

        def status() -> str:
            rows = {r["name"]: r for r in self.json("status")["rows"]}
            return str(rows.get(f"listener:{name}", {}).get("status", ""))

        wait_until(f"the listener {name!r}", lambda: status().startswith("listening on"))
        return int(status().rsplit(":", 1)[1])

    def delivered(self) -> dict[str, list[Path]]:
        """Subject -> the maildir files holding a message with it."""
        out: dict[str, list[Path]] = {}
        for f in sorted(self.mail.glob("*/new/*")):
            for line in f.read_text(errors="replace").splitlines():
                if line.lower().startswith("subject:"):
                    out.setdefault(line.split(":", 1)[1].strip(), []).append(f)
                    break
        return out


def wait_until(what: str, predicate: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


#: A traceback through spoolbox's own code (a library's own, such as aioimaplib's
#: on a connection cut mid-response, is the library's: not counted here).
_OWN_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*?[ \t]+File \"[^\"]*/spoolbox/"
)


def own_tracebacks(log: str) -> bool:
    """Whether ``log`` holds a traceback with a frame of spoolbox's own code."""
    return _OWN_TRACEBACK.search(log) is not None


class Daemons:
    """Starts ``spoolbox run`` subprocesses and kills any left at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(
        self, home: Home, env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        log_path = home.path / f"daemon-{len(self.procs)}.log"
        self.logs.append(log_path)
        log = open(log_path, "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [*CLI, "--profile", str(home.profile), "run", "--no-nice", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(env),
            cwd=home.path,
        )
        log.close()
        self.procs.append(proc)

        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()
            r = home.run("status", "--json")
            # "ready": its listeners, workers, maildrop and web page have started too
            # (the local API answers before them).
            return r.returncode == 0 and json.loads(r.stdout).get("ready") is True

        wait_until("the daemon to be ready", ready)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        proc.send_signal(sig)
        return proc.wait(timeout=DEADLINE)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def tracebacks(self) -> list[str]:
        """The logs of the daemons started (their stderr, their workers' too) that
        hold a traceback: a process that ended or failed in a way nobody handled."""
        return [
            f"{path}:\n{text}"
            for path in self.logs
            if path.exists() and own_tracebacks(text := path.read_text(errors="replace"))
        ]


def free_port() -> int:
    """A loopback port free now (for a test server the profile points at)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def smtp_server(handler: object) -> Iterator[int]:
    """An aiosmtpd server with ``handler`` on a free loopback port (yielded), stopped
    at the end."""
    from aiosmtpd.controller import Controller

    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def with_workers(home: Home, workers: int, max_connections: int | None) -> None:
    """``[daemon] workers`` and the relay transport's ``max_connections`` (None: its
    default) added to a :func:`relay_home`'s profile."""
    text = home.profile.read_text()
    assert "\n[daemon]\n" in text
    text = text.replace("\n[daemon]\n", f"\n[daemon]\nworkers = {workers}\n", 1)
    if max_connections is None:
        home.profile.write_text(text)
        return
    at = text.index("[transports.options]", text.index('\nname = "relay"\n'))
    at = text.index("\n", at) + 1
    home.profile.write_text(text[:at] + f"max_connections = {max_connections}\n" + text[at:])


def wait_workers_logged_on(daemons: Daemons, workers: int) -> None:
    """Until each worker of the last daemon started has logged its transports on."""
    wait_until(
        f"the {workers} workers logged on",
        lambda: all(
            f"daemon[w{i}]: transports logged on: " in daemons.logs[-1].read_text()
            for i in range(1, workers + 1)
        ),
    )


def relay_home(directory: Path, relay_port: int) -> Home:
    """``spoolbox init --relay 127.0.0.1:PORT`` (the listener on any free port): a
    test's own SMTP server is the smart host, on loopback, so without TLS as init
    writes it."""
    relay = f"127.0.0.1:{relay_port}"
    r = subprocess.run(
        [*CLI, "init", "--dir", str(directory), "--smtp-port", "0", "--relay", relay],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=DEADLINE,
    )
    assert r.returncode == 0, r.stderr
    home = Home(directory)
    assert f'port = {relay_port}\ntls = "none"' in home.profile.read_text()
    return home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    target = tmp_path / "sbx"
    r = subprocess.run(
        [*CLI, "init", "--dir", str(target), "--smtp-port", "0"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=DEADLINE,
    )
    assert r.returncode == 0, r.stderr
    return Home(target)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    """The daemons a test starts, killed at its end if still running; the test fails
    if one of them logged a traceback (a worker process's included)."""
    d = Daemons()
    try:
        yield d
    finally:
        d.close()
    found = d.tracebacks()
    assert not found, "a daemon logged a traceback:\n" + "\n".join(t[-3000:] for t in found)
