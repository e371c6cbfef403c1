"""What the web application's handlers share: the daemon (as the local API's
:class:`~spoolbox.daemon.api_ops.DaemonView`), the flushes the page started, the lag
probe, the other nodes' rows, the CSRF token the page carries, and the event that
ends the streams when the server stops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..daemon.api_ops import DaemonView
from .flushes import Flushes
from .lag import LagProbe
from .nodes import OtherNodes

__all__ = ["WebContext", "redacted"]


@dataclass
class WebContext:
    daemon: DaemonView
    csrf: str
    flushes: Flushes = field(default_factory=Flushes)
    lag: LagProbe = field(default_factory=LagProbe)
    others: OtherNodes = field(default_factory=OtherNodes)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def redacted(self, value: Any) -> Any:
        """``value`` (JSON-ready) with the profile's secret values replaced by ``***``."""
        return redacted(value, self.daemon.profile.redact)


def redacted(value: Any, redact: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted(item, redact) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item, redact) for item in value]
    return value
