"""The scheduler's figures tell the truth about a provider that hogs the loop: the
loop lag as measured (not only the lag left after the spooler's own slices), and a
stall's whole length, recorded when the stall ends (issue 13)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from helpers import FAST, message, transport

from spoolbox import MessageState, Spooler, SpoolerConfig
from spoolbox._core.critsec import CriticalSections
from spoolbox._core.idle import _p99
from spoolbox._core.slices import SliceMeter
from spoolbox.testing import Act, Script

HOG = 0.4


async def test_a_stall_is_recorded_with_its_whole_length_when_it_ends() -> None:
    blocker = Script(submit=[Act.HOG], hog_seconds=HOG)
    pol = replace(FAST, watchdog_stall=0.1)
    cfg = SpoolerConfig(transports=(transport("blocker", blocker),), policy=pol, node="t")
    async with Spooler.open(cfg) as sp:  # the embedded default: LoopLagIdle
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=10) is MessageState.SENT
        stats = sp.statistics()
    # The watchdog saw the stall after 0.1 s; the record is the stall's length.
    [(name, seconds)] = stats["stalls"]
    assert name == "blocker"
    assert seconds >= HOG
    assert stats["scheduler"]["stalls"] == 1
    assert stats["scheduler"]["longest_stall"] == seconds
    # The loop lag as measured: the ticker slept through the hog (it wakes every
    # 10 ms, so it was at most one interval into its sleep when the hog began) ...
    idle = stats["idle"]
    assert idle["max_loop_lag"] >= HOG - 0.01
    assert idle["loop_lag_p99"] >= HOG - 0.01  # fewer than 100 ticks: p99 is the max
    # ... while the foreign lag leaves the spooler's own slices out.
    assert idle["max_foreign_lag"] <= idle["max_loop_lag"]


def test_the_meter_reports_a_stall_once_in_the_loops_thread_with_its_length() -> None:
    seen: list[tuple[str, float, str]] = []

    def on_stall(name: str, seconds: float) -> None:
        seen.append((name, seconds, threading.current_thread().name))

    class Owner:
        name = "hog"
        exempt_from_budget = False

        def record_slice(self, seconds: float, overran: bool) -> None:
            return None

    async def spin(seconds: float) -> None:
        await asyncio.sleep(0)
        end = loop.time() + seconds
        while loop.time() < end:
            pass

    async def main() -> None:
        meter = SliceMeter(0.005, CriticalSections(1.0, lambda o, h: None), stall_after=0.05)
        meter._on_stall = on_stall
        meter.start_watchdog(interval=0.01)
        try:
            await meter.run(Owner(), spin(0.12))
            await meter.run(Owner(), spin(0.001))
        finally:
            meter.stop_watchdog()
        assert meter.stalls == 1

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    [(name, seconds, thread)] = seen
    assert name == "hog"
    assert seconds >= 0.12
    assert thread == threading.main_thread().name


def test_a_flushing_session_does_not_stall() -> None:
    class Flushing:
        name = "flusher"
        exempt_from_budget = True

        def record_slice(self, seconds: float, overran: bool) -> None:
            assert not overran

    async def spin() -> None:
        end = asyncio.get_running_loop().time() + 0.06
        while asyncio.get_running_loop().time() < end:
            pass

    async def main() -> SliceMeter:
        meter = SliceMeter(0.005, CriticalSections(1.0, lambda o, h: None), stall_after=0.05)
        await meter.run(Flushing(), spin())
        return meter

    meter = asyncio.run(main())
    assert meter.stalls == 0
    assert meter.longest >= 0.06  # it did run long enough to be one


def test_p99_is_the_nearest_rank() -> None:
    assert _p99([]) == 0.0
    assert _p99([0.5]) == 0.5
    assert _p99([i / 1000 for i in range(100)]) == 0.098
    assert _p99([i / 1000 for i in range(1000)]) == 0.989
