"""The Starlette application: routes, the page, the event stream, ``/metrics``.

Every route is behind :class:`~.security.SecurityMiddleware` (token, CSRF, headers).
Actions are POSTs; everything else is a GET that changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from . import api
from .context import WebContext
from .events import status_events
from .metrics import CONTENT_TYPE, Metrics
from .page import render_page
from .security import SecurityMiddleware

__all__ = ["STATIC", "build_app"]

STATIC = Path(__file__).parent / "static"


def build_app(context: WebContext, token: str, metrics: Metrics) -> Starlette:
    """The application serving ``context``'s daemon, opened by ``token``."""

    async def page(request: Request) -> Response:
        spooler = await context.daemon.current()
        # Every node's rows, as the status op (and `spoolbox status`) has them.
        rows = context.redacted((await api.call(request, "status", {}))["rows"])
        html = render_page(rows=rows, csrf=context.csrf, node=spooler.owner, version=__version__)
        return HTMLResponse(html)

    async def events(request: Request) -> Response:
        return StreamingResponse(
            status_events(context),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    async def scrape(request: Request) -> Response:
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE)

    routes = [
        Route("/", page),
        Route("/events", events),
        Route("/metrics", scrape),
        Route("/api/status", api.status),
        Route("/api/statistics", api.statistics),
        Route("/api/queue", api.queue),
        Route("/api/queue/{id}", api.message),
        Route("/api/queue/{id}/{action}", api.action, methods=["POST"]),
        Route("/api/inbox", api.inbox),
        Route("/api/inbox/{id}", api.inbox_message),
        Route("/api/inbox/{id}/attachments/{index:int}", api.inbox_attachment),
        Route("/api/reports", api.reports),
        Route("/api/scheduler", api.scheduler),
        Route("/api/flush", api.flush_start, methods=["POST"]),
        Route("/api/flush/{id}", api.flush_state),
        Route("/api/flush/{id}/cancel", api.flush_cancel, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityMiddleware, token=token)])
    app.state.context = context
    return app
