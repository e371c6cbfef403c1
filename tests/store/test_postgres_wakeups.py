"""Wake-ups across nodes on a PostgreSQL store: a write on one store object wakes a
listener on another (LISTEN/NOTIFY), saying for which transport; a listener whose
connection is cut reconnects and says "look at everything"."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from sqlite_helpers import T0, new_message

from spoolbox.model import RecipientState
from spoolbox.store import StoreError
from spoolbox.store.base import RecipientUpdate
from spoolbox.store.postgres import ANY, ROUTE, PostgresStore
from spoolbox.store.postgres.wakeups import Listener

_R = RecipientState
#: A guard against a hang, never a measure: the wake-ups come in milliseconds.
GUARD = 30.0


@contextlib.asynccontextmanager
async def _two_nodes(dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore, _Heard]]:
    """Two nodes' stores on one database, and what node b (listening) hears."""
    async with PostgresStore(dsn) as a, PostgresStore(dsn) as b:
        heard = _Heard()
        await b.listen(heard)
        yield a, b, heard


class _Heard:
    """The payloads a listener was called with, and a way to wait for one."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, payload: str) -> None:
        self.payloads.append(payload)
        self._changed.set()

    async def wait_for(self, payload: str) -> None:
        async def seen() -> None:
            while payload not in self.payloads:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(seen(), GUARD)


async def test_a_submit_on_one_node_wakes_a_claimer_on_another(
    pg_database: Callable[[], str],
) -> None:
    dsn = pg_database()
    async with _two_nodes(dsn) as (a, b, heard):
        assert await b.claim("x", owner="node-b", now=T0, lease=30) == []
        await a.submit(new_message(1, "X:bob", "Y:carol"), now=T0, lifetime=3600, routes=["x", "y"])
        await heard.wait_for("x")
        await heard.wait_for("y")
        [job] = await b.claim("x", owner="node-b", now=T0, lease=30)
        assert job.message.id == "m0001"


async def test_unrouted_submits_then_routes_then_requeues_are_announced(
    pg_database: Callable[[], str],
) -> None:
    dsn = pg_database()
    async with _two_nodes(dsn) as (a, _, heard):
        await a.submit(new_message(1, "X:bob"), now=T0, lifetime=3600)
        await heard.wait_for(ROUTE)
        assert "x" not in heard.payloads
        await a.assign_routes([("m0001", 0, "x")])
        await heard.wait_for("x")
        [job] = await a.claim("x", owner="node-a", now=T0, lease=30)
        heard.payloads.clear()
        # Declined back to routing: another node's router may take it.
        await a.settle(
            job.message.id,
            [RecipientUpdate(0, _R.QUEUED, route=None, keep_route=False)],
            owner="node-a",
            now=T0,
            claim=job.claim,
        )
        await heard.wait_for(ROUTE)
        await a.assign_routes([("m0001", 0, "x")])
        [job] = await a.claim("x", owner="node-a", now=T0, lease=30)
        heard.payloads.clear()
        # A node that stops returns its claims: the others hear of it.
        assert await a.release_owner("node-a") == 1
        await heard.wait_for(ANY)


async def test_a_listener_whose_connection_is_cut_reconnects(
    pg_database: Callable[[], str],
) -> None:
    dsn = pg_database()
    async with _two_nodes(dsn) as (a, _, heard):
        with psycopg.connect(dsn, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            ).fetchall()
        assert cut == [(True,)]
        await heard.wait_for(ANY)  # back, and told to look at everything
        await a.submit(new_message(1, "X:bob"), now=T0, lifetime=3600, routes=["x"])
        await heard.wait_for("x")


async def test_a_hand_off_wakes_only_the_transports_it_did_not_claim_for(
    pg_database: Callable[[], str],
) -> None:
    # The hand-off claims every ready recipient of its transport in the submission's
    # own statement: nobody is woken for that transport (the other node would find
    # nothing: empty claims, each a statement, once per message of a relay).  Its
    # other transports, and a hand-off of a message not ready yet, still wake.
    dsn = pg_database()
    async with _two_nodes(dsn) as (a, _, heard):
        info, job = await a.submit_claiming(
            new_message(1, "X:bob", "Y:carol"),
            now=T0,
            lifetime=3600,
            routes=["x", "y"],
            transport="x",
            owner="node-a",
            lease=30,
        )
        assert info.id == "m0001"
        assert job is not None and [r.index for r in job.recipients] == [0]
        await heard.wait_for("y")
        later = dataclasses.replace(new_message(2, "X:dave"), send_at=T0 + 600)
        _, none = await a.submit_claiming(
            later, now=T0, lifetime=3600, routes=["x"], transport="x", owner="node-a", lease=30
        )
        assert none is None
        await heard.wait_for("x")  # not ready: the lanes learn of its time
        assert heard.payloads.count("x") == 1, heard.payloads


async def test_wake_up_state_is_told_and_a_first_listen_that_fails_is_tried_again(
    pg_database: Callable[[], str],
) -> None:
    # The first two connections fail (the server at max_connections, say): with
    # on_state the listener says why and goes on trying in the background, instead
    # of leaving the node without wake-ups for its whole life; then it says it is
    # back, and "look at everything".
    dsn = pg_database()
    async with PostgresStore(dsn) as a:
        attempts = 0

        async def connect() -> psycopg.AsyncConnection[Any]:
            nonlocal attempts
            attempts += 1
            if attempts <= 2:
                raise StoreError(f"too many clients already (attempt {attempts})")
            return await psycopg.AsyncConnection.connect(dsn, autocommit=True)

        states: list[str | None] = []
        heard = _Heard()
        listener = Listener(connect, heard, where="test", backoff=(0.01,), on_state=states.append)
        await listener.start()  # no raise
        try:
            assert states == ["too many clients already (attempt 1)"]
            await heard.wait_for(ANY)
            assert states == [
                "too many clients already (attempt 1)",
                "too many clients already (attempt 2)",
                None,
            ]
            assert listener.problem is None
            await a.submit(new_message(1, "X:bob"), now=T0, lifetime=3600, routes=["x"])
            await heard.wait_for("x")
            # A cut connection: told, then back.
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
                )
            heard.payloads.clear()
            await heard.wait_for(ANY)
            assert states[3] is not None and states[-1] is None
        finally:
            await listener.stop()
    # Without on_state a first failure raises, as before.
    attempts = 0
    with pytest.raises(StoreError, match="attempt 1"):
        await Listener(connect, heard, where="test").start()
