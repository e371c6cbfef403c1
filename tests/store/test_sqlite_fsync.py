"""Which commits the SQLite store fsyncs, seen from the kernel: the store runs in a
child process under ``strace``, and the ``fsync``/``fdatasync`` calls are counted
between markers the child writes to stderr.

A submission (an acceptance) is synced before ``submit`` returns, whatever the
level of progress; claims and settles are not synced at the default
``progress_synchronous = "NORMAL"``, and are with ``"FULL"``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_CHILD = r"""
import asyncio, os, sys
from spoolbox.model import Address, NewMessage, RecipientState
from spoolbox.store.base import RecipientUpdate
from spoolbox.store.sqlite import SQLiteStore

def mark(name):
    os.write(2, b"@@" + name.encode() + b"\n")

async def main(path, progress, late):
    async with SQLiteStore(
        path, progress_synchronous=progress, sync_after_unlock=late == "late"
    ) as store:
        for i in range(3):
            mark(f"submit{i}")
            await store.submit(
                NewMessage(
                    sender=Address.parse("SMTP:a@example.org"),
                    recipients=(Address.parse("X:b"),),
                    content=b"Subject: x\r\n\r\nbody\r\n",
                    id=f"m{i}",
                ),
                now=1000.0, lifetime=3600.0, routes=["t"],
            )
        for i in range(3):
            mark(f"claim{i}")
            [job] = await store.claim("t", owner="o", now=1000.0, lease=60.0)
            mark(f"settle{i}")
            await store.settle(
                job.message.id, [RecipientUpdate(0, RecipientState.DELIVERED)],
                owner="o", now=1001.0, claim=job.claim,
            )
        mark("close")

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"""

#: The same steps without an event loop, as the client's offline path runs them.
_OFFLINE_CHILD = r"""
import os, sys
from spoolbox.model import Address, NewMessage, RecipientState
from spoolbox.store.base import RecipientUpdate
from spoolbox.store.sqlite import StoreFile, transactions as tx

def mark(name):
    os.write(2, b"@@" + name.encode() + b"\n")

with StoreFile.open(sys.argv[1], progress_synchronous=sys.argv[2]) as db:
    for i in range(3):
        mark(f"submit{i}")
        message = NewMessage(
            sender=Address.parse("SMTP:a@example.org"),
            recipients=(Address.parse("X:b"),),
            content=b"Subject: x\r\n\r\nbody\r\n",
            id=f"m{i}",
        )
        db.run("submit", lambda c: tx.submit(c, message, now=1000.0, lifetime=3600.0, routes=["t"]))
    for i in range(3):
        mark(f"claim{i}")
        [job] = db.run("claim", lambda c: tx.claim(c, "t", owner="o", now=1000.0, lease=60.0))
        mark(f"settle{i}")
        db.run("settle", lambda c: tx.settle(
            c, job.message.id, [RecipientUpdate(0, RecipientState.DELIVERED)],
            owner="o", now=1001.0, claim=job.claim,
        ))
    mark("close")
"""

_MARK = re.compile(r'write\(2, "@@(\w+)\\n"')
_SYNC = re.compile(r"\b(?:fsync|fdatasync)\(")


def _syncs_per_step(
    tmp_path: Path, progress: str, child: str = _CHILD, tag: str = "store", late: bool = False
) -> dict[str, int]:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip(
            "SKIPPED LOUDLY: strace is not installed (apt-get install strace; .ci/run does)"
        )
    trace = tmp_path / f"trace-{tag}-{progress}.txt"
    subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=write,fsync,fdatasync",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            child,
            str(tmp_path / f"{tag}-{progress}-{late}.db"),
            progress,
            "late" if late else "in-commit",
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    counts: dict[str, int] = {}
    step: str | None = None
    for line in trace.read_text().splitlines():
        if m := _MARK.search(line):
            step = m.group(1)
            counts[step] = 0
        elif step is not None and _SYNC.search(line) and "resumed" not in line:
            counts[step] += 1
    return counts


@pytest.mark.parametrize("late", [False, True], ids=["in-commit", "after-unlock"])
def test_acceptance_is_synced_and_progress_is_not_by_default(tmp_path: Path, late: bool) -> None:
    # The same whether SQLite syncs inside COMMIT or the store after the lock.
    counts = _syncs_per_step(tmp_path, "NORMAL", late=late)
    assert set(counts) == {
        *(f"{s}{i}" for s in ("submit", "claim", "settle") for i in range(3)),
        "close",
    }, counts
    for i in range(3):
        assert counts[f"submit{i}"] >= 1, counts
        assert counts[f"claim{i}"] == 0, counts
        assert counts[f"settle{i}"] == 0, counts


@pytest.mark.parametrize("progress", ["NORMAL", "FULL"])
def test_the_offline_path_syncs_as_the_store_does(tmp_path: Path, progress: str) -> None:
    offline = _syncs_per_step(tmp_path, progress, _OFFLINE_CHILD, "offline")
    assert offline == _syncs_per_step(tmp_path, progress), offline


def test_progress_full_syncs_claims_and_settles(tmp_path: Path) -> None:
    counts = _syncs_per_step(tmp_path, "FULL")
    for i in range(3):
        assert counts[f"submit{i}"] >= 1, counts
        assert counts[f"claim{i}"] >= 1, counts
        assert counts[f"settle{i}"] >= 1, counts
