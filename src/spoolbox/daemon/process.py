"""``spoolbox run``: the spooler as its own process, and the local API it serves.

:class:`Daemon` runs in the foreground (systemd ``Type=notify``, or a terminal):

* it takes an exclusive lock on the profile's pid file (one daemon per data
  directory), lowers its CPU priority (``os.nice``, ``[daemon] nice``), opens the
  SQLite store and a :class:`~spoolbox.Spooler` on it;
* it serves the local API on a Unix socket (mode 0600) in the data directory: JSON
  lines, one request object per line, answers one per line (docs/operations.md,
  "Local API");
* it starts the SMTP submission listeners of the profile, if any (their state is a
  row of the status table);
* SIGTERM and SIGINT shut it down cleanly: the listeners and the API stop taking
  work, the spooler lets in-flight work finish for ``policy.shutdown_grace`` seconds
  and returns what is left to the queue; nothing accepted is lost;
* under systemd it says ``READY=1`` once the store is open and the API and the
  listeners listen, ``WATCHDOG=1`` at half of ``WatchdogSec``, ``RELOADING=1`` and
  ``STOPPING=1`` (:mod:`.notify`);
* SIGHUP re-reads the profile: an invalid profile is logged and the running one
  kept; a valid one replaces the spooler (the old one shuts down as above, the new
  one starts on the same store); the listeners whose settings did not change keep
  their sockets and connections (a submission meanwhile waits for the new spooler),
  the others are restarted;
* with ``[daemon] workers = N`` it also runs N delivery worker processes, spooler
  nodes of their own on the same store (:mod:`.workers`): started before
  ``READY=1``, drained at the stop, told of a reload, started again when they die.

Logs go through :mod:`logging` to stderr, with every known secret value replaced
by ``***``.  Submissions made while no daemon runs sit in the store; the router
finds them within ``policy.router_interval`` of the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from .. import (
    AlwaysIdle,
    IdlePolicy,
    LoopLagIdle,
    MessageInfo,
    NewMessage,
    Spooler,
    __version__,
    load_provider_class,
)
from .._core.idle import StandbyIdle
from .._core.node import node_of
from .._core.rate import RateWindows
from .._private import openness, private_dir
from ..api.wire import NOT_RUNNING, ApiError
from ..model import LogonFlags
from ..profile import Profile, ProfileError, load_profile
from ..store import ClusterStore, NodeRecord
from .api_server import LocalApiServer
from .crowding import Served, served_by, watch_crowding
from .files_watch import EXIT_FILES_GONE, FileIdentity, identities, identity, watch_files
from .listeners import Listeners
from .log_format import choose_format
from .maildrop import MaildropPickup
from .notify import Notifier, watchdog_interval
from .preflight import provider_limits, refuse_invalid_options
from .runtime import configure_logging, event_loop_runner, set_log_level
from .shares import idle_workers, process_transports, shares_told
from .store_backend import (
    describe_store,
    shares_store,
    store_from_settings,
    wake_on_other_nodes,
)
from .workers import DeliveryWorkers, WakingSpooler, WorkerView, usable_cpus, worker_row

__all__ = [
    "Daemon",
    "DaemonError",
    "ReloadableService",
    "Service",
    "ServiceFactory",
    "run_daemon",
]

log = logging.getLogger("spoolbox.daemon")


class DaemonError(Exception):
    """The daemon cannot start; the text says why."""


class Service(Protocol):
    """Something more the daemon serves on its loop (the web page, :mod:`spoolbox.web`):
    started once the API and the listeners listen, stopped first."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class ReloadableService(Service, Protocol):
    """A service that follows a reloaded profile (the web page: ``[web]``)."""

    async def reload(self, profile: Profile) -> None: ...


#: Makes a service for the daemon (the command line chooses them: the daemon does
#: not import what it serves, so that it needs none of their extras).
ServiceFactory = Callable[["Daemon"], Service]


class Daemon:
    """The spooler process: ``await Daemon(profile).run()``."""

    def __init__(
        self,
        profile: Profile,
        *,
        interactive: bool = False,
        renice: bool = True,
        extra_secrets: Mapping[tuple[str, str], str] | None = None,
        services: Sequence[ServiceFactory] = (),
        workers: int | None = None,
        log_level: str | None = None,
    ) -> None:
        self.profile = profile
        #: ``run --log-level``: it wins over ``[log] level``, at a reload too
        self._log_level_from_cli = log_level
        self.interactive = interactive
        self.renice = renice
        self.extra_secrets = dict(extra_secrets or {})
        self.spooler: Spooler | None = None
        self._rates = RateWindows()
        #: ``[daemon] standby_when_crowded`` on a PostgreSQL store (read at start):
        #: the spooler's idle policy can stand by, and why it does (None: it delivers)
        self._standby_mode = (
            profile.daemon.standby_when_crowded and profile.store.backend == "postgres"
        )
        self._standby: str | None = None
        self._standby_idle: StandbyIdle | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._submitting = 0  # listener submissions under way on the running spooler
        self._submits_done = asyncio.Event()
        self._api = LocalApiServer(self, profile.daemon.socket, group=profile.daemon.socket_group)
        self._listeners = Listeners(
            lambda: self.spooler,
            self.submit,
            submit_many=self.submit_many,
            log_format=profile.log.format,
            event_loop=profile.daemon.event_loop,
        )
        self._lock_file: IO[str] | None = None
        #: the pid file's identity once locked: the stop removes it only if it is
        #: still this file (not one a daemon started after ours was removed made)
        self._lock_identity: FileIdentity | None = None
        #: the pid file this daemon locks: the start's (a reload's new pid_file takes
        #: effect at the next start)
        self._lock_path: Path = profile.daemon.pid_file
        #: the files looked after (files_watch), recorded again at each reload
        self._watched: dict[str, tuple[Path, FileIdentity]] = {}
        #: what run() returns: 0, or EXIT_FILES_GONE when a file it holds went
        self._exit_status = 0
        self._notify = Notifier()
        daemon_settings = profile.daemon
        #: ``[daemon] maildrop``: what members of socket_group leave while it is down.
        self.maildrop = (
            MaildropPickup(
                lambda: self.spooler,
                daemon_settings.maildrop,
                daemon_settings.socket_group,
                profile.path,
            )
            if daemon_settings.maildrop is not None and daemon_settings.socket_group
            else None
        )
        self._service_factories = tuple(services)
        self._services: list[Service] = []
        self.started_at = time.time()
        #: When everything had started (the API, the listeners, the workers, the
        #: maildrop, the web page): READY=1 for systemd; None before.
        self.ready_at: float | None = None
        self.reloads = 0
        #: reloads tried, and why the last one failed (None: it worked); ``spoolbox
        #: reload`` waits for the count to move and reports the error (the ping op)
        self.reload_attempts = 0
        self.reload_error: str | None = None
        #: delivery worker processes (``--workers`` wins over ``[daemon] workers``);
        #: their number is fixed at the start
        self._workers_from_cli = workers is not None
        self.workers = DeliveryWorkers(
            profile.daemon.workers if workers is None else workers,
            node=profile.spooler.node,
            profile=str(profile.path),
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            log_format=profile.log.format,
            extra_secrets=self.extra_secrets,
            died=self._worker_died,
            show=self._show_worker,
            backend=profile.store.backend,
        )

    # -- the process ------------------------------------------------------------------
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); returns an exit status."""
        loop = asyncio.get_running_loop()
        watchdog: asyncio.Future[None] | None = None
        crowding: asyncio.Future[None] | None = None
        files: asyncio.Future[None] | None = None
        self._lock()
        try:
            if self.renice and self.profile.daemon.nice:
                try:
                    os.nice(self.profile.daemon.nice)
                except OSError as exc:  # pragma: no cover - platform dependent
                    log.warning("cannot lower the CPU priority: %s", exc)
            # Handled from here on (SIGHUP's default action would end the process):
            # a signal that comes while the spooler starts is acted on after.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            if self.maildrop is not None:  # a path that cannot be one: before any listener
                self.maildrop.prepare()
            self.spooler = await self._start_spooler(self.profile)
            self._ready.set()
            await self._api.start()
            await self._listeners.start(self.profile)
            await self.workers.start()
            if self.maildrop is not None:
                await self.maildrop.start()
            for make in self._service_factories:
                service = make(self)
                await service.start()
                self._services.append(service)
            log.info(
                "spoolbox %s running (pid %d, profile %s, API on %s)",
                __version__,
                os.getpid(),
                self.profile.path,
                self.profile.daemon.socket,
            )
            # systemd (Type=notify): the store is open, the API and listeners listen,
            # the delivery workers (if any) have started; `status` says "ready" too.
            self.ready_at = time.time()
            self._notify.send("READY=1", f"MAINPID={os.getpid()}", "STATUS=running")
            interval = watchdog_interval()
            if interval is not None:
                watchdog = asyncio.ensure_future(self._watchdog(interval))
            self._watched = self._held_files()
            files = asyncio.ensure_future(watch_files(lambda: self._watched, self._files_gone))
            if self.profile.store.backend == "postgres":
                # Nodes anywhere: too many of them on this machine is a warning.
                crowding = asyncio.ensure_future(
                    watch_crowding(
                        self._nodes,
                        host=socket.gethostname(),
                        cpus=usable_cpus(),
                        clock=time.time,
                        me=self.profile.spooler.node,
                        mine=self._served,
                        stand_by=self._stand_by if self._standby_mode else None,
                    )
                )
            while not self._stop.is_set():
                stop = asyncio.ensure_future(self._stop.wait())
                reload = asyncio.ensure_future(self._reload.wait())
                try:
                    await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
                    reload.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    self._notify.send(
                        "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}"
                    )
                    await self.reload()
                    self._notify.send("READY=1", "STATUS=running")
            log.info("shutting down")
            return self._exit_status
        finally:
            self._notify.send("STOPPING=1", "STATUS=stopping")
            for task in (watchdog, crowding, files):
                if task is not None:
                    task.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self._shutdown()
            self._unlock()
            log.info("stopped")

    async def _nodes(self) -> list[NodeRecord]:
        """The store's nodes (none from a store that keeps no node records)."""
        store = self.spooler.store if self.spooler is not None else None
        return await store.nodes() if isinstance(store, ClusterStore) else []

    def _served(self) -> set[Served]:
        """The transports this node serves now, and in which direction."""
        spooler = self.spooler
        if spooler is None:
            return set()
        return served_by(row.to_dict() for row in spooler.status)

    def _stand_by(self, reason: str | None) -> None:
        """Stand by (``reason``) or deliver again (None): the spooler's idle policy
        holds new claims and polls back, its row says so (kept across a reload)."""
        self._standby = reason
        if self._standby_idle is not None:
            self._standby_idle.stand_by(reason is not None)
        presence = node_of(self.spooler) if self.spooler is not None else None
        if presence is not None:
            presence.stand_by(reason)

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every ``interval`` s (half of systemd's WatchdogSec): it comes
        only while this event loop runs, which is what the watchdog is to prove."""
        while True:
            self._notify.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def request_stop(self) -> None:
        log.info("stop requested")
        self._stop.set()

    def _held_files(self) -> dict[str, tuple[Path, FileIdentity]]:
        """The files this daemon holds open for its life, as they are now: its pid
        file (the lock) and, on SQLite, the store."""
        paths = {"pid file": self._lock_path}
        if self.profile.store.backend == "sqlite":
            paths["store"] = self.profile.store.path
        return identities(paths)

    def _files_gone(self, said: Mapping[str, str]) -> None:
        """A held file was removed or replaced (:mod:`.files_watch`): stop, with
        EXIT_FILES_GONE, before more mail goes where no path leads."""
        why = []
        if "store" in said:
            why.append(
                "mail accepted from now on would be kept where no path leads and lost "
                "at the next start"
            )
        if "pid file" in said:
            why.append("another daemon could start on this data directory")
        what = "; ".join(said.values())
        log.error(
            "%s while the daemon ran: %s; stopping (exit status %d)",
            what,
            ", and ".join(why),
            EXIT_FILES_GONE,
        )
        self._notify.send(f"STATUS={what}: stopping")
        self._exit_status = EXIT_FILES_GONE
        self._stop.set()

    def request_reload(self) -> None:
        log.info("reload requested")
        self._reload.set()

    def _lock(self) -> None:
        data_dir = self.profile.data_dir
        private_dir(data_dir)
        why = openness(data_dir)
        if why is not None:
            log.warning(
                "the data directory %s is %s: the queue should be private (chmod 700 %s)",
                data_dir,
                why,
                data_dir,
            )
        pid_file = self._lock_path
        private_dir(pid_file.parent)
        lock_file = open(pid_file, "a+")  # noqa: SIM115 - held open for the daemon's life
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.seek(0)
            other = lock_file.read().strip()
            lock_file.close()
            raise DaemonError(
                f"another spoolbox daemon runs on this data directory (pid {other or '?'}, "
                f"lock {pid_file})"
            ) from None
        try:  # unbuffered: nothing left to write (and fail again) at close
            lock_file.seek(0)
            lock_file.truncate()
            os.write(lock_file.fileno(), f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: say which file (the write names none)
            lock_file.close()
            raise OSError(exc.errno, exc.strerror, str(pid_file)) from exc
        self._lock_file = lock_file
        self._lock_identity = identity(pid_file)

    def _unlock(self) -> None:
        lock_file = self._lock_file
        if lock_file is None:
            return
        pid_file = self._lock_path
        if identity(pid_file) == self._lock_identity:  # not another daemon's since
            with contextlib.suppress(OSError):
                os.unlink(pid_file)
        with contextlib.suppress(OSError):
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
        lock_file.close()
        self._lock_file = None

    async def _shutdown(self) -> None:
        while self._services:
            await self._services.pop().stop()
        if self.maildrop is not None:
            await self.maildrop.stop()
        await self._listeners.stop()
        await self._api.stop()
        spooler, self.spooler = self.spooler, None
        self._ready.clear()
        # The workers drain while this spooler does (the same shutdown_grace).
        stopping = [self.workers.stop(self.profile.spooler.policy.shutdown_grace)]
        if spooler is not None:
            stopping.append(spooler.aclose())
        await asyncio.gather(*stopping)

    # -- the spooler ----------------------------------------------------------------------
    def _config(self, profile: Profile) -> Any:
        config = profile.spooler
        for transport in config.transports:
            if isinstance(transport.provider, str):
                try:
                    load_provider_class(transport.provider)
                except LookupError as exc:
                    raise ProfileError(
                        profile.path, str(exc), f"[transports.{transport.name}] provider"
                    ) from None
        refuse_invalid_options(profile)
        # With workers, the daemon's spooler delivers its share of each limit.
        transports = process_transports(
            config.transports, 0, len(self.workers) + 1, provider_limits
        )
        config = dataclasses.replace(config, transports=transports)
        if self.interactive:
            # The logon dialog may be shown: clear NO_DIALOG where the profile allows it.
            transports = tuple(
                dataclasses.replace(transport, logon_flags=LogonFlags.NONE)
                if profile.logon_dialog.get(transport.name, True)
                else transport
                for transport in config.transports
            )
            config = dataclasses.replace(config, transports=transports)
        return config

    async def _start_spooler(self, profile: Profile) -> Spooler:
        config = self._config(profile)
        store = store_from_settings(profile.store, shared=shares_store(profile, len(self.workers)))
        idle: IdlePolicy | None = AlwaysIdle() if profile.idle == "always" else None
        lag: LoopLagIdle | None = None
        self._standby_idle = None
        if self._standby_mode:
            if idle is None:
                idle = lag = LoopLagIdle()
            idle = self._standby_idle = StandbyIdle(idle, standing_by=self._standby is not None)
        cls = WakingSpooler if len(self.workers) else Spooler
        # The max_rate windows outlive a reload: sends before it still count.
        spooler = cls.open(config, store=store, close_store=True, idle=idle, rates=self._rates)
        if lag is not None:  # as the spooler wires the LoopLagIdle it makes itself
            lag.set_own_busy(lambda: spooler.meter.busy_time)
        # Its record and rows in the store, its flush part, the mailbox leases.
        spooler.as_node()
        await spooler.start()
        presence = node_of(spooler)
        if self._standby is not None and presence is not None:  # still, after a reload
            presence.stand_by(self._standby)
        if not await wake_on_other_nodes(spooler) and isinstance(spooler, WakingSpooler):
            # No wake-ups through the store (SQLite): the workers hear of new work
            # from this daemon, over their stdin.
            spooler.wake_others = self.workers.wake
        for view in self.workers.views():
            spooler.status.put(worker_row(view, profile.spooler.node))
        log.debug("store %s open: %s", describe_store(profile.store), _store_statistics(store))
        for missing in profile.missing:
            log.warning(
                "transport %r: %s is not configured (%s is not set); it stays off-line",
                missing.transport,
                missing.option,
                missing.source,
            )
        for line in shares_told(profile.spooler.transports, len(self.workers), provider_limits):
            log.info("%s", line)
        unused = idle_workers(profile.spooler.transports, len(self.workers), provider_limits)
        if unused is not None:
            log.warning("%s", unused)
        return spooler

    async def current(self) -> Spooler:
        """The running spooler (waits while a reload swaps it)."""
        while True:
            spooler = self.spooler
            if spooler is not None and self._ready.is_set():
                return spooler
            if self._stop.is_set():
                raise ApiError(NOT_RUNNING, "the daemon is shutting down")
            await self._ready.wait()

    async def reload(self) -> bool:
        """Re-read the profile and restart the spooler on it; False if it is invalid
        or the new spooler cannot start (the error is kept in ``reload_error``)."""
        try:
            done = await self._reload_profile()
        except Exception as exc:
            self.reload_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.reload_attempts += 1
            if self._watched:  # the store the spooler has now (its path may have changed)
                self._watched = self._held_files()
        return done

    def _reload_logging(self, old: Profile, new: Profile) -> None:
        """A reload's ``[log] level`` takes effect at once, here and in the listener
        and delivery worker processes (unless ``run --log-level`` set it); a changed
        ``[log] format`` at the next start."""
        if new.log.format != old.log.format:
            log.warning("[log] format changed: it takes effect at the next start")
        if new.log.level == old.log.level:
            return
        if self._log_level_from_cli is not None:
            log.warning(
                "[log] level changed to %s, but `spoolbox run --log-level %s` sets it: "
                "the level stays %s",
                new.log.level.lower(),
                self._log_level_from_cli.lower(),
                self._log_level_from_cli.lower(),
            )
            return
        set_log_level(new.log.level)
        self._listeners.set_log_level(new.log.level)
        self.workers.set_log_level(new.log.level)
        log.warning("log level now %s (was %s)", new.log.level.lower(), old.log.level.lower())

    async def _reload_profile(self) -> bool:
        try:
            new = load_profile(self.profile.path, extra_secrets=self.extra_secrets)
            self._config(new)
        except ProfileError as exc:
            log.error("reload refused, keeping the running profile: %s", exc)
            self.reload_error = f"the new profile is invalid: {exc}"
            return False
        changed = [
            "socket",
            "socket_group",
            "pid_file",
            "nice",
            "event_loop",
            "maildrop",
            "standby_when_crowded",
        ]
        changed += [] if self._workers_from_cli else ["workers"]
        for key in changed:
            if getattr(new.daemon, key) != getattr(self.profile.daemon, key):
                log.warning("[daemon] %s changed: it takes effect at the next start", key)
        if new.web != self.profile.web and not any(
            isinstance(service, ReloadableService) for service in self._services
        ):
            log.warning("[web] changed: it takes effect at the next start")
        old_profile = self.profile
        self._ready.clear()
        self._api.close_watchers()
        # The listeners go on accepting (their sockets stay open: no client is
        # refused); a submission waits in current() for the new spooler.  Those that
        # already have the old one finish on it before it closes.
        while self._submitting:
            self._submits_done.clear()
            await self._submits_done.wait()
        old, self.spooler = self.spooler, None
        if old is not None:
            await old.aclose()
        try:
            self.spooler = await self._start_spooler(new)
            self.profile = new
        except Exception as exc:
            log.error("reload failed (%s); starting again on the previous profile", exc)
            self.reload_error = f"the new profile could not start ({exc}); running the old one"
            self.spooler = await self._start_spooler(old_profile)
            self._ready.set()
            await self._listeners.reload(self.profile)
            return False
        self._ready.set()
        self._reload_logging(old_profile, new)
        await self._listeners.reload(self.profile)
        self.workers.reload()
        for service in self._services:
            if isinstance(service, ReloadableService):
                await service.reload(self.profile)
        self.reloads += 1
        self.reload_error = None
        log.info(
            "profile reloaded: transports %s",
            [transport.name for transport in new.spooler.transports],
        )
        return True

    async def submit(self, message: NewMessage) -> MessageInfo:
        """What the listeners call: commit durably through the running spooler (a
        reload waits for these before it closes the spooler they were given)."""
        spooler = await self.current()
        self._submitting += 1
        try:
            return await spooler.submit(message)
        finally:
            self._submitting -= 1
            if not self._submitting:
                self._submits_done.set()

    async def submit_many(self, messages: list[NewMessage]) -> list[MessageInfo]:
        """:meth:`submit` of several messages in one transaction (a listener's
        transaction whose recipients asked for different NOTIFYs)."""
        spooler = await self.current()
        self._submitting += 1
        try:
            return await spooler.submit_many(messages)
        finally:
            self._submitting -= 1
            if not self._submitting:
                self._submits_done.set()

    def listener_statistics(self) -> dict[str, Any]:
        """Each running listener's statistics, by name (the ``statistics`` op)."""
        return self._listeners.statistics()

    def nodes(self) -> list[str]:
        """The store nodes this daemon runs: its own spooler's, then its delivery
        workers' (``HOST``, ``HOST-w1``, ...): whose rows a status of this daemon
        covers once nodes publish their rows to the store."""
        return [self.profile.spooler.node, *self.workers.nodes()]

    # -- the delivery workers -----------------------------------------------------------
    async def _worker_died(self, node: str) -> None:
        """A worker process ended unasked: what it held goes back to the queue now
        (it can settle nothing any more), and every node hears of it."""
        spooler = self.spooler
        if spooler is None:
            return  # the next spooler's start, or the worker's own, releases them
        try:
            released = await spooler.store.release_owner(node)
        except Exception as exc:
            log.error("cannot return the recipients of node %s to the queue: %s", node, exc)
            return
        if released:
            log.info("returned %d recipients node %s held to the queue", released, node)
        names = [host.name for host in spooler.hosts]
        for host in spooler.hosts:
            host.wake.set()
        self.workers.wake(names, False)

    def _show_worker(self, view: WorkerView) -> None:
        spooler = self.spooler
        if spooler is not None:
            spooler.status.put(worker_row(view, self.profile.spooler.node))


def run_daemon(
    profile: Profile,
    *,
    interactive: bool,
    renice: bool = True,
    extra_secrets: Mapping[tuple[str, str], str] | None = None,
    log_level: str | None = None,
    services: Sequence[ServiceFactory] = (),
    workers: int | None = None,
) -> int:
    """Run the daemon in this process until it is told to stop; the exit status."""
    holder: dict[str, Daemon] = {}

    def secrets() -> frozenset[str]:
        daemon = holder.get("daemon")
        return (daemon.profile if daemon is not None else profile).secret_values

    configure_logging(
        log_level or profile.log.level, secrets, choose_format(profile.log.format, os.environ)
    )

    async def main() -> int:
        daemon = Daemon(
            profile,
            interactive=interactive,
            renice=renice,
            extra_secrets=extra_secrets,
            services=services,
            workers=workers,
            log_level=log_level,
        )
        holder["daemon"] = daemon
        return await daemon.run()

    try:
        runner = event_loop_runner(profile.daemon.event_loop)
    except ImportError as exc:
        raise ProfileError(profile.path, str(exc), "[daemon] event_loop") from None
    return runner(main())


def _store_statistics(store: object) -> object:
    statistics = getattr(store, "statistics", None)
    return statistics().get("pragmas", statistics()) if callable(statistics) else {}
