"""Before the daemon starts, and for ``spoolbox check``: every transport's options
read as its provider's logon reads them, without logging on.

A provider may offer ``check_options(config)`` (a static method; the bundled ones
do): it raises :class:`~spoolbox.contract.OptionError` or :class:`ValueError` for
options that can never work (a typo such as ``prot = 25``: the daemon refuses to
start, naming the transport, the key and the known keys), or
:class:`~spoolbox.contract.Unconfigured` for settings that are missing (the
transport stays off-line until they are given, as for an unset password).  A
provider without it is checked by its first logon only.

A provider may also offer ``process_limits(config)`` (a static method): the limits
one process running the transport holds to, its defaults included (the keys of
:mod:`spoolbox.daemon.shares`: ``max_connections``, ``destination_concurrency``,
``destination_rate_delay``, ``one_process``), so that a daemon with delivery workers
shares them (:func:`provider_limits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .. import TransportConfig, load_provider_class
from ..contract import Unconfigured
from ..profile import Profile, ProfileError

__all__ = [
    "TransportCheck",
    "check_transports",
    "provider_limits",
    "refuse_invalid_options",
]


@dataclass(frozen=True, slots=True)
class TransportCheck:
    """What the options of one transport say: ``problem`` is None when they are fine;
    ``invalid`` when they can never work (else the problem is missing settings)."""

    transport: str
    problem: str | None = None
    invalid: bool = False


def check_transports(profile: Profile) -> list[TransportCheck]:
    """One :class:`TransportCheck` per transport of ``profile``, in transport order."""
    missing: dict[str, list[str]] = {}
    for m in profile.missing:
        missing.setdefault(m.transport, []).append(f"{m.option} is not set ({m.source})")
    out = []
    for transport in profile.spooler.transports:
        name = transport.name
        if name in missing:
            out.append(TransportCheck(name, "not configured: " + "; ".join(missing[name])))
            continue
        try:
            cls = load_provider_class(transport.provider)
        except LookupError as exc:
            out.append(TransportCheck(name, str(exc), invalid=True))
            continue
        check = getattr(cls, "check_options", None)
        try:
            if check is not None:
                check(transport.options)
        except Unconfigured as exc:
            out.append(TransportCheck(name, f"not configured: {exc}"))
        except ValueError as exc:  # OptionError is one
            out.append(TransportCheck(name, str(exc), invalid=True))
        else:
            out.append(TransportCheck(name))
    return out


def refuse_invalid_options(profile: Profile) -> None:
    """ProfileError naming the first transport whose options can never work."""
    for found in check_transports(profile):
        if found.invalid and found.problem is not None:
            raise ProfileError(profile.path, found.problem, f"[transports.{found.transport}]")


def provider_limits(transport: TransportConfig) -> Mapping[str, object]:
    """``transport``'s limits as its provider reads them (``process_limits``), defaults
    included; the profile's options when the provider does not say them, cannot be
    loaded, or refuses the options (the daemon does not start then, or the transport
    stays off-line until it is configured)."""
    try:
        cls = load_provider_class(transport.provider)
    except LookupError:
        return transport.options
    limits = getattr(cls, "process_limits", None)
    if limits is None:
        return transport.options
    try:
        said = limits(transport.options)
    except (Unconfigured, ValueError):  # OptionError is a ValueError
        return transport.options
    return dict(said)
