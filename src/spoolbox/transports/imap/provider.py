"""The IMAP transport provider (entry point ``imap``): reads the options and logs a
session (:mod:`.session`) on.

This module imports no third-party package, so that the entry point loads in an
installation without the ``imap`` extra: there the logon fails, with the reason in
the transport's status row and log, as :class:`~spoolbox.contract.FailOneProvider`
saying which extra to install.  The options are still checked first, so that a
typo is reported before the missing package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from spoolbox.contract import FailOneProvider, LogoffFlags, LogonFlags, StatusCode, Support

from .._mailbox import MailboxSettings

if TYPE_CHECKING:
    from .session import IMAPSession

__all__ = ["MISSING_EXTRA", "IMAPProvider"]

#: The logon's error when aioimaplib is not installed.
MISSING_EXTRA = (
    "the imap transport needs aioimaplib, which is not installed: pip install 'spoolbox[imap]'"
)


def _session_class() -> type[IMAPSession]:
    """:class:`.session.IMAPSession`, imported at the first logon (it needs aioimaplib)."""
    try:
        from .session import IMAPSession
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "aioimaplib":
            raise
        raise FailOneProvider(MISSING_EXTRA) from None
    return IMAPSession


class IMAPProvider:
    """The IMAP transport provider (entry point ``imap``)."""

    display_name: ClassVar[str] = "IMAP"

    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        """Read ``config`` as :meth:`logon` does, without logging on (``spoolbox
        check``, and the daemon before it starts): OptionError, ValueError or
        Unconfigured say what is wrong."""
        MailboxSettings.from_config("imap", config)

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> IMAPSession:
        settings = MailboxSettings.from_config("imap", config)
        session = _session_class()(support, settings)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=settings.describe()
        )
        try:
            await session._start()
        except BaseException:
            await session.logoff(LogoffFlags.HURRY)
            raise
        session._status()
        return session

    async def shutdown(self) -> None:
        return None
