"""The table of store operations and their transaction kinds, and the SQLite store
committing each operation as the table says."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlite_helpers import T0, new_message

from spoolbox.store.base import Store
from spoolbox.store.operations import OPERATIONS, Kind
from spoolbox.store.sqlite import SQLiteStore


def test_the_table_names_every_store_operation() -> None:
    methods = {
        name for name in dir(Store) if not name.startswith("_") and callable(getattr(Store, name))
    } - {"open", "close"}
    assert set(OPERATIONS) == methods


#: Operations of each kind, with what they commit (a progress commit is not fsynced
#: at the default progress_synchronous: a claim lost in a power cut is made again).
_CALLS: dict[str, tuple[Kind, Callable[[SQLiteStore], Awaitable[object]]]] = {
    "hold": (Kind.WRITE, lambda s: s.hold("m0001")),
    "retry_now": (Kind.WRITE, lambda s: s.retry_now("m0001", now=T0)),
    "claim": (Kind.PROGRESS, lambda s: s.claim("t", owner="o", now=T0, lease=60)),
    "release_owner": (Kind.PROGRESS, lambda s: s.release_owner("o")),
    "counts": (Kind.READ, lambda s: s.counts()),
    "state_of": (Kind.READ, lambda s: s.state_of("m0001", now=T0)),
}
_COMMITTED = {
    Kind.READ: {"commits": 0, "progress_commits": 0, "reads": 1},
    Kind.WRITE: {"commits": 1, "progress_commits": 0, "reads": 0},
    Kind.PROGRESS: {"commits": 1, "progress_commits": 1, "reads": 0},
}


@pytest.mark.parametrize("op", list(_CALLS))
async def test_the_sqlite_store_commits_each_operation_as_the_table_says(
    tmp_path: Path, op: str
) -> None:
    kind, call = _CALLS[op]
    assert OPERATIONS[op] is kind
    async with SQLiteStore(tmp_path / "spool.db") as store:
        await store.submit(new_message(1), now=T0, lifetime=3600, routes=["t"])
        before = store.statistics()
        await call(store)
        after = store.statistics()
    delta = {k: after[k] - before[k] for k in _COMMITTED[kind]}  # type: ignore[operator]
    assert delta == _COMMITTED[kind]
