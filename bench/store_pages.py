"""Which pages the SQLite store writes per relayed message, table by table.

Runs the store operations a relayed message costs (submit with its route, claim,
settle DELIVERED; the settle with ``drop_finished={SENT}`` under ``--drop``, as
``[store] keep_sent = 0`` makes it) on a fresh store with SQLite's automatic
checkpoint off, ``--group`` messages to a transaction (the listener's group commit,
several lanes' claims, the grouped settles), then reads the WAL file's frame
headers: every frame is one page written at a commit, and its header names the
page.  Each page is mapped to the table or index that owns it (the ``dbstat``
virtual table, read after the run: a page freed on the way, by a deleted message,
is "freed"), and the frames are counted per message and per owner, per kind of
transaction.  ``bytes/msg`` is frames x (page size + 24 bytes of frame header) per
message: what the WAL gets; a checkpoint writes each distinct page once more into
the database file (``distinct pages/msg``), so the disk sees at most the sum.

Run it (seconds; no daemon, no SMTP)::

    .venv/bin/python bench/store_pages.py [--messages 2000] [--group 1,10]
        [--drop | --purge-every 500]

Compare trees with ``PYTHONPATH=TREE/src``: the store code (and its schema) is the
tree's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sqlite3
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from spoolbox import Address, MessageState, NewMessage, RecipientState
from spoolbox.store import RecipientUpdate
from spoolbox.store.sqlite import purge as _purge
from spoolbox.store.sqlite import schema
from spoolbox.store.sqlite import transactions as tx

BODY = b"From: bench@example.org\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"
_DELIVERED = RecipientState.DELIVERED
_PURGE_BATCH = 500  # the housekeeper's
_WAL_HEADER = 32
_FRAME_HEADER = 24


def _message(i: int) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:bench@example.org"),
        recipients=(Address.parse("SMTP:sink@example.net"),),
        content=BODY,
        id=f"bench-{i:07d}",
    )


def _frames(wal: Path, page_size: int, start: int) -> tuple[list[int], int]:
    """The page numbers of the WAL's frames from byte ``start`` on, and the end."""
    offset = max(start, _WAL_HEADER)
    with wal.open("rb") as f:
        f.seek(offset)
        data = f.read()
    pages: list[int] = []
    at = 0
    while at + _FRAME_HEADER + page_size <= len(data):
        (page,) = struct.unpack(">I", data[at : at + 4])
        pages.append(page)
        at += _FRAME_HEADER + page_size
    return pages, offset + at


def _owners(conn: sqlite3.Connection) -> dict[int, str]:
    try:
        rows = conn.execute("SELECT pageno, name FROM dbstat").fetchall()
    except sqlite3.OperationalError as exc:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
        raise SystemExit(f"this SQLite has no dbstat virtual table: {exc}") from None
    return {int(p): str(n) for p, n in rows}


def run(
    messages: int, group: int, drop: bool, purge_every: int, page_size: int, workdir: Path
) -> dict[str, object]:
    path = workdir / f"pages-{group}-{int(drop)}-{page_size}.sqlite3"
    if page_size:  # a store made as schema.connect makes one, at this page size
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as new:
            new.execute(f"PRAGMA page_size = {page_size}")
            new.execute("PRAGMA journal_mode = WAL")
            schema._migrate(new, checkpoint=True)
    conn = schema.connect(str(path), synchronous="NORMAL", busy_timeout=5.0)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema's pages out of the WAL
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    cpu = 0.0  # in the store's transactions
    wal = Path(f"{path}-wal")
    frames: dict[str, list[int]] = collections.defaultdict(list)
    commits: collections.Counter[str] = collections.Counter()
    offset = 0

    @contextlib.contextmanager
    def transaction(kind: str) -> Iterator[None]:
        nonlocal offset, cpu
        began = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
        cpu += time.process_time() - began
        commits[kind] += 1
        pages, offset = _frames(wal, page_size, offset)
        frames[kind].extend(pages)

    now = time.time()
    extra = {"drop_finished": frozenset({MessageState.SENT})} if drop else {}
    for first in range(0, messages, group):
        batch = [_message(i) for i in range(first, min(messages, first + group))]
        with transaction("submit"):
            tx.submit_many(conn, batch, now=now, lifetime=86400.0, routes=[["smtp"]] * len(batch))
        with transaction("claim"):
            jobs = tx.claim(conn, "smtp", owner="bench", now=now, lease=60.0, limit=group)
        with transaction("settle"):
            for job in jobs:
                conn.execute("SAVEPOINT settle")  # as the store's grouped settles
                done = [RecipientUpdate(r.index, _DELIVERED, "2.0.0") for r in job.recipients]
                tx.settle(
                    conn, job.message.id, done, owner="bench", now=now, claim=job.claim, **extra
                )
                conn.execute("RELEASE settle")
        if purge_every and (first // group + 1) * group % purge_every < group:
            with transaction("purge"):  # the housekeeper's round (keep_sent = 0 on main)
                cutoffs = {MessageState.SENT: now + 1}
                ids = _purge.candidates(conn, finished_before=cutoffs, limit=_PURGE_BATCH)
                _purge.purge(conn, ids=ids, finished_before=cutoffs)
    owners = _owners(conn)
    conn.close()
    per_kind = {
        kind: collections.Counter(owners.get(p, "freed") for p in pages)
        for kind, pages in frames.items()
    }
    every = [p for pages in frames.values() for p in pages]
    return {
        "group": group,
        "drop": drop,
        "purge_every": purge_every,
        "page_size": page_size,
        "commits": dict(commits),
        "per_kind": per_kind,
        "frames": len(every),
        "distinct": len(set(every)),
        "messages": messages,
        "cpu": cpu,
    }


def show(result: dict[str, object]) -> None:
    n = int(result["messages"])  # type: ignore[call-overload]
    page = int(result["page_size"]) + _FRAME_HEADER  # type: ignore[call-overload]
    per_kind: dict[str, collections.Counter[str]] = result["per_kind"]  # type: ignore[assignment]
    frames = int(result["frames"])  # type: ignore[call-overload]
    distinct = int(result["distinct"])  # type: ignore[call-overload]
    every = result["purge_every"]
    purging = f", a purge every {every} messages" if every else ""
    print(
        f"\n### {n} messages, {result['group']} a transaction"
        f"{', settle drops (keep_sent = 0)' if result['drop'] else ''}"
        f"{purging}; "
        f"page size {result['page_size']}\n"
    )
    print(
        f"WAL frames/msg {frames / n:.2f} = {frames * page / n:,.0f} bytes/msg; "
        f"distinct pages/msg {distinct / n:.2f} (a checkpoint writes each once more); "
        f"CPU in the transactions {1000 * float(result['cpu']) / n:.3f} ms/msg; "
        f"commits {result['commits']}\n"
    )
    owners = sorted({o for c in per_kind.values() for o in c})
    kinds = list(per_kind)
    print("| table or index | " + " | ".join(f"{k} frames/msg" for k in kinds) + " | all |")
    print("|---|" + "---:|" * (len(kinds) + 1))
    for owner in sorted(owners, key=lambda o: -sum(c[o] for c in per_kind.values())):
        cells = [per_kind[k][owner] / n for k in kinds]
        print(f"| {owner} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {sum(cells):.2f} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pages the SQLite store writes per message")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--group", default="1,10", help="messages per transaction (comma-separated)")
    p.add_argument("--drop", action="store_true", help="settle with drop_finished={SENT}")
    p.add_argument(
        "--purge-every",
        type=int,
        default=0,
        help="a purge of every sent message after this many messages (the housekeeper "
        "with keep_sent = 0, as main deletes them: at most 500 a transaction)",
    )
    p.add_argument(
        "--page-size",
        type=int,
        default=0,
        help="make the store at this page size (default: as the store makes it)",
    )
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spoolbox-pages-", dir=args.dir) as tmp:
        for group in (int(g) for g in args.group.split(",") if g):
            show(run(args.messages, group, args.drop, args.purge_every, args.page_size, Path(tmp)))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
