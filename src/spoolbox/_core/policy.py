"""Policies and the pure decisions of outbound delivery.

Nothing here does I/O.  :data:`SUBMIT_MESSAGE_LADDER` and :data:`END_MESSAGE_LADDER`
say which outcome an exception of ``submit_message`` or ``end_message`` is (looked
up with :func:`outcome_of`); :func:`plan_after_submit` turns that outcome (or an end
flag) into recipient updates; :func:`backoff` and :func:`plan_result` turn a
transport's per-recipient result into the next state.  The scheduler then applies
the plan to the store.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..contract.errors import (
    ContractViolation,
    MessageCancelled,
    NetworkError,
    NotMe,
    SubmitCancelled,
    TransportBusy,
    WaitRetry,
)
from ..model import EndFlags, Outcome, RecipientResult, RecipientState
from ..store import RecipientUpdate

__all__ = [
    "END_MESSAGE_LADDER",
    "PARKED_NOTE",
    "SUBMIT_MESSAGE_LADDER",
    "Policy",
    "Reason",
    "Rung",
    "SubmitOutcome",
    "backoff",
    "outcome_of",
    "plan_after_submit",
    "plan_result",
]

# Enum members read for every message, as module constants (docs/design.md,
# "Enum members on the hot path").
_DELIVERED: Final = Outcome.DELIVERED
_RECIPIENT_DELIVERED: Final = RecipientState.DELIVERED

#: The diagnostic of a recipient parked by END_DONT_RESEND.  When it comes back
#: after NOTIFY_SENTDEFERRED, this note is how the spooler knows to pass
#: BEGIN_DEFERRED (it survives a restart, being in the store).
PARKED_NOTE = "deferred by the transport until it asks for it again (SENTDEFERRED)"


@dataclass(frozen=True, slots=True)
class Policy:
    """Every tunable of the scheduler, with the defaults a library host wants."""

    slice_budget: float = 0.005  # seconds a provider may run between yields
    watchdog_stall: float = 0.5  # log a provider that holds the loop this long, live
    lease: float = 120.0  # claim lease; renewed while a transport works
    lifetime: float = 5 * 86400.0  # queue lifetime (Postfix maximal_queue_lifetime)
    retry_base: float = 60.0  # first retry delay after a temporary failure
    retry_factor: float = 2.0
    retry_cap: float = 4 * 3600.0  # longest delay between retries
    retry_jitter: float = 0.2  # +-20 % so retries after an outage do not come in a herd
    busy_delay: float = 2.0  # TransportBusy: offer again after this
    resend_later_delay: float = 60.0  # END_RESEND_LATER
    poll_interval: float = 60.0  # LOGON_SP_POLL sessions
    idle_interval: float = 5.0  # LOGON_SP_IDLE sessions: at most this often
    failure_threshold: int = 3  # consecutive failures before STATUS_FAILURE
    failure_backoff: float = 5.0  # pause after a failing call, doubled up to the cap
    failure_backoff_cap: float = 300.0
    relogon_delay: float = 10.0  # first retry of a failed logon, doubled up to the cap
    critsec_max: float = 2.0  # a critical section held longer is reported
    #: Held this much longer still, the section is taken away: the call that entered
    #: it is cancelled and counted as failed, and the other sessions run again.
    critsec_grace: float = 1.0
    progress_interval: float = 0.2  # flush progress published at least this often
    #: A flush stops waiting after this long (what is left stays queued); None: never.
    flush_deadline: float | None = 120.0
    router_interval: float = 1.0  # look for new submissions from other processes
    housekeeping_interval: float = 5.0  # leases, expiry
    shutdown_grace: float = 10.0  # finish in-flight work this long on shutdown
    claim_batch: int = 8  # messages claimed per store round trip (shared by the lanes)
    inbound_batch: int = 100  # start_message calls per NEWMAIL wake-up, at most
    #: Inbound messages committed together in one store transaction (one fsync), at
    #: most, for sessions with ``LogonCaps.SP_INBOUND_BATCH``; 1 = one by one.
    inbound_commit_batch: int = 64
    call_timeout: float = 600.0  # a provider call running longer is cancelled and failed
    #: Send one delay report (RFC 3464 Action: delayed) for a recipient still deferred
    #: this long after its first temporary failure, when its sender asked for delay
    #: reports (NOTIFY=DELAY).  None: never.
    delay_warning_after: float | None = 4 * 3600.0
    #: Per-destination back-off: after a temporary failure to a destination (the part
    #: after "@", or the whole address), other recipients for it wait too instead of
    #: hammering it; it doubles with each failure up to ``retry_cap``.
    destination_backoff: bool = True

    def __post_init__(self) -> None:
        for name in ("slice_budget", "lease", "lifetime", "retry_base", "retry_cap"):
            if getattr(self, name) <= 0:
                raise ValueError(f"policy.{name} must be positive, not {getattr(self, name)}")
        if self.critsec_max <= 0 or self.critsec_grace < 0:
            raise ValueError(
                f"policy.critsec_max must be positive and critsec_grace >= 0, not "
                f"{self.critsec_max} and {self.critsec_grace}"
            )
        if self.flush_deadline is not None and self.flush_deadline <= 0:
            raise ValueError(
                f"policy.flush_deadline must be positive (or false for none), "
                f"not {self.flush_deadline}"
            )
        if self.retry_factor < 1:
            raise ValueError("policy.retry_factor must be >= 1")
        if not 0 <= self.retry_jitter < 1:
            raise ValueError("policy.retry_jitter must be in [0, 1)")
        if self.failure_threshold < 1:
            raise ValueError("policy.failure_threshold must be >= 1")
        if self.inbound_commit_batch < 1:
            raise ValueError(
                f"policy.inbound_commit_batch must be >= 1, not {self.inbound_commit_batch}"
            )


def backoff(policy: Policy, attempts: int, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempts`` (1 = first retry): capped, with jitter."""
    n = max(1, attempts)
    exponent = min(n - 1, 64)  # past this the cap rules anyway; avoids float overflow
    delay = min(policy.retry_cap, policy.retry_base * policy.retry_factor**exponent)
    j = policy.retry_jitter
    if j:
        delay *= (rng or random).uniform(1 - j, 1 + j)
    return min(delay, policy.retry_cap * (1 + j))


_DONT_RESEND: Final = int(EndFlags.DONT_RESEND)
_RESEND_LATER: Final = int(EndFlags.RESEND_LATER)
_RESEND_NOW: Final = int(EndFlags.RESEND_NOW)


class SubmitOutcome(enum.Enum):
    """What happened to a message in a transport, other than per-recipient results."""

    END_SENT = "end-sent"
    END_RESEND_NOW = "end-resend-now"
    END_RESEND_LATER = "end-resend-later"
    END_DONT_RESEND = "end-dont-resend"
    BUSY = "busy"
    NOT_ME = "not-me"
    WAIT = "wait"  # WaitRetry / NetworkError with a delay
    CANCEL = "cancel"  # SubmitCancelled (MAPI_E_CANCEL)
    USER_CANCELLED = "user-cancelled"  # MessageCancelled propagated
    ERROR = "error"  # any other exception
    LOST = "lost"  # the spooler is shutting down / lease lost mid-flight

    @classmethod
    def from_end_flags(cls, flags: EndFlags) -> SubmitOutcome:
        # As ints: an IntFlag operator makes a member each time, once a message here.
        bits = int(flags)
        if bits & _DONT_RESEND:
            return cls.END_DONT_RESEND
        if bits & _RESEND_LATER:
            return cls.END_RESEND_LATER
        if bits & _RESEND_NOW:
            return cls.END_RESEND_NOW
        return cls.END_SENT


class Reason(enum.Enum):
    """What of an exception becomes the recipients' diagnostic."""

    NONE = "none"  # nothing: the outcome says it all
    MESSAGE = "message"  # str(exc), the provider's own words
    TYPED = "typed"  # "TypeName: message", for an error the provider did not plan


@dataclass(frozen=True, slots=True)
class Rung:
    """One step of an exception ladder: an exception class and what it means."""

    exception: type[Exception]
    outcome: SubmitOutcome
    #: Counted as the session's failure (``errors``, STATUS_FAILURE after
    #: ``failure_threshold`` in a row, the session's pause).
    counts_as_failure: bool = False
    reason: Reason = Reason.NONE
    #: The exception's ``delay`` is the retry delay (WaitRetry and its kin).
    takes_delay: bool = False

    def reason_of(self, exc: BaseException) -> str:
        if self.reason is Reason.MESSAGE:
            return str(exc)
        if self.reason is Reason.TYPED:
            return f"{type(exc).__name__}: {exc}"
        return ""

    def delay_of(self, exc: BaseException) -> float | None:
        if not self.takes_delay:
            return None
        delay: float | None = getattr(exc, "delay", None)
        return delay


_ERROR = Rung(Exception, SubmitOutcome.ERROR, counts_as_failure=True, reason=Reason.TYPED)

#: What an exception raised by ``submit_message`` means, first match wins (a
#: subclass before its base).  Whatever is not named here is the provider's error:
#: counted, its recipients retried with backoff.
SUBMIT_MESSAGE_LADDER: tuple[Rung, ...] = (
    Rung(TransportBusy, SubmitOutcome.BUSY),
    Rung(NotMe, SubmitOutcome.NOT_ME),
    # The network is down: a wait, and counted, so the session pauses.
    Rung(
        NetworkError,
        SubmitOutcome.WAIT,
        counts_as_failure=True,
        reason=Reason.MESSAGE,
        takes_delay=True,
    ),
    Rung(WaitRetry, SubmitOutcome.WAIT, reason=Reason.MESSAGE, takes_delay=True),
    Rung(SubmitCancelled, SubmitOutcome.CANCEL),
    Rung(MessageCancelled, SubmitOutcome.USER_CANCELLED),
    Rung(ContractViolation, SubmitOutcome.ERROR, counts_as_failure=True, reason=Reason.TYPED),
    Rung(TimeoutError, SubmitOutcome.ERROR, counts_as_failure=True, reason=Reason.TYPED),
    _ERROR,
)

#: What an exception raised by ``end_message`` means: the message was taken, so
#: only a cancel is not an error.
END_MESSAGE_LADDER: tuple[Rung, ...] = (
    Rung(MessageCancelled, SubmitOutcome.USER_CANCELLED),
    _ERROR,
)


def outcome_of(exc: BaseException, ladder: tuple[Rung, ...]) -> Rung:
    """The first rung of ``ladder`` whose exception class ``exc`` is an instance of."""
    for rung in ladder:
        if isinstance(exc, rung.exception):
            return rung
    raise LookupError(f"no rung of the ladder takes {type(exc).__name__}: {exc}")


def plan_after_submit(
    outcome: SubmitOutcome,
    *,
    pending: Iterable[tuple[int, int]],
    transport: str,
    policy: Policy,
    now: float,
    expires_at: float,
    delay: float | None = None,
    reason: str = "",
    begin_deferred: bool = False,
    rng: random.Random | None = None,
) -> list[RecipientUpdate]:
    """Updates for the recipients a transport left without a result.

    ``pending`` holds ``(index, attempts)`` of those recipients.
    """
    out: list[RecipientUpdate] = []
    for index, attempts in pending:
        if outcome is SubmitOutcome.END_SENT or outcome is SubmitOutcome.NOT_ME:
            # Not handled by this transport: offer it to the next one (reference §8.3).
            out.append(
                RecipientUpdate(
                    index,
                    RecipientState.QUEUED,
                    route=None,
                    keep_route=False,
                    refused_by=(transport,),
                    retry_at=0.0,
                )
            )
        elif outcome is SubmitOutcome.END_RESEND_NOW or outcome is SubmitOutcome.LOST:
            out.append(RecipientUpdate(index, RecipientState.QUEUED, retry_at=now))
        elif outcome is SubmitOutcome.END_RESEND_LATER or outcome is SubmitOutcome.BUSY:
            wait = (
                policy.resend_later_delay
                if outcome is SubmitOutcome.END_RESEND_LATER
                else policy.busy_delay
            )
            out.append(RecipientUpdate(index, RecipientState.QUEUED, retry_at=now + wait))
        elif outcome is SubmitOutcome.END_DONT_RESEND:
            out.append(RecipientUpdate(index, RecipientState.PARKED, diagnostic=PARKED_NOTE))
        elif outcome is SubmitOutcome.CANCEL:
            if begin_deferred:
                out.append(RecipientUpdate(index, RecipientState.PARKED, diagnostic=PARKED_NOTE))
            else:
                out.append(
                    RecipientUpdate(
                        index, RecipientState.QUEUED, retry_at=now + policy.resend_later_delay
                    )
                )
        elif outcome is SubmitOutcome.USER_CANCELLED:
            out.append(
                RecipientUpdate(
                    index, RecipientState.CANCELLED, diagnostic="cancelled by user", status=None
                )
            )
        elif outcome is SubmitOutcome.WAIT or outcome is SubmitOutcome.ERROR:
            wait = delay if delay is not None else backoff(policy, attempts + 1, rng)
            status = "4.4.1" if outcome is SubmitOutcome.WAIT else "4.3.0"
            text = reason or (
                "transport asked to wait" if outcome is SubmitOutcome.WAIT else "transport error"
            )
            out.append(_temporary(index, now + wait, expires_at, status, text))
        else:  # pragma: no cover - exhaustive
            raise AssertionError(outcome)
    return out


def _temporary(
    index: int, retry_at: float, expires_at: float, status: str, text: str
) -> RecipientUpdate:
    if retry_at >= expires_at:
        return RecipientUpdate(
            index,
            RecipientState.FAILED,
            status="5.4.7",
            diagnostic=f"delivery time expired; last error: {status} {text}",
            count_attempt=True,
        )
    return RecipientUpdate(
        index,
        RecipientState.QUEUED,
        status=status,
        diagnostic=text,
        retry_at=retry_at,
        count_attempt=True,
    )


def plan_result(
    result: RecipientResult,
    *,
    attempts: int,
    policy: Policy,
    now: float,
    expires_at: float,
    rng: random.Random | None = None,
) -> RecipientUpdate:
    """The update for one per-recipient result reported with status_recips."""
    if result.outcome is _DELIVERED:
        return RecipientUpdate(
            result.index,
            _RECIPIENT_DELIVERED,
            status=result.status,
            diagnostic=result.diagnostic,
            count_attempt=True,
        )
    if result.outcome is Outcome.FAILED:
        return RecipientUpdate(
            result.index,
            RecipientState.FAILED,
            status=result.status,
            diagnostic=result.diagnostic,
            count_attempt=True,
        )
    wait = (
        result.retry_after if result.retry_after is not None else backoff(policy, attempts + 1, rng)
    )
    return _temporary(result.index, now + wait, expires_at, result.status, result.diagnostic)
