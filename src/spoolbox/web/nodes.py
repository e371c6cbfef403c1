"""The other nodes' rows on the page, when several nodes share one store.

Every node publishes its status rows to the store at most once per publishing
interval (:class:`~spoolbox._core.node.NodeSettings`); the page shows them next to
this node's own, each with its ``node``, and a node whose lease ended as ``Gone``
(:func:`~spoolbox._core.cluster_view.cluster_rows`, the rows ``spoolbox status``
shows).  :class:`OtherNodes` reads them for every page at once: one read of the
store per half interval at most, however many pages watch, and none at all when
the spooler is not a node of a shared store.  Each page's stream keeps what it
showed and sends what changed (:func:`~spoolbox._core.cluster_view.row_changes`).
When the store cannot be read, the rows read last stay (this node's own spooler
row says "store unavailable" meanwhile): the other nodes did not go away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .._core.cluster_view import other_rows
from .._core.node import node_of
from ..store import StoreError

__all__ = ["OtherNodes"]


class OtherNodes:
    """The other nodes' rows, read from the store at most every :meth:`period`."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._spooler: object = None
        self._read_at = float("-inf")
        self._rows: list[dict[str, Any]] = []
        #: reads of the store so far (all pages together)
        self.reads = 0

    @staticmethod
    def period(spooler: object) -> float | None:
        """Seconds between two reads: half the node's publishing interval (a change
        reaches the page within about one interval after it was published); None
        when ``spooler`` is no node of a shared store (there is nothing to read)."""
        presence = node_of(spooler)
        return None if presence is None else presence.settings.interval / 2

    async def rows(self, spooler: Any) -> list[dict[str, Any]]:
        """Every other node's rows (with ``node``; ``Gone`` ones too), as read at
        most :meth:`period` ago (or last read, while the store cannot be read);
        ``[]`` when there are no other nodes to read."""
        period = self.period(spooler)
        if period is None:
            return []
        async with self._lock:
            now = self._monotonic()
            if spooler is not self._spooler or now - self._read_at >= period:
                try:
                    self._rows = await other_rows(
                        spooler.store, node=spooler.owner, now=time.time()
                    )
                except StoreError:
                    if spooler is not self._spooler:
                        self._rows = []
                self._spooler, self._read_at = spooler, self._monotonic()
                self.reads += 1
            return self._rows
