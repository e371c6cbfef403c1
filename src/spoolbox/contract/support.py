"""The support object: a provider's only door into the spooler (IMAPISupport).

Providers never import the scheduler or the store; everything they need from the
spooler goes through the :class:`Support` they receive in ``logon``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from ..model import Progress, RecipientResult, SpoolerNotifyFlags, StatusCode
from .hooks import PreprocessInfoRemover, Preprocessor
from .objects import OutboundMessage, ProfileSection

__all__ = ["Support"]

T = TypeVar("T")


class Support(Protocol):
    @property
    def transport_name(self) -> str:
        """The name of this transport session in the profile (its status row name)."""
        ...

    @property
    def hostname(self) -> str:
        """This host's mail name (the profile's ``hostname``, Postfix's
        ``myhostname``): what a transport says for itself, e.g. in EHLO.  Read-only;
        the original's IMAPISupport has no such call."""
        ...

    @property
    def logger(self) -> logging.Logger: ...

    def now(self) -> float:
        """The spooler's clock (epoch seconds); a fake clock in tests."""
        ...

    async def spooler_yield(self) -> None:
        """SpoolerYield: give control back to the spooler and the foreground.

        Always a real suspension point.  Raises
        :class:`~spoolbox.contract.MessageCancelled` when the message being sent or
        received in this task was cancelled (MAPI_W_CANCEL_MESSAGE): let it propagate.
        """
        ...

    def slice_spent(self) -> bool:
        """True when the current slice has used its budget: time to yield."""
        ...

    def spooler_notify(self, flags: SpoolerNotifyFlags, ref: str | None = None) -> None:
        """SpoolerNotify: NEWMAIL, READYTOSEND, SENTDEFERRED (ref = a message id, or
        None for all), CONFIG_CHANGE, CRITICAL_ERROR.  For CRITSEC / NONCRIT use
        :meth:`critical_section`."""
        ...

    def critical_section(self) -> AbstractAsyncContextManager[None]:
        """NOTIFY_CRITSEC ... NOTIFY_NONCRIT as an ``async with`` block."""
        ...

    def modify_status_row(
        self,
        *,
        status_code: StatusCode | None = None,
        set_bits: StatusCode = StatusCode.NONE,
        clear_bits: StatusCode = StatusCode.NONE,
        status_string: str | None = None,
        progress: Progress | None = None,
        clear_progress: bool = False,
        identity: str | None = None,
        update: bool = True,
    ) -> None:
        """ModifyStatusRow.  ``update=False`` (flags 0) creates or replaces the row;
        ``update=True`` (STATUSROW_UPDATE) merges the given columns.  Setting a
        ``*_FLUSH`` bit asks the spooler to flush this transport."""
        ...

    async def status_recips(
        self, message: OutboundMessage, results: Sequence[RecipientResult]
    ) -> None:
        """StatusRecips: the outcome for recipients of ``message``.

        Each result is written durably before this returns (so a crash after three of
        five recipients were delivered resends only two), marks the recipient handled
        (PR_RESPONSIBILITY), and the spooler builds the delivery reports.  Recipients
        left without a result when ``end_message`` returns are offered to the next
        transport, as in the original."""
        ...

    def profile_section(self) -> ProfileSection: ...

    async def run_blocking(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run blocking code (a synchronous library) in a worker thread, so it does not
        freeze the loop.  Cancellation of the caller does not interrupt the thread."""
        ...

    def register_preprocessor(
        self,
        preprocess: Preprocessor,
        *,
        address_types: Iterable[str] | None = None,
        remove: PreprocessInfoRemover | None = None,
    ) -> None:
        """RegisterPreprocessor: run ``preprocess`` on every message this transport is
        about to send to a recipient of one of ``address_types`` (None: any type),
        after routing and before ``submit_message``, in registration order, once
        per message.  It returns the new content or None; the result is not stored
        (after a crash it runs again from the original).  ``remove``
        (RemovePreprocessInfo) runs once the transport is done with the message.
        Call it in ``logon``; the registrations end with the session.  Not available
        to an isolated transport (ContractViolation)."""
        ...
