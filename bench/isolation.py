"""Isolated transports: what a child process buys the host loop, and what it costs.

What it measures
----------------
1. **Host loop lag with a 2 s hog.**  A transport whose ``submit_message`` burns the
   CPU for ``--hog-seconds`` (2 s) without ever yielding sends one message, in the
   spooler's process (``isolate = false``) and in a child process
   (``isolate = true``).  Meanwhile a foreground task in the spooler's loop asks to
   wake every 5 ms (``foreground_lag.Foreground``); its lag (p50, p99, max, ms) is
   taken from the submit until the message is delivered.  The spooler's own figures
   are shown beside it: ``statistics()["idle"]["max_loop_lag"]`` and the stall the
   slice meter recorded (both with the embedded default, ``LoopLagIdle``).  The
   floor row is the same foreground for as long beside an idle isolated transport:
   what the machine (and whatever else runs on it) costs the loop anyway.
2. **Messages per second of a cheap transport.**  ``--messages`` (2,000) small
   messages (one recipient, about 300 bytes) are submitted while the host marks
   itself busy, then drained by a transport that reports every recipient delivered
   at once, in process and isolated.  Reported: messages/s of the drain and the CPU
   per message (the spooler's process, plus the child's from /proc for the isolated
   run), and the ratio of the two rates and the extra CPU per message, paired
   within each run.

Every figure is the median over ``--runs`` runs (3), the systems alternating.

Run it
------
::

    .venv/bin/python bench/isolation.py [--runs 3] [--messages 2000] [--hog-seconds 2]
        [--json out.json]

The providers are module-level classes of this file, imported by the child as
``isolation:Name`` (the bench directory is on the child's ``sys.path``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from foreground_lag import Foreground, machine, percentile
from spoolbox import (
    Address,
    AlwaysIdle,
    NewMessage,
    Policy,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox._core.hosts.isolated import IsolatedSession, child_usage
from spoolbox.contract import (
    BaseTransportSession,
    LogonFlags,
    OutboundMessage,
    RecipientResult,
    StatusCode,
    SubmitFlags,
    Support,
)

CONTENT = (
    b"From: bench@example.org\r\nTo: rcpt@example.net\r\nSubject: isolation bench\r\n"
    b"Message-ID: <bench@spoolbox>\r\n\r\n" + b"a cheap message body line\r\n" * 8
)


# -- the providers (imported by the child as isolation:Name) ------------------------------
class CheapSession(BaseTransportSession):
    ADDRESS_TYPES: ClassVar[tuple[str, ...]] = ("SMTP",)

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        await message.content()
        await self.support.status_recips(
            message, [RecipientResult.delivered(r) for r in message.recipients]
        )


class HogSession(CheapSession):
    hog_seconds = 2.0

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        end = time.perf_counter() + self.hog_seconds
        while time.perf_counter() < end:
            pass  # never yields: the provider that cooperative scheduling cannot stop
        await super().submit_message(message, flags)


class Cheap:
    display_name: ClassVar[str] = "isolation bench: cheap"
    session: ClassVar[type[CheapSession]] = CheapSession

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> CheapSession:
        support.modify_status_row(update=False, status_code=StatusCode.AVAILABLE)
        session = self.session(support)
        session.hog_seconds = float(config.get("hog_seconds", 0.0))  # type: ignore[attr-defined]
        return session

    async def shutdown(self) -> None:
        return None


class Hog(Cheap):
    display_name: ClassVar[str] = "isolation bench: hog"
    session: ClassVar[type[CheapSession]] = HogSession


# -- the runs ---------------------------------------------------------------------------------
@dataclass
class HogRun:
    isolated: bool
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    spooler_max_loop_lag_ms: float
    spooler_stall_ms: float

    @classmethod
    def of(cls, isolated: bool, fg: Foreground, stats: Mapping[str, Any]) -> HogRun:
        """The foreground's lags and the spooler's own figures of one run."""
        stalls = [seconds for _name, seconds in stats["stalls"]]
        return cls(
            isolated=isolated,
            lag_p50_ms=percentile(fg.lags, 50) * 1000,
            lag_p99_ms=percentile(fg.lags, 99) * 1000,
            lag_max_ms=max(fg.lags) * 1000,
            spooler_max_loop_lag_ms=stats["idle"]["max_loop_lag"] * 1000,
            spooler_stall_ms=max(stalls, default=0.0) * 1000,
        )


@dataclass
class RateRun:
    isolated: bool
    messages: int
    seconds: float
    parent_cpu_us: float
    child_cpu_us: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _config(provider: str, isolated: bool, **options: Any) -> SpoolerConfig:
    return SpoolerConfig(
        transports=(TransportConfig("t", provider, options=options, isolate=isolated),),
        policy=Policy(router_interval=0.05),
        node="bench",
    )


def _message() -> NewMessage:
    return NewMessage(
        Address.parse("SMTP:bench@example.org"), (Address.parse("SMTP:r@example.net"),), CONTENT
    )


async def _delivered(sp: Spooler, n: int) -> None:
    while sp.counters["delivered"] < n:
        await asyncio.sleep(0.005)


async def hog_run(isolated: bool, hog_seconds: float) -> HogRun:
    async with Spooler.open(_config("isolation:Hog", isolated, hog_seconds=hog_seconds)) as sp:
        assert (await sp.wait_ready(timeout=30))["t"], sp.host("t").last_error
        fg = Foreground()
        await fg.start()
        await sp.submit(_message())
        await _delivered(sp, 1)
        await fg.stop()
        stats = sp.statistics()
    return HogRun.of(isolated, fg, stats)


async def floor_run(seconds: float) -> HogRun:
    """The same foreground beside an idle isolated transport: the machine's floor."""
    async with Spooler.open(_config("isolation:Cheap", True)) as sp:
        assert (await sp.wait_ready(timeout=30))["t"], sp.host("t").last_error
        fg = Foreground()
        await fg.start()
        await asyncio.sleep(seconds)
        await fg.stop()
        stats = sp.statistics()
    return HogRun.of(True, fg, stats)


async def rate_run(isolated: bool, n: int) -> RateRun:
    async with Spooler.open(_config("isolation:Cheap", isolated), idle=AlwaysIdle()) as sp:
        assert (await sp.wait_ready(timeout=30))["t"], sp.host("t").last_error
        session = sp.host("t").session
        with sp.foreground_busy():  # holds the transport back while we submit
            await sp.submit_many(_message() for _ in range(n))
            cpu0 = time.process_time()
            child0 = child_usage(session.pid) if isinstance(session, IsolatedSession) else None
            start = time.perf_counter()
        # Leaving the block released the transport: the drain started then.
        await _delivered(sp, n)
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        child = 0.0
        if child0 is not None and isinstance(session, IsolatedSession):
            child = child_usage(session.pid).cpu_seconds - child0.cpu_seconds
    return RateRun(isolated, n, seconds, cpu / n * 1e6, child / n * 1e6)


def _of(pair: list[RateRun], isolated: bool) -> RateRun:
    return next(r for r in pair if r.isolated is isolated)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def limits() -> dict[str, Any]:
    """The machine and what else loads it: nproc, load averages, cgroup CPU limit."""
    out = dict(machine())
    out["loadavg"] = os.getloadavg()
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            out["cgroup_cpu_max"] = f.read().strip()
    except OSError:
        out["cgroup_cpu_max"] = "n/a"
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    hogs: list[HogRun] = []
    floors: list[HogRun] = []
    rates: list[RateRun] = []
    for run in range(args.runs):
        order = (False, True) if run % 2 == 0 else (True, False)
        for isolated in order:
            hogs.append(await hog_run(isolated, args.hog_seconds))
        floors.append(await floor_run(args.hog_seconds))
        for isolated in order:
            rates.append(await rate_run(isolated, args.messages))
    result: dict[str, Any] = {"machine": limits(), "runs": args.runs, "hog": {}, "rate": {}}
    print(f"machine: {result['machine']}")
    print(f"\n1. host loop lag while a {args.hog_seconds:g} s hog sends one message")
    print("| isolate | lag p50 ms | lag p99 ms | lag max ms | max_loop_lag ms | stall ms |")
    print("|---|---|---|---|---|---|")
    for label, mine in (
        ("false", [h for h in hogs if not h.isolated]),
        ("true", [h for h in hogs if h.isolated]),
        ("no hog (floor)", floors),
    ):
        row = {
            k: _median([getattr(h, k) for h in mine])
            for k in (
                "lag_p50_ms",
                "lag_p99_ms",
                "lag_max_ms",
                "spooler_max_loop_lag_ms",
                "spooler_stall_ms",
            )
        }
        result["hog"][label] = row
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
    print(f"\n2. a cheap transport, {args.messages} messages")
    print("| isolate | msg/s | spooler CPU us/msg | child CPU us/msg |")
    print("|---|---|---|---|")
    for isolated in (False, True):
        mine = [r for r in rates if r.isolated is isolated]
        row = {
            "rate": _median([r.rate for r in mine]),
            "parent_cpu_us": _median([r.parent_cpu_us for r in mine]),
            "child_cpu_us": _median([r.child_cpu_us for r in mine]),
        }
        result["rate"][str(isolated).lower()] = row
        print(
            f"| {str(isolated).lower()} | {row['rate']:.0f} | {row['parent_cpu_us']:.0f} "
            f"| {row['child_cpu_us']:.0f} |"
        )
    # Paired within a run (each run has one of each), then the median.
    pairs = [rates[i : i + 2] for i in range(0, len(rates), 2)]
    ratio = _median([_of(p, True).rate / _of(p, False).rate for p in pairs])
    extra = _median(
        [
            _of(p, True).parent_cpu_us + _of(p, True).child_cpu_us - _of(p, False).parent_cpu_us
            for p in pairs
        ]
    )
    result["rate"]["isolated_over_in_process"] = ratio
    result["rate"]["extra_cpu_us_per_message"] = extra
    print(f"isolated / in process: {ratio:.2f}x the messages/s; {extra:.0f} us more CPU a message")
    print(f"\nall runs: {[vars(h) for h in hogs + floors]}")
    print(f"{[vars(r) | {'rate': r.rate} for r in rates]}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--hog-seconds", type=float, default=2.0)
    parser.add_argument("--json", help="write the medians to this file")
    ns = parser.parse_args()
    out = asyncio.run(main(ns))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(out, f, indent=2)
