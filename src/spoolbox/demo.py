"""The demo a newcomer runs first: ``python -m spoolbox.demo`` (``make demo``).

It runs the spooler end to end on the embedded default, a SQLite store, with no
server to install:

1. opens a profile with two transports: ``local`` (Maildir delivery, and pickup of
   inbound mail dropped into a directory) and ``fax`` (a simulated fax line that is
   busy on the first try and holds a critical section while it "transmits");
2. submits a batch of messages through the Python API, to Maildir recipients, fax
   numbers, and one address type no transport serves;
3. drops three messages into the pickup directory;
4. flushes the send and receive queues with a live progress line per transport,
   driven by the status table;
5. prints the status table, the queues, the inbox (with the non-delivery report
   the spooler wrote for the undeliverable recipient) and where the mail landed.

Everything lands in ``./spoolbox-demo`` (or the directory given as argument).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import (
    Address,
    AlwaysIdle,
    MessageState,
    NewMessage,
    Policy,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    StatusRow,
    TransportConfig,
)
from .contract import (
    BaseTransportSession,
    LogonFlags,
    OutboundMessage,
    RecipientResult,
    StatusCode,
    SubmitFlags,
    Support,
)

FAXES: list[str] = []


class DemoFaxSession(BaseTransportSession):
    """A pretend fax line: busy on the first try, then it 'transmits' page by page
    inside a critical section, yielding between pages."""

    ADDRESS_TYPES = ("FAX",)

    def __init__(self, support: Support, out: Path) -> None:
        super().__init__(support)
        self.out = out
        self.tries: dict[str, int] = {}

    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        n = self.tries[message.ref] = self.tries.get(message.ref, 0) + 1
        if n == 1:
            await self.support.status_recips(
                message,
                [
                    RecipientResult.deferred(r, "fax; line busy", status="4.4.1", retry_after=3600)
                    for r in message.recipients
                ],
            )
            return
        email = await message.email()
        results = []
        async with self.support.critical_section():
            for r in message.recipients:
                for _page in range(3):
                    await asyncio.sleep(0.01)  # the modem works...
                    await self.support.spooler_yield()  # ...and lets the others breathe
                line = f"{r.value}: {email['subject']}\n"
                await self.support.run_blocking(_append, self.out, line)
                FAXES.append(line)
                results.append(RecipientResult.delivered(r, f"fax; sent to {r.value}"))
        await self.support.status_recips(message, results)


def _append(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line)


class DemoFaxProvider:
    display_name = "Demo fax line"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> DemoFaxSession:
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string="line idle"
        )
        return DemoFaxSession(support, Path(config["log"]))

    async def shutdown(self) -> None:
        return None


def _bar(row: StatusRow, width: int = 24) -> str:
    p = row.progress
    if p is None:
        return f"{row.name:<8} {row.display_string}"
    total = p.total or max(p.done, 1)
    filled = int(width * min(p.done, total) / total)
    return f"{row.name:<8} [{'#' * filled}{'.' * (width - filled)}] {p.text}"


def _prepare(base: Path) -> None:
    if base.exists():
        shutil.rmtree(base)
    (base / "pickup" / "new").mkdir(parents=True)
    for d in ("tmp", "cur"):
        (base / "pickup" / d).mkdir()


async def main(base: Path) -> int:
    me = Address("MAILDIR", "alice")
    config = SpoolerConfig(
        transports=(
            TransportConfig(
                "local",
                "maildir",
                options={"root": str(base / "mail"), "pickup": str(base / "pickup")},
            ),
            TransportConfig("fax", DemoFaxProvider, options={"log": str(base / "faxes.txt")}),
        ),
        policy=Policy(poll_interval=0.5),
        identities=(me,),
        node="demo",
    )
    store = SQLiteStore(base / "spool.sqlite3")
    print(f"spoolbox demo: store {store.path}, output under {base}/\n")
    async with Spooler.open(config, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        ready = await sp.wait_ready(timeout=10)
        print(
            "transports logged on:",
            ", ".join(f"{n} ({'ok' if ok else 'failed'})" for n, ok in ready.items()),
        )
        with sp.foreground_busy():  # queue everything first, then flush it in one go
            ids = []
            for i in range(12):
                rcpts = [Address("MAILDIR", "bob"), Address("MAILDIR", "carol")]
                if i % 4 == 0:
                    rcpts.append(Address("FAX", f"+1555010{i:02d}"))
                content = (
                    f"From: alice@example.org\r\nTo: bob, carol\r\nSubject: report #{i}\r\n"
                    f"Message-ID: <demo-{i}@spoolbox>\r\n\r\nThis is demo message {i}.\r\n"
                ).encode()
                ids.append((await sp.submit(NewMessage(me, tuple(rcpts), content))).id)
            bad = await sp.submit(
                NewMessage(
                    me,
                    (Address("X400", "c=us;a=demo;s=nobody"),),
                    b"Subject: to nowhere\r\n\r\nNo transport serves X400.\r\n",
                )
            )
            for i in range(3):
                (base / "pickup" / "new" / f"dropped-{i}").write_bytes(
                    f"From: someone@example.net\r\nSubject: dropped #{i}\r\n\r\nhello\r\n".encode()
                )
            print(f"submitted {len(ids) + 1} messages, dropped 3 into {base}/pickup/new\n")

            print("flushing (send and receive), one transport at a time:")
            watcher = sp.subscribe(name="demo")
            lines: dict[str, str] = {}

            async def show() -> None:
                async for change in watcher:
                    if change.new is not None and change.name != "spooler":
                        line = _bar(change.new)
                        if lines.get(change.name) != line:
                            lines[change.name] = line
                            print("  " + line)

            shower = asyncio.create_task(show())
            t0 = time.perf_counter()
            report = await sp.flush()
            watcher.close()
            await shower
        for r in report.results:
            print(
                f"  {r.transport}: uploaded {r.uploaded}, downloaded {r.downloaded} "
                f"in {r.seconds:.2f} s{' (cancelled)' if r.cancelled else ''}"
            )
        print(
            f"flush took {time.perf_counter() - t0:.2f} s; the fax line was busy on its first "
            "try, so its messages wait for their retry (in an hour)."
        )
        print("\nflushing the fax line again (a flush makes its deferred mail due now):")
        again = await sp.flush(download=False, transport="fax")
        print(f"  fax: uploaded {again.results[0].uploaded}; faxes sent: {len(FAXES)}")
        for mid in ids:
            await sp.wait_for(mid, timeout=10)
        await sp.wait_for(bad.id, timeout=10)
        await sp.wait_inbox(4, timeout=10)

        print("\nstatus table:")
        for row in sp.status:
            bits = "|".join(b.name or "" for b in StatusCode if b and b in row.status_code)
            c = row.counters
            print(f"  {row.name:<8} {row.display_string:<12} {bits}")
            print(
                f"           delivered={c.get('delivered', 0)} failed={c.get('failed', 0)} "
                f"received={c.get('received', 0)} slices={c.get('slices', 0)} "
                f"slow={c.get('slow_slices', 0)}"
            )
        counts: dict[MessageState, int] = {}
        for s in await sp.store.list_messages(limit=1000, now=sp.clock.now()):
            counts[s.state] = counts.get(s.state, 0) + 1
        print("\nqueues:", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        print("\ninbox:")
        for e in await sp.store.list_inbox():
            print(f"  [{e.transport}] {e.subject!r} from {e.sender or '<>'}")
        stats = sp.statistics()["scheduler"]
        print(
            f"\nscheduler: {stats['slices']} provider slices, longest "
            f"{stats['longest'] * 1000:.1f} ms, {stats['overruns']} over the "
            f"{stats['budget'] * 1000:.0f} ms budget; critical sections: "
            f"{sp.critsec.entries}"
        )
    print("\nwhere the mail landed:")
    for box in sorted((base / "mail").iterdir()):
        print(f"  {box}/new: {len(list((box / 'new').iterdir()))} messages")
    print(f"  {base / 'faxes.txt'}: {len(FAXES)} faxes")
    print(f"  {base / 'pickup' / 'new'}: {len(list((base / 'pickup' / 'new').iterdir()))} left")
    return 0


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "spoolbox-demo").resolve()
    _prepare(target)
    raise SystemExit(asyncio.run(main(target)))
