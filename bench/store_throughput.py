"""Store throughput: durable submits against the disk's own fsync rate, and drain.

What it measures, in one process, on the same disk, in every run:

* ``fsync``: the raw rate of ``write(512 bytes) + os.fsync`` on a file in the target
  directory: what one durable commit per message would be capped at;
* ``submit x1``: one submitter awaiting ``Spooler.submit`` one message at a time on a
  ``SQLiteStore`` (WAL, synchronous=FULL): each returns only after its commit (a
  transport is configured but held back, so the spooler routes what comes in but
  does not deliver it yet);
* ``submit x10``: ten concurrent submitters; group commit puts the submits that arrive
  while a commit runs into the next one;
* ``drain``: N queued messages delivered through a null transport (it reports every
  recipient delivered), from the moment the transport is let go to the last settle
  (claims and settles at the store's default ``progress_synchronous="NORMAL"``).

Reported as medians over runs, and as ratios to the fsync rate measured in the same
run.  Run it::

    .venv/bin/python bench/store_throughput.py --runs 5 [--dir /path/on/the/disk]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _counts import fsync_rate
from spoolbox import (
    Address,
    AlwaysIdle,
    NewMessage,
    Policy,
    RecipientState,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)
from spoolbox.contract import BaseTransportSession, RecipientResult, StatusCode

BODY = b"From: bench@example.org\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


class NullSession(BaseTransportSession):
    ADDRESS_TYPES = ("SMTP",)

    async def submit_message(self, message: Any, flags: Any) -> None:
        await self.support.status_recips(
            message, [RecipientResult.delivered(r) for r in message.recipients]
        )


class NullProvider:
    display_name = "null"

    async def logon(self, support: Any, config: Any, flags: Any) -> NullSession:
        support.modify_status_row(update=False, status_code=StatusCode.AVAILABLE)
        return NullSession(support)

    async def shutdown(self) -> None:
        return None


def _remove(directory: Path, pattern: str) -> None:
    for p in directory.glob(pattern):
        p.unlink()


def _msg(i: int) -> NewMessage:
    return NewMessage(
        Address("SMTP", "bench@example.org"), (Address("SMTP", f"r{i}@example.org"),), BODY
    )


async def submit_rate(directory: Path, n: int, concurrency: int) -> float:
    db = directory / f"submit-{concurrency}.db"
    cfg = SpoolerConfig(transports=(TransportConfig("null", NullProvider),), node="bench")
    async with Spooler.open(cfg, store=SQLiteStore(db), idle=AlwaysIdle(), close_store=True) as sp:
        await sp.wait_ready(timeout=30)
        per = n // concurrency

        async def one(k: int) -> None:
            for i in range(per):
                await sp.submit(_msg(k * per + i))

        # The transport is held back (as a busy host would): this measures accepting
        # messages (and routing them), not delivering them.
        with sp.foreground_busy():
            t0 = time.perf_counter()
            await asyncio.gather(*(one(k) for k in range(concurrency)))
            took = time.perf_counter() - t0
    _remove(directory, f"submit-{concurrency}.db*")
    return per * concurrency / took


async def drain_rate(directory: Path, n: int) -> float:
    db = directory / "drain.db"
    cfg = SpoolerConfig(
        transports=(TransportConfig("null", NullProvider),),
        policy=Policy(router_interval=0.05),
        node="bench",
    )
    async with Spooler.open(cfg, store=SQLiteStore(db), idle=AlwaysIdle(), close_store=True) as sp:
        with sp.foreground_busy():
            await asyncio.gather(*(sp.submit(_msg(i)) for i in range(n)))
            await sp.route_now()
        t0 = time.perf_counter()
        while True:
            counts = await sp.store.counts()
            if counts[RecipientState.DELIVERED] >= n:
                break
            await asyncio.sleep(0.02)
        took = time.perf_counter() - t0
    _remove(directory, "drain.db*")
    return n / took


async def one_run(directory: Path, args: argparse.Namespace) -> dict[str, float]:
    return {
        "fsync": fsync_rate(directory, args.fsyncs),
        "submit x1": await submit_rate(directory, args.submits, 1),
        "submit x10": await submit_rate(directory, args.submits * 4, 10),
        "drain": await drain_rate(directory, args.drain),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="store throughput")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--fsyncs", type=int, default=300)
    p.add_argument("--submits", type=int, default=500)
    p.add_argument("--drain", type=int, default=3000)
    args = p.parse_args(argv)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(args.runs):
            res = asyncio.run(one_run(Path(tmp), args))
            runs.append(res)
            print(
                f"run {r + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in res.items()),
                file=sys.stderr,
            )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    ratio = {k: statistics.median(r[k] / r["fsync"] for r in runs) for k in runs[0] if k != "fsync"}
    print("| figure | median per second | ratio to fsync rate |")
    print("|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} | {'1.00' if k == 'fsync' else f'{ratio[k]:.2f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
