"""A client's async store kept open between offline operations
(``Client(keep_store_open=True)`` on a PostgreSQL profile): what the SQLite client
does with one kept connection per thread, here an event loop of its own
(:class:`asyncio.Runner`) and the store opened on it once, so each operation costs
its transaction, not a connection, a pool and a schema check.

One :class:`KeptStore` per thread; it belongs to the process that made it (a forked
child makes its own and leaves the parent's alone: a connection must not cross a
fork)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..store.base import Store

__all__ = ["KeptStore"]

T = TypeVar("T")


class KeptStore:
    """``make()``'s store, opened on first use on a loop of its own; :meth:`close`."""

    def __init__(self, make: Callable[[], Store]) -> None:
        self.pid = os.getpid()
        self._make = make
        self._runner: asyncio.Runner | None = None
        self._store: Store | None = None

    def run(self, fn: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
        """``fn(store)`` on the kept loop (the store opened first if it is not)."""
        if self._runner is None:
            self._runner = asyncio.Runner()
        if self._store is None:
            store = self._make()
            self._runner.run(store.open())
            self._store = store
        return self._runner.run(fn(self._store))

    def close(self) -> None:
        store, self._store = self._store, None
        runner, self._runner = self._runner, None
        if runner is None:
            return
        try:
            if store is not None:
                runner.run(store.close())
        finally:
            runner.close()
