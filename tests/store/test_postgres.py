"""The PostgreSQL store beyond the conformance suite: opening and migrating a database,
refusing what it must refuse, the transaction of each kind of operation, group
commit, and several store objects (nodes) on one database."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import postgres_cluster as pgc
import psycopg
import pytest
from sqlite_helpers import T0, new_message

from spoolbox.model import Address, NewMessage, RecipientState
from spoolbox.store.base import RecipientUpdate, StoreError, StoreFull
from spoolbox.store.operations import Kind
from spoolbox.store.postgres import SCHEMA_VERSION, PostgresStore, describe
from spoolbox.store.postgres.connection import Database

_R = RecipientState


def _sql(dsn: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# -- opening and migrating ---------------------------------------------------------------


async def test_a_new_database_is_migrated_at_open(pg_cluster: pgc.Cluster) -> None:
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    async with PostgresStore(dsn) as store:
        assert store.statistics()["migrated"] == list(range(1, SCHEMA_VERSION + 1))
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["x"])
    assert _sql(dsn, "SELECT version FROM spoolbox_schema") == [(SCHEMA_VERSION,)]
    async with PostgresStore(dsn) as again:
        assert again.statistics()["migrated"] == []
        assert (await again.get_message("m0001")).id == "m0001"


async def test_nodes_starting_together_migrate_once(pg_cluster: pgc.Cluster) -> None:
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    stores = [PostgresStore(dsn, pool_size=1) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        migrated = [s.statistics()["migrated"] for s in stores]
        # Each version once, by whichever node took the lock first for it.
        versions = sorted(v for m in migrated for v in m)  # type: ignore[attr-defined]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_newer_schema_is_refused_untouched(pg_dsn: str) -> None:
    _sql(pg_dsn, f"UPDATE spoolbox_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError) as info:
        await PostgresStore(pg_dsn).open()
    text = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in text
    assert "newer spoolbox" in text
    assert "left untouched" in text
    assert _sql(pg_dsn, "SELECT version FROM spoolbox_schema") == [(SCHEMA_VERSION + 1,)]


async def test_a_database_with_tables_of_another_application_is_refused(
    pg_cluster: pgc.Cluster,
) -> None:
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    _sql(dsn, "CREATE TABLE messages (id serial PRIMARY KEY, body text)")
    with pytest.raises(StoreError, match="not a spoolbox store") as info:
        await PostgresStore(dsn).open()
    assert "messages" in str(info.value)
    assert _sql(dsn, "SELECT count(*) FROM pg_tables WHERE tablename = 'spoolbox_schema'") == [(0,)]


async def test_without_migrate_an_old_schema_is_refused(pg_cluster: pgc.Cluster) -> None:
    dsn = pg_cluster.dsn(pg_cluster.new_database())
    with pytest.raises(StoreError, match="spoolbox store migrate"):
        await PostgresStore(dsn, migrate=False).open()
    assert _sql(dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


async def test_a_refused_password_names_the_database_not_the_password(
    pg_cluster: pgc.Cluster,
) -> None:
    dsn = pg_cluster.dsn("postgres", password="wrong horse")
    with pytest.raises(StoreError) as info:
        await PostgresStore(dsn, connect_timeout=5).open()
    text = str(info.value)
    assert f"postgresql://{pgc.ADMIN}@{pg_cluster.host}:{pg_cluster.port}/postgres" in text
    assert "password authentication failed" in text
    assert "wrong horse" not in text


async def test_a_server_that_is_not_there_is_one_line_naming_it() -> None:
    # libpq puts its hint on a line of its own; a log line (and a status row) takes one.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(StoreError) as info:
        await PostgresStore(
            f"postgresql://spoolbox@127.0.0.1:{port}/mail", connect_timeout=2
        ).open()
    text = str(info.value)
    assert f"postgresql://spoolbox@127.0.0.1:{port}/mail" in text
    assert "Connection refused" in text
    assert "Is the server running" in text  # the hint, kept
    assert "\n" not in text and "\t" not in text


async def test_a_missing_database_is_named(pg_cluster: pgc.Cluster) -> None:
    with pytest.raises(StoreError, match='database "nosuchdb" does not exist'):
        await PostgresStore(pg_cluster.dsn("nosuchdb")).open()


def test_describe_never_shows_the_password(pg_cluster: pgc.Cluster) -> None:
    assert pgc.PASSWORD not in describe(pg_cluster.dsn("db1"))
    assert describe(pg_cluster.url("db1")) == (
        f"postgresql://{pgc.ADMIN}@{pg_cluster.host}:{pg_cluster.port}/db1"
    )
    assert "secret" not in describe("host=h password=secret dbname=d =broken")


async def test_an_operation_on_a_closed_store_says_so(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    with pytest.raises(StoreError, match="not open"):
        await store.counts()
    with pytest.raises(StoreError, match="not open"):
        await store.submit(new_message(1), now=T0, lifetime=3600)


# -- transactions by kind ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (Kind.READ, ("on", "repeatable read", "on")),
        (Kind.WRITE, ("off", "read committed", "on")),
        (Kind.PROGRESS, ("off", "read committed", "off")),
    ],
)
async def test_each_kind_of_operation_runs_in_its_transaction(
    pg_dsn: str, kind: Kind, expected: tuple[str, str, str]
) -> None:
    db = Database(pg_dsn, max_size=1)
    await db.open()
    try:

        async def settings(conn: psycopg.AsyncConnection[dict[str, str]]) -> tuple[str, ...]:
            out = []
            for name in ("transaction_read_only", "transaction_isolation", "synchronous_commit"):
                cur = await conn.execute(f"SHOW {name}")  # type: ignore[arg-type]
                row = await cur.fetchone()
                assert row is not None
                out.append(row[name])
            return tuple(out)

        assert await db.run(kind, "test", settings) == expected  # type: ignore[arg-type]
    finally:
        await db.close()


# -- group commit -----------------------------------------------------------------------


async def test_submits_of_one_turn_commit_together_and_fail_alone(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        await store.submit(new_message(0), now=T0, lifetime=3600)
        reused = NewMessage(
            sender=None,
            recipients=(Address.parse("X:carol"),),
            content=b"Subject: other\r\n\r\nother\r\n",
            id="m0000",
        )
        results = await asyncio.gather(
            *(store.submit(new_message(i), now=T0, lifetime=3600) for i in range(1, 6)),
            store.submit(reused, now=T0, lifetime=3600),
            return_exceptions=True,
        )
        stats = store.statistics()
        assert [getattr(r, "id", None) for r in results[:5]] == [f"m{i:04d}" for i in range(1, 6)]
        assert isinstance(results[5], StoreError)
        assert "already used by a different message" in str(results[5])
        assert stats["submits"] == 7
        assert stats["submit_batches"] == 2  # the first alone, then six in one transaction
        assert (await store.counts())[_R.QUEUED] == 6


async def test_settles_of_one_turn_commit_together_and_fail_alone(pg_dsn: str) -> None:
    """The settles of the lanes that finish in one turn of the loop are one
    transaction; one whose lease is someone else's fails alone (its savepoint)."""
    async with PostgresStore(pg_dsn) as store:
        for i in range(5):
            await store.submit(new_message(i), now=T0, lifetime=3600, routes=["x"])
        jobs = await store.claim("x", owner="n", now=T0, lease=60, limit=5)
        assert len(jobs) == 5
        before = store.statistics()["commits"]
        owners = ["n", "n", "other", "n", "n"]
        results = await asyncio.gather(
            *(
                store.settle(
                    j.message.id, [RecipientUpdate(0, _R.DELIVERED)], owner=o, now=T0, claim=j.claim
                )
                for j, o in zip(jobs, owners, strict=True)
            ),
            return_exceptions=True,
        )
        assert isinstance(results[2], StoreError)
        assert [isinstance(r, BaseException) for r in results] == [False] * 2 + [True] + [False] * 2
        assert store.statistics()["commits"] == before + 1  # type: ignore[operator]
        counts = await store.counts()
        assert counts[_R.DELIVERED] == 4
        assert counts[_R.ACTIVE] == 1


# -- several nodes on one database --------------------------------------------------------


async def test_two_nodes_never_claim_the_same_recipient(
    pg_database: Callable[[], str],
) -> None:
    dsn = pg_database()
    a, b = PostgresStore(dsn, pool_size=4), PostgresStore(dsn, pool_size=4)
    async with a, b:
        messages = [new_message(i, "X:r1", "X:r2", "X:r3") for i in range(60)]
        await a.submit_many(messages, now=T0, lifetime=3600, routes=[["x"] * 3] * 60)

        async def drain(store: PostgresStore, owner: str) -> list[tuple[str, int]]:
            got: list[tuple[str, int]] = []
            while jobs := await store.claim("x", owner=owner, now=T0, lease=60, limit=4):
                for job in jobs:
                    got += [(r.message_id, r.index) for r in job.recipients]
                    await store.settle(
                        job.message.id,
                        [RecipientUpdate(r.index, _R.DELIVERED) for r in job.recipients],
                        owner=owner,
                        now=T0,
                        claim=job.claim,
                    )
            return got

        results = await asyncio.gather(*(drain(s, f"node{i}") for i, s in enumerate([a, b] * 2)))
        claimed = [key for got in results for key in got]
        assert len(claimed) == len(set(claimed)) == 180
        assert all(results)  # every node took part
        counts = await b.counts()
        assert counts[_R.DELIVERED] == 180
        assert counts[_R.ACTIVE] == counts[_R.QUEUED] == 0


async def test_a_node_takes_over_the_expired_leases_of_another(
    pg_database: Callable[[], str],
) -> None:
    dsn = pg_database()
    async with PostgresStore(dsn) as a, PostgresStore(dsn) as b:
        await a.submit(new_message(1, "X:r1", "X:r2"), now=T0, lifetime=3600, routes=["x", "x"])
        [job] = await a.claim("x", owner="node-a", now=T0, lease=30)
        assert await b.claim("x", owner="node-b", now=T0 + 10, lease=30) == []
        assert await b.release_expired(now=T0 + 31) == 2
        [taken] = await b.claim("x", owner="node-b", now=T0 + 31, lease=30)
        assert [r.index for r in taken.recipients] == [0, 1]
        with pytest.raises(StoreError, match="leased by node-b, not node-a"):
            await a.settle(
                job.message.id,
                [RecipientUpdate(0, _R.DELIVERED)],
                owner="node-a",
                now=T0 + 32,
                claim=job.claim,
            )
        assert (await b.counts())[_R.ACTIVE] == 2


async def test_counts_add_up_over_the_shards_of_several_connections(
    pg_database: Callable[[], str],
) -> None:
    dsn = pg_database()
    stores = [PostgresStore(dsn, pool_size=2) for _ in range(3)]
    for s in stores:
        await s.open()
    try:
        await asyncio.gather(
            *(
                s.submit(new_message(10 * i + j, "X:a", "Y:b"), now=T0, lifetime=3600)
                for i, s in enumerate(stores)
                for j in range(5)
            )
        )
        shards = _sql(dsn, "SELECT count(DISTINCT shard) FROM recipient_counts")
        assert shards[0][0] >= 1  # type: ignore[operator]
        for s in stores:
            assert (await s.counts())[_R.QUEUED] == 30
    finally:
        for s in stores:
            await s.close()


def test_a_dsn_that_does_not_parse_is_refused_without_the_password() -> None:
    with pytest.raises(StoreError, match="dsn does not parse") as info:
        PostgresStore("postgresql://u:sec%zz@h/d")
    assert "sec" not in str(info.value)
    with pytest.raises(StoreError, match='invalid connection option "bogus"'):
        PostgresStore("host=h password=sec bogus=1")


async def test_a_submit_the_server_refuses_mid_way_leaves_nothing_and_fails_alone(
    pg_dsn: str,
) -> None:
    # A real server-side failure after the content is written, as a full disk fails
    # an INSERT (SQLSTATE 53100, disk_full): a trigger refuses one message id.
    _sql(
        pg_dsn,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'could not extend file: No space left on device' "
        "USING ERRCODE = 'disk_full'; END $$; "
        "CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW "
        "WHEN (NEW.id = 'm0003') EXECUTE FUNCTION refuse()",
    )
    async with PostgresStore(pg_dsn) as store:
        results = await asyncio.gather(
            *(store.submit(new_message(i), now=T0, lifetime=3600) for i in range(1, 6)),
            return_exceptions=True,
        )
        assert store.statistics()["submit_batches"] == 1
        assert isinstance(results[2], StoreFull)  # temporary: the client tries again
        assert "No space left on device" in str(results[2])
        assert [getattr(r, "id", None) for r in results] == [
            "m0001",
            "m0002",
            None,
            "m0004",
            "m0005",
        ]
        with pytest.raises(StoreError, match="no message"):
            await store.get_message("m0003")
    # Nothing of the refused message stayed: one content row per stored message.
    assert _sql(pg_dsn, "SELECT (SELECT count(*) FROM blobs), (SELECT count(*) FROM messages)") == [
        (4, 4)
    ]
