"""A real spooler process for the crash tests (``tests/crash/test_crash.py``).

Run as ``python tests/crash/worker.py --db DB --root MAILDIR_ROOT --count N [...]``.
It opens ``SQLiteStore(DB)`` and a :class:`~spoolbox.Spooler` with one Maildir
transport (``MAILDIR:box`` is delivered into ``MAILDIR_ROOT/box``), always under the
node name ``crash-worker``, so that every run releases at once the leases an earlier
run left behind when it was killed.

With ``--transport smtp --smtp-port N`` (``tests/crash/test_crash_smtp.py``) the one
transport is the SMTP transport instead, relaying to ``127.0.0.1:N`` without TLS and
with short timeouts: every message goes from ``SMTP:postmaster@crash.spoolbox.test``
to ``SMTP:box@crash.spoolbox.test`` (the content is the same either way), and
``--root`` is not needed.

Modes:

``submit``
    submit messages ``--start`` .. ``--count - 1`` straight into the store, no spooler;
``run``
    deliver until nothing is left to do, then exit 0;
``both``
    submit while delivering, then deliver until nothing is left, then exit 0.

With ``--lot N`` messages are submitted in lots of N with ``submit_many`` (one
transaction each, all or nothing) instead of one ``submit`` at a time.

Every message whose submit returned is printed as ``accepted <id>`` on stdout and
flushed right away, so the parent knows exactly what was acknowledged when it sends
SIGKILL.  Submitting is idempotent on the id: a run may resubmit ids an earlier run
committed but was killed before acknowledging.

``--crash-at POINT:N`` kills the process itself (SIGKILL) at the N-th time it reaches
POINT, to hit the narrow windows on cue:

``submit-txn``
    inside a submit transaction, after some rows of the batch were written;
``claim-txn``
    inside a claim transaction, after the recipient row was moved to ACTIVE;
``after-publish``
    after the Maildir transport put the message into ``new/`` (the SMTP transport:
    after the server answered the final dot) and before it reported the delivery to
    the spooler (the duplicate window);
``settle-txn``
    inside the settle transaction, after the recipient row was moved to DELIVERED.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

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
from spoolbox.store.sqlite import transactions

NODE = "crash-worker"
BOX = "box"
SENDER = "MAILDIR:postmaster"
SMTP_DOMAIN = "crash.spoolbox.test"
SMTP_SENDER = f"SMTP:postmaster@{SMTP_DOMAIN}"
SMTP_RECIPIENT = f"SMTP:{BOX}@{SMTP_DOMAIN}"
TRANSPORTS = ("maildir", "smtp")
#: Short, so that a stalled connection costs a retry, not the test (seconds).
SMTP_TIMEOUTS = {
    "connect": 2.0,
    "greeting": 5.0,
    "mail": 5.0,
    "rcpt": 5.0,
    "data_init": 5.0,
    "data_block": 5.0,
    "data_term": 5.0,
}
SMTP_CONNECTIONS = 4  # the transport's max_connections, unless --smtp-connections
POLICY = Policy(retry_base=0.2, retry_jitter=0, router_interval=0.05, lease=5)
CRASH_POINTS = ("submit-txn", "claim-txn", "after-publish", "settle-txn")
_PENDING = (
    RecipientState.QUEUED,
    RecipientState.ACTIVE,
    RecipientState.PARKED,
    RecipientState.HELD,
)


def message_id(i: int) -> str:
    return f"crash-{i:06d}"


def header_id(mid: str) -> str:
    """The Message-ID header value of message ``mid``."""
    return f"<{mid}@crash.spoolbox.test>"


def content(i: int) -> bytes:
    """The content of message ``i``: deterministic, of varying length."""
    mid = message_id(i)
    lines = [
        f"Message-ID: {header_id(mid)}",
        "From: postmaster",
        "To: box",
        f"Subject: crash test message {i}",
        "",
        *(f"line {n} of {mid}" for n in range(1 + i % 23)),
        "",
    ]
    return "\r\n".join(lines).encode()


def new_message(i: int, transport: str = "maildir") -> NewMessage:
    smtp = transport == "smtp"
    return NewMessage(
        sender=Address.parse(SMTP_SENDER if smtp else SENDER),
        recipients=(Address.parse(SMTP_RECIPIENT if smtp else f"MAILDIR:{BOX}"),),
        content=content(i),
        id=message_id(i),
    )


def transport_config(args: argparse.Namespace) -> TransportConfig:
    """The one transport of the worker's spooler, as ``--transport`` asks."""
    if args.transport == "smtp":
        options = {
            "host": "127.0.0.1",
            "port": args.smtp_port,
            "tls": "none",
            "helo_name": "crash-worker.spoolbox.test",
            "max_connections": args.smtp_connections,
            "timeouts": dict(SMTP_TIMEOUTS),
        }
        return TransportConfig("relay", "smtp", options=options)
    return TransportConfig("local", "maildir", options={"root": args.root})


def _die(point: str, mid: str) -> None:
    """SIGKILL this process, first telling the parent (on stderr) where and on what."""
    sys.stdout.flush()
    sys.stderr.write(f"crash-point {point} {mid}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _countdown(n: int) -> Callable[[], bool]:
    left = [n]

    def hit() -> bool:
        left[0] -= 1
        return left[0] == 0

    return hit


def install_crash_point(point: str, n: int, transport: str = "maildir") -> None:
    """Patch the code so that the process SIGKILLs itself at the n-th ``point``."""
    hit = _countdown(n)
    if point == "submit-txn":
        # Every submission's rows are written here (submit and submit_many call it).
        original_submit = transactions.submit_prepared

        def submit(conn: Any, prepared: Any, **kw: Any) -> Any:
            info = original_submit(conn, prepared, **kw)
            if hit():
                _die(point, prepared.message.id)  # rows written, not committed
            return info

        transactions.submit_prepared = submit
    elif point == "claim-txn":
        # Every claim of a message's recipients is written here (a lane's claim and
        # the hand-off of a submission).
        original_claim_of = transactions._claim_of

        def claim_of(conn: Any, mid: str, *a: Any) -> Any:
            job = original_claim_of(conn, mid, *a)
            if job is not None and hit():
                _die(point, mid)  # rows ACTIVE, not committed
            return job

        transactions._claim_of = claim_of
    elif point == "settle-txn":
        original_move = transactions._move

        def move(conn: Any, old: Any, new: Any, **kw: Any) -> None:
            original_move(conn, old, new, **kw)
            if new.state is RecipientState.DELIVERED and hit():
                _die(point, new.message_id)

        transactions._move = move
    elif point == "after-publish" and transport == "smtp":
        from spoolbox.transports.smtp import SMTPSession

        original_transaction = SMTPSession._transaction

        async def transaction(self: SMTPSession, conn: Any, message: Any, *a: Any) -> bool:
            reusable = await original_transaction(self, conn, message, *a)
            if hit():
                _die(point, message.info.id)  # the server said 250, not reported yet
            return reusable

        SMTPSession._transaction = transaction  # type: ignore[method-assign]
    elif point == "after-publish":
        from spoolbox.transports.maildir import MaildirSession

        original_report = MaildirSession._report

        async def report(self: MaildirSession, message: Any, results: Any) -> None:
            if hit():
                _die(point, message.info.id)  # in new/ already, not reported yet
            await original_report(self, message, results)

        MaildirSession._report = report  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {point!r}; known: {', '.join(CRASH_POINTS)}")


def _accepted(mid: str) -> None:
    # One write per line: a kill never leaves half an id behind.
    sys.stdout.write(f"accepted {mid}\n")
    sys.stdout.flush()


async def _submit_all(
    submit: Callable[[NewMessage], Any],
    submit_many: Callable[[list[NewMessage]], Any],
    ids: range,
    args: argparse.Namespace,
) -> None:
    """Submit ``ids`` with up to ``concurrency`` submits waiting at once (group commit),
    one at a time or in lots of ``--lot``."""
    lot = args.lot
    queue = iter(ids if lot <= 0 else range(ids.start, ids.stop, lot))

    async def submitter() -> None:
        for i in queue:
            if lot <= 0:
                info = await submit(new_message(i, args.transport))
                _accepted(info.id)
                continue
            batch = [new_message(j, args.transport) for j in range(i, min(i + lot, ids.stop))]
            for info in await submit_many(batch):
                _accepted(info.id)

    await asyncio.gather(*(submitter() for _ in range(args.concurrency)))


async def _pending(store: SQLiteStore) -> int:
    counts = await store.counts()
    return sum(counts[s] for s in _PENDING)


async def main(args: argparse.Namespace) -> int:
    ids = range(args.start, args.count)
    store = SQLiteStore(args.db, synchronous=args.synchronous)
    if args.mode == "submit":
        async with store:

            async def submit(m: NewMessage) -> Any:
                return await store.submit(m, now=time.time(), lifetime=POLICY.lifetime)

            async def submit_many(ms: list[NewMessage]) -> Any:
                return await store.submit_many(ms, now=time.time(), lifetime=POLICY.lifetime)

            await _submit_all(submit, submit_many, ids, args)
        return 0
    config = SpoolerConfig(
        transports=(transport_config(args),),
        policy=POLICY,
        node=NODE,
    )
    # The spooler opens the store, and closes it as it stops (close_store).
    spooler = Spooler.open(config, store=store, idle=AlwaysIdle(), close_store=True)
    async with spooler:
        if args.mode == "both":
            await _submit_all(spooler.submit, spooler.submit_many, ids, args)
        while await _pending(store):
            await asyncio.sleep(0.05)
        sys.stdout.write(f"done {spooler.statistics()['counters']}\n")
        sys.stdout.flush()
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True)
    p.add_argument("--root", default=None, help="the Maildir transport's root")
    p.add_argument("--transport", choices=TRANSPORTS, default="maildir")
    p.add_argument("--smtp-port", type=int, default=None, help="the SMTP sink's port")
    p.add_argument("--smtp-connections", type=int, default=SMTP_CONNECTIONS)
    p.add_argument("--mode", choices=("submit", "run", "both"), default="both")
    p.add_argument("--count", type=int, default=0, help="submit ids below this")
    p.add_argument("--start", type=int, default=0, help="submit ids from this one")
    p.add_argument("--concurrency", type=int, default=16, help="submits waiting at once")
    p.add_argument("--lot", type=int, default=0, help="submit_many lots of this size")
    p.add_argument("--synchronous", default="FULL")
    p.add_argument("--crash-at", default=None, metavar="POINT:N")
    args = p.parse_args(argv)
    if args.transport == "maildir" and args.root is None:
        p.error("--transport maildir needs --root")
    if args.transport == "smtp" and args.smtp_port is None:
        p.error("--transport smtp needs --smtp-port")
    return args


if __name__ == "__main__":
    arguments = parse()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if arguments.crash_at:
        point, _, count = arguments.crash_at.partition(":")
        install_crash_point(point, int(count or 1), arguments.transport)
    sys.exit(asyncio.run(main(arguments)))
