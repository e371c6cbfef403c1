"""``daemon.pipes.hand_over``: the daemon's side of a worker's start (the settings line
out, the ready line back), with real child processes."""

from __future__ import annotations

import asyncio
import sys

from spoolbox.daemon.pipes import hand_over


async def _child(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def test_a_worker_that_reads_its_settings_and_says_ready_is_started() -> None:
    echo = "import json,sys; s=json.loads(sys.stdin.readline()); print(json.dumps({'ready': s}))"
    proc = await _child(echo + "; sys.stdout.flush(); sys.stdin.readline()")
    assert await hand_over(proc, '{"n": 1}', timeout=30, exited="gone") is None
    assert proc.returncode is None  # left running
    assert proc.stdin is not None
    proc.stdin.close()
    assert await proc.wait() == 0


async def test_a_worker_that_exits_without_a_word_is_said_to_have_done_so() -> None:
    proc = await _child("import sys; sys.exit(3)")
    why = await hand_over(proc, "{}", timeout=30, exited="it exited before it was ready")
    assert why == "it exited before it was ready (exit status 3)"


async def test_a_worker_that_says_something_else_is_killed_with_its_error() -> None:
    # It stays (asleep, not reading: a child that read the settings line could exit
    # on its own before the kill, and the test would race it).
    code = (
        'import sys, time; print(\'{"error": "no such transport"}\'); sys.stdout.flush(); '
        "time.sleep(60)"
    )
    proc = await _child(code)
    why = await hand_over(proc, "{}", timeout=30, exited="gone")
    assert why is not None
    assert why.startswith("no such transport (exit status ")
    assert proc.returncode is not None and proc.returncode < 0  # killed, and reaped


async def test_a_worker_that_stays_silent_is_killed_at_the_timeout() -> None:
    proc = await _child("import time; time.sleep(60)")
    why = await hand_over(proc, "{}", timeout=0.5, exited="gone")
    assert why is not None and why.startswith("no ready line (TimeoutError()")
    assert proc.returncode is not None
