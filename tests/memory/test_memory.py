"""A large message in bounded memory, per path: each step runs alone in a process
(``worker.py``) and its peak RSS may grow by at most 2.5 times the message.

The bound is on memory, not time: the kernel's high-water mark of the process's
resident set, reset just before the step (see ``worker.py``).  Where the caller hands
the message over as bytes, its own copy counts once.  Most steps hold the message
once (bound 1.5x); the SMTP listener twice (the DATA it read, and the message with
its Received line on top: 2.5x); the steps that stream it (a store read chunk by
chunk, a relay, a Maildir delivery) a few blocks (0.25x).  Before the fixes these
steps held 2 (a Python-API submit, a store read, an inbound message), 3 (the SMTP listener), 3.7 (a
submit into the store through the client), 5 (the daemon taking a submit over its
local API) and 7 to 9 times the message (``spoolbox submit FILE``, ``spoolbox
sendmail``); a failure report that returns the message in full (up to 10 MiB) held
it 7 times over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spoolbox.reports.dsn import RETURN_SIZE_LIMIT

WORKER = Path(__file__).with_name("worker.py")
SIZE = 24 * 1024 * 1024  # under sendmail's and the listener's default limit of 25 MiB
SKIP = 3
ONCE = 1.5  # the message held once, and what a process's RSS wanders by
#: Held twice plus what RSS wanders by: the report test (a 9.9 MiB message) measured
#: 2.50-2.58x on main in session 9 (the wander is a larger share of a smaller
#: message than for ONCE's 24 MiB); a third copy shows as 3.5x (the hand-off of a
#: large report did that, before HAND_OFF_LIMIT).
TWICE = 2.7
STREAMED = 0.5
#: The streamed steps take a larger message: what they hold does not grow with it
#: (a few MiB whatever the size: the store's page cache, buffers, the allocator's
#: freed blocks), so their bound is measured against more of it.
STREAM_SIZE = 48 * 1024 * 1024


def measure(step: str, tmp_path: Path, size: int = SIZE) -> dict[str, Any]:
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("cannot reset the peak RSS: /proc/self/clear_refs is not writable (Linux)")
    proc = subprocess.run(
        [sys.executable, str(WORKER), step, str(size), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == SKIP:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == step and result["size"] == size
    return result


def assert_bounded(growth: int, what: str, bound: float, size: int = SIZE) -> None:
    ratio = growth / size
    assert growth <= bound * size, (
        f"{what}: the peak RSS grew by {growth / 2**20:.1f} MiB for a message of "
        f"{size / 2**20:.1f} MiB ({ratio:.2f}x; the bound is {bound}x)"
    )


@pytest.mark.parametrize(
    ("step", "bound"),
    [
        ("api", ONCE),  # Spooler.submit(NewMessage(content=...)) on SQLite
        ("store-write", ONCE),  # SQLiteStore.submit
        ("memory-store", ONCE),  # MemoryStore.submit and read_content
        ("store-read", ONCE),  # SQLiteStore.read_content
        ("store-stream", STREAMED),  # SQLiteStore.iter_content
        ("listener", TWICE),  # SMTP client process -> listener -> store
        ("relay", STREAMED),  # store -> SMTP transport -> smtp-sink
        ("maildir", STREAMED),  # store -> Maildir transport -> file
        ("inbound", ONCE),  # Maildir pickup -> inbox
        ("client", ONCE),  # spoolbox submit FILE's path: from_bytes, Client.submit into the store
        ("sendmail", ONCE),  # spoolbox sendmail < FILE, no daemon
    ],
)
def test_a_large_message_is_held_at_most_twice(step: str, bound: float, tmp_path: Path) -> None:
    size = STREAM_SIZE if bound == STREAMED else SIZE
    result = measure(step, tmp_path, size)
    assert_bounded(result["growth"], step, bound, size)


def test_a_submit_through_the_daemon_holds_the_message_once_on_each_side(
    tmp_path: Path,
) -> None:
    result = measure("daemon", tmp_path)
    assert_bounded(result["growth"], "the client", ONCE)
    assert_bounded(result["daemon_growth"], "the daemon", ONCE)


def test_a_failure_report_returning_the_message_in_full_holds_it_twice(tmp_path: Path) -> None:
    # Just under RETURN_SIZE_LIMIT: the report carries the whole original.  The
    # spooler reads it (once) and the report holds it (once); the email package
    # held it seven times over before.
    size = RETURN_SIZE_LIMIT - 64 * 1024
    result = measure("report", tmp_path, size)
    assert_bounded(result["growth"], "report", TWICE, size)


def test_a_report_on_a_message_too_large_to_return_reads_only_its_beginning(
    tmp_path: Path,
) -> None:
    # Above RETURN_SIZE_LIMIT the report returns the header section: the spooler
    # reads the beginning of the message, not all of it (it did before: 1.06x).
    result = measure("report", tmp_path, STREAM_SIZE)
    assert_bounded(result["growth"], "report", STREAMED, STREAM_SIZE)


def test_send_with_a_large_attachment_holds_the_message_once(tmp_path: Path) -> None:
    # SIZE is the attachment's; the message carries it in base64, 4/3 of it.  The
    # email package held 5.6 times the attachment before.
    result = measure("send", tmp_path)
    assert_bounded(result["growth"], "send --attach", ONCE * 4 / 3)
