"""What the IMAP and POP3 tests share: policies, seeded messages, transport options,
waiting for Dovecot (the server itself is :mod:`dovecot_server`; the ``dovecot`` and
``user`` fixtures are in this directory's ``conftest.py``), and a spooler on a raw
server of a test's own (:func:`listening`, :func:`raw_server_spooler`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import dovecot_server as dc

from spoolbox import AlwaysIdle, Policy, Spooler, SpoolerConfig, TransportConfig
from spoolbox.store.memory import MemoryStore

FAST = Policy(
    poll_interval=0.2,
    router_interval=0.02,
    housekeeping_interval=0.05,
    relogon_delay=0.05,
    failure_backoff=0.05,
    failure_backoff_cap=0.2,
    retry_jitter=0.0,
    shutdown_grace=2.0,
)
#: Polls so rare that only IDLE (NEWMAIL) or a flush brings in what arrives.
NO_POLL = replace(FAST, poll_interval=3600.0)
WAIT = 30.0


@contextlib.asynccontextmanager
async def listening(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A raw server on a free loopback port, each connection to ``handle``; its port."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def raw_server_spooler(
    provider: str,
    port: int,
    *,
    policy: Policy,
    store: MemoryStore | None = None,
    **options: object,
) -> Spooler:
    """A spooler whose one transport (``provider``: ``imap``, ``pop3``) fetches from a
    raw server on ``port`` as user ``u``, without TLS unless ``options`` says; on
    ``store`` (default: a new memory store)."""
    opts = {"host": "127.0.0.1", "port": port, "tls": "none", "username": "u", "password": "p"}
    cfg = SpoolerConfig(
        transports=(TransportConfig(provider, provider, options={**opts, **options}),),
        policy=policy,
    )
    return Spooler.open(cfg, store=store or MemoryStore(), idle=AlwaysIdle())


def message(i: int, *, size: int = 0, tag: str = "t") -> bytes:
    """A CRLF message with ``Message-ID: <tag-i@spoolbox.test>`` (``size`` pads the body)."""
    body = f"Message number {i}.\r\n".encode()
    if size:
        line = b"x" * 76 + b"\r\n"
        body += line * (size // len(line))
    head = (
        f"From: sender{i}@example.org\r\nTo: bob@example.org\r\n"
        f"Subject: message {i}\r\nMessage-ID: <{tag}-{i}@spoolbox.test>\r\n\r\n"
    ).encode()
    return head + body


def imap_options(server: dc.Dovecot, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.imap_port,
        "tls": "none",
        "username": user,
        "password": dc.PASSWORD,
        "timeout": 20,
        **extra,
    }


def pop3_options(server: dc.Dovecot, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.pop3_port,
        "tls": "none",
        "username": user,
        "password": dc.PASSWORD,
        "timeout": 20,
        **extra,
    }


async def inbox(sp: Spooler) -> list[bytes]:
    return [await sp.store.read_inbox(e.id) for e in await sp.store.list_inbox(limit=100_000)]


async def eventually(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until ``pred`` holds on two polls 0.2 s apart: Dovecot renames maildir
    files (flags, new/ to cur/), so one directory listing can miss a file."""
    async with asyncio.timeout(timeout):
        while True:
            if pred():
                await asyncio.sleep(0.2)
                if pred():
                    break
            else:
                await asyncio.sleep(0.05)
    assert pred(), what
