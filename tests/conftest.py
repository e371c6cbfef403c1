"""Shared test helpers: build a spooler with scripted transports."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# CI runs the property tests derandomized (the same examples for the same code, so a
# submission's CI result does not depend on luck); a developer's run explores new
# examples each time, and what it finds goes into the tests as @example.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
