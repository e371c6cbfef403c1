"""The Python client of a running spooler daemon, over its local API.

::

    from spoolbox.client import Client

    client = Client("/srv/spoolbox/spoolbox.toml")
    info = client.submit(NewMessage(...))   # through the daemon, or the store if it is down
    for row in client.status():
        print(row["name"], row["status"])
    report = client.flush(upload=True, download=False)

The local API is a Unix socket (the profile's ``[daemon] socket``, mode 0600) that
speaks JSON lines: the client writes one request object per line and reads response
objects, one per line.  The protocol is documented in docs/operations.md ("Local
API"); :data:`PROTOCOL_VERSION` is its version.

The wire schema (the protocol's version, limits, error codes and the JSON forms of
messages, recipients, inbox entries and flush reports) is :mod:`spoolbox.api.wire`,
which the daemon imports too; the names users had from here are re-exported.

The client is synchronous (plain sockets): it serves scripts and the command line,
which need no event loop.  Submitting falls back to the store when no daemon runs:
the message is committed to the SQLite file directly and the daemon routes it when it
starts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .. import (
    MessageState,
    NewMessage,
    SQLiteStore,
    UnknownMessage,
)
from .._private import private_dir
from ..model import IllegalTransition
from ..profile import Profile, load_profile
from ..store.sqlite import StoreFile, transactions
from .wire import (
    CONFLICT,
    MAX_REQUEST_LINE,
    NOT_FOUND,
    NOT_RUNNING,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    TOO_LARGE,
    flush_report_to_dict,
    inbox_to_dict,
    message_to_dict,
    recipient_to_dict,
    request_line,
    summary_of,
)
from .wire import message_args as _message_args

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_PROFILE",
    "EXIT_USAGE",
    "MAX_REQUEST_LINE",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Client",
    "ClientError",
    "Conflict",
    "DaemonNotRunning",
    "NotFound",
    "RequestTooLarge",
    "flush_report_to_dict",
    "inbox_to_dict",
    "message_to_dict",
    "recipient_to_dict",
]

T = TypeVar("T")

# Exit codes of the spoolbox command (docs/operations.md, "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_NOT_FOUND = 4
EXIT_PROFILE = 5
EXIT_CONFLICT = 6
EXIT_INTERRUPTED = 130


class ClientError(Exception):
    """A request failed; ``code`` is the API error code, ``exit_code`` the CLI's."""

    code = "error"
    exit_code = EXIT_ERROR

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class DaemonNotRunning(ClientError):
    code = NOT_RUNNING
    exit_code = EXIT_NOT_RUNNING


class NotFound(ClientError):
    code = NOT_FOUND
    exit_code = EXIT_NOT_FOUND


class Conflict(ClientError):
    code = CONFLICT
    exit_code = EXIT_CONFLICT


class RequestTooLarge(ClientError):
    """The request would be longer than :data:`MAX_REQUEST_LINE` (nothing was sent)."""

    code = TOO_LARGE


_ERRORS: dict[str, type[ClientError]] = {
    TOO_LARGE: RequestTooLarge,
    NOT_FOUND: NotFound,
    CONFLICT: Conflict,
    NOT_RUNNING: DaemonNotRunning,
}


def error_from(code: str, message: str) -> ClientError:
    return _ERRORS.get(code, ClientError)(message, code)


# -- the client ----------------------------------------------------------------------------
class Client:
    """A synchronous client of the daemon that runs a profile."""

    def __init__(self, profile: str | os.PathLike[str] | Profile, *, timeout: float = 60.0) -> None:
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.timeout = timeout
        self._next_id = 0

    @property
    def socket_path(self) -> Path:
        return self.profile.daemon.socket

    # -- transport of requests ------------------------------------------------------
    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise DaemonNotRunning(
                f"the spooler daemon is not running (no answer on {self.socket_path}: "
                f"{exc.strerror}); start it with `spoolbox run`"
            ) from None
        except OSError:
            sock.close()
            raise
        return sock

    def _request(
        self, op: str, args: dict[str, Any], content: bytes | None = None
    ) -> tuple[socket.socket, Any, int]:
        """Send a request; ``content`` (a message) goes as it is after the line, its
        length in ``args["content_length"]`` (not base64 in the line: a large
        message would be held several times over, on both sides)."""
        self._next_id += 1
        rid = self._next_id
        if content is not None:
            args = {**args, "content_length": len(content)}
        line = request_line(rid, op, args)
        if len(line) + 1 > MAX_REQUEST_LINE:
            raise RequestTooLarge(
                f"the {op} request is {len(line) + 1} bytes, over the local API's limit of "
                f"{MAX_REQUEST_LINE}"
            )
        sock = self._connect()
        try:
            sock.sendall(line + b"\n")
            if content is not None:
                sock.sendall(content)
        except OSError as exc:
            sock.close()
            raise DaemonNotRunning(f"the spooler daemon went away: {exc}") from None
        return sock, sock.makefile("rb"), rid

    @staticmethod
    def _read(reader: Any) -> dict[str, Any]:
        line = reader.readline()
        if not line:
            raise DaemonNotRunning("the spooler daemon closed the connection (shutting down?)")
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ClientError(f"bad answer from the daemon: {line[:200]!r}")
        return msg

    @staticmethod
    def _result(msg: dict[str, Any]) -> Any:
        if msg.get("ok"):
            return msg.get("result")
        err = msg.get("error") or {}
        raise error_from(str(err.get("code", "error")), str(err.get("message", "failed")))

    def call(self, op: str, **args: Any) -> Any:
        """One request, one answer; raises a :class:`ClientError` subclass."""
        return self._call(op, args)

    def _call(self, op: str, args: dict[str, Any], content: bytes | None = None) -> Any:
        sock, reader, _ = self._request(op, args, content)
        with contextlib.closing(sock), reader:
            return self._result(self._read(reader))

    def stream(
        self, op: str, *, on_event: Callable[[dict[str, Any]], None] | None = None, **args: Any
    ) -> Any:
        """A streaming request: ``on_event`` gets each event; returns the final result.
        KeyboardInterrupt asks the daemon to cancel, waits for the final answer and
        raises KeyboardInterrupt again with it as ``args[0]`` (``None`` if none)."""
        sock, reader, rid = self._request(op, args)
        with contextlib.closing(sock), reader:
            try:
                while True:
                    msg = self._read(reader)
                    if "event" in msg:
                        if on_event is not None:
                            on_event(msg)
                        continue
                    return self._result(msg)
            except KeyboardInterrupt:
                final: Any = None
                with contextlib.suppress(Exception):
                    sock.sendall(json.dumps({"id": rid, "op": "cancel"}).encode() + b"\n")
                    sock.settimeout(30)
                    while True:
                        msg = self._read(reader)
                        if "event" not in msg:
                            final = self._result(msg)
                            break
                raise KeyboardInterrupt(final) from None

    def events(self, op: str, **args: Any) -> Iterator[dict[str, Any]]:
        """The events of a streaming request (``watch``) until the caller stops."""
        sock, reader, _ = self._request(op, args)
        sock.settimeout(None)
        with contextlib.closing(sock), reader:
            while True:
                msg = self._read(reader)
                if "event" in msg:
                    yield msg
                else:
                    self._result(msg)
                    return

    # -- offline access to the store ----------------------------------------------------
    def _store_path(self) -> Path:
        path = self.profile.store.path
        if not path.exists():  # before the daemon ever ran: the data directory too
            private_dir(path.parent)
        return path

    def _offline_run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """The store operation ``op`` without an event loop: ``fn`` (one of
        :mod:`spoolbox.store.sqlite.transactions`) in the transaction ``op`` needs,
        committed as the daemon's store commits it."""
        store = self.profile.store
        with StoreFile.open(
            self._store_path(),
            synchronous=store.synchronous,
            progress_synchronous=store.progress_synchronous,
        ) as db:
            return db.run(op, fn)

    def _offline(self, fn: Callable[[SQLiteStore], Coroutine[Any, Any, T]]) -> T:
        path = self._store_path()

        async def run() -> T:
            store = SQLiteStore(
                path,
                synchronous=self.profile.store.synchronous,
                progress_synchronous=self.profile.store.progress_synchronous,
            )
            await store.open()
            try:
                return await fn(store)
            finally:
                await store.close()

        try:
            return asyncio.run(run())
        except UnknownMessage as exc:
            raise NotFound(f"no message {exc}") from None
        except IllegalTransition as exc:
            raise Conflict(str(exc)) from None

    # -- the API ----------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("ping")
        return result

    def running(self) -> bool:
        try:
            self.ping()
        except DaemonNotRunning:
            return False
        return True

    def submit(self, message: NewMessage, *, fallback: bool = True) -> dict[str, Any]:
        """Submit; returns ``{"id", "state", "via"}`` (via: "daemon" or "store")."""
        lifetime = message.lifetime or self.profile.spooler.policy.lifetime

        def put(conn: sqlite3.Connection) -> dict[str, Any]:
            info = transactions.submit(conn, message, now=time.time(), lifetime=lifetime)
            return {"id": info.id, "state": str(MessageState.QUEUED)}

        args = _message_args(message, content=False)
        return self._submit_via("submit", args, fallback, put, content=message.content)

    def _submit_via(
        self,
        op: str,
        args: dict[str, Any],
        fallback: bool,
        put: Callable[[sqlite3.Connection], dict[str, Any]],
        content: bytes | None = None,
    ) -> dict[str, Any]:
        """``op`` through the daemon; else, with ``fallback``, ``put`` on the store: when
        no daemon runs, or when the request is too large for one line (the daemon's
        router finds what is in the store within policy.router_interval)."""
        try:
            result: dict[str, Any] = self._call(op, args, content)
            return result
        except DaemonNotRunning:
            if not fallback:
                raise
            note = "the daemon is not running: queued in the store; it is sent when it starts"
        except RequestTooLarge:
            if not fallback:
                raise
            note = "too large for the local API: queued in the store; the daemon sends it"
        return {**self._offline_run(op, put), "via": "store", "note": note}

    def submit_many(
        self, messages: Sequence[NewMessage], *, fallback: bool = True
    ) -> dict[str, Any]:
        """Submit all of ``messages`` in one durable transaction, or none (see
        :meth:`spoolbox.Spooler.submit_many`); returns ``{"ids", "state", "via"}``.
        At most ``MAX_SUBMIT_MANY`` (10,000) messages a call."""
        lifetime = self.profile.spooler.policy.lifetime

        def put(conn: sqlite3.Connection) -> dict[str, Any]:
            # Without the daemon's router: recipients are routed when it starts.
            infos = transactions.submit_many(conn, messages, now=time.time(), lifetime=lifetime)
            return {"ids": [i.id for i in infos], "state": str(MessageState.QUEUED)}

        args = {"messages": [_message_args(m) for m in messages]}
        return self._submit_via("submit_many", args, fallback, put)

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("status")["rows"]
        return rows

    def watch(self) -> Iterator[dict[str, Any]]:
        """Status changes as they happen: ``{"event": "status", "row": {...}}`` and
        ``{"event": "removed", "name": ...}``; the current rows come first."""
        return self.events("watch")

    def queue(
        self, *, state: str | None = None, limit: int = 100, offline: bool = True
    ) -> list[dict[str, Any]]:
        try:
            msgs: list[dict[str, Any]] = self.call("queue.list", state=state, limit=limit)[
                "messages"
            ]
            return msgs
        except DaemonNotRunning:
            if not offline:
                raise
        st = MessageState(state) if state else None

        async def listing(store: SQLiteStore) -> list[dict[str, Any]]:
            found = await store.list_messages(state=st, limit=limit, now=time.time())
            return [message_to_dict(summary) for summary in found]

        return self._offline(listing)

    def show(self, message_id: str, *, offline: bool = True) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self.call("queue.show", id=message_id)
            return result
        except DaemonNotRunning:
            if not offline:
                raise

        async def one(store: SQLiteStore) -> dict[str, Any]:
            return message_to_dict(await summary_of(store, message_id, time.time()))

        return self._offline(one)

    def _action(self, action: str, message_id: str, offline: bool) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self.call(f"queue.{action}", id=message_id)
            return result
        except DaemonNotRunning:
            if not offline:
                raise

        async def act(store: SQLiteStore) -> dict[str, Any]:
            now = time.time()
            extra: dict[str, Any] = {}
            if action == "hold":
                await store.hold(message_id)
            elif action == "release":
                await store.release(message_id, now=now)
            elif action == "cancel":
                await store.cancel(message_id)
            else:
                extra["retried"] = await store.retry_now(message_id, now=now)
            state = await store.state_of(message_id, now=now)
            return {"id": message_id, "state": str(state), **extra}

        return self._offline(act)

    def hold(self, message_id: str, *, offline: bool = True) -> dict[str, Any]:
        return self._action("hold", message_id, offline)

    def release(self, message_id: str, *, offline: bool = True) -> dict[str, Any]:
        return self._action("release", message_id, offline)

    def cancel(self, message_id: str, *, offline: bool = True) -> dict[str, Any]:
        return self._action("cancel", message_id, offline)

    def retry(self, message_id: str, *, offline: bool = True) -> dict[str, Any]:
        return self._action("retry", message_id, offline)

    def flush(
        self,
        *,
        upload: bool = True,
        download: bool = True,
        transport: str | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Flush through the daemon (it must run); ``on_event`` gets the progress events;
        ``timeout``: seconds the flush may take (default: the profile's
        ``[policy] flush_deadline``).  Returns the report (:func:`flush_report_to_dict`)."""
        args: dict[str, Any] = {"upload": upload, "download": download, "transport": transport}
        if timeout is not None:
            args["timeout"] = timeout
        result: dict[str, Any] = self.stream("flush", on_event=on_event, **args)
        return result

    def inbox(self, *, limit: int = 100, offline: bool = True) -> list[dict[str, Any]]:
        try:
            msgs: list[dict[str, Any]] = self.call("inbox.list", limit=limit)["messages"]
            return msgs
        except DaemonNotRunning:
            if not offline:
                raise

        async def listing(store: SQLiteStore) -> list[dict[str, Any]]:
            return [inbox_to_dict(entry) for entry in await store.list_inbox(limit=limit)]

        return self._offline(listing)

    def inbox_read(self, entry_id: str, *, offline: bool = True) -> bytes:
        try:
            result = self.call("inbox.read", id=entry_id)
            return base64.b64decode(result["content"])
        except DaemonNotRunning:
            if not offline:
                raise

        async def read(store: SQLiteStore) -> bytes:
            return await store.read_inbox(entry_id)

        return self._offline(read)

    def transports(self) -> list[dict[str, Any]]:
        """The configured transports as the daemon sees them (logged on, address types)."""
        result: list[dict[str, Any]] = self.call("transports")["transports"]
        return result

    def statistics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("statistics")
        return result

    def reload(self) -> dict[str, Any]:
        """Ask the daemon to re-read its profile (as SIGHUP does)."""
        result: dict[str, Any] = self.call("reload")
        return result
