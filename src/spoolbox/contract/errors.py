"""Errors of the transport contract, each carrying the original HRESULT it stands for.

A provider *raises* these from ``submit_message`` (and a few other calls) where the
original returned an error code; the spooler raises :class:`MessageCancelled` into a
provider from ``spooler_yield`` where the original returned MAPI_W_CANCEL_MESSAGE.
Every error says whose fault it is: the provider's (:class:`ContractViolation`), the
remote system's (:class:`NetworkError`), or nobody's (:class:`TransportBusy`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ContractViolation",
    "FailOneProvider",
    "InvalidObject",
    "MessageCancelled",
    "NetworkError",
    "NotMe",
    "SpoolboxError",
    "SubmitCancelled",
    "TransportBusy",
    "TransportError",
    "Unconfigured",
    "WaitRetry",
]


class SpoolboxError(Exception):
    """Base of every spoolbox error."""

    hresult: int = 0x80004005  # E_FAIL


class TransportError(SpoolboxError):
    """Base of the typed results a transport raises instead of returning."""


class TransportBusy(TransportError):
    """MAPI_E_BUSY: nothing was done; offer the message again later."""

    hresult = 0x8004010B


class NotMe(TransportError):
    """MAPI_E_NOT_ME: nothing was done; offer these recipients to the next transport."""

    hresult = 0x80040502


class WaitRetry(TransportError):
    """MAPI_E_WAIT: a temporary problem; keep the message and retry after ``delay`` s."""

    hresult = 0x80040500

    def __init__(self, delay: float, reason: str = "transport asked to wait") -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        super().__init__(reason)
        self.delay = float(delay)
        self.reason = reason


class NetworkError(WaitRetry):
    """MAPI_E_NETWORK_ERROR: the network failed; retry after ``delay`` seconds."""

    hresult = 0x80040115

    def __init__(self, delay: float, reason: str = "network error") -> None:
        super().__init__(delay, reason)


class SubmitCancelled(TransportError):
    """MAPI_E_CANCEL: a resend this transport asked for is no longer wanted."""

    hresult = 0x80040501


class MessageCancelled(SpoolboxError):
    """MAPI_W_CANCEL_MESSAGE, raised by ``spooler_yield``: the user cancelled the message.

    Let it propagate (that is MAPI_E_USER_CANCEL): the spooler marks the recipients
    the transport had not finished as cancelled.
    """

    hresult = 0x80040113  # what the provider's call ends with: MAPI_E_USER_CANCEL

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id} was cancelled")
        self.message_id = message_id


class FailOneProvider(SpoolboxError):
    """MAPI_E_FAILONEPROVIDER from ``logon``: this provider cannot log on now."""

    hresult = 0x8004011D


class Unconfigured(SpoolboxError):
    """MAPI_E_UNCONFIGURED from ``logon``: the profile lacks settings or credentials."""

    hresult = 0x8004011C

    def __init__(self, missing: Sequence[str], detail: str = "") -> None:
        names = ", ".join(missing)
        super().__init__(f"missing configuration: {names}" + (f" ({detail})" if detail else ""))
        self.missing = tuple(missing)


class ContractViolation(SpoolboxError):
    """A provider broke the contract (call order, types, a dead object): its fault."""

    hresult = 0x80040106  # closest original: MAPI_E_UNKNOWN_FLAGS / bad call


class InvalidObject(ContractViolation):
    """MAPI_E_INVALID_OBJECT: an object handed to the provider was used after its call."""

    hresult = 0x80040108
