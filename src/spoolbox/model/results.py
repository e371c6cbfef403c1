"""Per-recipient delivery results, as a transport reports them (MAPI's StatusRecips rows).

A transport says, for each recipient it handled, one of three things: delivered,
failed for good, or deferred (try again later).  Each result carries an enhanced
status code (RFC 3463: ``class.subject.detail``) whose class must agree with the
outcome (2 delivered, 4 deferred, 5 failed) and the transport's diagnostic text,
which ends up verbatim in the delivery status notification.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, Protocol

from spoolbox._quick import quick_init

__all__ = ["Outcome", "RecipientResult", "ResultError"]

_STATUS_RE = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})\Z")  # ASCII, no final \n
_MAX_DIAGNOSTIC = 1000


class ResultError(ValueError):
    """A transport built an inconsistent result."""


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    DEFERRED = "deferred"


_CLASS = {Outcome.DELIVERED: "2", Outcome.DEFERRED: "4", Outcome.FAILED: "5"}
# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_DELIVERED: Final = Outcome.DELIVERED


class _HasIndex(Protocol):
    @property
    def index(self) -> int: ...


def _index(recipient: int | _HasIndex) -> int:
    return recipient if isinstance(recipient, int) else recipient.index


@quick_init
@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome for one recipient, by its index in the message."""

    index: int
    outcome: Outcome
    status: str
    diagnostic: str = ""
    retry_after: float | None = None  # deferred only: the transport's own delay hint, seconds
    remote_mta: str | None = None  # e.g. "dns; mx.example.org"
    #: Deferred only: for this recipient alone (its ``RCPT TO`` answered 4xx: a full
    #: mailbox, greylisting): the destination answered, so it is not backed off.
    recipient_only: bool = False
    #: Delivered only: handed to a next hop that took on the sender's delivery reports
    #: (RFC 3461: an SMTP server that offers DSN got the message's NOTIFY), so the
    #: spooler sends no success report of its own; the next hop reports the delivery.
    next_hop_reports: bool = False
    #: Delivered only: handed to a next hop that sends no delivery reports (an SMTP
    #: server without DSN), so a success report says ``relayed``, not ``delivered``.
    relayed: bool = False

    def __post_init__(self) -> None:
        m = _STATUS_RE.match(self.status)
        if m is None:
            raise ResultError(
                f"status {self.status!r} is not an RFC 3463 code like 2.0.0, 4.4.1 or 5.1.1"
            )
        if m.group(1) != _CLASS[self.outcome]:
            raise ResultError(
                f"status {self.status} has class {m.group(1)}, but a {self.outcome} result "
                f"needs class {_CLASS[self.outcome]}"
            )
        if self.retry_after is not None and (
            self.outcome is not Outcome.DEFERRED or self.retry_after < 0
        ):
            raise ResultError("retry_after is only for deferred results and must be >= 0")
        if self.recipient_only and self.outcome is not Outcome.DEFERRED:
            raise ResultError("recipient_only is only for deferred results")
        if (self.next_hop_reports or self.relayed) and self.outcome is not _DELIVERED:
            raise ResultError("next_hop_reports and relayed are only for delivered results")
        if self.next_hop_reports and self.relayed:
            raise ResultError("a next hop that reports deliveries is not relayed to")
        # Diagnostic text goes into reports and status rows: one line, bounded.
        text = " ".join(self.diagnostic.split())
        if len(text) > _MAX_DIAGNOSTIC:
            text = text[: _MAX_DIAGNOSTIC - 1] + "…"
        object.__setattr__(self, "diagnostic", text)

    @classmethod
    def delivered(
        cls,
        recipient: int | _HasIndex,
        diagnostic: str = "",
        *,
        status: str = "2.0.0",
        remote_mta: str | None = None,
        next_hop_reports: bool = False,
        relayed: bool = False,
    ) -> RecipientResult:
        return cls(
            _index(recipient),
            _DELIVERED,
            status,
            diagnostic,
            None,
            remote_mta,
            next_hop_reports=next_hop_reports,
            relayed=relayed,
        )

    @classmethod
    def failed(
        cls,
        recipient: int | _HasIndex,
        diagnostic: str,
        *,
        status: str = "5.0.0",
        remote_mta: str | None = None,
    ) -> RecipientResult:
        return cls(_index(recipient), Outcome.FAILED, status, diagnostic, None, remote_mta)

    @classmethod
    def deferred(
        cls,
        recipient: int | _HasIndex,
        diagnostic: str,
        *,
        status: str = "4.0.0",
        retry_after: float | None = None,
        remote_mta: str | None = None,
        recipient_only: bool = False,
    ) -> RecipientResult:
        return cls(
            _index(recipient),
            Outcome.DEFERRED,
            status,
            diagnostic,
            retry_after,
            remote_mta,
            recipient_only,
        )
