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
the message is committed to the SQLite file directly (one plain transaction, no event
loop) and the daemon routes it when it starts; or, with ``[store] backend =
"postgres"``, to the database, where any node running on it hears of it at once (the
store's ``NOTIFY``).  The queue and inbox operations answer from the store the same
way (:mod:`.selection`, as the daemon's do).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .._private import private_dir
from ..model import Address, IllegalTransition, MessageState, NewMessage
from ..model.message import with_originals
from ..profile import Profile, load_profile
from ..store.base import Store, StoreFull, UnknownMessage
from ..store.sqlite import StoreFile, transactions
from . import selection
from .wire import (
    BAD_REQUEST,
    CONFLICT,
    MAX_REQUEST_LINE,
    NOT_FOUND,
    NOT_RUNNING,
    PROTOCOL_VERSION,
    STORE,
    STORE_FULL,
    SUPPORTED_VERSIONS,
    TOO_LARGE,
    UNROUTABLE,
    ApiError,
    flush_report_to_dict,
    inbox_to_dict,
    message_to_dict,
    recipient_to_dict,
    request_line,
    unroutable_error,
)
from .wire import message_args as _message_args

if TYPE_CHECKING:
    from ..store.postgres import PostgresStore
    from ..store.sqlite import SQLiteStore
    from .kept_loop import KeptStore

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_OS_ERROR",
    "EXIT_PROFILE",
    "EXIT_UNROUTABLE",
    "EXIT_USAGE",
    "MAX_REQUEST_LINE",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Client",
    "ClientError",
    "Conflict",
    "DaemonNotRunning",
    "DaemonStoreFull",
    "NotFound",
    "RequestTooLarge",
    "StoreNotWritable",
    "StoreRefused",
    "UnroutableRecipient",
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
#: A recipient no transport serves: nothing queued (sysexits EX_NOUSER, as sendmail).
EXIT_UNROUTABLE = 67
#: The store's disk is full (sysexits EX_IOERR, as an operating system error).
EXIT_OS_ERROR = 74


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


class StoreNotWritable(DaemonNotRunning):
    """The daemon could not take a submission (not running, or the request too large
    for the local API) and this user may not write the store itself (a web
    application's user, a member of ``socket_group``), nor leave it in the maildrop
    (``[daemon] maildrop``, if there is one): nothing was queued.  Temporary: it works
    once the daemon runs (sendmail exits 75)."""

    temporary = True


class NotFound(ClientError):
    code = NOT_FOUND
    exit_code = EXIT_NOT_FOUND


class Conflict(ClientError):
    code = CONFLICT
    exit_code = EXIT_CONFLICT


class RequestTooLarge(ClientError):
    """The request would be longer than :data:`MAX_REQUEST_LINE` (nothing was sent)."""

    code = TOO_LARGE


class UnroutableRecipient(ClientError):
    """A recipient's address type is served by no transport: the submission was
    refused and nothing queued.  The text names each such recipient, its type and
    the types the transports serve."""

    code = UNROUTABLE
    exit_code = EXIT_UNROUTABLE


class StoreRefused(ClientError):
    """The daemon's store refused the request (a StoreError there; the text says what
    and why).  Temporary, as the same error met without the daemon: sendmail exits
    75 (try again later)."""

    code = STORE
    temporary = True


class DaemonStoreFull(StoreRefused, StoreFull):
    """The disk under the daemon's store is full (its StoreFull, across the local API):
    nothing was queued, what was queued before is intact.  Also a
    :class:`~spoolbox.store.StoreFull`, so one ``except spoolbox.StoreFull`` catches
    it with the daemon running or not."""

    code = STORE_FULL
    exit_code = EXIT_OS_ERROR


_ERRORS: dict[str, type[ClientError]] = {
    UNROUTABLE: UnroutableRecipient,
    STORE_FULL: DaemonStoreFull,
    STORE: StoreRefused,
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

    def __init__(
        self,
        profile: str | os.PathLike[str] | Profile,
        *,
        timeout: float = 60.0,
        keep_store_open: bool = False,
    ) -> None:
        """``keep_store_open``: submissions without the daemon reuse one connection to
        the store per thread (opening and closing the SQLite file cost more than the
        transaction; on PostgreSQL, the store stays open on an event loop of the
        thread's own, :mod:`.kept_loop`); :meth:`close` closes this thread's."""
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.timeout = timeout
        self._next_id = 0
        self._kept = threading.local() if keep_store_open else None

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
    def _on_postgres(self) -> bool:
        return self.profile.store.backend == "postgres"

    def _store_path(self) -> Path:
        path = self.profile.store.path
        if not path.exists():  # before the daemon ever ran: the data directory too
            private_dir(path.parent)
        return path

    def _offline_run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """The store operation ``op`` without an event loop: ``fn`` (one of
        :mod:`spoolbox.store.sqlite.transactions`) in the transaction ``op`` needs,
        committed as the daemon's store commits it."""
        if self._kept is not None:
            return self._kept_store().run(op, fn)
        with self._open_store() as db:
            return db.run(op, fn)

    def _open_store(self) -> StoreFile:
        store = self.profile.store
        return StoreFile.open(
            self._store_path(),
            synchronous=store.synchronous,
            progress_synchronous=store.progress_synchronous,
        )

    def _kept_store(self) -> StoreFile:
        """This thread's kept connection; a forked child opens its own (a connection
        must not cross a fork: the parent's is left alone, not closed)."""
        assert self._kept is not None
        held: tuple[int, StoreFile] | None = getattr(self._kept, "store", None)
        if held is None or held[0] != os.getpid():
            held = (os.getpid(), self._open_store())
            self._kept.store = held
        return held[1]

    def _kept_async(self) -> KeptStore:
        """This thread's kept PostgreSQL store (as :meth:`_kept_store` for SQLite)."""
        from .kept_loop import KeptStore  # asyncio: not for a plain SQLite send

        assert self._kept is not None
        kept: KeptStore | None = getattr(self._kept, "async_store", None)
        if kept is None or kept.pid != os.getpid():
            kept = KeptStore(self._async_store)
            self._kept.async_store = kept
        return kept

    def close(self) -> None:
        """Close this thread's kept store connection, if any (``keep_store_open``)."""
        held = getattr(self._kept, "store", None) if self._kept is not None else None
        if held is not None and held[0] == os.getpid():
            del self._kept.store  # type: ignore[union-attr]
            held[1].close()
        kept = getattr(self._kept, "async_store", None) if self._kept is not None else None
        if kept is not None and kept.pid == os.getpid():
            del self._kept.async_store  # type: ignore[union-attr]
            kept.close()

    def _async_store(self) -> SQLiteStore | PostgresStore:
        """The profile's store for one offline operation, unopened: its PostgreSQL
        database (a small pool; an older schema is refused, not migrated: the nodes or
        `spoolbox store migrate` do that) or its SQLite file."""
        settings = self.profile.store
        if self._on_postgres():
            from ..store.postgres_open import postgres_store

            return postgres_store(settings.dsn, settings.dsn_missing, pool_size=2, migrate=False)
        from ..store.sqlite import SQLiteStore

        return SQLiteStore(
            self._store_path(),
            synchronous=settings.synchronous,
            progress_synchronous=settings.progress_synchronous,
        )

    def _offline(self, fn: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
        # Imported here: a submit to SQLite (the common case) runs a plain transaction
        # instead (_offline_run) and needs neither the async store nor an event loop.
        import asyncio

        async def run() -> T:
            store = self._async_store()
            await store.open()
            try:
                return await fn(store)
            finally:
                await store.close()

        try:
            if self._kept is not None and self._on_postgres():
                return self._kept_async().run(fn)
            return asyncio.run(run())
        except UnknownMessage as exc:
            raise NotFound(str(exc)) from None
        except IllegalTransition as exc:
            raise Conflict(str(exc)) from None
        except selection.AmbiguousId as exc:
            raise ClientError(str(exc), BAD_REQUEST) from None
        except ApiError as exc:
            raise error_from(exc.code, str(exc)) from None

    def _either(
        self,
        op: str,
        args: dict[str, Any],
        offline: bool,
        fn: Callable[[Store], Coroutine[Any, Any, T]],
    ) -> T:
        """``op`` through the daemon; when none runs (and ``offline``), ``fn`` on the
        store, which answers as the daemon would (:mod:`.selection`)."""
        try:
            result: T = self.call(op, **args)
            return result
        except DaemonNotRunning:
            if not offline:
                raise
        return self._offline(fn)

    # -- the API ----------------------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("ping")
        return result

    def ready(self) -> bool:
        """Whether the daemon runs and has started everything (its listeners, delivery
        workers, maildrop and web page: systemd's READY=1); DaemonNotRunning if it
        does not run."""
        return bool(self.ping().get("ready"))

    def running(self) -> bool:
        try:
            self.ping()
        except DaemonNotRunning:
            return False
        return True

    def submit(self, message: NewMessage, *, fallback: bool = True) -> dict[str, Any]:
        """Submit; returns ``{"id", "state", "via"}`` (via: "daemon", "store", or
        "maildrop" with state "dropped": :mod:`spoolbox.api.maildrop`)."""
        message = self._here(message)
        args = _message_args(message, content=False)
        result = self._submit_via("submit", args, fallback, [message], content=message.content)
        ids = result.pop("ids", None)
        return result if ids is None else {"id": ids[0], **result}

    def _submit_via(
        self,
        op: str,
        args: dict[str, Any],
        fallback: bool,
        messages: Sequence[NewMessage],
        content: bytes | None = None,
    ) -> dict[str, Any]:
        """``op`` through the daemon; else, with ``fallback``, ``messages`` committed
        to the store (:meth:`_put`): when no daemon runs, or when the request is too
        large for one line (the daemon's router finds what is in the store within
        policy.router_interval, at once on PostgreSQL)."""
        try:
            result: dict[str, Any] = self._call(op, args, content)
            return result
        except DaemonNotRunning as exc:
            if not fallback:
                raise
            cause: ClientError = exc
            note = "the daemon is not running: queued in the store; it is sent when it starts"
            if self._on_postgres():
                note = (
                    "the daemon is not running: queued in the PostgreSQL store; a node "
                    "running on it sends it now, else the first that starts"
                )
        except RequestTooLarge as exc:
            if not fallback:
                raise
            cause = exc
            note = "too large for the local API: queued in the store; the daemon sends it"
        try:
            ids = self._put(op, messages)  # refuses first what the daemon would refuse
        except PermissionError as exc:
            if not self._store_of_another_user():
                raise  # an OS error of its own (a data directory that cannot be made)
            # Not the store's owner: only the daemon can queue for this user, or take
            # what it leaves in the maildrop.
            why = f"{exc.filename or self.profile.store.path}: {exc.strerror or exc}"
            return self._drop(
                messages, f"{cause}; and this user may not write the store itself ({why})"
            )
        return {"ids": ids, "state": str(MessageState.QUEUED), "via": "store", "note": note}

    def _drop(self, messages: Sequence[NewMessage], why: str) -> dict[str, Any]:
        """Leave ``messages`` in the maildrop (``[daemon] maildrop``), or raise
        :class:`StoreNotWritable` saying ``why`` nothing was queued."""
        directory = self.profile.daemon.maildrop
        if directory is None:
            raise StoreNotWritable(f"{why}: nothing was queued")
        from .maildrop import drop

        try:
            drop(directory, messages)
        except OSError as exc:
            raise StoreNotWritable(
                f"{why}, nor leave it in the maildrop ({exc.filename or directory}: "
                f"{exc.strerror or exc}): nothing was queued"
            ) from None
        return {
            "ids": [m.id for m in messages],
            "state": "dropped",
            "via": "maildrop",
            "note": f"the daemon is not running: left in the maildrop {directory}; it is "
            "queued when the daemon starts",
        }

    def _store_of_another_user(self) -> bool:
        """Whether the store's directory exists and belongs to another user (a
        service's, this user a member of its ``socket_group``)."""
        try:
            return self.profile.store.path.parent.stat().st_uid != os.geteuid()
        except OSError:
            return False

    def _put(self, op: str, messages: Sequence[NewMessage]) -> list[str]:
        """Commit ``messages`` to the store in one durable transaction, unrouted (the
        router routes them), after the refusal the daemon would make; their ids."""
        self._refuse_unroutable(messages)
        lifetime = self.profile.spooler.policy.lifetime
        if not self._on_postgres():

            def put(conn: sqlite3.Connection) -> list[str]:
                infos = transactions.submit_many(conn, messages, now=time.time(), lifetime=lifetime)
                return [info.id for info in infos]

            return self._offline_run(op, put)

        async def put_async(store: Store) -> list[str]:
            infos = await store.submit_many(messages, now=time.time(), lifetime=lifetime)
            return [info.id for info in infos]

        return self._offline(put_async)

    def submit_many(
        self, messages: Sequence[NewMessage], *, fallback: bool = True
    ) -> dict[str, Any]:
        """Submit all of ``messages`` in one durable transaction, or none (see
        :meth:`spoolbox.Spooler.submit_many`); returns ``{"ids", "state", "via"}``.
        At most ``MAX_SUBMIT_MANY`` (10,000) messages a call."""
        messages = [self._here(m) for m in messages]
        args = {"messages": [_message_args(m) for m in messages]}
        return self._submit_via("submit_many", args, fallback, messages)

    def _here(self, message: NewMessage) -> NewMessage:
        """``message`` with each recipient at this host's own name (``root@localhost``)
        as the profile's ``[local_names]`` makes it (``MAILDIR:root``), as sendmail and
        the SMTP listener take it."""
        rule = self.profile.local_names
        if rule is None:
            return message
        found: dict[Address, str | None] = {}  # each recipient once, as first reached
        # (originals() once: original_of() looks through every original, per recipient)
        for r, given in zip(message.recipients, message.originals(), strict=True):
            for address, original in with_originals(rule.stands_for(r), r, given):
                found.setdefault(address, original)
        if list(found) == list(message.recipients):
            return message
        return replace(
            message,
            recipients=tuple(found),
            original_recipients=tuple((a, o) for a, o in found.items() if o is not None),
        )

    def _refuse_unroutable(self, messages: Sequence[NewMessage]) -> None:
        """Without the daemon, the rule it applies, on the profile's declared address
        types (a transport without ``address_types`` could serve anything: nothing is
        refused for it)."""
        error = unroutable_error(self.profile.spooler.declared_routes(), messages)
        if error is not None:
            raise UnroutableRecipient(error)

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.call("status")["rows"]
        return rows

    def watch(self) -> Iterator[dict[str, Any]]:
        """Status changes as they happen: ``{"event": "status", "row": {...}}`` and
        ``{"event": "removed", "name": ...}``; the current rows come first."""
        return self.events("watch")

    def queue(
        self,
        *,
        state: str | None = None,
        limit: int = 100,
        offline: bool = True,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """The messages of :meth:`queue_listing` (without the counts)."""
        listing = self.queue_listing(state=state, limit=limit, offline=offline, **filters)
        msgs: list[dict[str, Any]] = listing["messages"]
        return msgs

    def queue_listing(
        self,
        *,
        states: Sequence[str] | None = None,
        state: str | None = None,
        transport: str | None = None,
        recipient: str | None = None,
        limit: int | None = 100,
        all: bool = False,
        offline: bool = True,
    ) -> dict[str, Any]:
        """Messages newest first: by default unfinished ones (queued, active, deferred,
        hold); ``states``, ``transport`` (routed to), ``recipient`` (address contains)
        filter, ``all`` lists every queue.  Returns ``{"messages", "total", "more"}``;
        each message has its ``short_id``, its shortest unique prefix."""
        args: dict[str, Any] = {
            "states": list(states) if states else None,
            "state": state,
            "transport": transport,
            "recipient": recipient,
            "limit": limit,
            "all": all,
        }
        args = {k: v for k, v in args.items() if v is not None}

        async def listing(store: Store) -> dict[str, Any]:
            return await selection.queue_list(store, args, now=time.time())

        return self._either("queue.list", args, offline, listing)

    def select(
        self,
        ids: Sequence[str] = (),
        *,
        states: Sequence[str] | None = None,
        transport: str | None = None,
        offline: bool = True,
    ) -> list[str]:
        """The full ids that ``ids`` (unique prefixes, or ``"ALL"``) or the filters name."""
        args: dict[str, Any] = {"ids": list(ids)}
        if states:
            args["states"] = list(states)
        if transport is not None:
            args["transport"] = transport

        async def choose(store: Store) -> dict[str, Any]:
            return await selection.queue_select(store, args, now=time.time())

        found: list[str] = self._either("queue.select", args, offline, choose)["ids"]
        return found

    def purge(
        self,
        *,
        states: Sequence[str] = (),
        older_than: float | None = None,
        dry_run: bool = False,
        offline: bool = True,
    ) -> dict[str, Any]:
        """Delete finished messages (``states``: of these queues; ``older_than``:
        finished that many seconds ago, default the profile's retention); returns
        ``{"removed", "ids", "dry_run"}``."""
        args: dict[str, Any] = {"states": list(states), "dry_run": dry_run}
        if older_than is not None:
            args["older_than"] = older_than
        retention = self.profile.store.retention

        async def purge(store: Store) -> dict[str, Any]:
            return await selection.queue_purge(store, args, now=time.time(), retention=retention)

        result: dict[str, Any] = self._either("queue.purge", args, offline, purge)
        return result

    def show(self, message_id: str, *, offline: bool = True) -> dict[str, Any]:
        retention = self.profile.store.retention

        async def one(store: Store) -> dict[str, Any]:
            return await selection.show(store, message_id, now=time.time(), retention=retention)

        result: dict[str, Any] = self._either("queue.show", {"id": message_id}, offline, one)
        return result

    def _action(self, action: str, message_id: str, offline: bool) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self.call(f"queue.{action}", id=message_id)
            return result
        except DaemonNotRunning:
            if not offline:
                raise

        async def act(store: Store) -> dict[str, Any]:
            now = time.time()
            extra: dict[str, Any] = {}
            if action == "hold":
                await store.hold(message_id)
            elif action == "release":
                await store.release(message_id, now=now)
            elif action == "cancel":
                extra["cancelled"] = await selection.unfinished(store, message_id)
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

        async def listing(store: Store) -> list[dict[str, Any]]:
            return [inbox_to_dict(entry) for entry in await store.list_inbox(limit=limit)]

        return self._offline(listing)

    def inbox_read(self, entry_id: str, *, offline: bool = True) -> bytes:
        try:
            result = self.call("inbox.read", id=entry_id)
            return base64.b64decode(result["content"])
        except DaemonNotRunning:
            if not offline:
                raise

        async def read(store: Store) -> bytes:
            return await store.read_inbox(await selection.resolve_inbox(store, entry_id))

        return self._offline(read)

    def inbox_delete(self, ids: Sequence[str], *, offline: bool = True) -> list[str]:
        """Delete inbox entries (ids or unique prefixes); returns the full ids."""
        args: dict[str, Any] = {"ids": list(ids)}

        async def delete(store: Store) -> dict[str, Any]:
            return await selection.inbox_delete(store, args)

        deleted: list[str] = self._either("inbox.delete", args, offline, delete)["deleted"]
        return deleted

    def transports(self) -> list[dict[str, Any]]:
        """The configured transports as the daemon sees them (logged on, address types)."""
        result: list[dict[str, Any]] = self.call("transports")["transports"]
        return result

    def sent_in_windows(self) -> dict[str, int]:
        """Without the daemon: how many messages each transport with a ``max_rate``
        sent within its window's period until now, read from the store (the window
        every process delivering from it shares, kept across restarts).  Nothing when
        no transport has a ``max_rate``, or while the SQLite store does not exist yet
        (it is not made for this: nothing was sent)."""
        from .._core.rate import window_name
        from ..store.cluster import ClusterStore

        limits = {
            t.name: t.max_rate for t in self.profile.spooler.transports if t.max_rate is not None
        }
        if not limits:
            return {}
        if not self._on_postgres() and not self.profile.store.path.exists():
            return dict.fromkeys(limits, 0)

        async def count(store: Store) -> dict[str, int]:
            if not isinstance(store, ClusterStore):  # pragma: no cover - both backends are
                return {}
            now = time.time()
            return {
                name: await store.sends_in_window(window_name(name), period=limit.period, now=now)
                for name, limit in limits.items()
            }

        return self._offline(count)

    def statistics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("statistics")
        return result

    def reload(self) -> dict[str, Any]:
        """Ask the daemon to re-read its profile (as SIGHUP does)."""
        result: dict[str, Any] = self.call("reload")
        return result
