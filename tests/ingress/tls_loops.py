"""Running a listener scenario on each event loop the daemon may use: asyncio's own
and uvloop (the default, ``[daemon] event_loop = "auto"``), which differ in how they
start and hand over TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

LOOPS = ["asyncio", "uvloop"]


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``main()`` to its end on a new event loop of kind ``loop``."""
    if loop == "asyncio":
        asyncio.run(main())
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a test dependency
        pytest.fail("uvloop is missing: install the project's test dependencies")
    uvloop.run(main())
