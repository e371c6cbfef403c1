"""The legal call order of a transport session, as one explicit state table.

The spooler checks every call it makes against :data:`ALLOWED` before making it, so
a bug in the scheduler that would break the contract fails loudly (with
:class:`~spoolbox.contract.ContractViolation`) instead of confusing a provider.
The per-message rule (``end_message`` follows exactly the ``submit_message`` calls
that returned normally) is kept by :class:`SessionLifecycle` too.

::

    LOADED --logon--> LOGGED_ON --address_types--> TYPED --register_options--> REGISTERED
    REGISTERED --notify(BEGIN_*)--> RUNNING --notify(END_INBOUND|END_OUTBOUND)--> ENDED
    any but LOGGED_OFF --critical error--> FAILED
    REGISTERED | RUNNING | ENDED | FAILED --logoff--> LOGGED_OFF
"""

from __future__ import annotations

import enum

from ..contract.errors import ContractViolation

__all__ = ["ALLOWED", "Phase", "SessionLifecycle"]


class Phase(enum.StrEnum):
    LOADED = "loaded"
    LOGGED_ON = "logged-on"
    TYPED = "typed"
    REGISTERED = "registered"
    RUNNING = "running"
    ENDED = "ended"
    FAILED = "failed"
    LOGGED_OFF = "logged-off"


_STEADY = frozenset(
    {
        "capabilities",
        "address_types",
        "transport_notify",
        "submit_message",
        "end_message",
        "poll",
        "start_message",
        "idle",
        "flush_queues",
        "validate_state",
        "status_object",
        "logoff",
    }
)

#: phase -> calls the spooler may make in it
ALLOWED: dict[Phase, frozenset[str]] = {
    Phase.LOADED: frozenset({"logon"}),
    Phase.LOGGED_ON: frozenset({"capabilities", "address_types", "logoff"}),
    Phase.TYPED: frozenset({"capabilities", "register_options", "logoff"}),
    Phase.REGISTERED: frozenset({"capabilities", "transport_notify", "status_object", "logoff"}),
    Phase.RUNNING: _STEADY,
    Phase.ENDED: frozenset({"transport_notify", "end_message", "status_object", "logoff"}),
    Phase.FAILED: frozenset({"logoff"}),
    Phase.LOGGED_OFF: frozenset(),
}

#: (phase, call) -> phase after the call returns
_NEXT: dict[tuple[Phase, str], Phase] = {
    (Phase.LOADED, "logon"): Phase.LOGGED_ON,
    (Phase.LOGGED_ON, "address_types"): Phase.TYPED,
    (Phase.TYPED, "register_options"): Phase.REGISTERED,
    (Phase.REGISTERED, "begin"): Phase.RUNNING,
    (Phase.RUNNING, "end"): Phase.ENDED,
}


class SessionLifecycle:
    def __init__(self, name: str) -> None:
        self.name = name
        self.phase = Phase.LOADED
        self._submitted: set[str] = set()

    def __repr__(self) -> str:
        return f"<SessionLifecycle {self.name} {self.phase}>"

    def check(self, call: str) -> None:
        if call not in ALLOWED[self.phase]:
            raise ContractViolation(
                f"spooler bug: {call}() is not allowed on session {self.name!r} in phase "
                f"{self.phase} (allowed: {', '.join(sorted(ALLOWED[self.phase])) or 'nothing'})"
            )

    def done(self, call: str) -> None:
        nxt = _NEXT.get((self.phase, call))
        if nxt is not None:
            self.phase = nxt

    def begin(self) -> None:
        if self.phase is Phase.REGISTERED:
            self.phase = Phase.RUNNING

    def end(self) -> None:
        if self.phase is Phase.RUNNING:
            self.phase = Phase.ENDED

    def fail(self) -> None:
        if self.phase is not Phase.LOGGED_OFF:
            self.phase = Phase.FAILED

    def logged_off(self) -> None:
        self.phase = Phase.LOGGED_OFF

    def submitted(self, ref: str) -> None:
        self._submitted.add(ref)

    def check_end(self, ref: str) -> None:
        if ref not in self._submitted:
            raise ContractViolation(
                f"spooler bug: end_message({ref}) on {self.name!r} without a successful submit"
            )
        self._submitted.discard(ref)

    @property
    def running(self) -> bool:
        return self.phase is Phase.RUNNING
