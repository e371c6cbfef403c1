"""Every store backend nodes share passes every ClusterStore check, and the suite
catches a broken one."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spoolbox.store.cluster import SendGrant
from spoolbox.store.memory import MemoryStore
from spoolbox.store.sqlite import SQLiteStore
from spoolbox.testing.cluster_conformance import CLUSTER_CHECKS, run_cluster_check

BACKENDS = ("memory", "sqlite", "postgres")


def _factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    counter = itertools.count()
    if backend == "memory":
        return MemoryStore
    if backend == "postgres":
        from spoolbox.store.postgres import PostgresStore

        make_database = request.getfixturevalue("pg_database")
        return lambda: PostgresStore(make_database(), pool_size=2)
    return lambda: SQLiteStore(tmp_path / f"store-{next(counter)}.db", synchronous="NORMAL")


@pytest.mark.parametrize("check", list(CLUSTER_CHECKS))
@pytest.mark.parametrize("backend", BACKENDS)
async def test_cluster_check(
    backend: str, check: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    await run_cluster_check(check, _factory(backend, request, tmp_path))


class _SharedLease(MemoryStore):
    """Broken on purpose: anyone may take a lease."""

    async def acquire_lease(self, name: str, *, owner: str, now: float, lease: float) -> float:
        return now + lease


async def test_the_suite_catches_a_lease_anyone_may_take() -> None:
    with pytest.raises(AssertionError, match="n2 took a lease n1 holds"):
        await run_cluster_check("leases_one_owner_at_a_time", _SharedLease)


async def test_sqlite_keeps_nodes_and_leases_across_a_reopen(tmp_path: Path) -> None:
    from spoolbox.testing.cluster_conformance import T0, _node

    async with SQLiteStore(tmp_path / "s.db") as store:
        await store.publish_node(_node("n1"))
        await store.acquire_lease("inbound:a", owner="n1", now=T0, lease=30)
    async with SQLiteStore(tmp_path / "s.db") as store:
        assert [n.name for n in await store.nodes()] == ["n1"]
        assert await store.acquire_lease("inbound:a", owner="n1", now=T0, lease=60) == T0 + 60


class _InboundIgnoresTheLease(MemoryStore):
    """Broken on purpose: commits an inbound batch whoever holds the mailbox's lease."""

    async def deliver_inbound_leased(self, items: Any, **_: Any) -> Any:
        return await self.deliver_inbound_many(items)


async def test_the_suite_catches_an_inbound_commit_that_ignores_the_lease() -> None:
    with pytest.raises(AssertionError, match="committed by a node holding no lease"):
        await run_cluster_check("inbound_commits_only_under_its_lease", _InboundIgnoresTheLease)


class _RateWithoutRoom(MemoryStore):
    """Broken on purpose: grants whatever is asked."""

    async def take_sends(
        self, name: str, *, count: int, period: float, now: float, want: int
    ) -> SendGrant:
        return SendGrant(want, want, now)


async def test_the_suite_catches_a_rate_that_grants_everything() -> None:
    with pytest.raises(AssertionError, match="the last room"):
        await run_cluster_check("send_rate_grants_no_more_than_its_count", _RateWithoutRoom)


async def test_sqlite_keeps_a_send_window_across_a_reopen(tmp_path: Path) -> None:
    """A daemon restarted within a window (a daily quota) still counts the sends made
    before it stopped."""
    from spoolbox.testing.cluster_conformance import T0

    async with SQLiteStore(tmp_path / "s.db") as store:
        grant = await store.take_sends("relay", count=5, period=86400.0, now=T0, want=4)
        assert grant.granted == 4
    async with SQLiteStore(tmp_path / "s.db") as store:
        assert await store.sends_in_window("relay", period=86400.0, now=T0 + 3600) == 4
        grant = await store.take_sends("relay", count=5, period=86400.0, now=T0 + 3600, want=4)
        assert (grant.granted, grant.used, grant.next_at) == (1, 5, T0 + 86400.0)
