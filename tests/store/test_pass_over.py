"""A claim that passes over full destinations (``skip_destinations``) on SQLite and
PostgreSQL: it reads at most ``PASS_OVER_LIMIT`` of their recipients from each end of
the ready queue (made 5 here), so the mail that came after a long queue for one domain
is found at the newest end, and the rest of that queue is never read through.  And
PostgreSQL's destination of a non-ASCII domain in a database whose collation folds more
than ASCII letters."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import postgres_cluster as pgc
import psycopg
import pytest

from spoolbox.model import Address, NewMessage
from spoolbox.store import Store
from spoolbox.store.postgres import PostgresStore
from spoolbox.store.postgres import transactions as pg_transactions
from spoolbox.store.sqlite import SQLiteStore
from spoolbox.store.sqlite import transactions as sqlite_transactions

T0 = 1_000_000.0
WINDOW = 5


@pytest.fixture(params=["sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Store]:
    made: Store
    if request.param == "postgres":
        monkeypatch.setattr(pg_transactions, "PASS_OVER_LIMIT", WINDOW)
        made = PostgresStore(request.getfixturevalue("pg_dsn"), pool_size=2)
    else:
        monkeypatch.setattr(sqlite_transactions, "PASS_OVER_LIMIT", WINDOW)
        made = SQLiteStore(tmp_path / "spool.sqlite3")
    await made.open()
    try:
        yield made
    finally:
        await made.close()


async def _queue(store: Store, *addresses: str, first: int) -> list[str]:
    """One message a recipient, each ready a second after the one before."""
    ids = []
    for i, address in enumerate(addresses):
        info = await store.submit(
            NewMessage(
                None, (Address.parse(address),), b"Subject: s\r\n\r\nx", id=f"m{first + i:03}"
            ),
            now=T0 + first + i,
            lifetime=86400.0,
            routes=["x"],
        )
        ids.append(info.id)
    return ids


async def _claim(store: Store, limit: int, **kwargs: object) -> list[str]:
    jobs = await store.claim(
        "x",
        owner="o",
        now=T0 + 1000,
        lease=60.0,
        limit=limit,
        **kwargs,  # type: ignore[arg-type]
    )
    return [job.message.id for job in jobs]


async def test_mail_after_a_long_queue_of_a_full_domain_is_found_at_the_newest_end(
    store: Store,
) -> None:
    older = await _queue(store, "X:a@fast.example", "X:b@other.example", first=0)
    slow = await _queue(store, *(f"X:s{i}@slow.example" for i in range(12)), first=10)
    newer = await _queue(store, "X:c@fast.example", "X:d@other.example", first=100)
    taken = await _claim(store, 10, skip_destinations={"slow.example"})
    # Oldest first: what the oldest end found, then what the newest end found.
    assert taken == [*older, *newer]
    assert await _claim(store, 10, skip_destinations={"slow.example"}) == []
    assert await _claim(store, 20) == slow


async def test_mail_with_more_than_the_bound_on_both_sides_waits(store: Store) -> None:
    await _queue(store, *(f"X:s{i}@slow.example" for i in range(8)), first=0)
    middle = await _queue(store, "X:m@fast.example", first=20)
    await _queue(store, *(f"X:t{i}@slow.example" for i in range(8)), first=30)
    assert await _claim(store, 10, skip_destinations={"slow.example"}) == []
    taken = await _claim(store, 17)
    assert middle[0] in taken and len(taken) == 17


async def test_a_flush_claim_passes_over_from_both_ends_too(store: Store) -> None:
    await _queue(store, *(f"X:s{i}@slow.example" for i in range(12)), first=0)
    newer = await _queue(store, "X:c@fast.example", first=50)
    taken = await _claim(store, 10, skip_destinations={"slow.example"}, ignore_retry=True)
    assert taken == newer


async def test_the_oldest_end_alone_when_it_fills_the_claim(store: Store) -> None:
    older = await _queue(store, *(f"X:f{i}@fast.example" for i in range(3)), first=0)
    await _queue(store, *(f"X:s{i}@slow.example" for i in range(12)), first=10)
    await _queue(store, "X:c@fast.example", first=100)
    assert await _claim(store, 3, skip_destinations={"slow.example"}) == older


@pytest.mark.parametrize("more", [0, 1500], ids=["few", "many"])
async def test_a_destination_is_matched_as_it_is_never_as_a_pattern(
    store: Store, more: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``more`` destinations besides (each store may match a long list otherwise:
    # SQLite computes the destination in SQL; as many terms would be too deep).
    # The whole queue within the window.
    monkeypatch.setattr(pg_transactions, "PASS_OVER_LIMIT", 100)
    monkeypatch.setattr(sqlite_transactions, "PASS_OVER_LIMIT", 100)
    ids = await _queue(
        store,
        "X:p@axb.example",  # "_" is no wildcard
        "X:q@a_b.example",
        "X:r@xzzy.example",  # nor is "%"
        "X:s@A_B.EXAMPLE",  # a domain is case-folded (ASCII letters)
        "X:t@back\\slash.example",
        "X:u@root",  # a domain "root" is not the value "Root"
        "X:Root",
        "X:v@sub.x%y.example",
        'X:"w@x"@Quoted.Example',  # after the last "@"
        "X:z@\u00c4BC.Example",  # only ASCII letters are folded
        "X:y@\u00e4bc.example",
        first=0,
    )
    skip = {"a_b.example", "x%y.example", "back\\slash.example", "Root"}
    skip |= {"quoted.example", "\u00c4bc.example"}
    skip |= {f"d{i}.example" for i in range(more)}
    taken = await _claim(store, 20, skip_destinations=skip)
    assert taken == [ids[0], ids[2], ids[5], ids[7], ids[10]]


async def test_postgres_folds_only_ascii_letters_whatever_the_collation(
    pg_cluster: pgc.Cluster,
) -> None:
    # A database whose collation folds every letter (C.UTF-8's lower('Ä') is 'ä');
    # spoolbox.model.destination folds ASCII letters only.
    name = f"utf8_{os.getpid()}"
    pg_cluster.execute(
        f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8'"
    )
    try:
        async with PostgresStore(pg_cluster.dsn(name), pool_size=1) as store:
            ids = await _queue(store, "X:eve@\u00c4BC.Example", "X:fay@\u00e4bc.example", first=0)
            taken = await _claim(store, 10, skip_destinations={"\u00c4bc.example"})
            assert taken == [ids[1]]
    finally:
        pg_cluster.drop_database(name)


async def test_postgres_passes_over_rows_another_claim_holds(pg_dsn: str) -> None:
    # Another node's claim holds the mail of other domains before and after one
    # message (its transaction open): this claim takes that one instead of finding
    # nothing.
    async with PostgresStore(pg_dsn, pool_size=2) as store:
        await _queue(store, *(f"X:s{i}@slow.example" for i in range(3)), first=0)
        held = await _queue(store, *(f"X:h{i}@fast.example" for i in range(6)), first=10)
        free = await _queue(store, "X:f@other.example", first=20)
        held += await _queue(store, *(f"X:i{i}@fast.example" for i in range(6)), first=30)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as other:
            await other.execute(
                "SELECT 1 FROM recipients WHERE message_id = ANY(%s) FOR UPDATE", (held,)
            )
            taken = await _claim(store, 1, skip_destinations={"slow.example"})
            assert taken == free
            await other.rollback()
        assert await _claim(store, 20, skip_destinations={"slow.example"}) == held
