"""Send/Receive from the page: the flushes it started, their Cancel and their reports.

A flush here is the one ``spoolbox flush`` asks the daemon for: the same
``start_cluster_flush`` (upload, download or both; all transports or one; the
profile's ``flush_deadline``; when several nodes share the store, every node that
serves the transport runs its part and the report adds them up), the same report
(:func:`~spoolbox.api.wire.flush_report_to_dict`).
While it runs, its progress is in the status rows the page watches (Server-Sent
Events, :mod:`.events`); when it ends, its report is kept here for the page to read
(the last :data:`KEEP` flushes).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from typing import Any

from .. import Spooler
from .._core.cluster_view import ClusterFlush, start_cluster_flush
from ..api.wire import flush_report_to_dict

__all__ = ["MODES", "Flushes", "UnknownFlush"]

#: mode -> (upload, download), as ``spoolbox flush --upload/--download/--both``
MODES = {"both": (True, True), "upload": (True, False), "download": (False, True)}
#: How many finished flushes keep their report.
KEEP = 20


class UnknownFlush(KeyError):
    """No flush of that id (never started here, or its report was let go)."""


class Flushes:
    """The flushes the page started, by id (``f1``, ``f2``, ...)."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._handles: OrderedDict[str, ClusterFlush] = OrderedDict()
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        #: every flush started here (the ``spoolbox_web_flushes_total`` figure)
        self.started = 0

    async def start(self, spooler: Spooler, *, mode: str, transport: str | None) -> dict[str, Any]:
        """Start a flush; ``{"id", "transports"}``.  ValueError: an unknown mode;
        KeyError: an unknown transport."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        upload, download = MODES[mode]
        handle = await start_cluster_flush(
            spooler, upload=upload, download=download, transport=transport
        )
        flush_id = f"f{next(self._numbers)}"
        self._handles[flush_id] = handle
        self.started += 1
        task = asyncio.ensure_future(self._finish(flush_id, handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"id": flush_id, "transports": handle.transports}

    async def _finish(self, flush_id: str, handle: ClusterFlush) -> None:
        try:
            report = flush_report_to_dict(await handle.wait())
        except Exception as exc:  # the spooler closed under it (a reload, the stop)
            report = {"cancelled": True, "error": f"{type(exc).__name__}: {exc}", "results": []}
        self._handles.pop(flush_id, None)
        self._reports[flush_id] = report
        while len(self._reports) > KEEP:
            self._reports.popitem(last=False)

    def cancel(self, flush_id: str, transport: str | None = None) -> None:
        """Cancel a running flush (one transport of it, or all); a finished one: no-op."""
        handle = self._handles.get(flush_id)
        if handle is not None:
            handle.cancel(transport)
        elif flush_id not in self._reports:
            raise UnknownFlush(flush_id)

    def state(self, flush_id: str) -> dict[str, Any]:
        """``{"id", "running", "transports"}``, with ``report`` once it ended."""
        handle = self._handles.get(flush_id)
        if handle is not None:
            return {"id": flush_id, "running": True, "transports": handle.transports}
        report = self._reports.get(flush_id)
        if report is None:
            raise UnknownFlush(flush_id)
        return {"id": flush_id, "running": False, "report": report}

    def running(self) -> list[str]:
        return list(self._handles)

    async def aclose(self) -> None:
        """Cancel what runs (the server stops)."""
        for handle in list(self._handles.values()):
            handle.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
