"""Delivery worker processes: ``[daemon] workers = N`` (``spoolbox run --workers N``).

Why: the daemon is one process, its event loop and store thread under one GIL, so
its delivery uses about one core (docs/benchmarks.md).  A worker is a second
spooler *node* on the same store, in a process of its own: its own transport
sessions, claims and leases, under the node name ``HOST-wN``
(:func:`~.delivery_protocol.worker_node`).  The store shares the work out as it does
between machines: a claim takes a batch no other node can take (SQLite: one writer
at a time on the WAL file; PostgreSQL: ``FOR UPDATE SKIP LOCKED``).

What stays in the daemon (one per machine): the local API, the listeners, the pid
file, the inbound side of every transport (a mailbox is fetched by one process), and
its own spooler, which delivers too: ``workers = 2`` is three delivering processes.
Every node runs its router and housekeeping, as nodes on several machines do.

This module is the daemon's side (:class:`DeliveryWorkers`); the worker is
:mod:`.delivery_worker`, and what they say to each other :mod:`.delivery_protocol`:

* Start: each worker is started (``python -m spoolbox.daemon.delivery_worker``) and
  the daemon waits for its ``ready`` line before it tells systemd ``READY=1``.
* Wake-ups: what this daemon commits (the API, the listeners, ``spoolbox send``) is
  told to every worker over its stdin at once (:meth:`DeliveryWorkers.wake`); on
  PostgreSQL the store's LISTEN/NOTIFY does it instead.  A wake-up that is lost
  (a worker busy or stopped) only delays: every node looks at the queue every
  ``5 * policy.router_interval`` seconds.
* A worker that dies: the daemon returns the recipients it held to the queue at once
  (``release_owner`` of its node: it is gone, nothing of it can still settle them)
  and starts it again after 1 s, doubled up to 30 s while it keeps dying; after
  :data:`RESTART_LIMIT` deaths in a row, each within :data:`STABLE_AFTER` s of its
  start, it is not started again (logged as an error, and on its status row) until
  ``spoolbox reload`` or a restart of the daemon.
* SIGHUP: once the daemon's own reload worked, each worker reads the profile again
  (its transports finish what they hold first).  ``workers`` itself takes effect at
  the next start.
* Stop: the end of its stdin (and SIGTERM, which systemd sends to every process of
  the unit) makes a worker drain: its transports finish the messages in hand for
  ``policy.shutdown_grace`` seconds, the rest goes back to the queue; the daemon
  waits that long plus a few seconds, then kills what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import Spooler, StatusRow
from ..model import ResourceMethods, ResourceType, StatusCode
from . import restarts
from .delivery_protocol import DeliverySpec, worker_node
from .pipes import end_processes, hand_over
from .restarts import STABLE_AFTER

__all__ = [
    "RESTART_LIMIT",
    "STABLE_AFTER",
    "DeliveryWorkers",
    "WakingSpooler",
    "WorkerState",
    "WorkerView",
    "restart_delay",
    "worker_row",
    "workers_advice",
]

log = logging.getLogger("spoolbox.daemon")

#: the program a worker runs (``python -m``)
WORKER_PROGRAM = "spoolbox.daemon.delivery_worker"
#: how long a worker may take from its start to ``ready`` (its transports log on later)
START_TIMEOUT = 60.0
#: deaths in a row (each within STABLE_AFTER of its start) before giving up on it
RESTART_LIMIT = 8
#: wake-up lines are not queued for a worker that has this much unread already
_WAKE_BACKLOG = 64 * 1024

Died = Callable[[str], Awaitable[None]]


def restart_delay(failures: int, ran_for: float) -> tuple[int, float | None]:
    """After a worker that ran ``ran_for`` s died, with ``failures`` quick deaths in a
    row before: the new count, and the delay before starting it again (None: give up
    after :data:`RESTART_LIMIT`); :func:`.restarts.restart_delay`."""
    return restarts.restart_delay(failures, ran_for, limit=RESTART_LIMIT)


def usable_cpus() -> int | None:
    """The CPUs this process may run on (its affinity), or None if unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count()


def workers_advice(workers: int, cpus: int | None, backend: str) -> str | None:
    """A warning for ``workers`` delivery workers on ``cpus`` CPUs, or None.

    On SQLite a drain is CPU-bound and every delivering process (the workers and the
    daemon's own spooler) takes its turn at one write lock: with more delivering
    processes than CPUs, each message costs more CPU and the lock is held longer,
    and the drain gained little or lost against as many processes as CPUs, from run
    to run (docs/benchmarks.md, "Delivery workers" and session 34).  PostgreSQL nodes
    are not warned about: there the server does the locking."""
    if backend != "sqlite" or workers == 0 or cpus is None or workers + 1 <= cpus:
        return None
    return (
        f"workers = {workers} on {cpus} CPU{'s' * (cpus != 1)}: {workers + 1} delivering "
        "processes on one SQLite file, more than the CPUs: each message costs more CPU, "
        f"and the drain gains little or loses against workers = {max(0, cpus - 1)} "
        "(docs/operations.md, 'Worker processes')"
    )


class WorkerState(enum.Enum):
    """Where one worker is.  STARTING -> RUNNING -> (died) WAITING -> STARTING ...;
    WAITING -> GAVE_UP after RESTART_LIMIT; any -> STOPPING at the daemon's stop."""

    STARTING = "starting"
    RUNNING = "running"
    WAITING = "waiting to start again"
    GAVE_UP = "not started again"
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the daemon shows of one worker (its status row)."""

    tag: str  # "w1"
    node: str
    state: WorkerState
    pid: int | None
    restarts: int
    last_exit: str | None  # why it last ended, e.g. "exited with status -9"
    counters: Mapping[str, int] = field(default_factory=dict)


#: each state's status bits and words on the worker's status row
_ROW_STATES: Mapping[WorkerState, tuple[StatusCode, str]] = {
    WorkerState.STARTING: (StatusCode.OFFLINE, "starting"),
    WorkerState.RUNNING: (StatusCode.AVAILABLE | StatusCode.OUTBOUND_ENABLED, "delivering"),
    WorkerState.WAITING: (StatusCode.FAILURE | StatusCode.OFFLINE, "starting again soon"),
    WorkerState.GAVE_UP: (
        StatusCode.FAILURE | StatusCode.OFFLINE,
        "not started again (spoolbox reload tries again)",
    ),
    WorkerState.STOPPING: (StatusCode.OFFLINE, "stopping: finishing the deliveries in hand"),
}


def worker_row(view: WorkerView, daemon_node: str) -> StatusRow:
    """The status row ``worker:wN`` of one worker, in the daemon's status table.

    The worker publishes its own spooler and transport rows to the store as node
    ``view.node`` (the status across nodes shows them); this row is its supervision:
    state, pid, restarts, its transport counters added up and its store's
    (``store_commits``, on SQLite ``store_lock_waits`` ...)."""
    code, words = _ROW_STATES[view.state]
    where = f"node {view.node}" + (f", pid {view.pid}" if view.pid is not None else "")
    detail = [
        f"a node of its own: its transports' rows are node {view.node}'s "
        f"(this daemon is node {daemon_node})",
        f"restarts {view.restarts}",
    ]
    if view.last_exit:
        detail.append(f"last end: {view.last_exit}")
    return StatusRow(
        name=f"worker:{view.tag}",
        resource_type=ResourceType.SUBSYSTEM,
        provider_display="delivery worker",
        status_code=code,
        status_string=f"{words} ({where})",
        resource_methods=ResourceMethods.NONE,
        counters=dict(view.counters),
        detail="; ".join(detail),
    )


class WakingSpooler(Spooler):
    """The daemon's spooler when it has workers: what is committed through it (or by
    its listener processes) is also told to ``wake_others`` (the workers' wake-up)."""

    wake_others: Callable[[Iterable[str], bool], None] | None = None

    def submitted_elsewhere(self, count: int, transports: Iterable[str], *, unrouted: bool) -> None:
        names = frozenset(transports)
        super().submitted_elsewhere(count, names, unrouted=unrouted)
        if self.wake_others is not None:
            self.wake_others(names, unrouted)


class _Worker:
    def __init__(self, index: int, node: str) -> None:
        self.index = index
        self.tag = f"w{index}"
        self.node = node
        self.proc: asyncio.subprocess.Process | None = None
        self.state = WorkerState.STARTING
        self.started_at = 0.0
        self.failures = 0
        self.restarts = 0
        self.last_exit: str | None = None
        self.counters: dict[str, int] = {}
        self.revive = asyncio.Event()  # a reload: start again a worker given up on
        self.wake_pending: set[str] = set()
        self.route_pending = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def view(self) -> WorkerView:
        return WorkerView(
            self.tag,
            self.node,
            self.state,
            self.proc.pid if self.alive() and self.proc is not None else None,
            self.restarts,
            self.last_exit,
            dict(self.counters),
        )


class DeliveryWorkers:
    """The daemon's ``count`` delivery workers: :meth:`start`, :meth:`wake`,
    :meth:`reload`, :meth:`stop`.

    ``node`` is the daemon's node name (the workers' are ``node-w1`` ...);
    ``died(node)`` is awaited when a worker ended unasked (the daemon releases that
    node's leases); ``show(view)`` is called whenever a worker's state changes.
    """

    def __init__(
        self,
        count: int,
        *,
        node: str,
        profile: str,
        log_level: str,
        log_format: str,
        extra_secrets: Mapping[tuple[str, str], str] | None = None,
        died: Died,
        show: Callable[[WorkerView], None] = lambda view: None,
        backend: str = "sqlite",
    ) -> None:
        self._workers = [_Worker(i, worker_node(node, i)) for i in range(1, count + 1)]
        self._backend = backend
        self._profile = profile
        self._log_level = log_level
        self._log_format = log_format
        self._secrets = [[t, o, v] for (t, o), v in (extra_secrets or {}).items()]
        self._died = died
        self._show = show
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._flush_scheduled = False

    def __len__(self) -> int:
        return len(self._workers)

    def nodes(self) -> list[str]:
        """The node names of the workers (the daemon's own comes first elsewhere)."""
        return [worker.node for worker in self._workers]

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [w.proc.pid for w in self._workers if w.alive() and w.proc is not None]

    def views(self) -> list[WorkerView]:
        return [worker.view() for worker in self._workers]

    async def start(self) -> None:
        """Start every worker and wait until each is ready or has failed (a failure is
        logged, and the worker started again as after a death)."""
        if not self._workers:
            return
        advice = workers_advice(len(self._workers), usable_cpus(), self._backend)
        if advice is not None:
            log.warning("%s", advice)
        await asyncio.gather(*(self._spawn(worker) for worker in self._workers))
        for worker in self._workers:
            self._own(self._supervise(worker))
        log.info(
            "%d delivery %s: %s",
            len(self._workers),
            "worker" if len(self._workers) == 1 else "workers",
            ", ".join(f"{w.tag} node {w.node} pid {w.view().pid}" for w in self._workers),
        )

    async def stop(self, grace: float) -> None:
        """Make every worker drain (the end of its stdin), wait ``grace`` plus a few
        seconds for them, kill those still running; idempotent."""
        self._stopping = True
        for worker in self._workers:
            if worker.alive():
                self._set(worker, WorkerState.STOPPING)
            worker.revive.set()
        running = [(f"delivery worker {w.tag}", w.proc) for w in self._workers if w.proc]
        await end_processes(running, grace + 5.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def wake(self, transports: Iterable[str], unrouted: bool) -> None:
        """Work was committed for ``transports`` (``unrouted``: some waits for the
        router): tell every worker, in one line per loop turn."""
        names = set(transports)
        for worker in self._workers:
            worker.wake_pending |= names
            worker.route_pending |= unrouted
        if not self._flush_scheduled and self._workers:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_wakes)

    def reload(self) -> None:
        """The daemon's profile was reloaded: every worker reads it again; one given
        up on is started again."""
        for worker in self._workers:
            if worker.state is WorkerState.GAVE_UP:
                worker.failures = 0
                worker.revive.set()
            else:
                self._tell(worker, {"reload": True})

    def set_log_level(self, level: str) -> None:
        """Log at ``level`` from now on (a reload changed it): the running workers are
        told, those started later get it with their settings."""
        self._log_level = level
        for worker in self._workers:
            self._tell(worker, {"log_level": level})

    def _flush_wakes(self) -> None:
        self._flush_scheduled = False
        for worker in self._workers:
            if worker.wake_pending or worker.route_pending:
                line = {"wake": sorted(worker.wake_pending), "route": worker.route_pending}
                worker.wake_pending, worker.route_pending = set(), False
                self._tell(worker, line)

    def _tell(self, worker: _Worker, msg: Mapping[str, Any]) -> None:
        proc = worker.proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            return
        transport = proc.stdin.transport
        if transport.is_closing() or transport.get_write_buffer_size() > _WAKE_BACKLOG:
            return  # it does not read: it looks at the queue on its own soon
        with contextlib.suppress(ConnectionError, RuntimeError):
            proc.stdin.write(json.dumps(msg).encode() + b"\n")

    def _own(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set(self, worker: _Worker, state: WorkerState) -> None:
        worker.state = state
        self._show(worker.view())

    async def _spawn(self, worker: _Worker) -> bool:
        """Start ``worker`` and wait for its ready line; False if it did not start
        (it is then dead, and ``last_exit`` says why)."""
        self._set(worker, WorkerState.STARTING)
        spec = DeliverySpec(
            index=worker.index,
            processes=len(self._workers) + 1,
            node=worker.node,
            profile=self._profile,
            log_level=self._log_level,
            log_format=self._log_format,
            extra_secrets=self._secrets,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER_PROGRAM,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker.proc, worker.started_at, worker.counters = proc, time.monotonic(), {}
        why = await hand_over(
            proc, spec.to_json(), timeout=START_TIMEOUT, exited="it exited before it was ready"
        )
        if why is None:
            self._set(worker, WorkerState.RUNNING)
            return True
        worker.last_exit = f"did not start: {why}"
        log.error("delivery worker %s %s", worker.tag, worker.last_exit)
        return False

    async def _supervise(self, worker: _Worker) -> None:
        while not self._stopping:
            proc = worker.proc
            assert proc is not None and proc.stdout is not None
            while line := await proc.stdout.readline():
                self._heard(worker, line)
            code = await proc.wait()
            if self._stopping:
                return
            if worker.state is not WorkerState.STARTING:  # else _spawn said why
                worker.last_exit = f"exited with status {code}"
            await self._died(worker.node)
            worker.failures, delay = restart_delay(
                worker.failures, time.monotonic() - worker.started_at
            )
            if delay is None:
                log.error(
                    "delivery worker %s (node %s) %s, %d times in a row: not started "
                    "again (spoolbox reload, or a restart of the daemon, tries again)",
                    worker.tag,
                    worker.node,
                    worker.last_exit,
                    worker.failures - 1,
                )
                worker.revive.clear()
                self._set(worker, WorkerState.GAVE_UP)
                await worker.revive.wait()
            else:
                log.error(
                    "delivery worker %s (node %s, pid %d) %s; its recipients are back in "
                    "the queue; starting it again in %.0f s",
                    worker.tag,
                    worker.node,
                    proc.pid,
                    worker.last_exit,
                    delay,
                )
                self._set(worker, WorkerState.WAITING)
                await asyncio.sleep(delay)
            if self._stopping:
                return
            worker.restarts += 1
            if await self._spawn(worker):
                log.info("delivery worker %s started again (pid %s)", worker.tag, worker.view().pid)
            else:
                worker.state = WorkerState.STARTING  # dead: the loop above sees it end

    def _heard(self, worker: _Worker, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("delivery worker %s: unreadable line %r", worker.tag, line[:200])
            return
        stats = msg.get("stats")
        if isinstance(stats, dict):
            worker.counters = _sum_counters(stats.get("transports", {}))
            store = stats.get("store")
            if isinstance(store, dict):  # its store's commits and lock waits
                worker.counters.update((str(k), v) for k, v in store.items() if isinstance(v, int))
            self._show(worker.view())
        if "reloaded" in msg and not msg["reloaded"]:
            log.error("delivery worker %s: reload failed: %s", worker.tag, msg.get("error"))


def _sum_counters(transports: Mapping[str, Any]) -> dict[str, int]:
    """The counters of a worker's transports, added up (its status row's)."""
    out: dict[str, int] = {}
    for counters in transports.values():
        if isinstance(counters, Mapping):
            for key, value in counters.items():
                if isinstance(value, int):
                    out[str(key)] = out.get(str(key), 0) + value
    return out
