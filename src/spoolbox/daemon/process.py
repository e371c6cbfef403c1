"""``spoolbox run``: the spooler as its own process, and the local API it serves.

:class:`Daemon` runs in the foreground (systemd ``Type=exec``, or a terminal):

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
* SIGHUP re-reads the profile: an invalid profile is logged and the running one
  kept; a valid one replaces the spooler (the old one shuts down as above, the new
  one starts on the same store) and restarts the listeners.

Logs go through :mod:`logging` to stderr, with every known secret value replaced
by ``***``.  Submissions made while no daemon runs sit in the store; the router
finds them within ``policy.router_interval`` of the start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import inspect
import io
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import IO, Any

from .. import (
    AddressError,
    AlwaysIdle,
    MessageError,
    MessageInfo,
    NewMessage,
    Spooler,
    SQLiteStore,
    StatusRow,
    StoreError,
    UnknownMessage,
    __version__,
    load_provider_class,
)
from .._private import openness, private_dir
from ..api.client import (
    MAX_REQUEST_LINE,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    flush_report_to_dict,
    inbox_to_dict,
    message_to_dict,
    summary_of,
)
from ..model import (
    Address,
    IllegalTransition,
    LogonFlags,
    MessageState,
    Notify,
    Priority,
    ResourceMethods,
    ResourceType,
    StatusCode,
)
from ..profile import ListenerSettings, Profile, ProfileError, load_profile

__all__ = ["Daemon", "DaemonError", "RedactingFilter"]

log = logging.getLogger("spoolbox.daemon")
#: After a request line over the limit: how long to wait for more of it to drop.
_DROP_WAIT = 5.0
_CONTENT_LIMIT = 256 * 1024 * 1024  # the largest message one submit may carry
_CONTENT_BLOCK = 64 * 1024  # a submit's content is read in blocks of this size
#: ``submit_many``: messages in one request at most (one store transaction).
MAX_SUBMIT_MANY = 10_000


class DaemonError(Exception):
    """The daemon cannot start; the text says why."""


class _ListenerUnconfigured(Exception):
    """A listener user's password could not be resolved: the listener does not start."""


class _ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RedactingFilter(logging.Filter):
    """Replaces every secret value of the profile in log records by ``***``."""

    def __init__(self, secrets: Callable[[], frozenset[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets()
        if not secrets:
            return True
        text = record.getMessage()
        exc_text = ""
        if record.exc_info:
            exc_text = logging.Formatter().formatException(record.exc_info)
        if any(s in text or s in exc_text for s in secrets if s):
            for s in secrets:
                if s:
                    text = text.replace(s, "***")
                    exc_text = exc_text.replace(s, "***")
            record.msg, record.args = text, None
            if record.exc_info:
                record.exc_info = None
                record.exc_text = exc_text
        return True


def _redact(value: Any, profile: Profile) -> Any:
    if isinstance(value, str):
        return profile.redact(value)
    if isinstance(value, dict):
        return {k: _redact(v, profile) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, profile) for v in value]
    return value


class _Listener:
    def __init__(self, settings: ListenerSettings, obj: Any) -> None:
        self.settings = settings
        self.obj = obj


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Daemon:
    """The spooler process: ``await Daemon(profile).run()``."""

    def __init__(
        self,
        profile: Profile,
        *,
        interactive: bool = False,
        renice: bool = True,
        extra_secrets: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.profile = profile
        self.interactive = interactive
        self.renice = renice
        self.extra_secrets = dict(extra_secrets or {})
        self.spooler: Spooler | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._subscribers: set[Any] = set()
        self._listeners: list[_Listener] = []
        self._lock_file: IO[str] | None = None
        self._socket_path = profile.daemon.socket
        self.started_at = time.time()
        self.reloads = 0

    # -- the process ------------------------------------------------------------------
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :meth:`request_stop`); returns an exit status."""
        loop = asyncio.get_running_loop()
        self._lock()
        try:
            if self.renice and self.profile.daemon.nice:
                try:
                    os.nice(self.profile.daemon.nice)
                except OSError as exc:  # pragma: no cover - platform dependent
                    log.warning("cannot lower the CPU priority: %s", exc)
            self.spooler = await self._start_spooler(self.profile)
            self._ready.set()
            await self._start_server()
            await self._start_listeners()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            log.info(
                "spoolbox %s running (pid %d, profile %s, API on %s)",
                __version__,
                os.getpid(),
                self.profile.path,
                self._socket_path,
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
                    await self.reload()
            log.info("shutting down")
            return 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self._shutdown()
            self._unlock()
            log.info("stopped")

    def request_stop(self) -> None:
        log.info("stop requested")
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
        pid_file = self.profile.daemon.pid_file
        private_dir(pid_file.parent)
        f = open(pid_file, "a+")  # noqa: SIM115 - held open for the daemon's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            other = f.read().strip()
            f.close()
            raise DaemonError(
                f"another spoolbox daemon runs on this data directory (pid {other or '?'}, "
                f"lock {pid_file})"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def _unlock(self) -> None:
        f = self._lock_file
        if f is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.profile.daemon.pid_file)
        with contextlib.suppress(OSError):
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()
        self._lock_file = None

    async def _shutdown(self) -> None:
        await self._stop_listeners()
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self._socket_path)
        sp, self.spooler = self.spooler, None
        self._ready.clear()
        if sp is not None:
            await sp.aclose()

    # -- the spooler ----------------------------------------------------------------------
    def _config(self, profile: Profile) -> Any:
        cfg = profile.spooler
        for t in cfg.transports:
            if isinstance(t.provider, str):
                try:
                    load_provider_class(t.provider)
                except LookupError as exc:
                    raise ProfileError(
                        profile.path, str(exc), f"[transports.{t.name}] provider"
                    ) from None
        if self.interactive:
            # The logon dialog may be shown: clear NO_DIALOG where the profile allows it.
            ts = tuple(
                dataclasses.replace(t, logon_flags=LogonFlags.NONE)
                if profile.logon_dialog.get(t.name, True)
                else t
                for t in cfg.transports
            )
            cfg = dataclasses.replace(cfg, transports=ts)
        return cfg

    async def _start_spooler(self, profile: Profile) -> Spooler:
        config = self._config(profile)
        private_dir(profile.store.path.parent)
        store = SQLiteStore(
            profile.store.path,
            synchronous=profile.store.synchronous,
            progress_synchronous=profile.store.progress_synchronous,
        )
        idle = AlwaysIdle() if profile.idle == "always" else None
        spooler = Spooler.open(config, store=store, close_store=True, idle=idle)
        await spooler.start()
        log.debug("store %s open: %s", store.path, store.statistics()["pragmas"])
        for m in profile.missing:
            log.warning(
                "transport %r: %s is not configured (%s is not set); it stays off-line",
                m.transport,
                m.option,
                m.source,
            )
        return spooler

    async def current(self) -> Spooler:
        """The running spooler (waits while a reload swaps it)."""
        while True:
            sp = self.spooler
            if sp is not None and self._ready.is_set():
                return sp
            if self._stop.is_set():
                raise _ApiError("not_running", "the daemon is shutting down")
            await self._ready.wait()

    async def reload(self) -> bool:
        """Re-read the profile and restart the spooler on it; False if it is invalid."""
        try:
            new = load_profile(self.profile.path, extra_secrets=self.extra_secrets)
            self._config(new)
        except ProfileError as exc:
            log.error("reload refused, keeping the running profile: %s", exc)
            return False
        for key in ("socket", "event_loop"):
            if getattr(new.daemon, key) != getattr(self.profile.daemon, key):
                log.warning("[daemon] %s changed: it takes effect at the next start", key)
        old_profile = self.profile
        self._ready.clear()
        for sub in list(self._subscribers):
            sub.close()
        await self._stop_listeners()
        old, self.spooler = self.spooler, None
        if old is not None:
            await old.aclose()
        try:
            self.spooler = await self._start_spooler(new)
            self.profile = new
        except Exception as exc:
            log.error("reload failed (%s); starting again on the previous profile", exc)
            self.spooler = await self._start_spooler(old_profile)
            self._ready.set()
            await self._start_listeners()
            return False
        self._ready.set()
        await self._start_listeners()
        self.reloads += 1
        log.info("profile reloaded: transports %s", [t.name for t in new.spooler.transports])
        return True

    async def submit(self, message: NewMessage) -> MessageInfo:
        """What the listeners call: commit durably through the running spooler."""
        return await (await self.current()).submit(message)

    # -- listeners --------------------------------------------------------------------
    async def _start_listeners(self) -> None:
        for settings in self.profile.listeners:
            if not settings.enabled:
                continue
            try:
                from ..ingress.listener import ListenerConfig, SubmissionListener

                if settings.missing:
                    raise _ListenerUnconfigured(
                        "not configured: "
                        + "; ".join(f"{m.option}: set {m.source}" for m in settings.missing)
                    )
                config = ListenerConfig(**dict(settings.options))
                listener: Any
                if settings.processes:
                    listener = self._listener_processes(settings)
                else:
                    listener = SubmissionListener(self.submit, config)
                await _maybe_await(listener.start())
                port = getattr(listener, "port", None)
                host = settings.options.get("host", getattr(config, "host", "?"))
                self._listeners.append(_Listener(settings, listener))
                text = f"listening on {host}:{port}"
                code = StatusCode.AVAILABLE | StatusCode.INBOUND_ENABLED
                detail = f"{settings.processes} processes" if settings.processes else None
                log.info("listener %r %s", settings.name, text)
            except Exception as exc:
                text = "not listening"
                code = StatusCode.FAILURE | StatusCode.OFFLINE
                detail = f"{type(exc).__name__}: {exc}"
                log.error("listener %r cannot start: %s", settings.name, detail)
            self._listener_row(settings.name, code, text, detail)

    def _listener_row(self, name: str, code: StatusCode, text: str, detail: str | None) -> None:
        sp = self.spooler
        if sp is not None:
            sp.status.put(
                StatusRow(
                    name=f"listener:{name}",
                    resource_type=ResourceType.SUBSYSTEM,
                    provider_display="SMTP submission listener",
                    status_code=code,
                    status_string=text,
                    resource_methods=ResourceMethods.NONE,
                    detail=detail,
                )
            )

    def _listener_processes(self, settings: ListenerSettings) -> Any:
        """The listener in processes of its own (``processes = N``): they commit to the
        store themselves and tell this daemon which transports to wake."""
        from .listener_processes import ListenerProcesses
        from ..routing import RoutingTable

        def routes() -> RoutingTable:
            sp = self.spooler
            return sp.routing_table() if sp is not None else RoutingTable(())

        def submitted(count: int, transports: frozenset[str], unrouted: bool) -> None:
            sp = self.spooler
            if sp is not None:  # else a spooler starts soon and looks at the queue
                sp.submitted_elsewhere(count, transports, unrouted=unrouted)

        def trouble(text: str) -> None:
            for lst in self._listeners:
                if lst.settings is settings:
                    self._listener_row(
                        settings.name,
                        StatusCode.AVAILABLE | StatusCode.INBOUND_ENABLED,
                        f"listening on {lst.obj.config.host}:{lst.obj.port}",
                        f"{settings.processes} processes; {text}",
                    )

        profile = self.profile
        return ListenerProcesses(
            settings.name,
            settings.options,
            processes=settings.processes,
            store=str(profile.store.path),
            synchronous=profile.store.synchronous,
            lifetime=profile.spooler.policy.lifetime,
            event_loop=profile.daemon.event_loop,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            routes=routes,
            submitted=submitted,
            on_trouble=trouble,
            secrets=profile.secret_values,
        )

    async def _stop_listeners(self) -> None:
        listeners, self._listeners = self._listeners, []
        for lst in listeners:
            try:
                await _maybe_await(lst.obj.stop())
            except Exception as exc:
                log.warning("listener %r: stop failed: %s", lst.settings.name, exc)

    # -- the local API ------------------------------------------------------------------
    async def _start_server(self) -> None:
        path = self._socket_path
        private_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # we hold the lock: a socket left here is stale
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(path), limit=MAX_REQUEST_LINE
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_REQUEST_LINE: the rest is not read
                    await self._refuse_long_line(reader, writer)
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                rid: Any = None
                in_sync = True  # False: a content of unknown length follows the line
                try:
                    req = _decode_request(line)
                    rid = req.get("id") if isinstance(req, dict) else None
                    args = (req.get("args") or {}) if isinstance(req, dict) else {}
                    # Raw content follows the line: a refusal before it is read leaves
                    # the connection out of step, so it is closed after the answer.
                    in_sync = not (isinstance(args, dict) and "content_length" in args)
                    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                        raise _ApiError("bad_request", "a request is an object with an 'op'")
                    _check_version(req)
                    if not isinstance(args, dict):
                        raise _ApiError("bad_request", "'args' must be an object")
                    if "content_length" in args:
                        args["content"] = await _read_content(reader, args.pop("content_length"))
                        in_sync = True
                    op = req["op"]
                    if op in ("flush", "watch"):
                        # A streaming request takes the connection to its end.
                        await self._stream(op, rid, args, reader, writer)
                        return
                    result = await self._dispatch(op, args)
                    answer: dict[str, Any] = {"id": rid, "ok": True, "result": result}
                except _ApiError as exc:
                    log.debug("local API: refused (%s): %s", exc.code, exc)
                    answer = {
                        "id": rid,
                        "ok": False,
                        "error": {"code": exc.code, "message": str(exc)},
                    }
                except (ConnectionError, asyncio.IncompleteReadError):
                    return
                except Exception as exc:
                    log.exception("API request failed")
                    answer = {
                        "id": rid,
                        "ok": False,
                        "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"},
                    }
                await self._send(writer, answer)
                if not in_sync:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("API connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _refuse_long_line(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer a request line over the limit; then read and drop the rest of it, up
        to as much again and while it keeps coming, so that a client that writes its
        whole request before it reads gets to read the answer; then close."""
        log.warning("local API: a request line over %d bytes was refused", MAX_REQUEST_LINE)
        message = (
            f"request line longer than {MAX_REQUEST_LINE} bytes, the local API's limit "
            "(Client.submit puts a larger message into the store directly)"
        )
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._send(
                writer,
                {"id": None, "ok": False, "error": {"code": "too_large", "message": message}},
            )
            dropped = 0
            while dropped < MAX_REQUEST_LINE:
                chunk = await asyncio.wait_for(reader.read(1 << 16), _DROP_WAIT)
                if not chunk or b"\n" in chunk:
                    break
                dropped += len(chunk)

    async def _send(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        writer.write(json.dumps(_redact(msg, self.profile)).encode() + b"\n")
        await writer.drain()

    async def _dispatch(self, op: str, args: dict[str, Any]) -> Any:
        handler = _OPS.get(op)
        if handler is None:
            raise _ApiError("bad_request", f"unknown op {op!r}; known: {', '.join(sorted(_OPS))}")
        log.debug("local API: %s %s", op, sorted(args))
        try:
            return await handler(self, args)
        except UnknownMessage as exc:
            raise _ApiError("not_found", str(exc)) from None
        except IllegalTransition as exc:
            raise _ApiError("conflict", str(exc)) from None
        except (MessageError, AddressError) as exc:
            raise _ApiError("bad_request", str(exc)) from None
        except StoreError as exc:
            raise _ApiError("store", str(exc)) from None

    # -- ops ----------------------------------------------------------------------------
    async def op_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        return {
            "pid": os.getpid(),
            "node": sp.owner,
            "profile": str(self.profile.path),
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "started_at": self.started_at,
            "reloads": self.reloads,
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        }

    async def op_submit(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        info = await sp.submit(_message_from_args(args))
        return {"id": info.id, "state": str(MessageState.QUEUED), "via": "daemon"}

    async def op_submit_many(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        items = _arg(args, "messages", list)
        if len(items) > MAX_SUBMIT_MANY:
            raise _ApiError(
                "bad_request",
                f"{len(items)} messages in one submit_many; at most {MAX_SUBMIT_MANY}",
            )
        messages: list[NewMessage] = []
        for i, item in enumerate(items):
            where = f"messages[{i}]"
            if not isinstance(item, dict):
                raise _ApiError("bad_request", f"{where} must be an object")
            try:
                messages.append(_message_from_args(item))
            except _ApiError as exc:
                raise _ApiError(exc.code, f"{where}: {exc}") from None
            except (MessageError, AddressError, ValueError) as exc:
                raise _ApiError("bad_request", f"{where}: {exc}") from None
        infos = await sp.submit_many(messages)
        return {"ids": [i.id for i in infos], "state": str(MessageState.QUEUED), "via": "daemon"}

    async def op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        return {"rows": [row.to_dict() for row in sp.status]}

    async def op_statistics(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        raw = dict(sp.statistics())
        store_stats = getattr(sp.store, "statistics", None)
        if callable(store_stats):
            raw["store"] = store_stats()
        raw["listeners"] = {
            lst.settings.name: lst.obj.statistics()
            for lst in self._listeners
            if callable(getattr(lst.obj, "statistics", None))
        }
        stats: dict[str, Any] = json.loads(json.dumps(raw, default=str))
        return stats

    async def op_queue_list(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        state = _opt(args, "state", str)
        try:
            st = MessageState(state) if state else None
        except ValueError:
            raise _ApiError("bad_request", f"unknown queue {state!r}") from None
        limit = _limit(args)
        found = await sp.store.list_messages(state=st, limit=limit, now=sp.clock.now())
        return {"messages": [message_to_dict(s) for s in found]}

    async def op_queue_show(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        return message_to_dict(await summary_of(sp.store, _arg(args, "id", str), sp.clock.now()))

    async def _after(self, sp: Spooler, mid: str, **extra: Any) -> dict[str, Any]:
        state = await sp.store.state_of(mid, now=sp.clock.now())
        return {"id": mid, "state": str(state), **extra}

    async def op_queue_hold(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        mid = _arg(args, "id", str)
        await sp.hold(mid)
        return await self._after(sp, mid)

    async def op_queue_release(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        mid = _arg(args, "id", str)
        await sp.release(mid)
        return await self._after(sp, mid)

    async def op_queue_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        mid = _arg(args, "id", str)
        state = await sp.cancel(mid)
        return {"id": mid, "state": str(state)}

    async def op_queue_retry(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        mid = _arg(args, "id", str)
        n = await sp.retry(mid)
        return await self._after(sp, mid, retried=n)

    async def op_inbox_list(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        limit = _limit(args)
        return {"messages": [inbox_to_dict(e) for e in await sp.store.list_inbox(limit=limit)]}

    async def op_inbox_read(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        data = await sp.store.read_inbox(_arg(args, "id", str))
        return {"content": base64.b64encode(data).decode("ascii")}

    async def op_transports(self, args: dict[str, Any]) -> dict[str, Any]:
        sp = await self.current()
        out = []
        specs = {str(t.get("name")): t.get("provider") for t in self.profile.raw_transports}
        for h in sp.hosts:
            declared = h.entry.address_types
            types = sorted(h.types) if h.types is not None else list(declared or ())
            out.append(
                {
                    "name": h.name,
                    "provider": specs.get(h.name, str(h.entry.provider)),
                    "class": f"{type(h.provider).__module__}:{type(h.provider).__qualname__}",
                    "logged_on": h.session is not None,
                    "address_types": types,
                    "address_types_source": "session" if h.types is not None else "profile",
                    "outbound": h.entry.outbound,
                    "inbound": h.entry.inbound,
                }
            )
        return {"transports": out}

    async def op_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        ok = await self.reload()
        if not ok:
            raise _ApiError("profile", "the profile is invalid or failed to start; see the log")
        return {"reloads": self.reloads}

    # -- streaming ops --------------------------------------------------------------------
    async def _stream(
        self,
        op: str,
        rid: Any,
        args: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if op == "watch":
            await self._watch(rid, reader, writer)
        else:
            await self._flush(rid, args, reader, writer)

    async def _watch(
        self, rid: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        eof = asyncio.ensure_future(reader.read())  # the client closes to stop watching
        try:
            while not eof.done():
                sp = await self.current()
                sub = sp.subscribe(maxsize=1000, name="api-watch")
                self._subscribers.add(sub)
                try:
                    async with sub:
                        while True:
                            nxt = asyncio.ensure_future(anext(sub))
                            await asyncio.wait({nxt, eof}, return_when=asyncio.FIRST_COMPLETED)
                            if eof.done():
                                nxt.cancel()
                                return
                            try:
                                change = nxt.result()
                            except StopAsyncIteration:
                                break  # the spooler was replaced (reload): subscribe again
                            if change.new is None:
                                msg = {"id": rid, "event": "removed", "name": change.name}
                            else:
                                msg = {"id": rid, "event": "status", "row": change.new.to_dict()}
                            await self._send(writer, msg)
                finally:
                    self._subscribers.discard(sub)
        finally:
            eof.cancel()

    async def _flush(
        self,
        rid: Any,
        args: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        sp = await self.current()
        transport = _opt(args, "transport", str)
        upload, download = _opt(args, "upload", bool), _opt(args, "download", bool)
        try:
            handle = sp.start_flush(
                upload=True if upload is None else upload,
                download=True if download is None else download,
                transport=transport or None,
            )
        except KeyError as exc:
            await self._send(
                writer,
                {"id": rid, "ok": False, "error": {"code": "not_found", "message": exc.args[0]}},
            )
            return
        names = set(handle.transports)
        await self._send(writer, {"id": rid, "event": "started", "transports": handle.transports})

        async def commands() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    handle.cancel()  # the client went away: cancel the flush
                    return
                with contextlib.suppress(ValueError):
                    req = json.loads(line)
                    if isinstance(req, dict) and req.get("op") == "cancel":
                        handle.cancel(req.get("transport") or None)

        cmd = asyncio.ensure_future(commands())
        done = asyncio.ensure_future(handle.wait())
        try:
            async with sp.subscribe(maxsize=10000, name="api-flush") as sub:
                while not done.done():
                    nxt = asyncio.ensure_future(anext(sub))
                    await asyncio.wait({nxt, done}, return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        nxt.cancel()
                        break
                    try:
                        change = nxt.result()
                    except (StopAsyncIteration, Exception):
                        break
                    if change.new is not None and change.name in names:
                        await self._send(
                            writer,
                            {
                                "id": rid,
                                "event": "progress",
                                "current": handle.current,
                                "row": change.new.to_dict(),
                            },
                        )
            report = await done
            await self._send(
                writer, {"id": rid, "ok": True, "result": flush_report_to_dict(report)}
            )
        finally:
            cmd.cancel()
            await asyncio.gather(cmd, return_exceptions=True)
            if not done.done():
                handle.cancel()
                done.cancel()


async def _read_content(reader: asyncio.StreamReader, length: Any) -> bytes:
    """The ``content_length`` bytes that follow a request's line (a ``submit``'s
    message), held once: read a block at a time into one buffer."""
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= _CONTENT_LIMIT:
        raise _ApiError(
            "bad_request", f"content_length must be an integer from 0 to {_CONTENT_LIMIT}"
        )
    buffer = io.BytesIO()
    while (left := length - buffer.tell()) > 0:
        block = await reader.read(min(left, _CONTENT_BLOCK))
        if not block:
            raise asyncio.IncompleteReadError(b"", length)
        buffer.write(block)
    return buffer.getvalue()


def _decode_request(line: bytes) -> Any:
    """A request line's JSON value; a line that is not JSON is a ``bad_request``."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:  # also: not UTF-8, deep nesting, huge ints
        raise _ApiError("bad_request", f"not JSON: {exc}") from None


def _message_from_args(args: dict[str, Any]) -> NewMessage:
    """A ``submit`` request's message (also each item of ``submit_many``): ``content``
    is the bytes that followed the request's line, or base64 in the line."""
    raw = args.get("content")
    try:
        content = (
            raw
            if isinstance(raw, bytes)  # JSON has no bytes: only _read_content makes them
            else base64.b64decode(_arg(args, "content", str), validate=True)
        )
    except ValueError as exc:  # binascii.Error, or a str that is not ASCII
        raise _ApiError("bad_request", f"content is not base64: {exc}") from None
    sender = _opt(args, "sender", str)
    recipients = _arg(args, "recipients", list)
    for i, r in enumerate(recipients):
        if not isinstance(r, str):
            raise _ApiError("bad_request", f"argument 'recipients[{i}]' must be a string")
    prio = (_opt(args, "priority", str) or "normal").upper()
    if prio not in Priority.__members__:
        raise _ApiError("bad_request", f"unknown priority {prio.lower()!r}")
    notify = _opt(args, "notify", int)
    try:
        flags = Notify(Notify.FAILURE if notify is None else notify)
    except ValueError as exc:
        raise _ApiError("bad_request", f"argument 'notify': {exc}") from None
    send_at = _opt(args, "send_at", float)
    kwargs: dict[str, Any] = {}
    mid = _opt(args, "id", str)
    if mid:
        kwargs["id"] = mid
    return NewMessage(
        sender=Address.parse(sender) if sender else None,
        recipients=tuple(Address.parse(r) for r in recipients),
        content=content,
        priority=Priority[prio],
        notify=flags,
        send_at=None if send_at is None else float(send_at),
        **kwargs,
    )


_KINDS: dict[type, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
    list: ((list,), "a list"),
}


def _opt(args: dict[str, Any], name: str, kind: type) -> Any:
    """Argument ``name`` if given (not null), checked to be of ``kind``; else None."""
    value = args.get(name)
    if value is None:
        return None
    types, what = _KINDS[kind]
    if not isinstance(value, types) or (isinstance(value, bool) and kind is not bool):
        raise _ApiError("bad_request", f"argument {name!r} must be {what}, not {_json_kind(value)}")
    return value


def _arg(args: dict[str, Any], name: str, kind: type) -> Any:
    """A required argument: given, of ``kind``, and not an empty string."""
    value = _opt(args, name, kind)
    if value is None or (kind is str and not value):
        raise _ApiError("bad_request", f"argument {name!r} is required ({_KINDS[kind][1]})")
    return value


def _limit(args: dict[str, Any]) -> int:
    limit = _opt(args, "limit", int)
    if limit is None:
        return 100
    if limit < 1:
        raise _ApiError("bad_request", f"argument 'limit' must be at least 1, not {limit}")
    return int(limit)


#: What a value from ``json.loads`` is, in words.
_JSON_KINDS = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _json_kind(value: object) -> str:
    return _JSON_KINDS.get(type(value), "null")


def _check_version(req: dict[str, Any]) -> None:
    """A request without ``v`` is version 1; another version is refused by name."""
    v = req.get("v", 1)
    if isinstance(v, bool) or not isinstance(v, int) or v not in SUPPORTED_VERSIONS:
        known = ", ".join(str(x) for x in SUPPORTED_VERSIONS)
        raise _ApiError(
            "unsupported_version",
            f"protocol version {v!r} is not supported; this daemon speaks version {known}",
        )


_Handler = Callable[[Daemon, dict[str, Any]], Awaitable[Any]]
_OPS: dict[str, _Handler] = {
    "ping": Daemon.op_ping,
    "submit": Daemon.op_submit,
    "submit_many": Daemon.op_submit_many,
    "status": Daemon.op_status,
    "statistics": Daemon.op_statistics,
    "queue.list": Daemon.op_queue_list,
    "queue.show": Daemon.op_queue_show,
    "queue.hold": Daemon.op_queue_hold,
    "queue.release": Daemon.op_queue_release,
    "queue.cancel": Daemon.op_queue_cancel,
    "queue.retry": Daemon.op_queue_retry,
    "inbox.list": Daemon.op_inbox_list,
    "inbox.read": Daemon.op_inbox_read,
    "transports": Daemon.op_transports,
    "reload": Daemon.op_reload,
}


def configure_logging(level: str, profile_getter: Callable[[], Profile]) -> None:
    """Log to stderr with secrets redacted."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(lambda: profile_getter().secret_values))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


def run_daemon(
    profile: Profile,
    *,
    interactive: bool,
    renice: bool = True,
    extra_secrets: Mapping[tuple[str, str], str] | None = None,
    log_level: str | None = None,
) -> int:
    """Run the daemon in this process until it is told to stop; the exit status."""
    holder: dict[str, Daemon] = {}

    def current_profile() -> Profile:
        d = holder.get("d")
        return d.profile if d is not None else profile

    configure_logging(log_level or profile.daemon.log_level, current_profile)

    async def main() -> int:
        d = Daemon(profile, interactive=interactive, renice=renice, extra_secrets=extra_secrets)
        holder["d"] = d
        return await d.run()

    try:
        runner = event_loop_runner(profile.daemon.event_loop)
    except ImportError as exc:
        raise ProfileError(profile.path, str(exc), "[daemon] event_loop") from None
    return runner(main())


def event_loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run`` or ``uvloop.run`` for ``[daemon] event_loop``.

    ``auto`` takes uvloop when it is installed: libuv's event loop and transports cut
    the per-message cost of the daemon's network I/O (see docs/benchmarks.md, relay).
    ``uvloop`` insists on it; ``asyncio`` is the standard library's loop.
    """
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ImportError(
                    '"uvloop" is asked for, but uvloop is not installed '
                    "(pip install uvloop; it is a dependency of spoolbox on Linux and macOS)"
                ) from None
        else:
            return uvloop.run
    return asyncio.run
