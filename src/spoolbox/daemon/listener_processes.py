"""SMTP submission listeners in processes of their own: ``[listeners.NAME] processes = N``.

Why: the daemon is one process.  Its event loop and its store thread share one GIL, so
it uses about one core, whatever the machine has (docs/benchmarks.md, "Relay").  A
listener in a process of its own takes the SMTP dialogue and the submission's store
work (insert, commit) to another core, the way Postfix runs smtpd and cleanup apart
from its queue manager.

How:

* The daemon binds the listening socket (:func:`~spoolbox.ingress.listener.listen_socket`)
  and starts N worker processes (``python -m spoolbox.daemon.listener_worker``) that
  inherit it; the kernel gives each new connection to one of them.
* A worker opens the same store: the SQLite file (WAL: several processes may write,
  one at a time under SQLite's lock) or the PostgreSQL database (``dsn``: a pool of
  its own; its commits ``NOTIFY`` every node, as a node's do), and runs an ordinary
  :class:`~spoolbox.ingress.listener.SubmissionListener`.  Its submit routes the
  recipients with the daemon's routing table and commits with the store's
  ``submit``, so ``250`` still comes only after the durable commit.
* The daemon and a worker talk in JSON lines over the worker's stdin and stdout.
  Daemon to worker: the settings first (the listener's options, secrets included:
  never on a command line), then the routing table whenever it changes.  Worker to
  daemon: ``ready`` with the port, then, once per loop turn with submissions, which
  transports have new work (the daemon wakes them:
  :meth:`~spoolbox.Spooler.submitted_elsewhere`), and the listener's statistics
  when they changed, checked every second.
* The end of its stdin tells a worker to stop.  On a clean stop the daemon closes it;
  when the daemon dies, even by SIGKILL, the kernel does.  The worker then stops
  accepting, lets transactions in progress finish (``shutdown_grace``), commits what
  it accepted and exits.  Nothing answered ``250`` is lost: it is in the store, and
  this daemon or the next delivers it.  A wake-up that does not arrive only delays
  delivery until the transport looks at the queue again (at most
  ``5 * policy.router_interval``).
* A worker that dies is started again after 1 s, doubling up to 30 s while it keeps
  dying; the listener's status row says so.  Workers ignore SIGINT (a Ctrl-C on the
  terminal reaches the whole process group; the daemon stops them in order); SIGTERM
  stops a worker as the end of its stdin does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from ..ingress.listener import ListenerConfig, host_port, listen_socket
from ..ingress.local_names import LocalNames
from ..routing import RoutingTable
from .pipes import end_processes, hand_over
from .restarts import restart_delay
from .worker_protocol import WorkerSpec, table_to_json

__all__ = ["ListenerProcesses"]

log = logging.getLogger("spoolbox.listener")

#: the program a worker runs (``python -m``)
WORKER_PROGRAM = "spoolbox.daemon.listener_worker"
#: how long a worker may take from its start to listening
START_TIMEOUT = 30.0
#: how often the daemon compares its routing table with the one the workers have
ROUTES_INTERVAL = 0.5

Submitted = Callable[[int, frozenset[str], bool], None]


class _WorkerHandle:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.stats: dict[str, int] = {}
        self.restarts = 0


class ListenerProcesses:
    """One listener served by ``processes`` worker processes; the daemon's handle on them.

    Same face as :class:`SubmissionListener` for the daemon: :meth:`start`,
    :meth:`stop`, :attr:`port`, :meth:`statistics`.  ``routes`` gives the daemon's
    current routing table; ``submitted(count, transports, unrouted)`` is called for
    what the workers committed.  ``on_trouble(text)`` is told when a worker died.
    """

    def __init__(
        self,
        name: str,
        options: Mapping[str, Any],
        *,
        processes: int,
        store: str,
        synchronous: str,
        lifetime: float,
        event_loop: str,
        log_level: str,
        routes: Callable[[], RoutingTable],
        submitted: Submitted,
        on_trouble: Callable[[str], None] = lambda text: None,
        secrets: Iterable[str] = (),
        log_format: str = "auto",
        dsn: str | None = None,
        local_names: LocalNames | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, not {processes}")
        self.name = name
        self.config = ListenerConfig(**dict(options))  # checks the options here, too
        self._options = dict(options)
        self._processes = processes
        self._store = store
        self._synchronous = synchronous
        self._lifetime = lifetime
        self._event_loop = event_loop
        self._log_level = log_level
        self._routes = routes
        self._submitted = submitted
        self._on_trouble = on_trouble
        self._secrets = sorted(set(secrets))
        self._log_format = log_format
        self._dsn = dsn
        self._local_names = None if local_names is None else local_names.to_dict()
        self._sock: socket.socket | None = None
        self._workers = [_WorkerHandle() for _ in range(processes)]
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent_table: RoutingTable | None = None
        self._stopping = False
        #: the counters of workers that ended (so the sums never go back)
        self._carried: dict[str, int] = {}

    def __repr__(self) -> str:
        where = f"{self.config.host}:{self.port}" if self._sock else "not started"
        return f"<ListenerProcesses {self.name} x{self._processes} {where}>"

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the listener is not started")
        return int(self._sock.getsockname()[1])

    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [
            worker.proc.pid
            for worker in self._workers
            if worker.proc is not None and worker.proc.returncode is None
        ]

    def statistics(self) -> dict[str, int]:
        """The listener's statistics summed over the workers (as last reported), with
        ``processes`` and ``restarts``."""
        out = dict(self._carried)
        for worker in self._workers:
            for key, value in worker.stats.items():
                out[key] = out.get(key, 0) + value
        out["processes"] = len(self.pids())
        out["restarts"] = sum(worker.restarts for worker in self._workers)
        return out

    async def start(self) -> None:
        """Bind, start the workers and wait until each listens; raises OSError (the
        address) or RuntimeError (a worker that did not start, with its reason)."""
        self._sock = listen_socket(self.config.host, self.config.port)
        try:
            for worker in self._workers:
                await self._spawn(worker)
        except BaseException:
            await self.stop(grace=0)
            raise
        for worker in self._workers:
            self._own(self._supervise(worker))
        self._own(self._push_routes())
        log.info(
            "SMTP submission listener %r on %s in %d process%s (pids %s)",
            self.name,
            host_port(self.config.host, self.port),
            self._processes,
            "" if self._processes == 1 else "es",
            " ".join(map(str, self.pids())),
        )

    async def stop(self, *, grace: float | None = None) -> None:
        """Close the workers' stdin, wait for them to finish (``shutdown_grace`` plus a
        few seconds), kill the ones that do not; idempotent."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        limit = (self.config.shutdown_grace if grace is None else grace) + 5.0
        procs = [worker.proc for worker in self._workers if worker.proc is not None]
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        await end_processes([(f"listener {self.name!r}: worker", p) for p in procs], limit)

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, worker: _WorkerHandle) -> None:
        assert self._sock is not None
        fd = self._sock.fileno()
        table = self._routes()
        spec = WorkerSpec(
            name=self.name,
            options=self._options,
            store=self._store,
            synchronous=self._synchronous,
            lifetime=self._lifetime,
            event_loop=self._event_loop,
            log_level=self._log_level,
            fd=fd,
            routes=table_to_json(table),
            secrets=self._secrets,
            log_format=self._log_format,
            dsn=self._dsn,
            local_names=self._local_names,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER_PROGRAM,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(fd,),
        )
        for key, value in worker.stats.items():
            if key != "active":  # connections open now: the dead worker has none
                self._carried[key] = self._carried.get(key, 0) + value
        worker.proc, worker.started_at, worker.stats = proc, time.monotonic(), {}
        self._sent_table = table
        why = await hand_over(
            proc, spec.to_json(), timeout=START_TIMEOUT, exited="it exited before listening"
        )
        if why is not None:
            raise RuntimeError(f"listener {self.name!r}: worker process did not start: {why}")

    async def _supervise(self, worker: _WorkerHandle) -> None:
        failures = 0  # quick deaths in a row (a listener is never given up on)
        while True:
            proc = worker.proc
            assert proc is not None and proc.stdout is not None
            while line := await proc.stdout.readline():
                self._heard(worker, line)
            code = await proc.wait()
            if self._stopping:
                return
            failures, delay = restart_delay(failures, time.monotonic() - worker.started_at)
            assert delay is not None  # no limit
            text = f"worker {proc.pid} exited with status {code}; starting another in {delay:.0f} s"
            log.error("listener %r: %s", self.name, text)
            self._on_trouble(text)
            await asyncio.sleep(delay)
            try:
                await self._spawn(worker)
            except Exception as exc:
                log.error("listener %r: %s", self.name, exc)
                self._on_trouble(str(exc))
                worker.proc = proc  # the dead one: the loop above sees it end at once
                continue
            worker.restarts += 1
            log.info("listener %r: worker %s started again", self.name, self.pids())

    def _heard(self, worker: _WorkerHandle, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("listener %r: unreadable line from a worker: %r", self.name, line[:200])
            return
        count = msg.get("n")
        if count:
            self._submitted(int(count), frozenset(msg.get("to", ())), bool(msg.get("unrouted")))
            self._send_routes_if_changed()
        stats = msg.get("stats")
        if isinstance(stats, dict):
            worker.stats = {str(key): int(value) for key, value in stats.items()}

    async def _push_routes(self) -> None:
        while True:
            await asyncio.sleep(ROUTES_INTERVAL)
            self._send_routes_if_changed()

    def set_log_level(self, level: str) -> None:
        """Log at ``level`` from now on: the running workers are told, those started
        later get it with their settings."""
        self._log_level = level
        self._tell_all(json.dumps({"log_level": level}).encode() + b"\n")

    def _send_routes_if_changed(self) -> None:
        table = self._routes()
        if table is self._sent_table or table == self._sent_table:
            self._sent_table = table
            return
        self._sent_table = table
        self._tell_all(json.dumps({"routes": table_to_json(table)}).encode() + b"\n")

    def _tell_all(self, line: bytes) -> None:
        for worker in self._workers:
            process = worker.proc
            if process is not None and process.returncode is None and process.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    process.stdin.write(line)
