"""The status table, its rows, change events and observers."""

from .table import (
    StatusChange,
    StatusRow,
    StatusTable,
    Subscriber,
    SubscriberDropped,
    default_status_string,
)

__all__ = [
    "StatusChange",
    "StatusRow",
    "StatusTable",
    "Subscriber",
    "SubscriberDropped",
    "default_status_string",
]
