"""Fixtures of the transport tests: one private Dovecot per test module, a mailbox
user per test."""

from __future__ import annotations

from collections.abc import Iterator

import dovecot_server as dc
import pytest


@pytest.fixture(scope="module")
def dovecot() -> Iterator[dc.Dovecot]:
    server = dc.start_dovecot()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def user(dovecot: dc.Dovecot) -> str:
    return dovecot.add_user()
