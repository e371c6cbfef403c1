"""The local API server: the daemon's Unix socket, its connections and streaming ops.

One request object per line, answers one per line (docs/operations.md, "Local API";
the shapes are :mod:`spoolbox.api.wire`).  A request line is read up to
:data:`~spoolbox.api.wire.MAX_REQUEST_LINE`; a ``submit``'s message follows its line as
``content_length`` raw bytes.  Plain operations go to
:func:`spoolbox.daemon.api_ops.dispatch`; ``flush`` and ``watch`` stream events here
until they end.  Every answer has the profile's secrets redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .._core.cluster_view import RemoteRows, start_cluster_flush
from .._private import private_dir
from ..api.wire import (
    BAD_REQUEST,
    CONTENT_LIMIT,
    INTERNAL,
    MAX_REQUEST_LINE,
    NOT_FOUND,
    STREAMING_OPS,
    TOO_LARGE,
    ApiError,
    answer,
    check_version,
    decode_request,
    event,
    flush_report_to_dict,
    optional,
    refusal,
)
from ..profile import Profile, ProfileError
from ..store import StoreError
from .api_ops import DaemonView, dispatch

__all__ = ["LocalApiServer"]

log = logging.getLogger("spoolbox.daemon")
#: After a request line over the limit: how long to wait for more of it to drop.
_DROP_WAIT = 5.0
_CONTENT_BLOCK = 64 * 1024  # a submit's content is read in blocks of this size
#: Seconds between two reads of the other nodes' rows (``watch``, a cluster flush).
_CLUSTER_POLL = 0.25
_WATCH_POLL = 1.0


class LocalApiServer:
    """Serves the local API of ``daemon`` on the Unix socket at ``path``: mode 0600,
    or 0660 and owned by ``group`` when one is given (``[daemon] socket_group``: its
    members may submit, e.g. a web application's user)."""

    def __init__(self, daemon: DaemonView, path: Path, *, group: str | None = None) -> None:
        self._daemon = daemon
        self._path = path
        self._group = group
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._watchers: set[Any] = set()

    async def start(self) -> None:
        path = self._path
        gid = self._gid()
        private_dir(path.parent)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # the daemon holds the lock: a socket left here is stale
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(path), limit=MAX_REQUEST_LINE
            )
        finally:
            os.umask(old)
        if gid is None:
            os.chmod(path, 0o600)
        else:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)

    def _gid(self) -> int | None:
        """The gid of ``[daemon] socket_group``; a ProfileError naming a group that
        does not exist."""
        if self._group is None:
            return None
        try:
            return grp.getgrnam(self._group).gr_gid
        except KeyError:
            raise ProfileError(
                self._daemon.profile.path,
                f"no such group {self._group!r} (create it: groupadd --system {self._group})",
                "[daemon] socket_group",
            ) from None

    async def stop(self) -> None:
        """Stop listening, end the connections and remove the socket; idempotent."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            os.unlink(self._path)

    def close_watchers(self) -> None:
        """End the ``watch`` subscriptions on the spooler (a reload replaces it: they
        subscribe again to the new one)."""
        for subscription in list(self._watchers):
            subscription.close()

    @property
    def _profile(self) -> Profile:
        return self._daemon.profile

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
                request_id: Any = None
                in_sync = True  # False: a content of unknown length follows the line
                try:
                    request = decode_request(line)
                    is_object = isinstance(request, dict)
                    request_id = request.get("id") if is_object else None
                    args = (request.get("args") or {}) if is_object else {}
                    # Raw content follows the line: a refusal before it is read leaves
                    # the connection out of step, so it is closed after the answer.
                    in_sync = not (isinstance(args, dict) and "content_length" in args)
                    if not is_object or not isinstance(request.get("op"), str):
                        raise ApiError(BAD_REQUEST, "a request is an object with an 'op'")
                    check_version(request)
                    if not isinstance(args, dict):
                        raise ApiError(BAD_REQUEST, "'args' must be an object")
                    if "content_length" in args:
                        args["content"] = await _read_content(reader, args.pop("content_length"))
                        in_sync = True
                    op = request["op"]
                    if op in STREAMING_OPS:
                        # A streaming request takes the connection to its end.
                        await self._stream(op, request_id, args, reader, writer)
                        return
                    reply = answer(request_id, await dispatch(self._daemon, op, args))
                except ApiError as exc:
                    log.debug("local API: refused (%s): %s", exc.code, exc)
                    reply = refusal(request_id, exc.code, str(exc))
                except (ConnectionError, asyncio.IncompleteReadError):
                    return
                except Exception as exc:
                    log.exception("API request failed")
                    reply = refusal(request_id, INTERNAL, f"{type(exc).__name__}: {exc}")
                await self._send(writer, reply)
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
            await self._send(writer, refusal(None, TOO_LARGE, message))
            dropped = 0
            while dropped < MAX_REQUEST_LINE:
                chunk = await asyncio.wait_for(reader.read(1 << 16), _DROP_WAIT)
                if not chunk or b"\n" in chunk:
                    break
                dropped += len(chunk)

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        writer.write(json.dumps(_redact(message, self._profile)).encode() + b"\n")
        await writer.drain()

    # -- streaming ops --------------------------------------------------------------------
    async def _stream(
        self,
        op: str,
        request_id: Any,
        args: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if op == "watch":
            await self._watch(request_id, reader, writer)
        else:
            await self._flush(request_id, args, reader, writer)

    async def _watch(
        self, request_id: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        eof = asyncio.ensure_future(reader.read())  # the client closes to stop watching
        try:
            while not eof.done():
                spooler = await self._daemon.current()
                subscription = spooler.subscribe(maxsize=1000, name="api-watch")
                self._watchers.add(subscription)
                remote = RemoteRows(spooler.store, spooler.owner)
                try:
                    async with subscription:
                        nxt = asyncio.ensure_future(anext(subscription))
                        while True:
                            # The other nodes' rows are read from the store now and then.
                            timer = asyncio.ensure_future(asyncio.sleep(_WATCH_POLL))
                            try:
                                await asyncio.wait(
                                    {nxt, eof, timer}, return_when=asyncio.FIRST_COMPLETED
                                )
                            finally:
                                timer.cancel()
                            if eof.done():
                                nxt.cancel()
                                return
                            if not nxt.done():
                                for node, name, row in await remote.changes(time.time()):
                                    await self._send(
                                        writer, _row_event(request_id, node, name, row)
                                    )
                                continue
                            try:
                                change = nxt.result()
                            except StopAsyncIteration:
                                break  # the spooler was replaced (reload): subscribe again
                            nxt = asyncio.ensure_future(anext(subscription))
                            row = None if change.new is None else change.new.to_dict()
                            await self._send(
                                writer, _row_event(request_id, spooler.owner, change.name, row)
                            )
                finally:
                    self._watchers.discard(subscription)
        finally:
            eof.cancel()

    async def _flush(
        self,
        request_id: Any,
        args: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        spooler = await self._daemon.current()
        transport = optional(args, "transport", str)
        upload, download = optional(args, "upload", bool), optional(args, "download", bool)
        timeout = optional(args, "timeout", float)  # None: the profile's flush_deadline
        if timeout is not None and not 0 < timeout < 1e9:
            await self._send(
                writer,
                refusal(request_id, BAD_REQUEST, f"timeout must be positive, not {timeout}"),
            )
            return
        try:
            # This node's flush starts at once; the other nodes serving the transport
            # are asked through the store and their progress adds up (cluster_view).
            handle = await start_cluster_flush(
                spooler,
                upload=True if upload is None else upload,
                download=True if download is None else download,
                transport=transport or None,
                deadline=timeout,
            )
        except KeyError as exc:
            await self._send(writer, refusal(request_id, NOT_FOUND, exc.args[0]))
            return
        names = set(handle.transports)
        await self._send(writer, event(request_id, "started", transports=handle.transports))

        async def commands() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    handle.cancel()  # the client went away: cancel the flush
                    return
                with contextlib.suppress(ValueError):
                    request = json.loads(line)
                    if isinstance(request, dict) and request.get("op") == "cancel":
                        handle.cancel(request.get("transport") or None)

        async def progress(row: dict[str, Any]) -> None:
            await self._send(
                writer,
                event(request_id, "progress", current=handle.current, row=handle.combined_row(row)),
            )

        command_task = asyncio.ensure_future(commands())
        done = asyncio.ensure_future(handle.wait())
        try:
            async with spooler.subscribe(maxsize=10000, name="api-flush") as subscription:
                local: dict[str, dict[str, Any]] = {}
                nxt = asyncio.ensure_future(anext(subscription))
                next_poll = time.monotonic()
                try:
                    while not done.done():
                        waits: set[asyncio.Future[Any]] = {nxt, done}
                        timer = asyncio.ensure_future(
                            asyncio.sleep(max(0.0, next_poll - time.monotonic()))
                        )
                        if handle.remote:
                            waits.add(timer)
                        try:
                            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            timer.cancel()
                        if handle.remote and time.monotonic() >= next_poll:
                            # The other nodes' progress, added to this node's rows.
                            next_poll = time.monotonic() + _CLUSTER_POLL
                            with contextlib.suppress(StoreError):
                                await handle.poll()
                            for row in local.values():
                                await progress(row)
                        if not nxt.done():
                            continue
                        try:
                            change = nxt.result()
                        except (StopAsyncIteration, Exception):
                            break
                        nxt = asyncio.ensure_future(anext(subscription))
                        if change.new is not None and change.name in names:
                            local[change.name] = change.new.to_dict()
                            await progress(local[change.name])
                finally:
                    nxt.cancel()
            report = await done
            await self._send(writer, answer(request_id, flush_report_to_dict(report)))
        finally:
            command_task.cancel()
            await asyncio.gather(command_task, return_exceptions=True)
            if not done.done():
                handle.cancel()
                done.cancel()


def _row_event(request_id: Any, node: str, name: str, row: dict[str, Any] | None) -> dict[str, Any]:
    """A ``watch`` event: a row of a node changed, or went away."""
    if row is None:
        return event(request_id, "removed", name=name, node=node)
    return event(request_id, "status", row={**row, "node": node})


async def _read_content(reader: asyncio.StreamReader, length: Any) -> bytes:
    """The ``content_length`` bytes that follow a request's line (a ``submit``'s
    message), held once: read a block at a time into one buffer."""
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= CONTENT_LIMIT:
        raise ApiError(BAD_REQUEST, f"content_length must be an integer from 0 to {CONTENT_LIMIT}")
    buffer = io.BytesIO()
    while (left := length - buffer.tell()) > 0:
        block = await reader.read(min(left, _CONTENT_BLOCK))
        if not block:
            raise asyncio.IncompleteReadError(b"", length)
        buffer.write(block)
    return buffer.getvalue()


def _redact(value: Any, profile: Profile) -> Any:
    if isinstance(value, str):
        return profile.redact(value)
    if isinstance(value, dict):
        return {key: _redact(item, profile) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, profile) for item in value]
    return value
