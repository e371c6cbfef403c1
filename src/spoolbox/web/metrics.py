"""``/metrics``: the daemon's figures in the Prometheus text format (prometheus-client).

Nothing here counts on its own account where the spooler already counts; the
figures are read from what exists, with three small hooks for what must be seen
one at a time:

* read at each scrape: the queue (``store.counts()``, and per transport the
  messages its queue holds, ``store.count_claimable``), the oldest message waiting,
  each status row's counters (delivered, failed, deferred, received, errors) and
  status bits, an SMTP listener's row its messages accepted and refused, the reasons
  and its connections, the slice meter's and the critical sections' counts (the watchdog),
  the store's commit count and time (a summary), the room left on a SQLite store's
  disk, when each TLS listener's certificate expires, the flushes;
* hooked: the delivery log (:mod:`spoolbox._core.delivery_log`: a logging handler on
  ``spoolbox.delivery`` reads each outcome line's ``delay`` and ``transport``, so
  the latency histogram needs ``[log] level`` info or lower, the default), the
  slice meter (``SliceMeter.add_observer``: each slice's length), the status table
  (``add_observer``: a transport's ``*_FLUSH`` bit coming on is a flush);
* measured here: the event loop's lag (:mod:`.lag`).

The hooks follow the spooler across a reload (checked every second).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from .. import Spooler
from .._core.delivery_log import DELIVERY_LOGGER
from ..daemon.api_ops import DaemonView
from ..daemon.listeners import ROW_PREFIX as LISTENER_ROW
from ..daemon.listeners import certificate_ends
from ..model import MessageState, StatusCode
from ..status import StatusChange
from ..store.space import free_bytes
from ..store.sqlite import SQLiteStore

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_SLICE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
#: status row counter -> (metric, outcome label)
_OUTCOMES = {"delivered": "delivered", "failed": "failed", "deferred": "deferred"}
_WAITING = (MessageState.QUEUED, MessageState.DEFERRED)
_FIELDS_ATTR = "spoolbox_fields"
#: The oldest waiting message is looked up at most this often (seconds).
OLDEST_EVERY = 30.0


class _DeliveryHandler(logging.Handler):
    """Feeds the latency histogram from the delivery log's outcome lines."""

    def __init__(self, histogram: Histogram) -> None:
        super().__init__(logging.INFO)
        self._histogram = histogram

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, _FIELDS_ATTR, None)
        if not isinstance(fields, dict) or "delay" not in fields or "status" not in fields:
            return
        try:
            delay = float(fields["delay"])
        except (TypeError, ValueError):
            return
        self._histogram.labels(str(fields.get("transport")), str(fields["status"])).observe(delay)


class _Snapshot(Collector):
    """The figures read at a scrape (:meth:`Metrics.refresh` fills ``figures`` first)."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    def collect(self) -> Iterator[Any]:
        f = self.figures
        if not f:
            return
        depth = GaugeMetricFamily(
            "spoolbox_queue_recipients", "Recipients in the store by state.", labels=["state"]
        )
        for state, count in sorted(f["counts"].items()):
            depth.add_metric([state], count)
        yield depth
        per_transport = GaugeMetricFamily(
            "spoolbox_queue_messages",
            "Messages waiting in a transport's queue (queued or deferred, routed to it).",
            labels=["transport"],
        )
        for name, count in sorted(f["claimable"].items()):
            per_transport.add_metric([name], count)
        yield per_transport
        yield GaugeMetricFamily(
            "spoolbox_queue_oldest_age_seconds",
            "Age of the oldest message still waiting (queued or deferred); 0: none.",
            value=f["oldest_age"],
        )
        deliveries = CounterMetricFamily(
            "spoolbox_deliveries",
            "Recipient outcomes by transport since the spooler started.",
            labels=["transport", "outcome"],
        )
        inbound = CounterMetricFamily(
            "spoolbox_inbound_messages",
            "Messages received into the inbox by transport since the spooler started.",
            labels=["transport"],
        )
        errors = CounterMetricFamily(
            "spoolbox_transport_errors", "Failed provider calls by transport.", labels=["transport"]
        )
        up = GaugeMetricFamily(
            "spoolbox_transport_up",
            "1: the transport is available (logged on).",
            labels=["transport"],
        )
        failing = GaugeMetricFamily(
            "spoolbox_transport_failing",
            "1: the transport's status row has the FAILURE bit.",
            labels=["transport"],
        )
        listener_messages = CounterMetricFamily(
            "spoolbox_listener_messages",
            "Messages an SMTP listener accepted (250) or refused, by listener.",
            labels=["listener", "outcome"],
        )
        listener_refusals = CounterMetricFamily(
            "spoolbox_listener_refusals",
            "Commands or messages an SMTP listener refused, by listener and reason.",
            labels=["listener", "reason"],
        )
        listener_connections = CounterMetricFamily(
            "spoolbox_listener_connections",
            "SMTP connections a listener took.",
            labels=["listener"],
        )
        for row in f["rows"]:
            name, counters, code = row["name"], row["counters"], row["status_code"]
            if name.startswith(LISTENER_ROW):  # counted as a listener, not a transport
                listener = name[len(LISTENER_ROW) :]
                for outcome in ("accepted", "rejected"):
                    listener_messages.add_metric([listener, outcome], counters.get(outcome, 0))
                for key, value in counters.items():
                    if key.startswith("rejected_"):
                        listener_refusals.add_metric([listener, key[len("rejected_") :]], value)
                listener_connections.add_metric([listener], counters.get("connections", 0))
                continue
            for key, outcome in _OUTCOMES.items():
                deliveries.add_metric([name, outcome], counters.get(key, 0))
            inbound.add_metric([name], counters.get("received", 0))
            errors.add_metric([name], counters.get("errors", 0))
            up.add_metric([name], 1 if code & StatusCode.AVAILABLE else 0)
            failing.add_metric([name], 1 if code & StatusCode.FAILURE else 0)
        yield from (deliveries, inbound, errors, up, failing)
        yield from (listener_messages, listener_refusals, listener_connections)
        scheduler = f["scheduler"]
        yield CounterMetricFamily(
            "spoolbox_watchdog_stalls",
            "Provider steps that held the event loop past the watchdog's limit.",
            value=scheduler.get("stalls", 0),
        )
        yield CounterMetricFamily(
            "spoolbox_slice_overruns",
            "Provider slices longer than the slice budget.",
            value=scheduler.get("overruns", 0),
        )
        yield CounterMetricFamily(
            "spoolbox_critical_section_overruns",
            "Critical sections held past their maximum.",
            value=f["critsec_overruns"],
        )
        expiry = GaugeMetricFamily(
            "spoolbox_listener_certificate_expiry_timestamp_seconds",
            "When the certificate in a TLS listener's tls_cert file expires (Unix time); "
            "the listener serves it from the next handshake.",
            labels=["listener"],
        )
        for listener, not_after in sorted(f.get("certificates", {}).items()):
            expiry.add_metric([listener], not_after)
        yield expiry
        if f.get("disk_free") is not None:
            yield GaugeMetricFamily(
                "spoolbox_store_disk_free_bytes",
                "Bytes still free for writing on the SQLite store's file system (the SMTP "
                "listener refuses MAIL with 452 4.3.1 below 1 MiB).",
                value=f["disk_free"],
            )
        store = f["store"]
        if "commits" in store and "write_seconds" in store:
            yield SummaryMetricFamily(
                "spoolbox_store_commit_duration_seconds",
                "Store write transactions (commits) and the time spent in them.",
                count_value=int(store["commits"]),
                sum_value=float(store["write_seconds"]),
            )


class Metrics:
    """The registry of one web server and the hooks that feed it."""

    def __init__(self, daemon: DaemonView) -> None:
        self._daemon = daemon
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "spoolbox_delivery_latency_seconds",
            "Time from submission to a recipient's outcome (the delivery log's delay).",
            ["transport", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "spoolbox_event_loop_lag_seconds",
            "How late the daemon's event loop ran a timer (measured every 0.25 s).",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.slices = Histogram(
            "spoolbox_slice_duration_seconds",
            "Provider slices (from one await to the next) by transport.",
            ["transport"],
            buckets=_SLICE_BUCKETS,
            registry=self.registry,
        )
        self.flushes = Counter(
            "spoolbox_flushes",
            "Flush phases started (a transport's upload or download), by any client.",
            ["transport", "direction"],
            registry=self.registry,
        )
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self._handler = _DeliveryHandler(self.latency)
        self._hooked: Spooler | None = None
        self._unhook: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._oldest_at: float | None = None
        self._oldest_checked = -OLDEST_EVERY
        self._slice_children: dict[str, Histogram] = {}

    # -- the hooks -------------------------------------------------------------------
    def start(self) -> None:
        logging.getLogger(DELIVERY_LOGGER).addHandler(self._handler)
        self._task = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        logging.getLogger(DELIVERY_LOGGER).removeHandler(self._handler)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._release()

    def _release(self) -> None:
        for remove in self._unhook:
            remove()
        self._unhook.clear()
        self._hooked = None

    def hook(self, spooler: Spooler) -> None:
        """Observe ``spooler`` (and let go of the one before)."""
        if spooler is self._hooked:
            return
        self._release()
        self._hooked = spooler
        self._unhook.append(spooler.meter.add_observer(self._slice))
        self._unhook.append(spooler.status.add_observer(self._status))

    async def _follow(self) -> None:
        while True:
            self.hook(await self._daemon.current())
            await asyncio.sleep(1.0)

    def _slice(self, name: str, seconds: float) -> None:
        # Called for every slice of every provider: the labelled child is looked up
        # once per name, not at each slice.
        child = self._slice_children.get(name)
        if child is None:
            child = self._slice_children[name] = self.slices.labels(name)
        child.observe(seconds)

    def _status(self, change: StatusChange) -> None:
        old, new = change.old, change.new
        if old is not None and new is not None and old.status_code == new.status_code:
            return  # most changes: counters and text, no bit comes on
        started = change.bits_set
        if started & StatusCode.OUTBOUND_FLUSH:
            self.flushes.labels(change.name, "upload").inc()
        if started & StatusCode.INBOUND_FLUSH:
            self.flushes.labels(change.name, "download").inc()

    # -- a scrape ----------------------------------------------------------------------
    async def refresh(self) -> None:
        """Read what is read at a scrape."""
        spooler = await self._daemon.current()
        self.hook(spooler)
        store = spooler.store
        now = spooler.clock.now()
        counts = {str(state): count for state, count in (await store.counts()).items()}
        claimable = {
            host.name: await store.count_claimable(host.name, now=now, ignore_retry=True)
            for host in spooler.hosts
            if host.entry.outbound
        }
        oldest = await self._oldest(spooler, counts, now)
        statistics = spooler.statistics()
        store_stats = getattr(store, "statistics", None)
        self._snapshot.figures = {
            "counts": counts,
            "claimable": claimable,
            "oldest_age": 0.0 if oldest is None else max(0.0, now - oldest),
            "rows": [row.to_dict() for row in spooler.status],
            "scheduler": statistics["scheduler"],
            "critsec_overruns": statistics["counters"].get("critsec_overruns", 0),
            "store": store_stats() if callable(store_stats) else {},
            "certificates": certificate_ends(self._daemon.profile),
            "disk_free": (
                free_bytes(Path(store.path).parent) if isinstance(store, SQLiteStore) else None
            ),
        }

    async def _oldest(self, spooler: Spooler, counts: dict[str, int], now: float) -> float | None:
        """When the oldest waiting message was submitted (None: nothing waits).  The
        store finds it by a scan from the oldest message kept, so it is looked up at
        most every :data:`OLDEST_EVERY` seconds (and not at all when nothing waits)."""
        if not any(counts.get(state, 0) for state in ("queued", "parked")):
            self._oldest_at = None
            return None
        if time.monotonic() - self._oldest_checked < OLDEST_EVERY:
            return self._oldest_at
        oldest = None
        for state in _WAITING:
            page = await spooler.store.list_messages(state=state, limit=1, now=now)
            if page:
                at = page[0].info.submitted_at
                oldest = at if oldest is None else min(oldest, at)
        self._oldest_at, self._oldest_checked = oldest, time.monotonic()
        return oldest

    def observe_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)

    async def exposition(self) -> bytes:
        """The text a scrape gets."""
        await self.refresh()
        return generate_latest(self.registry)
