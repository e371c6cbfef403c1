"""The JSON endpoints: everything the page shows, in the local API's own forms.

Each endpoint calls the local API's operation (:func:`spoolbox.daemon.api_ops.dispatch`)
with the arguments it takes, so a row, a message, an inbox entry and a flush report
have one schema (docs/operations.md, "Local API" and "--json"), whether read by
``spoolbox --json``, a client of the socket, or this page.  An :class:`ApiError`
becomes an HTTP status with ``{"error": {"code", "message"}}``.  Secrets are redacted
from every answer.
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .._core.runtime import SPOOLER_ROW
from ..api.wire import BAD_REQUEST, CONFLICT, NOT_FOUND, NOT_RUNNING, ApiError
from ..daemon.api_ops import dispatch
from .context import WebContext
from .flushes import UnknownFlush
from .message_view import attachment, message_view

__all__ = ["ACTIONS", "call", "json_of"]

#: the queue's actions: path word -> local API op
ACTIONS = {
    "hold": "queue.hold",
    "release": "queue.release",
    "cancel": "queue.cancel",
    "retry": "queue.retry",
}
_STATUS = {BAD_REQUEST: 400, NOT_FOUND: 404, CONFLICT: 409, NOT_RUNNING: 503}


def _context(request: Request) -> WebContext:
    context = request.app.state.context
    assert isinstance(context, WebContext)
    return context


def json_of(context: WebContext, value: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(context.redacted(value), status_code=status)


def _error(context: WebContext, code: str, message: str) -> JSONResponse:
    return json_of(context, {"error": {"code": code, "message": message}}, _STATUS.get(code, 500))


async def call(request: Request, op: str, args: dict[str, Any]) -> Any:
    """The local API's ``op``; raises :class:`ApiError`."""
    return await dispatch(_context(request).daemon, op, args)


async def _answer(request: Request, op: str, args: dict[str, Any]) -> Response:
    context = _context(request)
    try:
        return json_of(context, await call(request, op, args))
    except ApiError as exc:
        return _error(context, exc.code, str(exc))


async def status(request: Request) -> Response:
    return await _answer(request, "status", {})


async def statistics(request: Request) -> Response:
    return await _answer(request, "statistics", {})


def _queue_args(request: Request) -> dict[str, Any]:
    """``queue.list``'s arguments from the query: ``state`` (repeatable),
    ``transport``, ``recipient``, ``all``, ``limit``."""
    query = request.query_params
    args: dict[str, Any] = {}
    states = [s for s in query.getlist("state") if s]
    if states:
        args["states"] = states
    for key in ("transport", "recipient"):
        if query.get(key):
            args[key] = query[key]
    if query.get("all") in ("1", "true", "yes"):
        args["all"] = True
    if query.get("limit"):
        try:
            args["limit"] = int(query["limit"])
        except ValueError:
            raise ApiError(BAD_REQUEST, "limit must be an integer") from None
    return args


async def queue(request: Request) -> Response:
    try:
        args = _queue_args(request)
    except ApiError as exc:
        return _error(_context(request), exc.code, str(exc))
    return await _answer(request, "queue.list", args)


async def message(request: Request) -> Response:
    return await _answer(request, "queue.show", {"id": request.path_params["id"]})


async def action(request: Request) -> Response:
    op = ACTIONS.get(request.path_params["action"])
    if op is None:
        known = ", ".join(ACTIONS)
        return _error(_context(request), NOT_FOUND, f"no such action; known: {known}")
    return await _answer(request, op, {"id": request.path_params["id"]})


async def inbox(request: Request) -> Response:
    return await _answer(request, "inbox.list", {"limit": 200})


async def _raw_inbox(request: Request) -> bytes:
    read = await call(request, "inbox.read", {"id": request.path_params["id"]})
    return base64.b64decode(read["content"])


async def inbox_message(request: Request) -> Response:
    """An inbox entry as text: ``{"id", "view": message_view(...)}``."""
    context = _context(request)
    try:
        raw = await _raw_inbox(request)
    except ApiError as exc:
        return _error(context, exc.code, str(exc))
    return json_of(context, {"id": request.path_params["id"], "view": message_view(raw)})


async def inbox_attachment(request: Request) -> Response:
    """An attachment, always as a download (``application/octet-stream``): a browser
    never renders what a message holds."""
    context = _context(request)
    try:
        raw = await _raw_inbox(request)
        index = int(request.path_params["index"])
    except ApiError as exc:
        return _error(context, exc.code, str(exc))
    found = attachment(raw, index)
    if found is None:
        return _error(context, NOT_FOUND, f"no attachment {index} in this message")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in found.filename)[:100]
    return Response(
        found.data,
        media_type="application/octet-stream",
        headers={"content-disposition": f'attachment; filename="{safe or "attachment"}"'},
    )


async def reports(request: Request) -> Response:
    """The delivery reports the spooler made: those in the inbox (for local senders,
    and double bounces) and those queued to remote senders."""
    context = _context(request)
    try:
        entries = await call(request, "inbox.list", {"limit": 200})
        queued = await call(request, "queue.list", {"all": True, "limit": 1000})
    except ApiError as exc:
        return _error(context, exc.code, str(exc))
    return json_of(
        context,
        {
            "inbox": [e for e in entries["messages"] if e["transport"] == SPOOLER_ROW],
            "sent": [m for m in queued["messages"] if m["is_report"]],
        },
    )


async def scheduler(request: Request) -> Response:
    """The scheduler's figures: the slice meter, the critical sections, the
    watchdog's last stalls (provider, seconds) and the loop's lag."""
    context = _context(request)
    try:
        stats = await call(request, "statistics", {})
    except ApiError as exc:
        return _error(context, exc.code, str(exc))
    return json_of(
        context,
        {
            "scheduler": stats.get("scheduler", {}),
            "critical_sections": stats.get("critical_sections", {}),
            "stalls": [
                {"transport": name, "seconds": seconds}
                for name, seconds in stats.get("stalls", [])[-20:]
            ],
            "loop_lag": context.lag.figures(),
        },
    )


async def flush_start(request: Request) -> Response:
    context = _context(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _error(context, BAD_REQUEST, 'the body is a JSON object: {"mode", "transport"}')
    transport = body.get("transport") or None
    mode = body.get("mode", "both")
    if not isinstance(mode, str) or not (transport is None or isinstance(transport, str)):
        return _error(context, BAD_REQUEST, "mode and transport are strings")
    spooler = await context.daemon.current()
    try:
        started = await context.flushes.start(spooler, mode=mode, transport=transport)
    except ValueError as exc:
        return _error(context, BAD_REQUEST, str(exc))
    except KeyError as exc:
        return _error(context, NOT_FOUND, str(exc.args[0]))
    return json_of(context, started, 202)


async def flush_state(request: Request) -> Response:
    context = _context(request)
    try:
        return json_of(context, context.flushes.state(request.path_params["id"]))
    except UnknownFlush:
        return _error(context, NOT_FOUND, "no such flush")


async def flush_cancel(request: Request) -> Response:
    context = _context(request)
    try:
        context.flushes.cancel(request.path_params["id"])
    except UnknownFlush:
        return _error(context, NOT_FOUND, "no such flush")
    return json_of(context, context.flushes.state(request.path_params["id"]))
