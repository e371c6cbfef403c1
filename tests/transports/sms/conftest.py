"""Fixtures of the SMS transport tests: a simulated modem on a pseudo-terminal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spoolbox.transports.sms.simulator import ModemSimulator


@pytest.fixture
def sim() -> Iterator[ModemSimulator]:
    with ModemSimulator() as modem:
        yield modem
