"""The fuzz targets (docs/fuzzing.md): the Hypothesis profile in force is in the header."""

from __future__ import annotations

import pytest
from fuzz_settings import PROFILE


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"spoolbox fuzz targets: Hypothesis profile {PROFILE} (SPOOLBOX_FUZZ=long for the long run)"
    )
