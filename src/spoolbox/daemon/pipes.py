"""The line pipes between the daemon and its worker processes (listener workers,
:mod:`.listener_processes`; delivery workers, :mod:`.workers`), both ends:

* :func:`stdin_lines`: a worker's reader of its stdin, the daemon's end of the pipe
  (its transport closed when the worker is done with it);
* :func:`serve_control_lines`: a worker reads the daemon's lines on its stdin until
  it ends (the daemon closed it, or died) or the worker is told to stop, and does
  its periodic chore (its counters to the daemon) after each line and at least
  every so often;
* :func:`hand_over`: the daemon gives a worker it started its settings line and
  waits for its ready line (one that does not come in time is killed);
* :func:`end_processes`: the daemon ends its workers: the end of their stdin tells
  each to stop; one still running after ``limit`` seconds is killed.

Both programs import this module; it imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

__all__ = ["end_processes", "hand_over", "serve_control_lines", "stdin_lines"]

log = logging.getLogger("spoolbox.daemon")

#: Seconds a worker whose output ended, or that said why it cannot start, is given to
#: exit on its own before it is killed.
_EXITING: Final = 5.0
_AFTER_ERROR: Final = 0.5


@contextlib.asynccontextmanager
async def stdin_lines(limit: int) -> AsyncIterator[asyncio.StreamReader]:
    """A reader of this process's stdin (the daemon's lines), its pipe transport closed
    at the end: left open, the event loop's close finds a handle still open (a
    ResourceWarning; with warnings as errors, uvloop's close fails with EBUSY) and the
    file object is never closed."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    try:
        yield reader
    finally:
        transport.close()


async def serve_control_lines(
    reader: asyncio.StreamReader,
    stop: asyncio.Event,
    *,
    interval: float,
    on_line: Callable[[bytes], Awaitable[None]],
    on_tick: Callable[[], None],
) -> None:
    """Each line of ``reader`` to ``on_line`` until the end of it or ``stop``;
    ``on_tick()`` after each line and at least every ``interval`` seconds."""
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    line_task: asyncio.Future[Any] | None = None
    try:
        while not stopped.done():
            if line_task is None:
                line_task = asyncio.ensure_future(reader.readline())
            await asyncio.wait(
                {line_task, stopped}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if line_task.done():
                line = line_task.result()
                line_task = None
                if not line:
                    return  # the daemon closed our stdin, or died
                await on_line(line)
            on_tick()
    finally:
        stopped.cancel()
        if line_task is not None:
            line_task.cancel()


async def hand_over(
    proc: asyncio.subprocess.Process, spec: str, *, timeout: float, exited: str
) -> str | None:
    """Write ``spec`` as the worker's first line on its stdin and wait ``timeout``
    seconds for its ready line (``{"ready": ...}``): None once it is ready; else why
    not, with its exit status (``exited`` if it ended without a word), the worker
    reaped (killed if it does not exit on its own: at once at the timeout, after a
    moment when it said why or its output ended)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(spec.encode() + b"\n")
    grace = 0.0  # how long it may take to exit on its own before it is killed
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        # Its output ended: it is exiting.  Or it said why it cannot start, and exits.
        grace = _EXITING if not line else _AFTER_ERROR
        ready = json.loads(line) if line else {"error": exited}
    except (TimeoutError, ValueError) as exc:
        ready = {"error": f"no ready line ({exc!r})"}
    if "ready" in ready:
        return None
    if grace:
        # Its own exit status, not a kill's: a kill of a process that has just exited
        # can race asyncio's reaper, which then reports 255 instead of the status.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    code = await proc.wait()
    return f"{ready.get('error', ready)} (exit status {code})"


async def end_processes(
    processes: Sequence[tuple[str, asyncio.subprocess.Process]], limit: float
) -> None:
    """Close the stdin of each ``(name, process)`` (all at once: they stop together),
    wait up to ``limit`` seconds for each, kill the ones still running (logged)."""
    for _, process in processes:
        if process.stdin is not None:
            process.stdin.close()
    for name, process in processes:
        try:
            await asyncio.wait_for(process.wait(), limit)
        except TimeoutError:
            log.error("%s (pid %d) did not stop in %.0f s; killed", name, process.pid, limit)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
