"""Foreground lag: does an embedded spooler leave the host's event loop responsive?

What it measures
----------------
An embedded spooler drains N messages (default 10,000) through a transport that does
the CPU work a real transport does before it sends: it parses the MIME content
(``await message.email()``) and serialises it again
(``as_bytes(policy=email.policy.SMTP)``), then reports every recipient delivered with
one ``status_recips``.  Meanwhile a foreground task in the same event loop asks to
wake every 5 ms; its *lag* is how late it actually woke (``time.perf_counter``, actual
minus expected).  For each system the benchmark reports the foreground's lag (p50, p99,
max, in ms) over the whole drain and the drain rate (messages/s).

Systems, all in one process, one after the other in every run (the order rotates
from run to run so no system always goes first):

* ``spoolbox (AlwaysIdle)``: ``Spooler`` on the ``MemoryStore`` with ``AlwaysIdle``,
  so idle gating is not what is measured;
* ``spoolbox (LoopLagIdle)``: the same with the embedded default idle policy;
* ``naive gather``: the same parse + serialise work in ``asyncio.gather`` of one
  plain task per message, each awaiting ``asyncio.sleep(0)`` once first (as if
  awaiting a network write);
* ``naive semaphore(10)``: the same, with an ``asyncio.Semaphore(10)`` bounding
  concurrency;
* ``no drain (floor)``: the foreground alone for 2 s, the machine's noise floor.

The messages (multipart/alternative text + html and one small attachment, about 4-20
KB) are built deterministically with the standard ``email`` package, once per
invocation.  For the spoolbox rows all messages are submitted (and routed) while the
host marks itself busy (``spooler.foreground_busy()``), which holds the transport back;
the drain is timed from the moment the mark is released until the transport reports
the last message delivered.  Every run uses a fresh spooler.  The table shows the
median of each figure across runs; the ratios are medians of per-run ratios.

The goal from the issue: foreground p99 lag <= 5 ms while draining at >= 0.8x the
naive drain rate.

Run it
------
::

    .venv/bin/python bench/foreground_lag.py [--messages 10000] [--runs 2]
        [--budget-ms 5] [--json out.json]

``--budget-ms`` is the spooler's slice budget (``Policy.slice_budget``).  Each drain
of 10,000 messages takes 31-38 s on a 2-CPU machine, so one run of all systems takes
about 2.5 minutes and building the messages about 25 s: the default of 2 runs keeps
the whole benchmark at about 5 minutes; the figures in ``docs/benchmarks.md`` are
from ``--runs 5`` (about 12.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email.policy
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime
from typing import Any, ClassVar

from spoolbox import (
    AlwaysIdle,
    IdlePolicy,
    NewMessage,
    Policy,
    RecipientState,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.contract import (
    BaseTransportSession,
    LogonFlags,
    OutboundMessage,
    RecipientResult,
    StatusCode,
    SubmitFlags,
    Support,
)

TICK = 0.005  # the foreground's period, seconds
FLOOR_SECONDS = 2.0  # how long the no-drain reference row runs
SEED = 20240101

SPOOLBOX_ALWAYS = "spoolbox (AlwaysIdle)"
SPOOLBOX_LOOPLAG = "spoolbox (LoopLagIdle)"
NAIVE_GATHER = "naive gather"
NAIVE_SEMAPHORE = "naive semaphore(10)"
FLOOR = "no drain (floor)"
SYSTEMS = (SPOOLBOX_ALWAYS, SPOOLBOX_LOOPLAG, NAIVE_GATHER, NAIVE_SEMAPHORE, FLOOR)

_TEXT = (
    "the spooler hands each message to its transport which parses and serialises it "
    "again before the network write queue retry lease report delivery status recipient "
    "envelope header body attachment foreground budget slice yield loop host provider"
)
_WORDS = _TEXT.split()


# -- messages -----------------------------------------------------------------------------
def make_message(i: int, rng: random.Random) -> NewMessage:
    """Message ``i``: multipart/mixed(alternative(text, html), attachment), ~4-20 KB."""
    msg = EmailMessage()
    msg["From"] = f"Sender {i % 97} <sender{i % 97}@example.org>"
    to = [f"User {i}-{k} <user{i}.{k}@example.net>" for k in range(1 + rng.randrange(3))]
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"Benchmark message {i}: " + " ".join(rng.choice(_WORDS) for _ in range(6))
    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i)
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<bench.{i}@example.org>"
    paras = [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(20, 60)))
        for _ in range(rng.randrange(4, 24))
    ]
    msg.set_content("\n\n".join(paras))
    msg.add_alternative(
        "<html><body>" + "".join(f"<p>{p}</p>" for p in paras) + "</body></html>",
        subtype="html",
    )
    msg.add_attachment(
        rng.randbytes(rng.randrange(1000, 4000)),
        maintype="application",
        subtype="octet-stream",
        filename=f"data-{i}.bin",
    )
    # Fixed boundaries: the default ones are random, and the bytes must not be.
    msg.set_boundary(f"=_bench_mixed_{i}")
    for part in msg.walk():
        if part is not msg and part.is_multipart():
            part.set_boundary(f"=_bench_alt_{i}")
    return NewMessage.from_email(msg)


def make_messages(n: int) -> list[NewMessage]:
    rng = random.Random(SEED)
    return [make_message(i, rng) for i in range(n)]


def transport_work(content: bytes) -> int:
    """What the transport does with each message: parse, then serialise for the wire.

    The parse is the one ``OutboundMessage.email()`` does (default policy)."""
    parsed = BytesParser(policy=email.policy.default).parsebytes(content)
    return len(parsed.as_bytes(policy=email.policy.SMTP))


# -- the foreground -------------------------------------------------------------------------
class Foreground:
    """Asks to wake every ``period`` seconds and records how late it woke."""

    def __init__(self, period: float = TICK) -> None:
        self.period = period
        self.lags: list[float] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        period = self.period
        clock = time.perf_counter
        while not self._stop:
            expected = clock() + period
            await asyncio.sleep(period)
            self.lags.append(clock() - expected)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="foreground")
        await asyncio.sleep(0)  # let it start its first sleep

    async def stop(self) -> None:
        """Stop after the tick in progress: it is recorded (it may be the longest)."""
        self._stop = True
        if self._task is not None:
            await self._task


# -- results --------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (defined for any non-empty sample, even one value)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunResult:
    system: str
    run: int
    messages: int
    drain_seconds: float
    ticks: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.drain_seconds if self.messages else math.nan

    @classmethod
    def of(
        cls,
        system: str,
        run: int,
        messages: int,
        seconds: float,
        fg: Foreground,
        extra: dict[str, Any] | None = None,
    ) -> RunResult:
        lags = fg.lags
        return cls(
            system=system,
            run=run,
            messages=messages,
            drain_seconds=seconds,
            ticks=len(lags),
            lag_p50_ms=percentile(lags, 50) * 1000,
            lag_p99_ms=percentile(lags, 99) * 1000,
            lag_max_ms=max(lags) * 1000 if lags else math.nan,
            extra=extra or {},
        )


# -- spoolbox -------------------------------------------------------------------------------
class Tracker:
    """Shared by the benchmark and the provider: counts finished messages."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.done = 0
        self.wire_bytes = 0
        self.finished_at = 0.0
        self.all_done = asyncio.Event()

    def finished(self, wire_bytes: int) -> None:
        self.done += 1
        self.wire_bytes += wire_bytes
        if self.done >= self.expected:
            self.finished_at = time.perf_counter()
            self.all_done.set()


class BenchSession(BaseTransportSession):
    """Parses, serialises, and reports every recipient delivered."""

    ADDRESS_TYPES: ClassVar[tuple[str, ...]] = ("SMTP",)

    def __init__(self, support: Support, tracker: Tracker) -> None:
        super().__init__(support)
        self.tracker = tracker

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        msg = await message.email()
        wire = msg.as_bytes(policy=email.policy.SMTP)
        await self.support.status_recips(
            message, [RecipientResult.delivered(r) for r in message.recipients]
        )
        self.tracker.finished(len(wire))


class BenchProvider:
    """The transport provider class named in the spooler's configuration."""

    display_name: ClassVar[str] = "foreground-lag bench transport"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> BenchSession:
        support.modify_status_row(update=False, status_code=StatusCode.AVAILABLE)
        tracker = config["tracker"]
        assert isinstance(tracker, Tracker)
        return BenchSession(support, tracker)

    async def shutdown(self) -> None:
        return None


async def _until_ready(sp: Spooler, name: str) -> None:
    """The transport is logged on and every recipient is routed (not timed)."""
    while True:
        row = sp.status.get(name)
        online = row is not None and bool(row.status_code & StatusCode.OUTBOUND_ENABLED)
        if online and not await sp.store.unrouted(limit=1):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # let LoopLagIdle's ticker see a quiet loop again


async def run_spoolbox(
    system: str, run: int, messages: Sequence[NewMessage], budget: float
) -> RunResult:
    tracker = Tracker(len(messages))
    config = SpoolerConfig(
        transports=(TransportConfig("bench", BenchProvider, options={"tracker": tracker}),),
        policy=Policy(slice_budget=budget),
    )
    idle: IdlePolicy | None = AlwaysIdle() if system == SPOOLBOX_ALWAYS else None
    fg = Foreground()
    recipients = sum(len(m.recipients) for m in messages)
    async with Spooler.open(config, idle=idle) as sp:
        with sp.foreground_busy():  # holds the transport back while we submit
            for m in messages:
                await sp.submit(m)
            await _until_ready(sp, "bench")
            before = sp.statistics()["scheduler"]
            await fg.start()
            start = time.perf_counter()
        # Leaving the block releases the transport: the drain starts now.
        await tracker.all_done.wait()
        seconds = tracker.finished_at - start
        await fg.stop()
        counts = await sp.store.counts()
        stats = sp.statistics()
        if counts[RecipientState.DELIVERED] != recipients:
            raise RuntimeError(f"{system}: not every recipient was delivered: {counts}")
    sched = stats["scheduler"]
    extra = {
        "slices": sched["slices"] - before["slices"],
        "overruns": sched["overruns"] - before["overruns"],
        "longest_slice_ms": sched["longest"] * 1000,
        "provider_busy_s": sched["busy_time"] - before["busy_time"],
        "stalls": sched["stalls"],
        "idle": stats["idle"],
        "wire_bytes": tracker.wire_bytes,
    }
    return RunResult.of(system, run, len(messages), seconds, fg, extra)


# -- naive baselines ------------------------------------------------------------------------
async def _naive_send(content: bytes) -> int:
    await asyncio.sleep(0)  # as if awaiting a network write
    return transport_work(content)


async def run_naive(system: str, run: int, messages: Sequence[NewMessage]) -> RunResult:
    contents = [m.content for m in messages]
    fg = Foreground()
    await fg.start()
    start = time.perf_counter()
    if system == NAIVE_GATHER:
        sizes = await asyncio.gather(*(_naive_send(c) for c in contents))
    else:
        sem = asyncio.Semaphore(10)

        async def bounded(content: bytes) -> int:
            async with sem:
                return await _naive_send(content)

        sizes = await asyncio.gather(*(bounded(c) for c in contents))
    seconds = time.perf_counter() - start
    await fg.stop()
    return RunResult.of(system, run, len(messages), seconds, fg, {"wire_bytes": sum(sizes)})


async def run_floor(run: int) -> RunResult:
    fg = Foreground()
    await fg.start()
    await asyncio.sleep(FLOOR_SECONDS)
    await fg.stop()
    return RunResult.of(FLOOR, run, 0, FLOOR_SECONDS, fg)


# -- driver -----------------------------------------------------------------------------------
async def run_one(
    system: str, run: int, messages: Sequence[NewMessage], budget: float
) -> RunResult:
    gc.collect()  # garbage of the previous system is not collected in this one's drain
    if system in (SPOOLBOX_ALWAYS, SPOOLBOX_LOOPLAG):
        return await run_spoolbox(system, run, messages, budget)
    if system in (NAIVE_GATHER, NAIVE_SEMAPHORE):
        return await run_naive(system, run, messages)
    return await run_floor(run)


def _median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def summarise(results: Sequence[RunResult], systems: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for system in systems:
        mine = [r for r in results if r.system == system]
        if not mine:
            continue
        out[system] = {
            "lag_p50_ms": _median([r.lag_p50_ms for r in mine]),
            "lag_p99_ms": _median([r.lag_p99_ms for r in mine]),
            "lag_max_ms": _median([r.lag_max_ms for r in mine]),
            "rate": _median([r.rate for r in mine]),
            "ticks": _median([r.ticks for r in mine]),
            "runs": len(mine),
        }
    return out


def ratios(results: Sequence[RunResult], runs: int) -> dict[str, float]:
    """Median over runs of (spoolbox rate / baseline rate), runs paired."""
    by = {(r.system, r.run): r for r in results}
    out: dict[str, float] = {}
    for sb in (SPOOLBOX_ALWAYS, SPOOLBOX_LOOPLAG):
        for base in (NAIVE_GATHER, NAIVE_SEMAPHORE):
            vals = [
                by[sb, i].rate / by[base, i].rate
                for i in range(runs)
                if (sb, i) in by and (base, i) in by
            ]
            if vals:
                out[f"{sb} / {base}"] = statistics.median(vals)
    return out


def _fmt(v: float, digits: int = 2) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:,.{digits}f}"


def table(summary: Mapping[str, Mapping[str, float]]) -> str:
    head = ("system", "lag p50 ms", "lag p99 ms", "lag max ms", "drain msg/s", "ticks")
    rows = [head]
    for system, s in summary.items():
        rows.append(
            (
                system,
                _fmt(s["lag_p50_ms"]),
                _fmt(s["lag_p99_ms"]),
                _fmt(s["lag_max_ms"]),
                _fmt(s["rate"], 0),
                _fmt(s["ticks"], 0),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def goal(summary: Mapping[str, Mapping[str, float]], rts: Mapping[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sb in (SPOOLBOX_ALWAYS, SPOOLBOX_LOOPLAG):
        if sb not in summary:
            continue
        p99 = summary[sb]["lag_p99_ms"]
        ratio = rts.get(f"{sb} / {NAIVE_GATHER}", math.nan)
        out[sb] = {
            "p99_ms": p99,
            "p99_ok": p99 <= 5.0,
            "rate_vs_naive": ratio,
            "rate_ok": ratio >= 0.8,
        }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    systems = [s for s in SYSTEMS if s in args.systems]
    t0 = time.perf_counter()
    messages = make_messages(args.messages)
    sizes = sorted(m.size for m in messages)
    gen_s = time.perf_counter() - t0
    print(
        f"{len(messages)} messages, {sum(len(m.recipients) for m in messages)} recipients, "
        f"size min/median/max {sizes[0]}/{sizes[len(sizes) // 2]}/{sizes[-1]} bytes "
        f"(built in {gen_s:.1f} s)",
        flush=True,
    )
    results: list[RunResult] = []
    for run in range(args.runs):
        k = run % len(systems)
        order = systems[k:] + systems[:k]
        for system in order:
            r = await run_one(system, run, messages, args.budget_ms / 1000)
            results.append(r)
            print(
                f"run {run + 1}/{args.runs} {system:<24} lag p50 {r.lag_p50_ms:8.2f} "
                f"p99 {r.lag_p99_ms:9.2f} max {r.lag_max_ms:9.2f} ms  "
                f"{_fmt(r.rate, 0):>8} msg/s  ({r.ticks} ticks, {r.drain_seconds:.2f} s)"
                + (
                    f"  [provider slices {r.extra['slices']}, overruns {r.extra['overruns']}, "
                    f"longest {r.extra['longest_slice_ms']:.1f} ms]"
                    if "slices" in r.extra
                    else ""
                ),
                flush=True,
            )
    summary = summarise(results, systems)
    rts = ratios(results, args.runs)
    return {
        "benchmark": "foreground_lag",
        "machine": machine(),
        "settings": {
            "messages": args.messages,
            "runs": args.runs,
            "budget_ms": args.budget_ms,
            "tick_ms": TICK * 1000,
            "sizes": {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]},
        },
        "summary": summary,
        "ratios": rts,
        "goal": goal(summary, rts),
        "runs": [{**asdict(r), "rate": r.rate} for r in results],
        "total_seconds": time.perf_counter() - t0,
    }


def _json_safe(value: Any) -> Any:
    """NaN (no drain rate for the floor row) as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=10_000, help="messages per drain")
    p.add_argument("--runs", type=int, default=2, help="runs (medians are reported)")
    p.add_argument("--budget-ms", type=float, default=5.0, help="spooler slice budget, ms")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    p.add_argument(
        "--systems",
        nargs="+",
        default=list(SYSTEMS),
        choices=SYSTEMS,
        metavar="SYSTEM",
        help="run only these (quote names with spaces); default: all",
    )
    args = p.parse_args(argv)
    if args.messages < 1 or args.runs < 1 or args.budget_ms <= 0:
        p.error("--messages and --runs must be >= 1 and --budget-ms > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The watchdog's overrun warnings would add their own I/O to the loop; the
    # statistics (overruns, longest slice) are reported in the JSON instead.
    logging.getLogger("spoolbox").setLevel(logging.ERROR)
    report = asyncio.run(main_async(args))
    m = report["machine"]
    s = report["settings"]
    print()
    print(
        f"Medians of {s['runs']} runs, {s['messages']} messages, slice budget "
        f"{s['budget_ms']:g} ms, foreground tick {s['tick_ms']:g} ms; "
        f"{m['nproc']} CPUs, Python {m['python']}"
    )
    print(table(report["summary"]))
    print()
    for name, v in report["ratios"].items():
        print(f"drain rate {name}: {v:.2f}x")
    for sb, g in report["goal"].items():
        print(
            f"goal for {sb}: p99 {g['p99_ms']:.2f} ms "
            f"({'met' if g['p99_ok'] else 'MISSED'}: <= 5 ms), "
            f"drain {g['rate_vs_naive']:.2f}x naive gather "
            f"({'met' if g['rate_ok'] else 'MISSED'}: >= 0.8x)"
        )
    print(f"total time {report['total_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(_json_safe(report), f, indent=2, default=str)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
