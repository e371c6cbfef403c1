"""On PostgreSQL: a claim the server committed whose answer the node never got (its
connection cut after the COMMIT, as in a restart) goes back to the queue once the
store answers again (``release_lost_claims``), not when its lease ends.  The loss is
made by the test's store subclass (the real claim, then the error a cut connection
gives), so that it happens every run; the release is the real statement."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from spoolbox import AlwaysIdle, MessageState, Policy, Spooler, SpoolerConfig, TransportConfig
from spoolbox.model import Address, NewMessage, RecipientState
from spoolbox.store.base import ClaimedJob, StoreError
from spoolbox.store.postgres import PostgresStore
from spoolbox.testing import Script, ScriptedProvider

CUT = "server closed the connection unexpectedly"


class _LosesAClaimsAnswer(PostgresStore):
    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.lose = True
        self.lost: list[ClaimedJob] = []

    async def claim(self, transport: str, **kw: Any) -> list[ClaimedJob]:
        jobs = await super().claim(transport, **kw)
        if jobs and self.lose:
            self.lose = False
            self.lost.extend(jobs)
            raise StoreError(CUT)
        return jobs


async def test_a_claim_whose_answer_was_lost_is_delivered_without_waiting_for_its_lease(
    pg_dsn: str,
) -> None:
    script = Script(address_types=("SMTP",))
    # No housekeeping (it would return the claim when its lease ends: in 120 s).
    policy = Policy(
        lease=120.0,
        housekeeping_interval=3600.0,
        router_interval=0.02,
        idle_interval=0.02,
        failure_backoff=0.05,  # the lane claims again soon after the failed claim
    )
    cfg = SpoolerConfig(
        transports=(TransportConfig("smtp", ScriptedProvider, options={"script": script}),),
        policy=policy,
        node="n1",
    )
    store = _LosesAClaimsAnswer(pg_dsn)
    async with PostgresStore(pg_dsn) as seed:  # queued before the node starts: claimed
        info = await seed.submit(
            NewMessage(
                sender=Address.parse("SMTP:alice@example.org"),
                recipients=(Address.parse("SMTP:bob@example.org"),),
                content=b"Subject: test\r\n\r\nhello\r\n",
            ),
            now=time.time(),  # the spooler's clock: not expired at its first look
            lifetime=3600.0,
        )
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        await _until(lambda: bool(store.lost))
        assert [j.message.id for j in store.lost] == [info.id]
        assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
        [rcpt] = await sp.store.recipients(info.id)
        assert rcpt.state is RecipientState.DELIVERED
    assert script.sent == [(info.id, 0)]


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.002)
