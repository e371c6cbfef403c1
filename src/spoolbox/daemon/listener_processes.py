"""SMTP submission listeners in processes of their own: ``[listeners.NAME] processes = N``.

Why: the daemon is one process.  Its event loop and its store thread share one GIL, so
it uses about one core, whatever the machine has (docs/benchmarks.md, "Relay").  A
listener in a process of its own takes the SMTP dialogue and the submission's store
work (insert, commit) to another core, the way Postfix runs smtpd and cleanup apart
from its queue manager.

How:

* The daemon binds the listening socket (:func:`~spoolbox.ingress.listener.listen_socket`)
  and starts N worker processes (``python -m spoolbox.listener_processes``) that
  inherit it; the kernel gives each new connection to one of them.
* A worker opens the same SQLite store (WAL: several processes may write, one at a
  time under SQLite's lock) and runs an ordinary
  :class:`~spoolbox.ingress.listener.SubmissionListener`.  Its submit routes the
  recipients with the daemon's routing table and commits with ``SQLiteStore.submit``,
  so ``250`` still comes only after the durable commit.
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
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from ..ingress.listener import ListenerConfig, SubmissionListener, listen_socket
from ..model import NewMessage
from ..routing import RouteEntry, RoutingTable
from ..store.sqlite import SQLiteStore

__all__ = ["ListenerProcesses", "WorkerSpec"]

log = logging.getLogger("spoolbox.listener")

#: how long a worker may take from its start to listening
START_TIMEOUT = 30.0
#: restart delays of a worker that keeps dying: first, then doubled up to the last
RESTART_FIRST, RESTART_MAX = 1.0, 30.0
#: a worker that ran this long before it died restarts after RESTART_FIRST again
STABLE_AFTER = 60.0
#: the listener's statistics go to the daemon at most this often (seconds)
STATS_INTERVAL = 1.0
#: how often the daemon compares its routing table with the one the workers have
ROUTES_INTERVAL = 0.5


def table_to_json(table: RoutingTable) -> list[list[Any]]:
    return [
        [e.name, None if e.address_types is None else sorted(e.address_types)]
        for e in table.entries
    ]


def table_from_json(data: Iterable[Any]) -> RoutingTable:
    return RoutingTable.build(
        RouteEntry(str(name), None if types is None else frozenset(str(t) for t in types))
        for name, types in data
    )


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs, sent as its first line of stdin."""

    name: str  # the listener's name in the profile
    options: Mapping[str, Any]  # ListenerConfig's fields
    store: str  # the SQLite file
    synchronous: str
    lifetime: float  # policy.lifetime, for submissions without their own
    event_loop: str  # [daemon] event_loop
    log_level: str
    fd: int  # the inherited listening socket
    routes: list[list[Any]]  # table_to_json of the daemon's routing table
    secrets: list[str] = field(default_factory=list)  # redacted from the worker's log

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "options": dict(self.options),  # a Secret is a str: JSON writes its value
                "store": self.store,
                "synchronous": self.synchronous,
                "lifetime": self.lifetime,
                "event_loop": self.event_loop,
                "log_level": self.log_level,
                "fd": self.fd,
                "routes": self.routes,
                "secrets": self.secrets,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        d = json.loads(text)
        return cls(**d)


# -- the daemon's side --------------------------------------------------------------------
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
            w.proc.pid for w in self._workers if w.proc is not None and w.proc.returncode is None
        ]

    def statistics(self) -> dict[str, int]:
        """The listener's statistics summed over the workers (as last reported), with
        ``processes`` and ``restarts``."""
        out = dict(self._carried)
        for w in self._workers:
            for k, v in w.stats.items():
                out[k] = out.get(k, 0) + v
        out["processes"] = len(self.pids())
        out["restarts"] = sum(w.restarts for w in self._workers)
        return out

    async def start(self) -> None:
        """Bind, start the workers and wait until each listens; raises OSError (the
        address) or RuntimeError (a worker that did not start, with its reason)."""
        self._sock = listen_socket(self.config.host, self.config.port)
        try:
            for w in self._workers:
                await self._spawn(w)
        except BaseException:
            await self.stop(grace=0)
            raise
        for w in self._workers:
            self._own(self._supervise(w))
        self._own(self._push_routes())
        log.info(
            "SMTP submission listener %r on %s:%d in %d processes (pids %s)",
            self.name,
            self.config.host,
            self.port,
            self._processes,
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
        procs = [w.proc for w in self._workers if w.proc is not None]
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), limit)
            except TimeoutError:
                log.error(
                    "listener %r: worker %d did not stop in %.0f s; killed", self.name, p.pid, limit
                )
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, w: _WorkerHandle) -> None:
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
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "spoolbox.daemon.listener_processes",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(fd,),
        )
        for k, v in w.stats.items():
            if k != "active":  # connections open now: the dead worker has none
                self._carried[k] = self._carried.get(k, 0) + v
        w.proc, w.started_at, w.stats = proc, time.monotonic(), {}
        self._sent_table = table
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec.to_json().encode() + b"\n")
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
            ready = json.loads(line) if line else {"error": "it exited before listening"}
        except (TimeoutError, ValueError) as exc:
            ready = {"error": f"no ready line ({exc!r})"}
        if "ready" not in ready:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            code = await proc.wait()
            raise RuntimeError(
                f"listener {self.name!r}: worker process did not start: "
                f"{ready.get('error', ready)} (exit status {code})"
            )

    async def _supervise(self, w: _WorkerHandle) -> None:
        delay = RESTART_FIRST
        while True:
            proc = w.proc
            assert proc is not None and proc.stdout is not None
            while line := await proc.stdout.readline():
                self._heard(w, line)
            code = await proc.wait()
            if self._stopping:
                return
            if time.monotonic() - w.started_at >= STABLE_AFTER:
                delay = RESTART_FIRST
            text = f"worker {proc.pid} exited with status {code}; starting another in {delay:.0f} s"
            log.error("listener %r: %s", self.name, text)
            self._on_trouble(text)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)
            try:
                await self._spawn(w)
            except Exception as exc:
                log.error("listener %r: %s", self.name, exc)
                self._on_trouble(str(exc))
                w.proc = proc  # the dead one: the loop above sees it end at once
                continue
            w.restarts += 1
            log.info("listener %r: worker %s started again", self.name, self.pids())

    def _heard(self, w: _WorkerHandle, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("listener %r: unreadable line from a worker: %r", self.name, line[:200])
            return
        n = msg.get("n")
        if n:
            self._submitted(int(n), frozenset(msg.get("to", ())), bool(msg.get("unrouted")))
            self._send_routes_if_changed()
        stats = msg.get("stats")
        if isinstance(stats, dict):
            w.stats = {str(k): int(v) for k, v in stats.items()}

    async def _push_routes(self) -> None:
        while True:
            await asyncio.sleep(ROUTES_INTERVAL)
            self._send_routes_if_changed()

    def _send_routes_if_changed(self) -> None:
        table = self._routes()
        if table is self._sent_table or table == self._sent_table:
            self._sent_table = table
            return
        self._sent_table = table
        line = json.dumps({"routes": table_to_json(table)}).encode() + b"\n"
        for w in self._workers:
            p = w.proc
            if p is not None and p.returncode is None and p.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    p.stdin.write(line)


# -- the worker's side --------------------------------------------------------------------
class _WorkerProcess:
    """The worker process: a listener on the inherited socket, submitting to the store."""

    def __init__(self, spec: WorkerSpec, out: int) -> None:
        self.spec = spec
        self.table = table_from_json(spec.routes)
        self._out = out
        self._count = 0
        self._to: set[str] = set()
        self._unrouted = False
        self._flush_scheduled = False
        self._stats_sent: dict[str, int] = {}
        self.listener: SubmissionListener | None = None
        self.store = SQLiteStore(spec.store, synchronous=spec.synchronous)
        # Lines the daemon has not read yet.  The pipe is non-blocking: a daemon that
        # stops reading (stopped, or busy) must not stop this process's loop, which
        # goes on accepting mail; what it commits meanwhile is counted, then told in
        # one line when the pipe drains.
        self._unsent = bytearray()
        self._waiting_to_write = False
        os.set_blocking(out, False)

    def _write(self, obj: Mapping[str, Any]) -> None:
        self._unsent += json.dumps(obj).encode() + b"\n"
        self._drain()

    def _drain(self) -> None:
        try:
            while self._unsent:
                del self._unsent[: os.write(self._out, self._unsent)]
        except BlockingIOError:
            if not self._waiting_to_write:
                asyncio.get_running_loop().add_writer(self._out, self._drain)
                self._waiting_to_write = True
            return
        except OSError:  # the daemon is gone (EPIPE): nobody to tell
            self._unsent.clear()
        if self._waiting_to_write:
            asyncio.get_running_loop().remove_writer(self._out)
            self._waiting_to_write = False
        if self._count:
            self._flush()  # what was committed while the pipe was full, in one line

    async def submit(self, message: NewMessage) -> object:
        routes = self.table.routes_at_submit(a.type for a in message.recipients)
        info = await self.store.submit(
            message, now=time.time(), lifetime=self.spec.lifetime, routes=routes
        )
        self._count += 1
        for r in routes:
            if r is None:
                self._unrouted = True
            else:
                self._to.add(r)
        if not self._flush_scheduled:
            # One line per loop turn, for every submission committed in it.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return info

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._unsent or not self._count:
            return  # the pipe is full: keep counting (_drain tells it all later)
        msg: dict[str, Any] = {"n": self._count, "to": sorted(self._to), "unrouted": self._unrouted}
        self._count, self._to, self._unrouted = 0, set(), False
        self._write(msg)

    def _send_stats(self) -> None:
        """The listener's and the store's counters, if they changed since last sent
        (not while the daemon is not reading: they are sent again when they change)."""
        if self.listener is None or self._unsent:
            return
        stats = self.listener.statistics()
        st = self.store.statistics()
        stats["store_commits"] = int(cast(int, st["commits"]))
        stats["store_lock_waits"] = int(cast(int, st["lock_waits"]))
        stats["store_lock_wait_ms"] = round(cast(float, st["lock_wait_seconds"]) * 1000)
        stats["store_write_ms"] = round(cast(float, st["write_seconds"]) * 1000)
        if stats != self._stats_sent:
            self._write({"stats": stats})
            self._stats_sent = stats

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await self.store.open()
        except Exception as exc:
            self._write({"error": f"cannot open the store: {exc}"})
            return 1
        try:
            sock = socket.socket(fileno=self.spec.fd)
            listener = SubmissionListener(self.submit, ListenerConfig(**self.spec.options))
            try:
                await listener.start(sock=sock)
            except Exception as exc:
                self._write({"error": str(exc)})
                return 1
            self.listener = listener
            self._write({"ready": True, "pid": os.getpid()})
            self._send_stats()  # the counters, all 0: the daemon knows every key from now
            reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
            )
            stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            line_task: asyncio.Future[Any] | None = None
            try:
                while not stopped.done():
                    if line_task is None:
                        line_task = asyncio.ensure_future(reader.readline())
                    await asyncio.wait(
                        {line_task, stopped},
                        timeout=STATS_INTERVAL,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if line_task.done():
                        line = line_task.result()
                        line_task = None
                        if not line:
                            break  # the daemon closed our stdin, or died
                        self._control(line)
                    self._send_stats()  # when they changed: each second, or after a line
            finally:
                stopped.cancel()
                if line_task is not None:
                    line_task.cancel()
            await listener.stop()
            self._send_stats()
            return 0
        finally:
            await self.store.close()

    def _control(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            self.table = table_from_json(msg["routes"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable control line %r: %s", line[:200], exc)


def _worker_main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The first line byte by byte: a buffered read could swallow later control lines.
    first = bytearray()
    while not first.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return 1
        first += byte
    spec = WorkerSpec.from_json(first.decode())
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s [listener {spec.name} pid %(process)d]: "
        "%(message)s",
    )
    from .process import RedactingFilter, event_loop_runner

    secrets = frozenset(spec.secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(lambda: secrets))
    out = os.dup(1)
    # Stray prints must not corrupt the line protocol: stdout becomes stderr.
    os.dup2(2, 1)

    worker = _WorkerProcess(spec, out)
    return event_loop_runner(spec.event_loop)(worker.run())


if __name__ == "__main__":
    sys.exit(_worker_main())
