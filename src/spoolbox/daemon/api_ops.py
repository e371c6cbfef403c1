"""The local API's plain operations: one function per ``op``, in the table :data:`OPS`.

Each takes the running daemon (as the little it needs of it, :class:`DaemonView`) and
the request's ``args``, and returns the ``result`` (docs/operations.md, "Local API").
Errors of the spooler and the store become the API's error codes in
:func:`dispatch`.  The streaming operations (``flush``, ``watch``) hold the
connection and live in :mod:`spoolbox.daemon.api_server`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .. import (
    AddressError,
    MessageError,
    NewMessage,
    RateLimit,
    Spooler,
    StoreError,
    StoreFull,
    UnknownMessage,
    __version__,
)
from .._core.cluster_view import cluster_rows
from .._core.rate import window_name
from ..api import selection
from ..api.wire import (
    BAD_REQUEST,
    CONFLICT,
    MAX_SUBMIT_MANY,
    NOT_FOUND,
    PROFILE,
    PROTOCOL_VERSION,
    STORE,
    STORE_FULL,
    UNROUTABLE,
    ApiError,
    inbox_to_dict,
    limit_of,
    message_from_args,
    recipient_to_dict,
    required,
    unroutable_error,
)
from ..model import IllegalTransition, MessageState
from ..profile import Profile
from ..store.cluster import ClusterStore

__all__ = ["OPS", "DaemonView", "dispatch"]

log = logging.getLogger("spoolbox.daemon")


class DaemonView(Protocol):
    """What the operations read of the daemon, and the one thing they ask of it."""

    profile: Profile
    started_at: float
    ready_at: float | None
    reloads: int
    reload_attempts: int
    reload_error: str | None

    async def current(self) -> Spooler:
        """The running spooler (waits while a reload swaps it)."""

    async def reload(self) -> bool:
        """Re-read the profile and restart on it; False if it is invalid."""

    def listener_statistics(self) -> dict[str, Any]:
        """Each running listener's statistics, by name."""


async def dispatch(daemon: DaemonView, op: str, args: dict[str, Any]) -> Any:
    """The result of the plain operation ``op``; raises :class:`ApiError`."""
    handler = OPS.get(op)
    if handler is None:
        raise ApiError(BAD_REQUEST, f"unknown op {op!r}; known: {', '.join(sorted(OPS))}")
    log.debug("local API: %s %s", op, sorted(args))
    try:
        return await handler(daemon, args)
    except UnknownMessage as exc:
        raise ApiError(NOT_FOUND, str(exc)) from None
    except selection.AmbiguousId as exc:
        raise ApiError(BAD_REQUEST, str(exc)) from None
    except IllegalTransition as exc:
        raise ApiError(CONFLICT, str(exc)) from None
    except (MessageError, AddressError) as exc:
        raise ApiError(BAD_REQUEST, str(exc)) from None
    except StoreFull as exc:
        raise ApiError(STORE_FULL, str(exc)) from None
    except StoreError as exc:
        raise ApiError(STORE, str(exc)) from None


async def ping(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    return {
        "pid": os.getpid(),
        "node": spooler.owner,
        "profile": str(daemon.profile.path),
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "started_at": daemon.started_at,
        "ready": daemon.ready_at is not None,
        "ready_at": daemon.ready_at,
        "reloads": daemon.reloads,
        "reload_attempts": daemon.reload_attempts,
        "reload_error": daemon.reload_error,
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    }


async def submit(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    message = message_from_args(args)
    _refuse_unroutable(spooler, [message])
    info = await spooler.submit(message)
    return {"id": info.id, "state": str(MessageState.QUEUED), "via": "daemon"}


async def submit_many(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    items = required(args, "messages", list)
    if len(items) > MAX_SUBMIT_MANY:
        raise ApiError(
            BAD_REQUEST,
            f"{len(items)} messages in one submit_many; at most {MAX_SUBMIT_MANY}",
        )
    messages: list[NewMessage] = []
    for index, item in enumerate(items):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ApiError(BAD_REQUEST, f"{where} must be an object")
        try:
            messages.append(message_from_args(item))
        except ApiError as exc:
            raise ApiError(exc.code, f"{where}: {exc}") from None
        except (MessageError, AddressError, ValueError) as exc:
            raise ApiError(BAD_REQUEST, f"{where}: {exc}") from None
    _refuse_unroutable(spooler, messages)
    infos = await spooler.submit_many(messages)
    return {"ids": [info.id for info in infos], "state": str(MessageState.QUEUED), "via": "daemon"}


def _refuse_unroutable(spooler: Spooler, messages: list[NewMessage]) -> None:
    """A recipient the router would fail at once refuses the submission (issue 15)."""
    error = unroutable_error(spooler.routing_table(), messages)
    if error is not None:
        raise ApiError(UNROUTABLE, error)


async def status(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    local = [row.to_dict() for row in spooler.status]
    # Every node's rows (this one's first), each with its node's name.
    rows = await cluster_rows(spooler.store, node=spooler.owner, local=local, now=time.time())
    # "ready": everything has started (the API answers before the listeners, the
    # workers, the maildrop and the web page start).
    # "version": the spoolbox this daemon runs (a client installed later may differ).
    return {"rows": rows, "ready": daemon.ready_at is not None, "version": __version__}


async def statistics(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    raw = dict(spooler.statistics())
    store_stats = getattr(spooler.store, "statistics", None)
    if callable(store_stats):
        raw["store"] = store_stats()
    raw["listeners"] = daemon.listener_statistics()
    stats: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    return stats


async def queue_list(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    return await selection.queue_list(spooler.store, args, now=spooler.clock.now())


async def queue_select(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    return await selection.queue_select(spooler.store, args, now=spooler.clock.now())


async def queue_purge(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    return await selection.queue_purge(
        spooler.store, args, now=spooler.clock.now(), retention=spooler.config.retention
    )


async def queue_show(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    now = spooler.clock.now()
    prefix = required(args, "id", str)
    shown = await selection.show(spooler.store, prefix, now=now, retention=spooler.config.retention)
    await _why_waiting(spooler, shown["id"], shown["recipients"])
    return shown


async def _why_waiting(spooler: Spooler, message_id: str, recipients: list[dict[str, Any]]) -> None:
    """Mark each queued recipient whose transport's ``max_rate`` window is full now,
    and each one claimed here whose job waits for a destination at the transport's
    ``destination_concurrency``: ``waiting`` says so (the first stays queued,
    unclaimed, until the window has room; the second goes when a message to that
    destination ends)."""
    full: dict[str, str | None] = {}
    now = spooler.clock.now()
    for recipient in recipients:
        route, state = recipient["route"], recipient["state"]
        if route is None or state not in ("queued", "active"):
            continue
        try:
            lane = spooler.host(route).outbound
        except KeyError:
            continue  # a transport no longer in the profile
        if state == "active":
            why = lane.destination_wait(message_id, recipient["index"])
        else:
            if route not in full:
                full[route] = await _rate_full(spooler, route)
            why = full[route]
            if why is None and (recipient["retry_at"] or 0.0) <= now:
                why = lane.destination_full(recipient["address"].partition(":")[2])
        if why is not None:
            recipient["waiting"] = why


async def _rate_full(spooler: Spooler, name: str) -> str | None:
    """``max_rate 14/s reached (14 sent in the last 1 s)`` when transport ``name``'s
    window is full now, None otherwise."""
    try:
        limit = spooler.host(name).entry.max_rate
    except KeyError:
        return None
    if limit is None:
        return None
    used = (await _rate_columns(spooler, name, limit))["sent_in_window"]
    if used < limit.count:
        return None
    return f"max_rate {limit} reached ({used} sent in the last {limit.period_text})"


async def _after(spooler: Spooler, message_id: str, **extra: Any) -> dict[str, Any]:
    state = await spooler.store.state_of(message_id, now=spooler.clock.now())
    return {"id": message_id, "state": str(state), **extra}


async def queue_hold(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    message_id = required(args, "id", str)
    await spooler.hold(message_id)
    return await _after(spooler, message_id)


async def queue_release(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    message_id = required(args, "id", str)
    await spooler.release(message_id)
    return await _after(spooler, message_id)


async def queue_cancel(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    message_id = required(args, "id", str)
    cancelled = await selection.unfinished(spooler.store, message_id)
    state = await spooler.cancel(message_id)
    return {"id": message_id, "state": str(state), "cancelled": cancelled}


async def queue_retry(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    message_id = required(args, "id", str)
    retried = await spooler.retry(message_id)
    result = await _after(spooler, message_id, retried=retried)
    if not retried and result["state"] == "queued":
        # Nothing waited for a retry time: say what holds it back (max_rate, or its
        # domain's destination_concurrency), as queue show does.
        recipients = [recipient_to_dict(r) for r in await spooler.store.recipients(message_id)]
        await _why_waiting(spooler, message_id, recipients)
        waiting = [r["waiting"] for r in recipients if "waiting" in r]
        if waiting:
            result["waiting"] = waiting[0]
    return result


async def inbox_list(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    limit = limit_of(args)
    entries = await spooler.store.list_inbox(limit=limit)
    return {"messages": [inbox_to_dict(entry) for entry in entries]}


async def inbox_read(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    entry_id = await selection.resolve_inbox(spooler.store, required(args, "id", str))
    data = await spooler.store.read_inbox(entry_id)
    return {"content": base64.b64encode(data).decode("ascii")}


async def inbox_delete(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    return await selection.inbox_delete(spooler.store, args)


async def transports(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    spooler = await daemon.current()
    out = []
    specs = {str(spec.get("name")): spec.get("provider") for spec in daemon.profile.raw_transports}
    for host in spooler.hosts:
        declared = host.entry.address_types
        types = sorted(host.types) if host.types is not None else list(declared or ())
        provider = type(host.provider)
        out.append(
            {
                "name": host.name,
                "provider": specs.get(host.name, str(host.entry.provider)),
                "class": f"{provider.__module__}:{provider.__qualname__}",
                "logged_on": host.session is not None,
                "address_types": types,
                "address_types_source": "session" if host.types is not None else "profile",
                "outbound": host.entry.outbound,
                "inbound": host.entry.inbound,
                "domains": None if host.entry.domains is None else sorted(host.entry.domains),
                **await _rate_columns(spooler, host.name, host.entry.max_rate),
            }
        )
    return {"transports": out}


async def reload(daemon: DaemonView, args: dict[str, Any]) -> dict[str, Any]:
    if not await daemon.reload():
        raise ApiError(
            PROFILE, daemon.reload_error or "the profile is invalid or failed to start; see the log"
        )
    return {"reloads": daemon.reloads}


_Handler = Callable[[DaemonView, dict[str, Any]], Awaitable[Any]]
#: op -> its function
OPS: dict[str, _Handler] = {
    "ping": ping,
    "submit": submit,
    "submit_many": submit_many,
    "status": status,
    "statistics": statistics,
    "queue.list": queue_list,
    "queue.select": queue_select,
    "queue.purge": queue_purge,
    "queue.show": queue_show,
    "queue.hold": queue_hold,
    "queue.release": queue_release,
    "queue.cancel": queue_cancel,
    "queue.retry": queue_retry,
    "inbox.list": inbox_list,
    "inbox.read": inbox_read,
    "inbox.delete": inbox_delete,
    "transports": transports,
    "reload": reload,
}


async def _rate_columns(spooler: Spooler, name: str, limit: RateLimit | None) -> dict[str, Any]:
    """A transport's ``max_rate`` and how many messages its window holds now (the
    store's, every node's sends, when the store keeps it)."""
    if limit is None:
        return {"max_rate": None, "sent_in_window": None}
    now = spooler.clock.now()
    store = spooler.store
    if isinstance(store, ClusterStore):
        used = await store.sends_in_window(window_name(name), period=limit.period, now=now)
    else:
        window = spooler.rates.window(name, limit)
        used = 0 if window is None else window.used(now)
    return {"max_rate": str(limit), "sent_in_window": used}
