"""The SMS transport's options (the profile's ``[transports.options]``), read with
:func:`~spoolbox.contract.read_options`."""

from __future__ import annotations

from dataclasses import dataclass

from spoolbox.contract import option

from .text import TextRule

__all__ = ["SMSOptions"]


@dataclass(frozen=True, slots=True)
class SMSOptions:
    """See the package docstring for what each does."""

    port: str = option(help="the modem's serial device, e.g. /dev/ttyUSB0")
    baudrate: int = option(115200, low=50, high=4_000_000)
    pin: str | None = option(None, secret=True)
    timeout: float = option(10.0, positive=True)
    send_timeout: float = option(30.0, positive=True)
    max_parts: int = option(3, low=1, high=255)
    text: TextRule = "subject+body"
    validity: float = option(86400.0, positive=True)
    delivery_reports: bool = False
    report_timeout: float = option(86400.0, positive=True)
    check_interval: float = option(60.0, positive=True)
