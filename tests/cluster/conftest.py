"""Fixtures of the multi-node tests: the store tests' private PostgreSQL cluster
(``tests/store/conftest.py``, loaded by path: conftest modules share one name), an
SMTP sink on loopback, and a factory of ``spoolbox run`` nodes (:mod:`nodes`)."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_STORE_TESTS = Path(__file__).resolve().parent.parent / "store"
_TRANSPORT_TESTS = Path(__file__).resolve().parent.parent / "transports"
sys.path.insert(0, str(_STORE_TESTS))
sys.path.append(str(_TRANSPORT_TESTS))  # dovecot_server (after tests/cluster's own)


def _load_store_fixtures() -> object:
    spec = importlib.util.spec_from_file_location(
        "spoolbox_store_test_fixtures", _STORE_TESTS / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_store = _load_store_fixtures()
pg_cluster = _store.pg_cluster  # type: ignore[attr-defined]
pg_template = _store.pg_template  # type: ignore[attr-defined]
pg_database = _store.pg_database  # type: ignore[attr-defined]

import dovecot_server as dc  # noqa: E402  (after the path above)
import nodes  # noqa: E402


@pytest.fixture
def dovecot() -> Iterator[dc.Dovecot]:
    """A private Dovecot on loopback (the transport tests' fixture, package dovecot-imapd)."""
    if not dc.available():
        pytest.skip(dc.SKIP_REASON)
    server = dc.start_dovecot()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sink() -> Iterator[nodes.Sink]:
    with nodes.Sink.running() as s:
        yield s


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> nodes.SharedStore:
    """The store every node of a test shares: one SQLite file, or one PostgreSQL
    database."""
    if request.param == "sqlite":
        return nodes.SharedStore.sqlite(tmp_path / "shared" / "spool.db")
    return nodes.SharedStore.postgres(request.getfixturevalue("pg_database")())


#: A traceback through spoolbox's own code (a library's own, such as aioimaplib's
#: on a connection cut mid-response, is the library's: not counted here).
_OWN_TRACEBACK = re.compile(
    r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*?[ \t]+File \"[^\"]*/spoolbox/"
)


def own_tracebacks(log: str) -> bool:
    """Whether ``log`` holds a traceback with a frame of spoolbox's own code."""
    return _OWN_TRACEBACK.search(log) is not None


@pytest.fixture
def cluster(tmp_path: Path, shared_store: nodes.SharedStore) -> Iterator[nodes.Cluster]:
    c = nodes.Cluster(tmp_path, shared_store)
    try:
        yield c
    finally:
        c.stop_all()
    # A node's log with a traceback: something failed that nobody handled (a store
    # that is down is logged in one line per streak, without one).
    found = [f"{n.name}:\n{n.log()[-3000:]}" for n in c.nodes.values() if own_tracebacks(n.log())]
    assert not found, "a node logged a traceback:\n" + "\n".join(found)
