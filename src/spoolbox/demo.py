"""The demo a newcomer runs first: ``python -m spoolbox.demo`` (``make demo``).

It runs the spooler end to end on the embedded default, a SQLite store, with no
server to install:

1. opens the spooler with three transports: ``local`` (Maildir delivery, and pickup
   of inbound mail dropped into a directory), ``relay`` (the SMTP transport, relaying
   to "the internet": a second SMTP listener of spoolbox's own on loopback, which
   files what it gets instead of queueing it) and
   ``gsm`` (the SMS transport on a simulated GSM modem on a pseudo-terminal,
   :class:`~spoolbox.transports.sms.simulator.ModemSimulator`: it starts without a
   network, so its SMS wait; when the network comes back the transport flushes them
   by itself, each AT+CMGS exchange in a critical section; delivery reports decide
   delivered, and an SMS the modem receives lands in the inbox);
2. starts the SMTP submission listener on a free loopback port;
3. submits messages three ways: through the Python API (to Maildir recipients, phone
   numbers, and one address type no transport serves), through the SMTP listener
   (with the standard library's :mod:`smtplib`), and through the ``sendmail`` entry
   point;
4. drops three messages into the pickup directory;
5. flushes the send and receive queues with a live progress bar per transport,
   driven by the status table;
6. prints the status table, the queues, the inbox (with the non-delivery report
   the spooler wrote for the undeliverable recipient) and where the mail landed.

Everything lands in ``./spoolbox-demo`` (or the directory given as argument).  The
demo needs nothing beyond its extra (``spoolbox[demo]``: the command line's and the
SMS transport's): no SMTP server, client library or modem of its own.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import smtplib
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from . import (
    Address,
    AlwaysIdle,
    MessageState,
    NewMessage,
    Policy,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)
from ._core.flush import FlushReport
from .ingress import ListenerConfig, SubmissionListener, run_sendmail
from .transports.sms.simulator import ModemSimulator


class _Internet:
    """The demo's stand-in for the internet: spoolbox's own SMTP listener, whose
    submit files each message it accepts in a directory (``250`` once it is written)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.listener = SubmissionListener(
            self._file, ListenerConfig(port=0, hostname="internet.example")
        )

    async def _file(self, message: NewMessage) -> None:
        self.count += 1
        path = self.directory / f"{self.count:03d}.eml"
        await asyncio.to_thread(path.write_bytes, message.content)


def _prepare(base: Path) -> None:
    if base.exists():
        shutil.rmtree(base)
    (base / "pickup" / "new").mkdir(parents=True)
    for name in ("tmp", "cur"):
        (base / "pickup" / name).mkdir()
    (base / "internet").mkdir()


def _status_table(sp: Spooler) -> Table:
    table = Table(title="status table (code: PR_STATUS_CODE bits)", title_justify="left")
    for col in ("row", "status", "code", "sent", "failed", "recv", "slices", "slow"):
        table.add_column(col)
    for row in sp.status:
        counters = row.counters
        counts = ("delivered", "failed", "received", "slices", "slow_slices")
        table.add_row(
            row.name,
            row.display_string[:26],
            f"{int(row.status_code):#08x}",
            *(str(counters.get(key, 0)) for key in counts),
        )
    return table


async def _flush_with_bars(sp: Spooler, console: Console, **kw: Any) -> FlushReport:
    """Flush, with a progress bar per transport driven by the status rows."""
    progress = Progress(
        TextColumn("{task.fields[name]:<6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[text]}"),
        console=console,
    )
    tasks: dict[str, TaskID] = {}
    watcher = sp.subscribe(name="demo-progress")

    async def follow() -> None:
        async for change in watcher:
            row = change.new
            if row is None or change.name not in tasks:
                continue
            state = row.progress
            if state is not None:
                progress.update(
                    tasks[change.name],
                    completed=state.done,
                    total=state.total or max(state.done, 1),
                    text=state.text,
                )

    names = [kw["transport"]] if kw.get("transport") else [host.name for host in sp.hosts]
    with progress:
        for name in names:
            tasks[name] = progress.add_task("", name=name, total=None, text="waiting")
        follower = asyncio.create_task(follow())
        try:
            report = await sp.flush(**kw)
        finally:
            watcher.close()
            await follower
        for result in report.results:
            done = result.uploaded + result.downloaded
            progress.update(
                tasks[result.transport],
                completed=done,
                total=max(done, 1),
                text=f"up {result.uploaded}, down {result.downloaded} in {result.seconds:.2f} s"
                + (f" ({result.error})" if result.error else ""),
            )
    return report


async def main(base: Path) -> int:
    console = Console()
    internet = _Internet(base / "internet")
    await internet.listener.start()
    me = Address("MAILDIR", "alice")
    modem = ModemSimulator()
    modem.lose_registration()  # the line starts without a network
    config = SpoolerConfig(
        transports=(
            TransportConfig(
                "local",
                "maildir",
                options={"root": str(base / "mail"), "pickup": str(base / "pickup")},
            ),
            TransportConfig(
                "relay",
                "smtp",
                options={"host": "127.0.0.1", "port": internet.listener.port, "tls": "none"},
            ),
            TransportConfig("gsm", "sms", options={"port": modem.port, "delivery_reports": True}),
        ),
        policy=Policy(poll_interval=0.5),
        identities=(me,),
        node="demo",
    )
    store = SQLiteStore(base / "spool.sqlite3")
    console.print(f"[bold]spoolbox demo[/]: store {store.path}, output under {base}/\n")
    try:
        async with Spooler.open(config, store=store, idle=AlwaysIdle(), close_store=True) as sp:
            ready = await sp.wait_ready(timeout=10)
            console.print(
                "transports logged on: "
                + ", ".join(f"{name} ({'ok' if ok else 'failed'})" for name, ok in ready.items())
            )
            listener = SubmissionListener(sp.submit, ListenerConfig(port=0))
            await listener.start()
            console.print(f"SMTP submission listener on 127.0.0.1:{listener.port}")
            # Hold background work back while we queue everything, then flush it all
            # in one go (a flush is not held back by the foreground).
            with sp.foreground_busy():
                ids = await _submit_all(sp, me, base, listener.port, console)
                console.print("\n[bold]flush[/] (send and receive, one transport at a time):")
                await _flush_with_bars(sp, console)
            console.print(
                f"the modem ({modem.port}) has no network: its SMS wait for their retry "
                "(in an hour).\nthe network comes back: the SMS transport sets its "
                "outbound flush bit itself, and they go out at once."
            )
            modem.receive("+15550100", "Running late, start without me")
            modem.regain_registration()
            for mid in ids:
                await sp.wait_for(mid, timeout=20)
            await sp.wait_inbox(5, timeout=10)
            await listener.stop()
            console.print()
            console.print(_status_table(sp))
            counts: dict[MessageState, int] = {}
            for summary in await sp.store.list_messages(limit=1000, now=sp.clock.now()):
                counts[summary.state] = counts.get(summary.state, 0) + 1
            queues = ", ".join(f"{state}={count}" for state, count in sorted(counts.items()))
            console.print("queues: " + queues)
            console.print("\n[bold]inbox[/]:")
            for entry in await sp.store.list_inbox():
                console.print(
                    f"  ({entry.transport}) {entry.subject!r} from {entry.sender or '<>'}",
                    markup=False,
                )
            stats = sp.statistics()["scheduler"]
            console.print(
                f"\nscheduler: {stats['slices']} provider slices, longest "
                f"{stats['longest'] * 1000:.1f} ms, {stats['overruns']} over the "
                f"{stats['budget'] * 1000:.0f} ms budget; critical sections: "
                f"{sp.critsec.entries}"
            )
    finally:
        await internet.listener.stop()
        modem.close()
    texts = [f"{number}: {text.replace(chr(10), ' / ')}\n" for number, text in modem.texts()]
    await asyncio.to_thread((base / "sms.txt").write_text, "".join(texts))
    console.print("\n[bold]where the mail landed[/]:")
    for box in sorted((base / "mail").iterdir()):
        console.print(f"  {box}/new: {len(list((box / 'new').iterdir()))} messages")
    console.print(f"  {base / 'internet'}: {internet.count} messages relayed over SMTP")
    console.print(f"  {base / 'sms.txt'}: {len(texts)} SMS the modem sent")
    left = len(list((base / "pickup" / "new").iterdir()))
    console.print(f"  {base / 'pickup' / 'new'}: {left} left to pick up")
    return 0


async def _submit_all(
    sp: Spooler, me: Address, base: Path, port: int, console: Console
) -> list[str]:
    ids = []
    for number in range(12):
        rcpts = [Address("MAILDIR", "bob"), Address("MAILDIR", "carol")]
        if number % 4 == 0:
            rcpts.append(Address("SMS", f"+1555010{number:02d}"))
        content = (
            f"From: alice@example.org\r\nTo: bob, carol\r\nSubject: report #{number}\r\n"
            f"Message-ID: <demo-{number}@spoolbox>\r\n\r\nThis is demo message {number}.\r\n"
        ).encode()
        ids.append((await sp.submit(NewMessage(me, tuple(rcpts), content))).id)
    bad = await sp.submit(
        NewMessage(
            me,
            (Address("X400", "c=us;a=demo;s=nobody"),),
            b"Subject: to nowhere\r\n\r\nNo transport serves X400.\r\n",
        )
    )
    ids.append(bad.id)
    console.print(f"submitted {len(ids)} messages through the Python API")
    before = {summary.info.id for summary in await sp.store.list_messages(limit=1000, now=0)}
    for number in range(5):
        await asyncio.to_thread(_send_by_smtp, port, number)
    console.print("submitted 5 messages through the SMTP listener (250 after each commit)")
    err = io.StringIO()
    rc = await run_sendmail(
        ["-t", "-f", "cron@example.org"],
        io.BytesIO(b"To: ops@example.net\nSubject: nightly job done\n\nall good\n"),
        sp.submit,
        stderr=err,
    )
    console.print(f"submitted 1 message through sendmail -t (exit code {rc})")
    if err.getvalue():
        console.print(err.getvalue(), markup=False)
    ids += [
        summary.info.id
        for summary in await sp.store.list_messages(limit=1000, now=0)
        if summary.info.id not in before
    ]
    await asyncio.to_thread(_drop_pickup, base)
    console.print(f"dropped 3 messages into {base}/pickup/new")
    return ids


def _send_by_smtp(port: int, number: int) -> None:
    """What an application does: one message to the SMTP listener (a thread's work)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            "app@example.org",
            [f"user{number}@example.net"],
            f"From: app@example.org\r\nTo: user{number}@example.net\r\n"
            f"Subject: via SMTP #{number}\r\n\r\nhello from an SMTP client\r\n".encode(),
        )


def _drop_pickup(base: Path) -> None:
    for number in range(3):
        (base / "pickup" / "new" / f"dropped-{number}").write_bytes(
            f"From: someone@example.net\r\nSubject: dropped #{number}\r\n\r\nhello\r\n".encode()
        )


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "spoolbox-demo").resolve()
    _prepare(target)
    raise SystemExit(asyncio.run(main(target)))
