"""The spooler's configuration as frozen values (the TOML profile is parsed into these).

A :class:`TransportConfig` names one transport session in *transport order*: the
provider (a class, or the name of an entry point in the ``spoolbox.transports``
group, or ``module:Class``), its options, and whether it sends and receives.
"""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..contract.errors import FailOneProvider
from ..model import Address, LogonFlags, default_hostname
from ..routing import DomainError, RouteEntry, RoutingTable, domains_entry
from ..store.retention import Retention
from .policy import Policy
from .rate import RateLimit

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_ENTRY_POINT_GROUP",
    "HookConfig",
    "SpoolerConfig",
    "TransportConfig",
    "load_provider_class",
    "unloadable_provider",
]

ENTRY_POINT_GROUP = "spoolbox.transports"
#: The entry-point group of spooler hooks (see :mod:`spoolbox.contract.hooks`).
HOOK_ENTRY_POINT_GROUP = "spoolbox.hooks"


def load_provider_class(
    spec: str | type, *, group: str = ENTRY_POINT_GROUP, what: str = "transport provider"
) -> type:
    """A provider class (or, with ``group`` and ``what``, a hook class) from a class,
    an entry-point name, or ``module:Class``."""
    if isinstance(spec, type):
        return spec
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise LookupError(f"cannot load {what} {spec!r}: {exc}") from exc
        if not isinstance(obj, type):
            raise LookupError(f"{spec!r} is not a class")
        return obj
    from importlib.metadata import entry_points  # not at import: a profile read needs none

    found = [ep for ep in entry_points(group=group) if ep.name == spec]
    if not found:
        known = sorted(ep.name for ep in entry_points(group=group))
        raise LookupError(
            f"no {what} named {spec!r} in entry-point group {group} "
            f"(installed: {', '.join(known) or 'none'})"
        )
    obj = found[0].load()
    if not isinstance(obj, type):
        raise LookupError(f"entry point {spec!r} does not name a class")
    return obj


@dataclass(frozen=True, slots=True)
class TransportConfig:
    name: str
    provider: str | type
    options: Mapping[str, Any] = field(default_factory=dict)
    outbound: bool = True
    inbound: bool = True
    #: The address types this transport serves, declared in the profile.  Routing uses
    #: them while the transport is not logged on, so its messages wait for it instead
    #: of failing; once it is logged on, its own ``address_types()`` answer wins.
    address_types: tuple[str, ...] | None = None
    logon_flags: LogonFlags = LogonFlags.NO_DIALOG
    #: Only recipients at these domains (``example.org``; ``.example.org`` for the
    #: names under it), as Postfix's ``transport_maps``; None: any.  Such transports
    #: are tried before those without a limit (:mod:`spoolbox.routing`).
    domains: frozenset[str] | None = None
    #: Run the sessions in a child process (see docs/design.md, "Isolated
    #: transports"): a provider that blocks, crashes or leaks takes down its child,
    #: not the spooler.  The provider must be importable (entry point or module:Class).
    isolate: bool = False
    #: At most this many messages in any window of this length (:mod:`.rate`), as a
    #: provider's sending limit asks; None: as fast as the lanes go.
    max_rate: RateLimit | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(
                f"transport name {self.name!r} is invalid: use letters, digits and '-_.'"
            )
        if self.domains is not None:
            try:
                domains = frozenset(domains_entry(d) for d in self.domains)
            except DomainError as exc:
                raise ValueError(f"transport {self.name!r}: domains: {exc}") from None
            if not domains:
                raise ValueError(
                    f"transport {self.name!r}: domains is empty: it would serve nothing "
                    "(leave it out to serve every domain)"
                )
            object.__setattr__(self, "domains", domains)


@dataclass(frozen=True, slots=True)
class HookConfig:
    """One spooler hook, in hook order: its name (its status row is ``hook:NAME``),
    the hook class (a class, an entry-point name of ``spoolbox.hooks``, or
    ``module:Class``) and its options (handed to the class)."""

    name: str
    hook: str | type
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"hook name {self.name!r} is invalid: use letters, digits and '-_.'")


@dataclass(frozen=True, slots=True)
class SpoolerConfig:
    transports: tuple[TransportConfig, ...] = ()
    policy: Policy = field(default_factory=Policy)
    #: This spooler's name in leases.  Two spoolers sharing one store need distinct
    #: names; on start-up a spooler releases every lease held under its own name (a
    #: previous run of it died).
    node: str = field(default_factory=socket.gethostname)
    #: Local identities (the profile's senders): reports for them go to the inbox.
    identities: tuple[Address, ...] = ()
    #: What an address at this host's own name stands for (the profile's
    #: ``[local_names]``: ``root@HOST`` -> ``MAILDIR:root``), None for other addresses:
    #: a report to such a sender goes there instead of leaving the host.
    local_recipients: Callable[[Address], tuple[Address, ...] | None] | None = None
    #: This host's mail name (Postfix's ``myhostname``): the SMTP transport's EHLO
    #: (through ``Support.hostname``), Reporting-MTA and the MAILER-DAEMON address of
    #: delivery reports.  Default: :func:`~spoolbox.model.default_hostname`.
    hostname: str = field(default_factory=default_hostname)
    #: Reporting-MTA in delivery reports; empty: ``hostname``.
    reporting_mta: str = ""
    #: How long finished messages and inbox entries are kept (housekeeping purges).
    retention: Retention = field(default_factory=Retention)
    #: Spooler hooks in order (the profile's ``[[hooks]]``): every outbound message
    #: passes them before its transport gets it, every inbound one before the inbox.
    hooks: tuple[HookConfig, ...] = ()

    def __post_init__(self) -> None:
        if not self.reporting_mta:
            object.__setattr__(self, "reporting_mta", self.hostname)
        for what, names in (
            ("transport", [t.name for t in self.transports]),
            ("hook", [h.name for h in self.hooks]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique; repeated: {dupes}")

    def declared_routes(self) -> RoutingTable:
        """The routing table from the profile alone: each outbound transport with the
        ``address_types`` it declares (unknown without them), as a spooler routes
        before its transports log on; what a client without the daemon routes by."""
        return RoutingTable.build(
            RouteEntry(
                t.name,
                None if t.address_types is None else frozenset(a.upper() for a in t.address_types),
                t.domains,
            )
            for t in self.transports
            if t.outbound
        )


def unloadable_provider(reason: str) -> type:
    """A stand-in provider class for one that cannot be loaded: its logon fails with
    ``reason`` (and is retried), the other transports run."""

    class UnloadableProvider:
        display_name = "unloadable provider"

        async def logon(self, *args: object) -> object:
            raise FailOneProvider(reason)

        async def shutdown(self) -> None:
            return None

    return UnloadableProvider
