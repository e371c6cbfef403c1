"""The delivery worker program: ``python -m spoolbox.daemon.delivery_worker``.

One of the ``[daemon] workers = N`` processes (:mod:`spoolbox.daemon.workers` starts
and supervises them).  It reads its :class:`~.delivery_protocol.DeliverySpec` from
stdin, loads the daemon's profile and runs an ordinary
:class:`~spoolbox.Spooler` node on the same store under its own node name
(``HOST-w1``): its own transport sessions, claims and leases.  It only delivers: its
transports are the profile's outbound ones with their inbound side off (a mailbox is
fetched by the daemon alone), and it serves no API and no listener.

Its stdin brings wake-ups (work the daemon or a listener committed), ``reload`` (the
daemon's SIGHUP) and, by its end, the order to stop; SIGTERM stops it too.  Stopping
drains: transports finish the messages in hand for ``policy.shutdown_grace`` seconds
and what is left goes back to the queue.  SIGINT and SIGHUP are ignored (a Ctrl-C on
the terminal reaches the whole process group: the daemon stops its workers in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from .. import AlwaysIdle, Spooler, SpoolerConfig
from ..profile import Profile, ProfileError, load_profile
from .delivery_protocol import STATS_INTERVAL, DeliverySpec, store_counters
from .log_format import choose_format
from .pipes import serve_control_lines, stdin_lines
from .preflight import provider_limits
from .runtime import configure_logging, event_loop_runner, set_log_level
from .shares import process_transports
from .store_backend import store_from_settings, wake_on_other_nodes

__all__ = ["delivery_config"]

log = logging.getLogger("spoolbox.daemon")


def delivery_config(
    profile: Profile, node: str, index: int = 1, processes: int = 1
) -> SpoolerConfig:
    """The spooler configuration of delivery worker ``index`` of the daemon's
    ``processes`` delivering processes: the profile's, under ``node``, with only the
    outbound transports, their inbound side off, each with the worker's share of the
    limits it sets (:mod:`.shares`; without those this worker does not deliver for)."""
    config = profile.spooler
    transports = tuple(
        dataclasses.replace(transport, inbound=False)
        for transport in config.transports
        if transport.outbound
    )
    transports = process_transports(transports, index, processes, provider_limits)
    return dataclasses.replace(config, node=node, transports=transports)


class _DeliveryWorker:
    def __init__(self, spec: DeliverySpec, out: int) -> None:
        self.spec = spec
        self.profile: Profile | None = None
        self.spooler: Spooler | None = None
        self._out = out
        self._stats_sent: dict[str, Any] = {}
        os.set_blocking(out, False)

    def send(self, obj: Mapping[str, Any]) -> bool:
        """One line to the daemon, never blocking: a line shorter than PIPE_BUF goes
        whole or not at all (a daemon that does not read misses a stats line, which
        is sent again when the counters change)."""
        try:
            os.write(self._out, json.dumps(obj).encode() + b"\n")
        except (BlockingIOError, BrokenPipeError):
            return False
        return True

    def load(self) -> Profile:
        return load_profile(self.spec.profile, extra_secrets=self.spec.secrets_map())

    async def _start(self, profile: Profile) -> Spooler:
        store = store_from_settings(profile.store, shared=True)  # with the daemon
        idle = AlwaysIdle() if profile.idle == "always" else None
        spooler = Spooler.open(
            delivery_config(profile, self.spec.node, self.spec.index, self.spec.processes),
            store=store,
            close_store=True,
            idle=idle,
        )
        # A node of the store like any other: its rows are in `spoolbox status`, and it
        # runs its part of a flush another node (the daemon's) records.
        spooler.as_node()
        await spooler.start()
        await wake_on_other_nodes(spooler)
        return spooler

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        try:
            if self.profile is None:
                self.profile = self.load()
            self.spooler = await self._start(self.profile)
        except Exception as exc:
            log.error("delivery worker %s cannot start: %s", self.spec.tag, exc)
            self.send({"error": f"{type(exc).__name__}: {exc}"})
            return 1
        try:
            self.send({"ready": True, "pid": os.getpid(), "node": self.spec.node})
            log.info("delivering as node %s (pid %d)", self.spec.node, os.getpid())
            logons = asyncio.ensure_future(self._say_logged_on(self.spooler))
            async with stdin_lines(1024 * 1024) as reader:
                await serve_control_lines(
                    reader,
                    stop,
                    interval=STATS_INTERVAL,
                    on_line=self._control,
                    on_tick=lambda: self._send_stats(self.spooler),
                )
            logons.cancel()
            log.info("stopping: finishing the deliveries in hand")
            return 0
        finally:
            spooler, self.spooler = self.spooler, None
            if spooler is not None:
                await spooler.aclose()
            self._send_stats(spooler)

    async def _say_logged_on(self, spooler: Spooler) -> None:
        """Log once every transport has tried to log on, and which made it."""
        tried = await spooler.wait_ready()
        log.info(
            "transports logged on: %s",
            ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in tried.items()) or "none",
        )

    async def _control(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log.warning("unreadable control line %r", line[:200])
            return
        if isinstance(msg, dict) and "log_level" in msg:
            with contextlib.suppress(ValueError, TypeError):
                set_log_level(str(msg["log_level"]))
        spooler = self.spooler
        if "wake" in msg and spooler is not None:
            if msg.get("route"):
                spooler.routing_changed()
            for name in msg["wake"]:
                with contextlib.suppress(KeyError):
                    spooler.host(str(name)).wake.set()
        if msg.get("reload"):
            error = await self._reload()
            self.send({"reloaded": error is None, "error": error})

    async def _reload(self) -> str | None:
        """Read the profile again and restart the spooler on it (the old one drains
        first); the error, or None.  On an invalid profile the running one stays."""
        try:
            new = self.load()
        except ProfileError as exc:
            log.error("reload refused, keeping the running profile: %s", exc)
            return f"the new profile is invalid: {exc}"
        old, self.spooler = self.spooler, None
        if old is not None:
            await old.aclose()
        try:
            self.spooler = await self._start(new)
        except Exception as exc:
            log.error("reload failed (%s); starting again on the previous profile", exc)
            assert self.profile is not None
            self.spooler = await self._start(self.profile)
            return f"the new profile could not start ({exc}); running the old one"
        self.profile = new
        log.info("profile reloaded")
        return None

    def _send_stats(self, spooler: Spooler | None) -> None:
        """The spooler's counters, each transport's and the store's, when they
        changed."""
        if spooler is None:
            return
        stats: dict[str, Any] = {
            "counters": dict(spooler.counters),
            "transports": {host.name: dict(host.counters) for host in spooler.hosts},
        }
        store_stats = getattr(spooler.store, "statistics", None)
        if callable(store_stats):
            stats["store"] = store_counters(store_stats())
        if stats != self._stats_sent and self.send({"stats": stats}):
            self._stats_sent = stats


def _worker_main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The first line byte by byte: a buffered read could swallow later control lines.
    first = bytearray()
    while not first.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            return 1
        first += byte
    spec = DeliverySpec.from_json(first.decode())
    out = os.dup(1)
    # Stray prints must not corrupt the line protocol: stdout becomes stderr.
    os.dup2(2, 1)
    worker = _DeliveryWorker(spec, out)
    given = frozenset(value for _, _, value in spec.extra_secrets)

    def secrets() -> frozenset[str]:
        profile = worker.profile
        return given | (profile.secret_values if profile is not None else frozenset())

    # The daemon's format (stderr is the daemon's, so "auto" decides the same way).
    configure_logging(
        spec.log_level, secrets, choose_format(spec.log_format, os.environ), delivery=spec.tag
    )
    try:
        profile = worker.profile = worker.load()
    except ProfileError as exc:
        log.error("delivery worker %s cannot start: %s", spec.tag, exc)
        worker.send({"error": str(exc)})
        return 1
    try:
        runner = event_loop_runner(profile.daemon.event_loop)
    except ImportError as exc:
        worker.send({"error": str(exc)})
        return 1
    return runner(worker.run())


if __name__ == "__main__":
    sys.exit(_worker_main())
