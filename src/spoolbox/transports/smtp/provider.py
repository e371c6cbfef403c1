"""The SMTP transport provider (entry point ``smtp``): logon reads the options, loads the
TLS context and takes the EHLO name (``helo_name``, else ``Support.hostname``), then
opens a :class:`~.session.SMTPSession`."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, ClassVar

from spoolbox.contract import LogonFlags, StatusCode, Support

from .mta_sts import PolicyFinder, httpx_module
from .mx import MXResolver
from .session import SMTPSession
from .settings import SMTPSettings, tls_context, usable_helo, verified_context

__all__ = ["SMTPProvider"]


class SMTPProvider:
    """The SMTP transport provider (entry point ``smtp``)."""

    display_name: ClassVar[str] = "SMTP"

    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        """Read ``config`` as :meth:`logon` does, without logging on (``spoolbox
        check``, and the daemon before it starts): OptionError, ValueError or
        Unconfigured say what is wrong (with delivery "mx": dnspython missing, or no
        DNS server to ask)."""
        settings = SMTPSettings.from_config(config)
        if settings.delivery == "mx":
            MXResolver(settings.nameservers, settings.dns_timeout)
            if settings.mta_sts:
                httpx_module()

    @staticmethod
    def process_limits(config: Mapping[str, Any]) -> dict[str, int | float]:
        """What one process running this transport holds to, defaults included (a
        daemon with delivery workers shares them: ``spoolbox.daemon.shares``): its
        connections, and with delivery "mx" its connections to one domain and the
        pause between two messages to one domain."""
        s = SMTPSettings.from_config(config)
        limits: dict[str, int | float] = {"max_connections": s.max_connections}
        if s.destination_concurrency is not None:
            limits["destination_concurrency"] = s.destination_concurrency
        if s.destination_rate_delay is not None:
            limits["destination_rate_delay"] = s.destination_rate_delay
        return limits

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> SMTPSession:
        settings = SMTPSettings.from_config(config)
        try:
            context = await support.run_blocking(tls_context, settings)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"smtp option 'ca_file' ({settings.ca_file}): {exc}") from exc
        # The explicit helo_name wins; else the profile's hostname (Support.hostname).
        helo = settings.helo_name or support.hostname
        if not usable_helo(helo):
            helo = "localhost"
        if settings.tls in ("starttls", "implicit") and not settings.verify:
            support.logger.warning(
                "smtp transport %r: verify=false, the certificate of %s is NOT checked "
                "(anyone in the path can read and change the mail)",
                support.transport_name,
                settings.where,
            )
        mx = None
        sts = None
        verified = None
        if settings.delivery == "mx":
            mx = MXResolver(settings.nameservers, settings.dns_timeout, dnssec=settings.dane)
            if settings.mta_sts:
                try:
                    verified = await support.run_blocking(verified_context, settings)
                except (OSError, ssl.SSLError) as exc:
                    raise ValueError(f"smtp option 'ca_file' ({settings.ca_file}): {exc}") from exc
                sts = PolicyFinder(
                    mx,
                    verified,
                    port=settings.mta_sts_port,
                    timeout=settings.dns_timeout,
                    section=support.profile_section(),
                )
            if "." not in helo:
                support.logger.warning(
                    "smtp transport %r: delivery = 'mx' greets the domains' mail servers "
                    "as %r (EHLO), which is not a fully qualified host name: many refuse "
                    "mail from such a host; set hostname in the profile (or helo_name)",
                    support.transport_name,
                    helo,
                )
        session = SMTPSession(support, settings, context, helo, mx, sts, verified)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=session.describe()
        )
        return session

    async def shutdown(self) -> None:
        return None
