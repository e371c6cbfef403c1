"""The webhook transport provider (entry point ``webhook``): reads the options and logs a
session (:mod:`.session`) on.

This module imports no third-party package, so that the entry point loads in an
installation without the ``webhook`` extra: there the logon fails, with the reason in
the transport's status row and log, as :class:`~spoolbox.contract.FailOneProvider`
saying which extra to install.  The options are still checked first, so that a typo
is reported before the missing package.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from spoolbox.contract import FailOneProvider, LogonFlags, StatusCode, Support

from .settings import WebhookSettings

if TYPE_CHECKING:
    from .session import WebhookSession

__all__ = ["MISSING_EXTRA", "WebhookProvider"]

#: The logon's error when httpx (or h2) is not installed.
MISSING_EXTRA = (
    "the webhook transport needs httpx with HTTP/2 support, which is not installed: "
    "pip install 'spoolbox[webhook]'"
)
_EXTRA_PACKAGES = ("httpx", "httpcore", "h2", "hpack", "hyperframe")


def _session_class() -> type[WebhookSession]:
    """:class:`.session.WebhookSession`, imported at the first logon (it needs httpx, and
    h2, which httpx imports only when a client is made).  Blocking (a quarter of a
    second and more): run through ``support.run_blocking``."""
    try:
        import h2.connection  # noqa: F401

        from .session import WebhookSession
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _EXTRA_PACKAGES:
            raise
        raise FailOneProvider(MISSING_EXTRA) from None
    return WebhookSession


def _tls_context(settings: WebhookSettings) -> ssl.SSLContext:
    """Blocking (reads certificate files): run through ``support.run_blocking``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class WebhookProvider:
    """The webhook transport provider (entry point ``webhook``)."""

    display_name: ClassVar[str] = "Webhook"

    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        """Read ``config`` as :meth:`logon` does, without logging on (``spoolbox
        check``, and the daemon before it starts): OptionError, ValueError or
        Unconfigured say what is wrong."""
        WebhookSettings.from_config(config)

    @staticmethod
    def process_limits(config: Mapping[str, Any]) -> dict[str, int]:
        """What one process running this transport holds to, its default included (a
        daemon with delivery workers shares it: ``spoolbox.daemon.shares``): its
        connections."""
        return {"max_connections": WebhookSettings.from_config(config).max_connections}

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> WebhookSession:
        settings = WebhookSettings.from_config(config)
        session_class = await support.run_blocking(_session_class)
        try:
            context = await support.run_blocking(_tls_context, settings)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"webhook option 'ca_file' ({settings.ca_file}): {exc}") from exc
        if not settings.verify:
            support.logger.warning(
                "webhook transport %r: verify=false, the certificates of its endpoints are "
                "NOT checked (anyone in the path can read and change the requests)",
                support.transport_name,
            )
        if settings.signing_secret is None:
            support.logger.warning(
                "webhook transport %r: sign=false, its requests carry no signature "
                "(a receiver cannot tell them from forged ones)",
                support.transport_name,
            )
        session = session_class(support, settings, context)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=settings.describe()
        )
        return session

    async def shutdown(self) -> None:
        return None
