"""The SMTP transport provider (entry point ``smtp``): logon reads the options, loads the
TLS context and takes the EHLO name (``helo_name``, else ``Support.hostname``), then
opens a :class:`~.session.SMTPSession`."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, ClassVar

from spoolbox.contract import LogonFlags, StatusCode, Support

from .session import SMTPSession
from .settings import SMTPSettings, tls_context, usable_helo

__all__ = ["SMTPProvider"]


class SMTPProvider:
    """The SMTP transport provider (entry point ``smtp``)."""

    display_name: ClassVar[str] = "SMTP"

    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        """Read ``config`` as :meth:`logon` does, without logging on (``spoolbox
        check``, and the daemon before it starts): OptionError, ValueError or
        Unconfigured say what is wrong."""
        SMTPSettings.from_config(config)

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
        if settings.tls != "none" and not settings.verify:
            support.logger.warning(
                "smtp transport %r: verify=false, the certificate of %s is NOT checked "
                "(anyone in the path can read and change the mail)",
                support.transport_name,
                settings.where,
            )
        session = SMTPSession(support, settings, context, helo)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=session.describe()
        )
        return session

    async def shutdown(self) -> None:
        return None
