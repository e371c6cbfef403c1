"""The listener worker program: ``python -m spoolbox.daemon.listener_worker``.

One process of a listener with ``processes = N``
(:mod:`spoolbox.daemon.listener_processes` starts and supervises it).  It reads its
:class:`~spoolbox.daemon.worker_protocol.WorkerSpec` from stdin, runs an ordinary
:class:`~spoolbox.ingress.listener.SubmissionListener` on the listening socket it
inherited, routes each submission with the daemon's routing table and commits it to
the store itself (``250`` after the durable commit): the SQLite file, or with a
``dsn`` the PostgreSQL database, whose ``NOTIFY`` wakes every node; and tells the
daemon on its stdout which transports have new work.  The end of its stdin (or
SIGTERM) stops it: it stops accepting, lets transactions in progress finish and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..ingress.listener import ListenerConfig, SubmissionListener
from ..ingress.local_names import LocalNames
from ..model import MessageInfo, NewMessage
from ..routing import refusal
from ..store.postgres_open import postgres_store
from ..store.space import room_check
from ..store.sqlite import SQLiteStore
from .log_format import choose_format
from .pipes import serve_control_lines, stdin_lines
from .runtime import configure_logging, event_loop_runner, set_log_level
from .worker_protocol import STATS_INTERVAL, WorkerSpec, table_from_json

if TYPE_CHECKING:
    from ..store.postgres import PostgresStore

log = logging.getLogger("spoolbox.listener")


def _store_of(spec: WorkerSpec) -> SQLiteStore | PostgresStore:
    """The daemon's store: its PostgreSQL database (``dsn``: a pool of 2, the schema
    the daemon migrated, refused if older) or its SQLite file."""
    if spec.dsn is not None:
        return postgres_store(spec.dsn, None, pool_size=2, migrate=False)
    # The daemon writes the file too: the fsync after the lock (.walsync).
    return SQLiteStore(spec.store, synchronous=spec.synchronous, sync_after_unlock=True)


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
        self.store = _store_of(spec)
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
        routes = self.table.routes_at_submit((a.type, a.value) for a in message.recipients)
        info = await self.store.submit(
            message, now=time.time(), lifetime=self.spec.lifetime, routes=routes
        )
        self._committed(1, routes)
        return info

    async def submit_many(self, messages: list[NewMessage]) -> list[MessageInfo]:
        """:meth:`submit` of several messages in one transaction (one listener
        transaction whose recipients asked for different NOTIFYs)."""
        routes = [
            self.table.routes_at_submit((a.type, a.value) for a in m.recipients) for m in messages
        ]
        infos = await self.store.submit_many(
            messages, now=time.time(), lifetime=self.spec.lifetime, routes=routes
        )
        self._committed(len(infos), [r for rs in routes for r in rs])
        return infos

    def _committed(self, n: int, routes: Sequence[str | None]) -> None:
        """``n`` messages committed, their recipients routed to ``routes``: told to the
        daemon in one line per loop turn, for every submission committed in it."""
        self._count += n
        for route in routes:
            if route is None:
                self._unrouted = True
            else:
                self._to.add(route)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

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
        store_stats = self.store.statistics()
        stats["store_commits"] = int(cast(int, store_stats["commits"]))
        if "lock_waits" in store_stats:  # SQLite's: PostgreSQL's locks are the server's
            stats["store_lock_waits"] = int(cast(int, store_stats["lock_waits"]))
            waited = cast(float, store_stats["lock_wait_seconds"])
            stats["store_lock_wait_ms"] = round(waited * 1000)
            stats["store_write_ms"] = round(cast(float, store_stats["write_seconds"]) * 1000)
            stats["store_wal_syncs"] = int(cast(int, store_stats["wal_syncs"]))
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
            listener = SubmissionListener(
                self.submit,
                ListenerConfig(**self.spec.options),
                submit_many=self.submit_many,
                check_recipient=lambda address: refusal(self.table, str(address)),
                no_room=room_check(
                    "postgres" if self.spec.dsn else "sqlite", Path(self.spec.store)
                ),
                local_names=(
                    None
                    if self.spec.local_names is None
                    else LocalNames.from_dict(self.spec.local_names)
                ),
            )
            try:
                await listener.start(sock=sock)
            except Exception as exc:
                self._write({"error": str(exc)})
                return 1
            self.listener = listener
            self._write({"ready": True, "pid": os.getpid()})
            self._send_stats()  # the counters, all 0: the daemon knows every key from now

            async def control(line: bytes) -> None:
                self._control(line)

            # The counters when they changed: each second, or after a line.
            async with stdin_lines(16 * 1024 * 1024) as reader:
                await serve_control_lines(
                    reader,
                    stop,
                    interval=STATS_INTERVAL,
                    on_line=control,
                    on_tick=self._send_stats,
                )
            await listener.stop()
            self._send_stats()
            return 0
        finally:
            await self.store.close()

    def _control(self, line: bytes) -> None:
        """A line from the daemon: the routing table (``routes``), the log level
        (``log_level``, after a reload)."""
        try:
            msg = json.loads(line)
            if "routes" in msg:
                self.table = table_from_json(msg["routes"])
            if "log_level" in msg:
                set_log_level(str(msg["log_level"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
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
    secrets = frozenset(spec.secrets)
    # The daemon's format (stderr is the daemon's, so "auto" decides the same way).
    configure_logging(
        spec.log_level,
        lambda: secrets,
        choose_format(spec.log_format, os.environ),
        worker=spec.name,
    )
    out = os.dup(1)
    # Stray prints must not corrupt the line protocol: stdout becomes stderr.
    os.dup2(2, 1)

    worker = _WorkerProcess(spec, out)
    return event_loop_runner(spec.event_loop)(worker.run())


if __name__ == "__main__":
    sys.exit(_worker_main())
