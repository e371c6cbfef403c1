"""The support object of one transport session (MAPI's IMAPISupport): the
provider's only door into the spooler.  See :class:`spoolbox.contract.Support`.

A new one is made at every logon; the one of a session that logged off is dead
(every call raises InvalidObject).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

from ...contract.errors import ContractViolation, InvalidObject
from ...contract.hooks import PreprocessInfoRemover, Preprocessor
from ...contract.objects import OutboundMessage
from ...model import (
    Progress,
    RecipientResult,
    ResourceType,
    SpoolerNotifyFlags,
    StatusCode,
)
from ...status import StatusRow
from .. import deadline
from ..lifecycle import Phase
from ..objects import ProfileSectionImpl
from ..preprocess import Preprocessors
from ..slices import checkpoint
from .base import HostBase, log
from .outbound import OutboundLane

__all__ = ["SupportImpl"]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_LOGGED_OFF: Final = Phase.LOGGED_OFF

_FAILURE = int(StatusCode.FAILURE)

T = TypeVar("T")


class SupportImpl:
    """IMAPISupport for one session; see :class:`spoolbox.contract.Support`."""

    def __init__(self, host: HostBase, outbound: OutboundLane) -> None:
        self._host = host
        self._outbound = outbound
        self._lifecycle = host.lifecycle  # the session this object belongs to
        # RegisterPreprocessor: this session's registrations, read by its outbound lane.
        self.preprocessors = Preprocessors()
        outbound.preprocessors = self.preprocessors

    def __repr__(self) -> str:
        return f"<Support for {self._host.name}>"

    @property
    def transport_name(self) -> str:
        return self._host.name

    @property
    def hostname(self) -> str:
        return self._host.runtime.hostname

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"spoolbox.transport.{self._host.name}")

    def now(self) -> float:
        return self._host.runtime.clock.now()

    def _alive(self, what: str) -> None:
        if self._lifecycle.phase is _LOGGED_OFF or self._lifecycle is not self._host.lifecycle:
            raise InvalidObject(
                f"{what}() called by {self._host.name!r} after logoff: the support object is dead"
            )

    async def spooler_yield(self) -> None:
        self._alive("spooler_yield")
        host = self._host
        critsec = host.runtime.critsec
        if critsec.holder is host:
            await critsec.explicit_yield(host)
        else:
            await checkpoint()
        host.check_cancelled()

    def slice_spent(self) -> bool:
        return self._host.runtime.meter.slice_spent()

    def spooler_notify(self, flags: SpoolerNotifyFlags, ref: str | None = None) -> None:
        self._alive("spooler_notify")
        host = self._host
        port = host.port
        notified = SpoolerNotifyFlags(flags)
        if notified & (SpoolerNotifyFlags.CRITSEC | SpoolerNotifyFlags.NONCRIT):
            raise ContractViolation(
                "use `async with support.critical_section():` for NOTIFY_CRITSEC/NONCRIT"
            )
        if (
            notified & SpoolerNotifyFlags.CRITICAL_ERROR
            and notified & SpoolerNotifyFlags.SENTDEFERRED
        ):
            raise ContractViolation("CRITICAL_ERROR and SENTDEFERRED are mutually exclusive")
        if notified & SpoolerNotifyFlags.NEWMAIL:
            if host.lifecycle.running and host.entry.inbound:
                host.newmail.set()
            else:
                log.info("transport %r: NEWMAIL ignored (inbound not enabled)", host.name)
        if notified & SpoolerNotifyFlags.READYTOSEND:
            host.ready_to_send()
        if notified & SpoolerNotifyFlags.SENTDEFERRED:
            port.spawn(port.unpark(host.name, ref), name=f"{host.name}-unpark")
        if notified & SpoolerNotifyFlags.CONFIG_CHANGE:
            host.requery_types()
        if notified & SpoolerNotifyFlags.CRITICAL_ERROR:
            host.fail_critically(f"transport reported a critical error{': ' + ref if ref else ''}")

    @contextlib.asynccontextmanager
    async def critical_section(self) -> AsyncIterator[None]:
        self._alive("critical_section")
        host = self._host
        critsec = host.runtime.critsec
        # Waiting for another session's section is not charged to the call's timeout.
        with deadline.paused():
            entry = await critsec.enter(host, deadline.current())
        try:
            yield
        finally:
            critsec.leave(entry)

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
        self._alive("modify_status_row")
        host = self._host
        table = host.runtime.status
        if not update or host.name not in table:
            table.put(
                StatusRow(
                    name=host.name,
                    resource_type=ResourceType.TRANSPORT_PROVIDER,
                    provider_display=host.display(),
                    status_code=StatusCode(status_code or 0),
                    status_string=status_string,
                    progress=progress,
                    identity=identity,
                    counters=dict(host.counters),
                )
            )
            old_code = StatusCode.NONE
            row = table[host.name]
        else:
            row = table[host.name]
            old_code = row.status_code
        # The bits as ints, one StatusCode made at the end: Flag operators make a
        # member each, and this runs for every message a transport sends (its text).
        given = int(row.status_code) if status_code is None else int(status_code)
        bits = (given | int(set_bits)) & ~int(clear_bits)
        code = old_code if bits == int(old_code) else StatusCode(bits)
        changes: dict[str, Any] = {"status_code": code}
        if status_string is not None:
            changes["status_string"] = status_string
        if progress is not None:
            changes["progress"] = progress
        elif clear_progress:
            changes["progress"] = None
        if identity is not None:
            changes["identity"] = identity
        table.update(host.name, **changes)
        if code != old_code:
            host.flush_bits_changed(old_code, code)
        asked = int(set_bits) | (0 if status_code is None else int(status_code))
        if _FAILURE & asked & ~int(clear_bits):
            host.provider_failure(True, status_string or table[host.name].display_string)
        elif not _FAILURE & bits:
            host.provider_failure(False, "")

    async def status_recips(
        self, message: OutboundMessage, results: Sequence[RecipientResult]
    ) -> None:
        self._alive("status_recips")
        await self._outbound.status_recips(message, results)

    def profile_section(self) -> ProfileSectionImpl:
        self._alive("profile_section")
        if self._host.profile is None:
            raise ContractViolation("profile_section() before logon")
        return self._host.profile

    async def run_blocking(self, fn: Callable[..., T], /, *args: object) -> T:
        self._alive("run_blocking")
        return await asyncio.to_thread(fn, *args)

    def register_preprocessor(
        self,
        preprocess: Preprocessor,
        *,
        address_types: Iterable[str] | None = None,
        remove: PreprocessInfoRemover | None = None,
    ) -> None:
        self._alive("register_preprocessor")
        reg = self.preprocessors.register(preprocess, address_types=address_types, remove=remove)
        log.info(
            "transport %r registered preprocessor %s for %s",
            self._host.name,
            reg.name,
            "every address type" if reg.types is None else ", ".join(sorted(reg.types)),
        )
