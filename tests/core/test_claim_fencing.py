"""Fencing by claim: a node whose lease ran out while it stalled, and that claimed the
same recipient again, cannot settle it from the stalled claim (issue 16).

The owner's name is the same for both claims, so only the claim's token tells them
apart: this is the settle-side check at work (the stalled lane's renewer never runs:
its clock does not move, as in a process stopped past its lease).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import FAST, message, transport, until

from spoolbox import AlwaysIdle, RecipientState, Spooler, SpoolerConfig
from spoolbox.store import MemoryStore, RecipientUpdate, Store
from spoolbox.store.sqlite import SQLiteStore
from spoolbox.testing import Act, FakeClock, Script

LEASE = 30.0


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    yield made
    await made.close()


async def test_a_stalled_claim_cannot_settle_what_its_own_node_claimed_again(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "spoolbox.delivery")
    clock = FakeClock()
    stall = asyncio.Event()
    script = Script(submit=[Act.SUCCEED], stall=stall)
    cfg = SpoolerConfig(
        transports=(transport("smtp", script),),
        policy=replace(FAST, lease=LEASE, housekeeping_interval=3600.0),
        node="node-a",
    )
    async with Spooler.open(
        cfg, store=store, clock=clock, idle=AlwaysIdle(), close_store=False
    ) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        # Lane A has claimed it; its transport stalls in the middle of the delivery.
        await until(lambda: "submit_message" in script.names(), what="lane A has it")
        # Its lease runs out while it stalls (any node's housekeeping, later), and the
        # same node claims the recipient again: a new claim under the same name.
        assert await store.release_expired(now=clock.now() + LEASE + 1) == 1
        [again] = await store.claim(
            "smtp", owner=sp.owner, now=clock.now() + LEASE + 1, lease=LEASE
        )
        assert again.message.id == info.id
        # Lane A comes back and reports its (stale) delivery (status_recips settles
        # it), then ends the message: the settle is refused.
        stall.set()
        await until(lambda: "end_message" in script.names(), what="lane A is done")
        [rec] = await store.recipients(info.id)
        assert rec.state is RecipientState.ACTIVE  # still the new claim's, untouched
        # The new claim decides, and its settle is the only one written.
        await store.settle(
            info.id,
            [RecipientUpdate(0, RecipientState.FAILED, "5.1.1", "550 no such user")],
            owner=sp.owner,
            now=clock.now() + LEASE + 2,
            claim=again.claim,
        )
    [rec] = await store.recipients(info.id)
    assert (rec.state, rec.status) == (RecipientState.FAILED, "5.1.1")
    refused = [r for r in caplog.records if "a later claim" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert info.id in refused[0].getMessage()
    # Lane A's delivery was never logged as done: it was not committed.
    outcomes = [r for r in caplog.records if r.name == "spoolbox.delivery"]
    assert not any("status=sent" in r.getMessage() for r in outcomes), outcomes
    # Nor counted: the transport's and the spooler's rows count what the store took.
    assert sp.status["smtp"].counters.get("delivered", 0) == 0
    assert sp.status["spooler"].counters.get("delivered", 0) == 0
