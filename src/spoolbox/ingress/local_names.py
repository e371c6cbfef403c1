"""What a recipient without a domain becomes: cron's ``root``, ``mail root``.

Programs on a Unix host address mail to local names: cron mails a job's output to
the job's owner (``root``, ``www-data``), mdadm and smartd to ``MAILADDR root``,
scripts to ``mail -s ... root``.  Postfix appends ``@myorigin`` to such a name and
delivers it to the local mailbox or relays it; msmtp, ssmtp and nullmailer map it
through an aliases file.  Without a rule here the name goes nowhere, and the mail of
a host whose sendmail is spoolbox's is lost at the first cron job.

The profile's ``[local_names]`` gives the rule, as this frozen value:

* ``aliases``: a name's addresses (``root = "admin@example.org"``; a list for several;
  another local name to go on through its alias, ``www-data = "root"``; a typed
  address, ``MAILDIR:ops``); names are matched without regard to case;
* ``domain``: a name without an alias becomes ``name@domain``;
* ``address_type``: ... or ``TYPE:name`` (``MAILDIR:root``: the local Maildir);
* ``host_names``: this host's own mail names (Postfix's ``mydestination``): an
  address at one of them, ``root@host.example.org``, is the local name ``root``
  (:meth:`LocalNames.at_this_host`), so that mail to it (and a report to a sender
  that sendmail wrote as ``root@HOST``) stays on the host instead of leaving it.

At most one of ``domain`` and ``address_type``.  As in sendmail's aliases, a name met
again while its own alias is being expanded (``root = ["root", "admin@example.org"]``)
stands for itself and is not expanded again.  Every alias is expanded when the value
is built, so that a wrong one is a profile error, not a surprise at the first mail.
Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model import Address, AddressError
from ..model.address import smtp_value_error
from ..model.hostname import is_hostname

__all__ = ["LocalNameError", "LocalNames", "is_local_name"]

#: A local name: a login name, or any dot-atom local part without ``@`` (RFC 5321).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_NAME_RE = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
#: How deep aliases may point at aliases (sendmail's MAXRCRSN is 10).
MAX_DEPTH = 10


class LocalNameError(ValueError):
    """A local name that cannot become an address, or an alias that is wrong."""


def is_local_name(text: str) -> bool:
    """Whether ``text`` is a bare local name (``root``): no ``@``, no ``TYPE:``."""
    return len(text) <= 64 and _NAME_RE.fullmatch(text) is not None


@dataclass(frozen=True)
class LocalNames:
    """The rule for local names; build it with :meth:`build`."""

    domain: str | None = None
    address_type: str | None = None
    #: Every alias, expanded to its final addresses (keys in lower case).
    expanded: Mapping[str, tuple[Address, ...]] = field(default_factory=dict)
    #: This host's own mail names, lower case without a final dot.
    host_names: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        aliases: Mapping[str, str | Sequence[str]] | None = None,
        *,
        domain: str | None = None,
        address_type: str | None = None,
        host_names: Sequence[str] = (),
    ) -> LocalNames:
        """Check the parts and expand every alias; :class:`LocalNameError` says what is
        wrong (``aliases.root``, ``domain``, ...), naming the key as the profile does."""
        if domain is not None and address_type is not None:
            raise LocalNameError("set domain or address_type, not both")
        hosts: set[str] = set()
        for i, host in enumerate(host_names):
            name = host.strip().rstrip(".").lower()
            if not is_hostname(name):
                raise LocalNameError(f"host_names[{i}]: expected a DNS name, not {host!r}")
            hosts.add(name)
        if domain is not None:
            domain = domain.rstrip(".")
            if not is_hostname(domain):
                raise LocalNameError(f"domain: expected a DNS domain name, not {domain!r}")
        if address_type is not None:
            try:
                Address(address_type, "x")
            except AddressError as exc:
                raise LocalNameError(f"address_type: {exc}") from None
        table: dict[str, tuple[str, ...]] = {}
        for name, targets in (aliases or {}).items():
            if not is_local_name(name):
                raise LocalNameError(
                    f"aliases: {name!r} is not a local name (a login name such as root, "
                    "without @ or TYPE:)"
                )
            listed = (targets,) if isinstance(targets, str) else tuple(targets)
            if not listed:
                raise LocalNameError(f"aliases.{name}: no address")
            if name.lower() in table:
                raise LocalNameError(f"aliases: {name!r} is given twice (names ignore case)")
            table[name.lower()] = listed
        rule = cls(domain=domain, address_type=address_type)
        expanded = {name: rule._expand(name, table, (name,)) for name in table}
        return cls(
            domain=domain,
            address_type=address_type,
            expanded=expanded,
            host_names=frozenset(hosts),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON (for a listener's processes); :meth:`from_dict` builds it
        again (the aliases as their expanded addresses)."""
        return {
            "aliases": {name: [str(a) for a in found] for name, found in self.expanded.items()},
            "domain": self.domain,
            "address_type": self.address_type,
            "host_names": sorted(self.host_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalNames:
        return cls.build(
            data.get("aliases") or {},
            domain=data.get("domain"),
            address_type=data.get("address_type"),
            host_names=data.get("host_names") or (),
        )

    def resolve(self, name: str) -> tuple[Address, ...]:
        """The addresses a local name stands for; :class:`LocalNameError` when the rule
        says nothing for it."""
        found = self.expanded.get(name.lower())
        if found is not None:
            return found
        return (self._itself(name, ()),)

    def local_part(self, address: Address) -> str | None:
        """The local name ``address`` is when it is an SMTP address at one of
        :attr:`host_names` (``root@host.example.org``: ``root``), else None."""
        if address.type != "SMTP" or not self.host_names:
            return None
        local, at, domain = address.value.rpartition("@")
        if not at or domain.rstrip(".").lower() not in self.host_names:
            return None
        return local if is_local_name(local) else None

    def at_this_host(self, address: Address) -> tuple[Address, ...] | None:
        """What an address at this host's own name stands for (its local name
        resolved: ``MAILDIR:root``, the alias's addresses); None for any other address,
        and for a name the rule says nothing for (it stays as it is)."""
        name = self.local_part(address)
        if name is None:
            return None
        try:
            found = self.resolve(name)
        except LocalNameError:
            return None
        return None if found == (address,) else found

    def stands_for(self, address: Address) -> tuple[Address, ...]:
        """The addresses ``address`` stands for: what :meth:`at_this_host` makes of an
        address at this host's own name, else ``address`` itself."""
        return self.at_this_host(address) or (address,)

    def _expand(
        self, name: str, table: Mapping[str, tuple[str, ...]], path: tuple[str, ...]
    ) -> tuple[Address, ...]:
        where = f"aliases.{path[0]}"
        if len(path) > MAX_DEPTH:
            raise LocalNameError(
                f"{where}: aliases nested more than {MAX_DEPTH} deep ({' -> '.join(path)})"
            )
        found: list[Address] = []
        for target in table[name]:
            target = target.strip()
            if is_local_name(target):
                key = target.lower()
                if key in table and key not in path:
                    more = self._expand(key, table, (*path, key))
                else:  # no alias, or met again on its own way: the name itself
                    more = (self._itself(target, path),)
            else:
                more = (_address(target, where),)
            found.extend(a for a in more if a not in found)
        return tuple(found)

    def _itself(self, name: str, path: tuple[str, ...]) -> Address:
        """A name without an alias (or met again): by ``address_type`` or ``domain``."""
        if self.address_type is not None:
            return Address(self.address_type, name)
        if self.domain is not None:
            return _address(f"{name}@{self.domain}", f"aliases.{path[0]}" if path else name)
        via = f" (from aliases.{path[0]})" if path else ""
        raise LocalNameError(
            f"{name!r}{via} is a local name without a domain, and the profile's "
            "[local_names] has no alias for it, no domain and no address_type"
        )


def _address(text: str, where: str) -> Address:
    """An alias's target that is not a local name: ``TYPE:value`` or ``user@domain``."""
    try:
        address = Address.parse(text, default_type="SMTP")
    except AddressError as exc:
        raise LocalNameError(f"{where}: {text!r}: {exc}") from None
    if address.type == "SMTP":
        local, at, domain = address.value.rpartition("@")
        problem = smtp_value_error(address.value)
        if problem is None and not (local and at and domain):
            problem = "expected user@domain"
        if problem is None and len(address.value) > 254:
            problem = f"{len(address.value)} octets long; the limit is 254"
        if problem is not None:
            raise LocalNameError(f"{where}: {text!r}: {problem}")
    return address
