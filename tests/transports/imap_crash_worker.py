"""A spooler process fetching over IMAP or POP3, for the SIGKILL tests in
``test_imap_pop3.py``.

Run as ``python imap_crash_worker.py --db DB --host H --port P --user U --password W
--count N [--after-fetch delete] [--provider pop3]``.  It prints ``started`` once the
spooler is open, fetches until the inbox holds ``N`` messages, runs one more download
flush (so every ``after_commit`` removal has run), prints ``done <n>`` and exits 0.  The
parent kills it with SIGKILL at random moments and starts it again on the same store.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from spoolbox import AlwaysIdle, Policy, Spooler, SpoolerConfig, SQLiteStore, TransportConfig


async def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--after-fetch", default="delete")
    ap.add_argument("--provider", default="imap", choices=["imap", "pop3"])
    args = ap.parse_args(argv)
    options = {
        "host": args.host,
        "port": args.port,
        "tls": "none",
        "username": args.user,
        "password": args.password,
        "after_fetch": args.after_fetch,
        "timeout": 20,
    }
    cfg = SpoolerConfig(
        transports=(TransportConfig(args.provider, args.provider, options=options),),
        policy=Policy(poll_interval=0.2, relogon_delay=0.1, failure_backoff=0.1),
        node="imap-crash-worker",
    )
    store = SQLiteStore(args.db)
    async with Spooler.open(cfg, store=store, idle=AlwaysIdle(), close_store=True) as sp:
        print("started", flush=True)
        await sp.wait_inbox(args.count, timeout=120)
        await sp.flush(upload=False)
        n = len(await sp.store.list_inbox(limit=10 * args.count))
        print(f"done {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
