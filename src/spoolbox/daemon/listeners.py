"""The daemon's SMTP submission listeners (the profile's ``[listeners.NAME]`` tables).

A listener runs on the daemon's event loop (a
:class:`~spoolbox.ingress.listener.SubmissionListener` submitting through the running
spooler), or, with ``processes = N``, in worker processes of its own
(:class:`~spoolbox.daemon.listener_processes.ListenerProcesses`).  Each listener's
state is a row of the status table, ``listener:NAME``.  A listener that cannot start
(a secret not configured, an address in use) is logged and shown on its row; the
daemon runs on without it.

A reload keeps every listener whose settings did not change running, its socket
open and its connections alive (as Postfix's master keeps its listening sockets), so
that no client is refused while the spooler is replaced; only the listeners whose
table changed are stopped and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from typing import Any

from .. import MessageInfo, NewMessage, Spooler, StatusRow
from ..ingress.certdates import certificate_dates
from ..ingress.listener import ListenerConfig, SubmissionListener, host_port
from ..model import Address, ResourceMethods, ResourceType, StatusCode
from ..profile import ListenerSettings, Profile
from ..routing import RoutingTable, refusal
from ..store.space import room_check
from .listener_processes import ListenerProcesses

__all__ = ["Listeners", "certificate_end", "certificate_ends", "tls_listeners"]

log = logging.getLogger("spoolbox.daemon")


class _ListenerUnconfigured(Exception):
    """A listener user's password could not be resolved: the listener does not start."""


class _Running:
    """One started listener: its settings, what it was built from (``signature``), the
    object that serves it, and its row's last state (code, text, detail)."""

    def __init__(
        self,
        settings: ListenerSettings,
        server: Any,
        signature: tuple[Any, ...],
        row: tuple[StatusCode, str, str | None],
    ) -> None:
        self.settings = settings
        self.server = server
        self.signature = signature
        self.row = row


def _signature(profile: Profile, settings: ListenerSettings) -> tuple[Any, ...]:
    """Everything a listener is built from: after a reload, one whose signature is the
    same keeps running."""
    built = (settings, _with_hostname(settings.options, profile), profile.local_names)
    if not settings.processes:
        return built
    store = profile.store
    return (
        *built,
        store.backend,
        str(store.path),
        store.synchronous,
        store.dsn if store.backend == "postgres" else None,
        profile.spooler.policy.lifetime,
        profile.secret_values,
    )


#: A listener's status row is ``listener:NAME``.
ROW_PREFIX = "listener:"
#: Seconds between two updates of a listener row's counters.
COUNTERS_INTERVAL = 1.0
#: The counters a listener row always shows; each reason it refused for
#: (``rejected_<reason>``) and a listener process's ``restarts`` once not zero.  (Its
#: store's own counters stay in ``spoolbox statistics``.)
_ROW_COUNTERS = ("accepted", "rejected", "connections", "active")


def row_counters(statistics: Mapping[str, Any]) -> dict[str, int]:
    """A listener's statistics as its status row's counters."""
    return {
        key: int(value)
        for key, value in statistics.items()
        if isinstance(value, int)
        and (key in _ROW_COUNTERS or (value and (key.startswith("rejected_") or key == "restarts")))
    }


def _with_hostname(options: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    """A listener's options, its ``hostname`` (banner, Received) the profile's unless
    its own table sets one."""
    return {**options, "hostname": options.get("hostname") or profile.spooler.hostname}


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Listeners:
    """The listeners of the daemon's profile: started after the spooler, stopped before
    it (and around a reload).  ``spooler()`` is the running spooler or None while it is
    replaced; ``submit`` commits a message through it.  Listener processes log in
    ``log_format`` and run on ``event_loop``, the daemon's own (a reload changes
    neither: they take effect at the next start)."""

    def __init__(
        self,
        spooler: Callable[[], Spooler | None],
        submit: Callable[[NewMessage], Awaitable[MessageInfo]],
        *,
        submit_many: Callable[[list[NewMessage]], Awaitable[list[MessageInfo]]] | None = None,
        log_format: str = "auto",
        event_loop: str = "auto",
    ) -> None:
        self._spooler = spooler
        self._submit = submit
        self._submit_many = submit_many
        self._log_format = log_format
        self._event_loop = event_loop
        self._running: list[_Running] = []
        self._counting: asyncio.Task[None] | None = None

    async def start(self, profile: Profile, *, skip: Collection[str] = ()) -> None:
        """Start the enabled listeners of ``profile`` (but those named in ``skip``)."""
        if self._counting is None:
            self._counting = asyncio.ensure_future(self._publish_counters())
        starting = [s for s in profile.listeners if s.enabled and s.name not in skip]
        # Each listener's row at once: ``status`` answers while listener processes start.
        for settings in starting:
            self._row(settings.name, StatusCode.OFFLINE, "starting", None)
        for settings in starting:
            try:
                if settings.missing:
                    raise _ListenerUnconfigured(
                        "not configured: "
                        + "; ".join(
                            f"{missing.option}: set {missing.source}"
                            for missing in settings.missing
                        )
                    )
                options = _with_hostname(settings.options, profile)
                config = ListenerConfig(**options)
                server: Any
                if settings.processes:
                    server = self._in_processes(profile, settings, options)
                else:
                    server = SubmissionListener(
                        self._submit,
                        config,
                        check_recipient=self._check_recipient,
                        no_room=room_check(profile.store.backend, profile.store.path),
                        local_names=profile.local_names,
                        submit_many=self._submit_many,
                    )
                await _maybe_await(server.start())
                port = getattr(server, "port", None)
                host = settings.options.get("host", getattr(config, "host", "?"))
                text = f"listening on {host_port(host, port)}"
                code = StatusCode.AVAILABLE | StatusCode.INBOUND_ENABLED
                detail = _processes(settings.processes) if settings.processes else None
                self._running.append(
                    _Running(settings, server, _signature(profile, settings), (code, text, detail))
                )
                log.info("listener %r %s", settings.name, text)
            except Exception as exc:
                text = "not listening"
                code = StatusCode.FAILURE | StatusCode.OFFLINE
                detail = f"{type(exc).__name__}: {exc}"
                log.error("listener %r cannot start: %s", settings.name, detail)
            self._row(settings.name, code, text, detail)

    async def stop(self) -> None:
        if self._counting is not None:
            self._counting.cancel()
            await asyncio.gather(self._counting, return_exceptions=True)
            self._counting = None
        running, self._running = self._running, []
        for listener in running:
            await self._stop_one(listener)

    async def reload(self, profile: Profile) -> None:
        """After the spooler was replaced: listeners whose settings did not change go on
        (their rows put on the new spooler's table); the others are stopped, and the
        new or changed ones (and those that could not start before) are started."""
        wanted = {s.name: s for s in profile.listeners if s.enabled}
        kept: list[_Running] = []
        for listener in self._running:
            settings = wanted.get(listener.settings.name)
            if settings is not None and _signature(profile, settings) == listener.signature:
                kept.append(listener)
            else:
                log.info("listener %r: its settings changed, restarting it", listener.settings.name)
                await self._stop_one(listener)
        self._running = kept
        for listener in kept:
            self._row(listener.settings.name, *listener.row)
        await self.start(profile, skip={listener.settings.name for listener in kept})

    async def _publish_counters(self) -> None:
        """Each second, every running listener's counts on its status row (``status``,
        the web page and ``/metrics`` read them there): what it accepted and refused,
        its connections, and each reason it refused for, once it has."""
        while True:
            await asyncio.sleep(COUNTERS_INTERVAL)
            spooler = self._spooler()
            if spooler is None:
                continue  # a reload replaces the spooler: its rows come back
            for listener in self._running:
                statistics = getattr(listener.server, "statistics", None)
                if not callable(statistics):
                    continue
                counters = row_counters(statistics())
                with contextlib.suppress(KeyError):  # the row is put back soon
                    spooler.status.update(ROW_PREFIX + listener.settings.name, counters=counters)

    def set_log_level(self, level: str) -> None:
        """A reload changed the log level: listeners in processes of their own log at
        ``level`` from now on (this process's logger is the daemon's)."""
        for listener in self._running:
            setter = getattr(listener.server, "set_log_level", None)
            if callable(setter):
                setter(level)

    async def _stop_one(self, listener: _Running) -> None:
        try:
            await _maybe_await(listener.server.stop())
        except Exception as exc:
            log.warning("listener %r: stop failed: %s", listener.settings.name, exc)

    def statistics(self) -> dict[str, Any]:
        """Each running listener's statistics, by name."""
        return {
            listener.settings.name: listener.server.statistics()
            for listener in self._running
            if callable(getattr(listener.server, "statistics", None))
        }

    def _check_recipient(self, address: Address) -> str | None:
        """Why ``address`` is refused at RCPT TO (no transport of the running spooler
        serves its type), or None; None too while the spooler is being replaced."""
        spooler = self._spooler()
        return None if spooler is None else refusal(spooler.routing_table(), str(address))

    def _row(self, name: str, code: StatusCode, text: str, detail: str | None) -> None:
        spooler = self._spooler()
        if spooler is not None:
            spooler.status.put(
                StatusRow(
                    name=ROW_PREFIX + name,
                    resource_type=ResourceType.SUBSYSTEM,
                    provider_display="SMTP submission listener",
                    status_code=code,
                    status_string=text,
                    resource_methods=ResourceMethods.NONE,
                    detail=detail,
                )
            )

    def _in_processes(
        self, profile: Profile, settings: ListenerSettings, options: Mapping[str, Any]
    ) -> ListenerProcesses:
        """The listener in processes of its own (``processes = N``): they commit to the
        store themselves and tell this daemon which transports to wake."""

        last = RoutingTable(())

        def routes() -> RoutingTable:
            # While a reload replaces the spooler, the last table it had (not none:
            # the workers would take everything as unrouted meanwhile).
            nonlocal last
            spooler = self._spooler()
            if spooler is not None:
                last = spooler.routing_table()
            return last

        def submitted(count: int, transports: frozenset[str], unrouted: bool) -> None:
            spooler = self._spooler()
            if spooler is not None:  # else a spooler starts soon and looks at the queue
                spooler.submitted_elsewhere(count, transports, unrouted=unrouted)

        def trouble(text: str) -> None:
            for listener in self._running:
                if listener.settings is settings:
                    listener.row = (
                        StatusCode.AVAILABLE | StatusCode.INBOUND_ENABLED,
                        "listening on "
                        + host_port(listener.server.config.host, listener.server.port),
                        f"{_processes(settings.processes)}; {text}",
                    )
                    self._row(settings.name, *listener.row)

        return ListenerProcesses(
            settings.name,
            options,
            processes=settings.processes,
            store=str(profile.store.path),
            synchronous=profile.store.synchronous,
            lifetime=profile.spooler.policy.lifetime,
            event_loop=self._event_loop,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            routes=routes,
            submitted=submitted,
            on_trouble=trouble,
            secrets=profile.secret_values,
            log_format=self._log_format,
            dsn=profile.store.dsn if profile.store.backend == "postgres" else None,
            local_names=profile.local_names,
        )


def _processes(n: int) -> str:
    """The status row's detail of a listener in processes of its own."""
    return "1 process" if n == 1 else f"{n} processes"


def tls_listeners(profile: Profile) -> Iterator[tuple[str, str, str | None]]:
    """(name, tls_cert, tls_key) of each enabled listener with a certificate."""
    for listener in profile.listeners:
        cert = listener.options.get("tls_cert")
        if listener.enabled and isinstance(cert, str) and cert:
            yield listener.name, cert, listener.options.get("tls_key")


def certificate_end(cert: str) -> float:
    """When the certificate in the file ``cert`` expires (Unix time); OSError or
    ValueError when it cannot be read."""
    with open(cert, "rb") as f:
        return certificate_dates(f.read())[1]


def certificate_ends(profile: Profile) -> dict[str, float]:
    """When each enabled TLS listener's certificate file expires (Unix time); a file
    that cannot be read or parsed is left out (``spoolbox check`` says why)."""
    ends: dict[str, float] = {}
    for name, cert, _ in tls_listeners(profile):
        with contextlib.suppress(OSError, ValueError):
            ends[name] = certificate_end(cert)
    return ends
