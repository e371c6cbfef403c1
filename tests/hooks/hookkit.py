"""What the hook tests share: a transport that records what it was given and
registers the preprocessors its options name, hooks that record their calls, and
spooler builders."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spoolbox import (
    AlwaysIdle,
    HookConfig,
    MemoryStore,
    Policy,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.contract import (
    KEEP,
    BaseTransportSession,
    Change,
    HookMessage,
    LogonFlags,
    OutboundMessage,
    RecipientResult,
    SubmitFlags,
    Support,
)

FAST = Policy(
    retry_base=10.0,
    retry_jitter=0.0,
    router_interval=0.02,
    housekeeping_interval=0.05,
    failure_backoff=0.05,
    failure_backoff_cap=0.2,
    relogon_delay=0.05,
    poll_interval=0.05,
    shutdown_grace=2.0,
)
CONTENT = b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: test\r\n\r\nhello\r\n"


@dataclass
class Record:
    """What happened, in order: ``events`` across hooks, preprocessors and transport."""

    events: list[str] = field(default_factory=list)
    sent: list[tuple[str, bytes]] = field(default_factory=list)  # (message id, content)
    sizes: list[int] = field(default_factory=list)  # message.size as the transport saw it
    sections: list[dict[str, Any]] = field(default_factory=list)  # stored verdicts at send


def header_adder(name: str, record: Record) -> Any:
    """A preprocessor that puts ``name: 1`` on top and notes that it ran."""

    async def preprocess(message: HookMessage) -> bytes:
        record.events.append(f"pre:{name}")
        return f"{name}: 1\r\n".encode() + message.content

    preprocess.__qualname__ = f"adder_{name}"
    return preprocess


class RecordingSession(BaseTransportSession):
    ADDRESS_TYPES = ("SMTP", "FAX")

    def __init__(self, support: Support, record: Record, store: MemoryStore | None) -> None:
        super().__init__(support)
        self.record = record
        self.store = store

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        content = await message.content()
        streamed = b"".join([c async for c in message.iter_content(7)])
        assert streamed == content, "iter_content and content() disagree"
        self.record.events.append("submit")
        self.record.sent.append((message.ref, content))
        self.record.sizes.append(message.size)
        if self.store is not None:
            self.record.sections.append(
                await self.store.profile_get(f"spoolbox.hooks:{message.ref}")
            )
        await self.support.status_recips(
            message, [RecipientResult.delivered(r, "ok") for r in message.recipients]
        )


class RecordingProvider:
    display_name = "recording"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> RecordingSession:
        support.modify_status_row(update=False)
        for fn, types, remove in config.get("preprocessors", ()):
            support.register_preprocessor(fn, address_types=types, remove=remove)
        return RecordingSession(support, config["record"], config.get("store"))

    async def shutdown(self) -> None:
        return None


class AddHeaderHook:
    """Outbound: puts ``X-<name>: 1`` on top (options: name, record)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.name = options["name"]
        self.record: Record = options["record"]

    async def outbound(self, message: HookMessage) -> Change:
        self.record.events.append(f"hook:{self.name}")
        return Change(f"X-{self.name}: 1\r\n".encode() + message.content)


class ScriptedHook:
    """Answers what ``options["answer"]`` returns for each message (a callable)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.answer = options["answer"]
        self.calls: list[HookMessage] = options.setdefault("calls", [])

    async def outbound(self, message: HookMessage) -> Any:
        self.calls.append(message)
        got = self.answer(message)
        return await got if asyncio.iscoroutine(got) else got


def rsa_key(path: Path) -> str:
    """Write a 2048-bit RSA key to ``path`` (with openssl); its DKIM DNS TXT record."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl (Debian package openssl) to make an RSA key")
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def recording_transport(record: Record, **options: Any) -> TransportConfig:
    return TransportConfig("out", RecordingProvider, options={"record": record, **options})


def spooler(
    *transports: TransportConfig,
    hooks: tuple[HookConfig, ...] = (),
    store: MemoryStore | None = None,
    policy: Policy = FAST,
    **kw: Any,
) -> Spooler:
    cfg = SpoolerConfig(transports=transports, hooks=hooks, policy=policy, node="test", **kw)
    return Spooler.open(cfg, store=store or MemoryStore(), idle=AlwaysIdle())


__all__ = [
    "CONTENT",
    "FAST",
    "KEEP",
    "AddHeaderHook",
    "Record",
    "RecordingProvider",
    "ScriptedHook",
    "header_adder",
    "recording_transport",
    "rsa_key",
    "spooler",
]
