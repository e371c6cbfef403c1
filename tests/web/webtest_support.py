"""What the web tests share: a real spooler (scripted transports, the memory store)
behind a :class:`~spoolbox.daemon.api_ops.DaemonView`, the web application on it and
an HTTP client that went through the token's first visit (httpx on the test's own
event loop: the application calls the spooler, which lives on that loop)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from spoolbox import (
    Address,
    AlwaysIdle,
    NewMessage,
    Policy,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.profile import Profile, load_profile
from spoolbox.testing import Script, ScriptedProvider
from spoolbox.web.app import build_app
from spoolbox.web.context import WebContext
from spoolbox.web.lag import LagProbe
from spoolbox.web.metrics import Metrics
from spoolbox.web.token import csrf_token, load_or_create_token

SECRET = "hunter2-very-secret-password"
BASE = "http://127.0.0.1"

FAST = Policy(
    retry_base=10.0,
    retry_jitter=0.0,
    router_interval=0.02,
    housekeeping_interval=0.05,
    relogon_delay=0.05,
    poll_interval=0.05,
    idle_interval=0.02,
    shutdown_grace=2.0,
)


def profile_at(tmp_path: Path) -> Profile:
    """A real profile whose one secret is :data:`SECRET` (what must never be shown)."""
    path = tmp_path / "spoolbox.toml"
    path.write_text(
        'data_dir = "data"\n'
        "[[transports]]\n"
        'name = "relay"\nprovider = "smtp"\naddress_types = ["SMTP"]\n'
        "[transports.options]\n"
        f'host = "127.0.0.1"\nport = 2525\ntls = "none"\nusername = "u"\npassword = "{SECRET}"\n'
    )
    return load_profile(path)


class WebDaemon:
    """The daemon as the local API's operations see it, around one spooler."""

    def __init__(self, profile: Profile, spooler: Spooler) -> None:
        self.profile = profile
        self.spooler = spooler
        self.started_at = time.time()
        self.ready_at: float | None = self.started_at
        self.reloads = 0
        self.reload_attempts = 0
        self.reload_error: str | None = None

    async def current(self) -> Spooler:
        return self.spooler

    async def reload(self) -> bool:
        return False

    def listener_statistics(self) -> dict[str, Any]:
        return {}


@dataclass
class Web:
    daemon: WebDaemon
    spooler: Spooler
    script: Script
    context: WebContext
    metrics: Metrics
    client: httpx.AsyncClient
    token: str
    app: Any

    @property
    def csrf(self) -> dict[str, str]:
        return {"x-csrf-token": self.context.csrf}


def message(subject: str = "hello", body: str = "hello\r\n", *rcpts: str) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=tuple(Address.parse(r) for r in (rcpts or ("SMTP:bob@example.org",))),
        content=f"From: alice@example.org\r\nSubject: {subject}\r\n\r\n{body}".encode(),
    )


async def open_web(tmp_path: Path, script: Script) -> AsyncIterator[Web]:
    profile = profile_at(tmp_path)
    config = SpoolerConfig(
        transports=(TransportConfig("relay", ScriptedProvider, options={"script": script}),),
        policy=FAST,
        node="web-test",
    )
    spooler = Spooler.open(config, idle=AlwaysIdle())
    await spooler.start()
    daemon = WebDaemon(profile, spooler)
    token = load_or_create_token(profile.data_dir)
    metrics = Metrics(daemon)
    context = WebContext(daemon=daemon, csrf=csrf_token(token), lag=LagProbe(metrics.observe_lag))
    app = build_app(context, token, metrics)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url=BASE)
    try:
        first = await client.get(f"/?token={token}")
        assert first.status_code == 303, first.text
        yield Web(daemon, spooler, script, context, metrics, client, token, app)
    finally:
        await client.aclose()
        await context.flushes.aclose()
        await metrics.stop()
        await spooler.aclose()


@pytest.fixture
def script() -> Script:
    return Script(address_types=("SMTP",))


@pytest.fixture
async def web(tmp_path: Path, script: Script) -> AsyncIterator[Web]:
    async for opened in open_web(tmp_path, script):
        yield opened
