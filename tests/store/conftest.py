"""Fixtures of the store tests: a private PostgreSQL cluster for the session
(:mod:`postgres_cluster`), a migrated template database, and a fresh database per
test made from it.  Without PostgreSQL the tests that need it skip, saying which
package to install; with ``SPOOLBOX_REQUIRE_POSTGRES=1`` (CI) they fail instead."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable, Iterator

import postgres_cluster as pgc
import pytest


def _missing(reason: str) -> None:
    if os.environ.get("SPOOLBOX_REQUIRE_POSTGRES"):
        pytest.fail(f"{reason} (SPOOLBOX_REQUIRE_POSTGRES is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgc.Cluster]:
    if pgc.find_bindir() is None:
        _missing(pgc.SKIP_REASON)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed: pip install 'spoolbox[postgres]'")
    cluster = pgc.start_cluster()
    try:
        yield cluster
    finally:
        pgc.remove_cluster(cluster)


@pytest.fixture(scope="session")
def pg_template(pg_cluster: pgc.Cluster) -> str:
    """A database holding the current schema, to copy for each test."""
    from spoolbox.store.postgres import PostgresStore

    name = pg_cluster.new_database()

    async def migrate() -> None:
        store = PostgresStore(pg_cluster.dsn(name), pool_size=1)
        await store.open()
        await store.close()

    # In a thread of its own: the fixture may be set up from inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, migrate()).result()
    return name


@pytest.fixture
def pg_database(pg_cluster: pgc.Cluster, pg_template: str) -> Iterator[Callable[[], str]]:
    """Makes fresh migrated databases (as many as the test asks for); returns their DSN
    each time; dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(pg_cluster.new_database(template=pg_template))
        return pg_cluster.dsn(made[-1])

    yield make
    for name in made:
        pg_cluster.drop_database(name)


@pytest.fixture
def pg_dsn(pg_database: Callable[[], str]) -> str:
    """The DSN of one fresh migrated database."""
    return pg_database()
