"""Delivery status notifications (RFC 3464), built by the spooler as MAPI's StatusRecips.

Pure functions, no I/O; imports only :mod:`spoolbox.model`.  See
:mod:`spoolbox.reports.dsn` for the API and the shape of a report.
"""

from .dsn import (
    RETURN_SIZE_LIMIT,
    ReportItem,
    ReportKind,
    build_report,
    double_bounce,
    needed_bytes,
    report_message,
    wants_report,
)

__all__ = [
    "RETURN_SIZE_LIMIT",
    "ReportItem",
    "ReportKind",
    "build_report",
    "double_bounce",
    "needed_bytes",
    "report_message",
    "wants_report",
]
