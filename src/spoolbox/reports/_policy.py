"""Which reports exist, and whether a message's sender gets one (RFC 3461 NOTIFY).

The rule is the one that keeps reports from looping (DESIGN.md §4): never a report
to a null sender, never a report about a report, and otherwise exactly the kinds the
sender asked for.  A submission asks for failure reports unless it says otherwise
(:class:`~spoolbox.model.NewMessage` defaults ``notify`` to ``Notify.FAILURE``);
``Notify.NEVER`` turns every report off.
"""

from __future__ import annotations

import enum

from ..model import MessageInfo, Notify, Outcome

__all__ = ["ReportKind", "wants_report"]


class ReportKind(enum.StrEnum):
    """The kind of a delivery status notification; the value is its RFC 3464 ``Action``."""

    FAILURE = "failed"
    DELAY = "delayed"
    SUCCESS = "delivered"

    @property
    def notify(self) -> Notify:
        """The ``Notify`` flag a sender sets to ask for this kind."""
        return _NOTIFY[self]

    @classmethod
    def for_outcome(cls, outcome: Outcome) -> ReportKind:
        """The report a transport's outcome calls for: failed, deferred or delivered."""
        return _BY_OUTCOME[Outcome(outcome)]


_NOTIFY = {
    ReportKind.FAILURE: Notify.FAILURE,
    ReportKind.DELAY: Notify.DELAY,
    ReportKind.SUCCESS: Notify.SUCCESS,
}
_BY_OUTCOME = {
    Outcome.FAILED: ReportKind.FAILURE,
    Outcome.DEFERRED: ReportKind.DELAY,
    Outcome.DELIVERED: ReportKind.SUCCESS,
}


def wants_report(info: MessageInfo, kind: ReportKind) -> bool:
    """Whether the sender of ``info`` gets a ``kind`` report.

    False for a null sender (``info.sender is None``), for a message that is itself
    a report, and for a kind the sender's ``notify`` flags do not include.
    """
    if info.sender is None or info.is_report:
        return False
    return bool(Notify(info.notify) & ReportKind(kind).notify)
