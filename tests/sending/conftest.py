"""Fixtures for spoolbox.django and the script API: a real Django (settings.configure
once in this process), a profile relaying to a real aiosmtpd smart host, the store
read back, and ``spoolbox run`` in a subprocess.

(Fixtures only: the test modules do not import this file, so that it does not
collide with the other directories' conftest modules.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from spoolbox import SQLiteStore
from spoolbox.client import Client

HOST = "127.0.0.1"
DEADLINE = 60.0
_CLI = (sys.executable, "-m", "spoolbox.cli")


class SmartHost:
    """An aiosmtpd handler that keeps every envelope it accepted."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        return "250 2.0.0 Ok: queued"


@dataclass
class Stored:
    """One queued message as the store holds it."""

    id: str
    sender: str | None
    recipients: list[str]
    content: bytes
    notify: int = 2  # Notify.FAILURE, the default


@dataclass
class Spool:
    """A profile (``path``) relaying SMTP mail to the smart host (``received``)."""

    path: Path
    host: SmartHost

    def stored(self) -> list[Stored]:
        """Every message in the store, oldest first (by id: ids are time-ordered to the
        microsecond), read with the store's own API."""

        async def read() -> list[Stored]:
            store = SQLiteStore(self.path.parent / "spool.sqlite3")
            await store.open()
            try:
                out = []
                listing = await store.list_messages(limit=1000, now=time.time())
                for summary in sorted(listing, key=lambda summary: summary.info.id):
                    info = summary.info
                    out.append(
                        Stored(
                            id=info.id,
                            sender=str(info.sender) if info.sender else None,
                            recipients=[str(r.address) for r in summary.recipients],
                            content=await store.read_content(info.id),
                            notify=int(info.notify),
                        )
                    )
                return out
            finally:
                await store.close()

        if not (self.path.parent / "spool.sqlite3").exists():
            return []
        return asyncio.run(read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_profile(directory: Path, port: int, *, transports: str | None = None) -> Path:
    """A profile relaying SMTP mail to ``port`` (or with ``transports`` instead)."""
    relay = (
        '[[transports]]\nname = "relay"\nprovider = "smtp"\naddress_types = ["SMTP"]\n'
        f'[transports.options]\nhost = "{HOST}"\nport = {port}\ntls = "none"\n'
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spoolbox.toml"
    path.write_text(
        'data_dir = "."\n[daemon]\nsocket = "spoolbox.sock"\n'
        '[policy]\nretry_base = "1h"\nrouter_interval = "100ms"\n'
        '[identities]\nsenders = ["SMTP:script@example.org"]\n'
        + (relay if transports is None else transports)
    )
    return path


@pytest.fixture
def smart_host() -> Iterator[tuple[SmartHost, int]]:
    handler = SmartHost()
    port = free_port()
    controller = Controller(handler, hostname=HOST, port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def spool(tmp_path: Path, smart_host: tuple[SmartHost, int]) -> Spool:
    host, port = smart_host
    return Spool(write_profile(tmp_path / "spool", port), host)


@pytest.fixture(scope="session")
def django_configured() -> None:
    """Django configured once for this process (settings.configure), as a project's
    settings would: the spoolbox backend, a default sender, admins."""
    pytest.importorskip("django")
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            EMAIL_BACKEND="spoolbox.django.EmailBackend",
            DEFAULT_FROM_EMAIL="Web <web@example.org>",
            SERVER_EMAIL="server@example.org",
            ADMINS=[("Ops", "ops@example.org")],
            USE_TZ=True,
        )
        django.setup()


@pytest.fixture
def django_spool(django_configured: None, spool: Spool) -> Iterator[Spool]:
    """Django's settings pointing SPOOLBOX_PROFILE at ``spool``'s profile."""
    from django.test import override_settings

    with override_settings(SPOOLBOX_PROFILE=str(spool.path)):
        yield spool


def wait_until(what: str, predicate: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """``spoolbox run`` on a profile, in a subprocess, with its log in a file."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.log = profile.parent / "daemon.log"
        env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
        env["PYTHONWARNINGS"] = "error"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*_CLI, "--profile", str(profile), "run", "--no-nice", "--log-level", "debug"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=profile.parent,
            )
        client = Client(profile)

        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return client.running()

        wait_until("the daemon to answer", ready)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def daemon() -> Iterator[Callable[[Path], Daemon]]:
    started: list[Daemon] = []

    def start(profile: Path) -> Daemon:
        started.append(Daemon(profile))
        return started[-1]

    try:
        yield start
    finally:
        for one in started:
            one.stop()
