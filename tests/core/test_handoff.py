"""The hand-off: a message submitted while a lane of its transport waits for work is
claimed in the transaction that commits it (no claim transaction of its own)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from helpers import FAST, message, transport, until

from spoolbox import (
    AlwaysIdle,
    MessageState,
    RecipientState,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
)
from spoolbox._core.hosts.outbound import OutboundLane
from spoolbox.testing import Script


def _open(db: Path, script: Script) -> Spooler:
    # No housekeeping during the test: its lease sweeps are commits of their own.
    policy = replace(FAST, housekeeping_interval=3600.0)
    cfg = SpoolerConfig(transports=(transport("smtp", script),), policy=policy, node="n1")
    return Spooler.open(cfg, store=SQLiteStore(db), idle=AlwaysIdle(), close_store=True)


async def _waiting_lane(sp: Spooler) -> OutboundLane:
    """The transport's lane, once a worker of it waits for work (its claim found none)."""
    await sp.wait_ready(timeout=5)
    lane = sp.host("smtp").outbound
    await until(lambda: lane.waiting == 1, what="the lane waits for work")
    return lane


def _commits(sp: Spooler) -> int:
    return int(sp.store.statistics()["commits"])  # type: ignore[attr-defined]


async def test_a_message_for_a_waiting_lane_is_claimed_in_its_submit(tmp_path: Path) -> None:
    script = Script(address_types=("SMTP",))
    async with _open(tmp_path / "s.db", script) as sp:
        lane = await _waiting_lane(sp)
        before = _commits(sp)
        info = await sp.submit(message("SMTP:bob@example.org"))
        # Claimed in the submit's transaction: ACTIVE (leased to this spooler) at once.
        [rcpt] = await sp.store.recipients(info.id)
        assert rcpt.state in (RecipientState.ACTIVE, RecipientState.DELIVERED)
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
        await until(lambda: lane.waiting == 1, what="the lane waits again")
        # The submit (with the claim), the settle, and the lane's next claim, which
        # found nothing: no claim transaction for the message (it was 4 before).
        assert _commits(sp) - before == 3
    assert script.sent == [(info.id, 0)]


async def test_no_hand_off_while_the_foreground_is_busy(tmp_path: Path) -> None:
    script = Script(address_types=("SMTP",))
    async with _open(tmp_path / "s.db", script) as sp:
        await _waiting_lane(sp)
        with sp.foreground_busy():
            info = await sp.submit(message("SMTP:bob@example.org"))
            # The lane waits, but background work is held back: the message waits too.
            [rcpt] = await sp.store.recipients(info.id)
            assert rcpt.state is RecipientState.QUEUED
        assert await sp.wait_for(info.id, timeout=5) is MessageState.SENT
    assert script.sent == [(info.id, 0)]
