"""``Client(keep_store_open=True)`` on a PostgreSQL profile, with no daemon: the
offline operations of one thread share one open store (the same server connection
from one submit to the next, as the SQLite client keeps its file open), and
:meth:`Client.close` closes it."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from relay_profile import write_relay_profile

from spoolbox import Address, NewMessage
from spoolbox.client import Client
from spoolbox.profile import load_profile

DSN_ENV = "SPOOLBOX_TEST_KEPT_PG_DSN"


def _message(i: int) -> NewMessage:
    return NewMessage(
        Address("SMTP", "postmaster@example.org"),
        (Address("SMTP", "to@example.org"),),
        b"Subject: kept %d\r\n\r\nbody\r\n" % i,
    )


def _backends(admin: psycopg.Connection[tuple[object, ...]], db: str) -> set[int]:
    """The server processes connected to ``db`` (each a client connection)."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (db,),
    ).fetchall()
    return {int(r[0]) for r in rows}  # type: ignore[call-overload]


def _until_none(admin: psycopg.Connection[tuple[object, ...]], db: str) -> set[int]:
    """The backends of ``db`` once the last has gone (or what is left after 30 s)."""
    deadline = time.monotonic() + 30
    while (left := _backends(admin, db)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("keep", [True, False])
def test_a_kept_client_reuses_its_connection_until_closed(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    monkeypatch.setenv(DSN_ENV, pg_dsn)
    store = f'backend = "postgres"\ndsn_env = "{DSN_ENV}"'
    profile = load_profile(write_relay_profile(tmp_path, "kept", store, 25))
    db = str(psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"])
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        client = Client(profile, keep_store_open=keep)
        assert client.submit(_message(1))["via"] == "store"
        first = _backends(admin, db) if keep else _until_none(admin, db)
        assert client.submit(_message(2))["via"] == "store"
        listed = client.queue()
        assert len(listed) == 2
        if keep:
            assert first  # the connection stayed open ...
            assert _backends(admin, db) == first  # ... and the next operations used it
        else:
            assert first == set()  # each operation opened and closed its own
        client.close()
        assert _until_none(admin, db) == set()
