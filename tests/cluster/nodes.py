"""Several ``spoolbox run`` nodes on one shared store, as real processes.

:class:`Cluster` writes a profile per node (its own data directory, socket and
node name; the shared SQLite file or PostgreSQL database; an SMTP ``relay``
transport to the test's sink), starts ``spoolbox run`` and runs ``spoolbox``
commands against a node.  :class:`Sink` is an aiosmtpd server that records what it
accepts (or refuses everything with 451 while ``refusing`` is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope, Session

_STORE_TESTS = str(Path(__file__).resolve().parent.parent / "store")
if _STORE_TESTS not in sys.path:  # relay_profile, for the importers outside tests/cluster
    sys.path.append(_STORE_TESTS)

from relay_profile import write_relay_profile  # noqa: E402 - after the path above

from spoolbox import Address, NewMessage  # noqa: E402

CLI = [sys.executable, "-m", "spoolbox.cli"]
DEADLINE = 90.0
DSN_ENV = "SPOOLBOX_TEST_PG_DSN"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, predicate: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class _Handler:
    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []
        self.refusing = False
        self.delay = 0.0  # seconds each DATA takes (so a flush lasts long enough)
        self.delays: list[float] = []  # seconds the next DATAs take, one each
        self.started = 0  # DATA commands begun
        self.arrived: list[float] = []  # time.monotonic() of each message received
        self.lock = threading.Lock()

    async def handle_DATA(self, server: AiosmtpdSMTP, session: Session, envelope: Envelope) -> str:
        if self.refusing:
            return "451 4.3.0 try again later"
        with self.lock:
            self.started += 1
            number = self.started
            delay = self.delays.pop(0) if self.delays else self.delay
        await asyncio.sleep(delay)
        content = envelope.content
        assert isinstance(content, bytes)
        with self.lock:
            self.received.append((list(envelope.rcpt_tos), content))
            self.arrived.append(time.monotonic())
        return f"250 OK id={number}"


@dataclass
class Sink:
    port: int
    handler: _Handler

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[Sink]:
        handler = _Handler()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            yield cls(port, handler)
        finally:
            controller.stop()

    @property
    def received(self) -> list[tuple[list[str], bytes]]:
        with self.handler.lock:
            return list(self.handler.received)

    @property
    def arrived(self) -> list[float]:
        with self.handler.lock:
            return list(self.handler.arrived)

    def refuse(self, on: bool) -> None:
        self.handler.refusing = on

    def slow(self, seconds: float) -> None:
        self.handler.delay = seconds

    @property
    def started(self) -> int:
        with self.handler.lock:
            return self.handler.started


@dataclass(frozen=True)
class SharedStore:
    toml: str
    env: dict[str, str] = field(default_factory=dict)
    backend: str = "sqlite"

    @classmethod
    def sqlite(cls, path: Path) -> SharedStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(f'path = "{path}"')

    @classmethod
    def postgres(cls, dsn: str) -> SharedStore:
        return cls(f'backend = "postgres"\ndsn_env = "{DSN_ENV}"', {DSN_ENV: dsn}, "postgres")


@dataclass
class Node:
    name: str
    profile: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.profile.parent / "daemon.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--profile", str(self.profile), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            cwd=self.profile.parent,
        )

    def json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode in (0, 75), done.stderr
        return json.loads(done.stdout)

    def start(self, *, wait: bool = True) -> None:
        """``spoolbox run``; with ``wait``, returns once the node answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*CLI, "--profile", str(self.profile), "run", "--no-nice"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.profile.parent,
            )
        process = self.process
        if not wait:
            return

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"node {self.name} exited:\n{self.log()}")
            return self.cli("status").returncode == 0

        wait_for(f"node {self.name} to answer", answers)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Cluster:
    """Nodes on one shared store, each with its own directory under ``root``."""

    def __init__(self, root: Path, store: SharedStore) -> None:
        self.root = root
        self.store = store
        self.nodes: dict[str, Node] = {}

    def add(
        self,
        name: str,
        smtp_port: int,
        *,
        policy: str = "housekeeping_interval = 1\nretry_base = 60\n",
        transports: str = "",
        max_connections: int = 2,
        relay_options: str = "",
        start: bool = True,
    ) -> Node:
        options = f"max_connections = {max_connections}\n{relay_options}"
        profile = write_relay_profile(
            self.root / name,
            name,
            self.store.toml,
            smtp_port,
            policy=policy,
            options=options,
            tail=transports,
        )
        env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
        env["PYTHONWARNINGS"] = "error"
        env.update(self.store.env)
        node = self.nodes[name] = Node(name, profile, env)
        if start:
            node.start()
        return node

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()


def message(i: int, to: str = "SMTP:dora@example.org") -> tuple[str, bytes]:
    mid = f"cluster-{i:06d}"
    content = (
        f"From: postmaster@example.org\r\nTo: dora@example.org\r\nSubject: {mid}\r\n"
        f"Message-ID: <{mid}@cluster.spoolbox.test>\r\n\r\nbody {i}\r\n"
    ).encode()
    return mid, content


def new_message(i: int) -> NewMessage:
    """:func:`message` ``i`` as a message from postmaster@example.org to dora."""
    mid, content = message(i)
    return NewMessage(
        id=mid,
        sender=Address.parse("SMTP:postmaster@example.org"),
        recipients=(Address.parse("SMTP:dora@example.org"),),
        content=content,
    )
