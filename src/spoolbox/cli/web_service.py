"""The web page as a daemon service that follows ``[web]`` across reloads.

At the daemon's start it serves the page if ``[web] enabled``; at a reload that
changes ``[web]`` it stops the page and, if it is still enabled, serves it again with
the new settings (another port, another address): ``spoolbox reload`` switches the
page on or off without a restart.  :mod:`spoolbox.web.server` (the ``web`` extra) is
imported only when the page is on.  A reload whose page cannot be served (the extra
is missing, the port is taken) logs why and leaves the page off; the daemon and its
mail go on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from ..profile import Profile
from ..profile.schema import WebSettings

if TYPE_CHECKING:
    from ..daemon.process import Daemon
    from ..web.server import WebServer

__all__ = ["WebService"]

log = logging.getLogger("spoolbox.daemon")


class WebService:
    """``[web]`` served by ``daemon`` (a :class:`~spoolbox.daemon.process.Service`
    with ``reload``).  Here, not in ``daemon``: ``web`` imports ``daemon``, which may
    not import ``web`` (docs/design.md, "Who starts it")."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._serving: WebSettings | None = None  # the settings of the page served
        self._page: WebServer | None = None

    async def start(self) -> None:
        """Serve the page if the profile enables it; errors propagate (the daemon does
        not start with a page it was told to serve and cannot)."""
        profile = self._daemon.profile
        if profile.web.enabled:
            await self._serve(profile)

    async def reload(self, profile: Profile) -> None:
        """Follow a reloaded profile's ``[web]`` (module doc)."""
        wanted = profile.web if profile.web.enabled else None
        if wanted == self._serving:
            return
        await self.stop()
        if wanted is None:
            log.info("web page stopped ([web] enabled = false)")
            return
        try:
            await self._serve(profile)
        except (ImportError, OSError) as exc:
            log.error("the web page cannot be served, it stays off: %s", _why(exc))

    async def stop(self) -> None:
        page, self._page, self._serving = self._page, None, None
        if page is not None:
            await page.stop()

    async def _serve(self, profile: Profile) -> None:
        from ..web.server import WebServer  # the web extra

        page = WebServer(self._daemon, profile.web, profile.data_dir)
        try:
            await page.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await page.stop()  # what it started before it failed
            raise
        self._page, self._serving = page, profile.web


def _why(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"[web] enabled needs the web extra: pip install 'spoolbox[web]' ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # without "[Errno 98]": the text names the address
    return str(exc)
