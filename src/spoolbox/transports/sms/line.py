"""What the modem's line is doing, as a frozen value and the sentence the status row
shows (pure).

``+CREG: <stat>`` (3GPP TS 27.007 7.2) and ``+CSQ: <rssi>`` (8.5, 0-31 is -113 to
-51 dBm, 99 unknown) are the inputs; a modem that stopped answering overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["REGISTRATION", "LineState", "registered"]

#: +CREG <stat> -> what it means
REGISTRATION = {
    0: "not registered, not searching",
    1: "registered (home network)",
    2: "not registered, searching for a network",
    3: "registration denied",
    4: "registration unknown",
    5: "registered (roaming)",
}


def registered(stat: int) -> bool:
    """Whether ``stat`` lets the modem send (home network or roaming)."""
    return stat in (1, 5)


@dataclass(frozen=True, slots=True)
class LineState:
    """The last registration state and signal seen, and why the modem is not
    answering (empty while it answers)."""

    stat: int | None = None
    rssi: int | None = None
    modem_error: str = ""

    @property
    def failure(self) -> bool:
        return bool(self.modem_error)

    def with_registration(self, stat: int, rssi: int | None = None) -> LineState:
        return replace(self, stat=stat, rssi=rssi if rssi is not None else self.rssi)

    def with_modem(self, error: str) -> LineState:
        return replace(self, modem_error=error)

    def text(self) -> str:
        """``registered (home network), signal -71 dBm (21/31)``, ``modem not
        answering: ...``."""
        if self.modem_error:
            return self.modem_error
        if self.stat is None:
            return "modem initialised"
        words = REGISTRATION.get(self.stat, f"registration state {self.stat}")
        if registered(self.stat) and self.rssi is not None and self.rssi <= 31:
            words += f", signal {-113 + 2 * self.rssi} dBm ({self.rssi}/31)"
        elif registered(self.stat):
            words += ", signal unknown"
        return words
