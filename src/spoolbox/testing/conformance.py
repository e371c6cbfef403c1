"""check_provider: the conformance suite for transport providers.

Third-party authors run it against their own provider::

    from spoolbox.testing import check_provider

    async def test_my_provider(tmp_path):
        report = await check_provider(MyProvider, options={...}, address="MYTYPE:dest")
        assert report.ok, report.text()

It runs the provider under a real spooler (memory store) and checks what the
contract asks of it: a status row created in ``logon``; address types that are
strings and include the test address's type; a submitted message whose every
recipient ends delivered, failed or deferred with a result (none silently left
unreported); a cancelled message that ends promptly; a flush that finishes and
leaves no flush bit set; no slice over the budget and no stall of the loop; a clean
logoff and shutdown.  Each check is a line in the report, with what went wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core.config import SpoolerConfig, TransportConfig
from .._core.idle import AlwaysIdle
from .._core.policy import Policy
from .._core.spooler import Spooler
from ..model import Address, MessageState, NewMessage, RecipientState, StatusCode

__all__ = ["ProviderCheckReport", "check_provider"]


@dataclass
class ProviderCheckReport:
    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        lines = [f"PASS {n}" for n in self.passed]
        lines += [f"FAIL {n}: {why}" for n, why in self.failed]
        lines += [f"WARN {n}: {why}" for n, why in self.warnings]
        return "\n".join(lines)

    def check(self, name: str, ok: bool, why: str) -> None:
        if ok:
            self.passed.append(name)
        else:
            self.failed.append((name, why))


def _content(subject: str) -> bytes:
    return (
        f"From: conformance@example.org\r\nTo: test@example.org\r\nSubject: {subject}\r\n"
        "Message-ID: <conformance@spoolbox>\r\n\r\nspoolbox provider conformance check\r\n"
    ).encode()


async def check_provider(
    provider: type | str,
    *,
    address: str,
    options: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    policy: Policy | None = None,
    isolate: bool = False,
) -> ProviderCheckReport:
    """Run the conformance checks; returns the report (``report.ok``).

    ``isolate=True`` runs the provider in a child process, as ``isolate = true`` in
    a profile does (the provider must then be importable: an entry-point name or a
    module-level class)."""
    report = ProviderCheckReport()
    target = Address.parse(address)
    pol = policy or Policy(retry_base=3600.0, router_interval=0.05, relogon_delay=3600.0)
    cfg = SpoolerConfig(
        transports=(
            TransportConfig("under-test", provider, options=dict(options or {}), isolate=isolate),
        ),
        policy=pol,
        node="conformance",
    )
    sp = Spooler.open(cfg, idle=AlwaysIdle())
    async with sp:
        host = sp.host("under-test")
        async with asyncio.timeout(timeout):
            while host.session is None and host.last_error is None:
                await asyncio.sleep(0.01)
        report.check("logon", host.session is not None, f"logon failed: {host.last_error}")
        if host.session is None:
            return report
        row = sp.status.get("under-test")
        report.check(
            "status row created in logon",
            row is not None and row.detail != "provider did not create its status row in logon()",
            "the provider did not call support.modify_status_row(update=False) in logon()",
        )
        types = host.types or frozenset()
        report.check(
            "address types",
            target.type in types or "*" in types,
            f"address_types() is {sorted(types)}, which does not serve {target.type}",
        )
        info = await sp.submit(NewMessage(None, (target,), _content("conformance: send")))
        try:
            await sp.wait_for(
                info.id,
                (MessageState.SENT, MessageState.FAILED, MessageState.DEFERRED),
                timeout=timeout,
            )
            recs = await sp.store.recipients(info.id)
            unreported = [
                r for r in recs if r.state is RecipientState.FAILED and r.status == "5.4.4"
            ]
            report.check(
                "submit reports every recipient",
                not unreported,
                "recipients were left without a result and found no other transport "
                f"({unreported[0].diagnostic if unreported else ''}); report them with "
                "support.status_recips()",
            )
        except TimeoutError:
            report.check("submit finishes", False, f"message not finished in {timeout} s")
        cancel = await sp.submit(NewMessage(None, (target,), _content("conformance: cancel")))
        await sp.cancel(cancel.id)
        try:
            state = await sp.wait_for(
                cancel.id, (MessageState.CANCELLED, MessageState.SENT), timeout=timeout
            )
            report.check("cancel", True, "")
            _ = state
        except TimeoutError:
            report.check("cancel", False, f"a cancelled message did not end in {timeout} s")
        try:
            async with asyncio.timeout(timeout):
                await sp.flush()
            row = sp.status.get("under-test")
            left = (
                row.status_code & (StatusCode.INBOUND_FLUSH | StatusCode.OUTBOUND_FLUSH)
                if row
                else 0
            )
            report.check("flush", not left, f"flush bits still set after the flush: {left!r}")
        except TimeoutError:
            report.check("flush", False, f"flush did not finish in {timeout} s")
        slow = host.counters.get("slow_slices", 0)
        if slow:
            report.warnings.append(
                (
                    "slices",
                    f"{slow} slices over the {pol.slice_budget * 1000:.1f} ms budget (longest "
                    f"{host.longest_slice * 1000:.1f} ms): yield more often",
                )
            )
        report.check(
            "no stalls",
            not sp.meter.stalls,
            f"the provider held the event loop for over {pol.watchdog_stall} s",
        )
    report.check(
        "logoff", host.last_error is None or "logoff" not in host.last_error, str(host.last_error)
    )
    return report
