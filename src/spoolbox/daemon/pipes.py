"""The line pipes between the daemon and its worker processes (listener workers,
:mod:`.listener_processes`; delivery workers, :mod:`.workers`), both ends:

* :func:`serve_control_lines`: a worker reads the daemon's lines on its stdin until
  it ends (the daemon closed it, or died) or the worker is told to stop, and does
  its periodic chore (its counters to the daemon) after each line and at least
  every so often;
* :func:`end_processes`: the daemon ends its workers: the end of their stdin tells
  each to stop; one still running after ``limit`` seconds is killed.

Both programs import this module; it imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["end_processes", "serve_control_lines"]

log = logging.getLogger("spoolbox.daemon")


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
