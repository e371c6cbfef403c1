"""The public test kit: a fake clock, scripted providers, and conformance suites that
third-party provider and store authors run against their own code."""

from .._core.clock import Clock
from .clock import FakeClock
from .conformance import ProviderCheckReport, check_provider
from .scripted import Act, Script, ScriptedError, ScriptedProvider, ScriptedSession
from .store_conformance import STORE_CHECKS, check_store

__all__ = [
    "STORE_CHECKS",
    "Act",
    "Clock",
    "FakeClock",
    "ProviderCheckReport",
    "Script",
    "ScriptedError",
    "ScriptedProvider",
    "ScriptedSession",
    "check_provider",
    "check_store",
]
