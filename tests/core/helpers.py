"""Builders shared by the core tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from spoolbox import (
    Address,
    AlwaysIdle,
    IdlePolicy,
    NewMessage,
    Policy,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox._core.critsec import CriticalSections
from spoolbox._core.slices import SliceMeter
from spoolbox.testing import Clock, Script, ScriptedProvider

FAST = Policy(
    retry_base=10.0,
    retry_jitter=0.0,
    busy_delay=1.0,
    resend_later_delay=5.0,
    router_interval=0.02,
    housekeeping_interval=0.05,
    failure_backoff=0.05,
    failure_backoff_cap=0.2,
    relogon_delay=0.05,
    poll_interval=0.05,
    idle_interval=0.02,
    shutdown_grace=2.0,
)


def transport(name: str, script: Script, **kw: Any) -> TransportConfig:
    return TransportConfig(name, ScriptedProvider, options={"script": script}, **kw)


def spooler(
    *transports: TransportConfig,
    policy: Policy = FAST,
    clock: Clock | None = None,
    idle: IdlePolicy | None = None,
    **kw: Any,
) -> Spooler:
    cfg = SpoolerConfig(transports=transports, policy=policy, node="test-node", **kw)
    return Spooler.open(cfg, clock=clock, idle=idle or AlwaysIdle())


def message(*rcpts: str, sender: str | None = "SMTP:alice@example.org", **kw: Any) -> NewMessage:
    return NewMessage(
        sender=Address.parse(sender) if sender else None,
        recipients=tuple(Address.parse(r) for r in rcpts),
        content=b"From: alice@example.org\r\nSubject: test\r\n\r\nhello\r\n",
        **kw,
    )


#: For tests on a fake clock: timers far apart, so that ``clock.advance`` (which wakes
#: every sleeper due in between, one at a time) has few to wake.
SLOW_TIMERS = replace(
    FAST, router_interval=1.0, housekeeping_interval=5.0, poll_interval=5.0, idle_interval=1.0
)


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], *, what: str, timeout: float = 5.0
) -> None:
    """Let the loop run until ``predicate()`` holds; fail naming ``what`` otherwise."""

    async def holds() -> bool:
        got = predicate()
        return got if isinstance(got, bool) else await got

    try:
        async with asyncio.timeout(timeout):
            while not await holds():
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


# -- the slice meter alone (tests/core/test_slices*.py) ---------------------------------
class Owner:
    """A slice owner that records what it was charged."""

    def __init__(self, name: str = "t", *, exempt: bool = False) -> None:
        self.name = name
        self.exempt_from_budget = exempt
        self.slices: list[tuple[float, bool]] = []

    def record_slice(self, seconds: float, overran: bool) -> None:
        self.slices.append((seconds, overran))


def meter(budget: float, **kw: Any) -> SliceMeter:
    return SliceMeter(budget, CriticalSections(60.0, lambda owner, held: None, grace=60.0), **kw)
