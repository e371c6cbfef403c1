"""The library without any extra, run by tests/test_extras.py in a Python that has none
of the extras' packages (a fresh venv, or this one with them blocked).

Usage: ``python core_only_check.py DIR``.  It checks that the extras are really
absent (else the proof proves nothing), then, in DIR: submits a message to a
SQLiteStore and delivers it through Maildir with the Spooler; loads the IMAP
provider and sees its logon fail with the hint that names the ``imap`` extra, in the
spooler's status row; and takes asyncio's loop where uvloop is missing.  It prints
``core ok`` at the end; any failure is a traceback and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

EXTRAS = ("click", "rich", "aioimaplib", "uvloop")


async def _deliver_and_fail_imap(root: Path) -> None:
    from spoolbox import (
        Address,
        MessageState,
        NewMessage,
        Spooler,
        SpoolerConfig,
        SQLiteStore,
        TransportConfig,
    )

    config = SpoolerConfig(
        transports=(
            TransportConfig("local", "maildir", options={"root": str(root / "mail")}),
            TransportConfig(
                "mail",
                "imap",
                options={"host": "127.0.0.1", "username": "u", "password": "p", "tls": "none"},
            ),
        )
    )
    store = SQLiteStore(str(root / "spool.sqlite3"))
    async with Spooler.open(config, store=store) as spooler:
        info = await spooler.submit(
            NewMessage(
                sender=Address.parse("MAILDIR:alice"),
                recipients=(Address.parse("MAILDIR:bob"),),
                content=b"Subject: core only\r\n\r\nNo extras.\r\n",
            )
        )
        await spooler.flush()
        assert await spooler.wait_for(info.id, timeout=30) == MessageState.SENT
        delivered = list((root / "mail" / "bob" / "new").iterdir())
        assert len(delivered) == 1, delivered
        assert b"No extras." in delivered[0].read_bytes()
        # The IMAP transport's logon fails, and its row says which extra to install.
        async with asyncio.timeout(30):
            while "spoolbox[imap]" not in (spooler.status["mail"].detail or ""):
                await asyncio.sleep(0.05)
        print("imap row:", spooler.status["mail"].detail)


def main(root: Path) -> None:
    present = [name for name in EXTRAS if importlib.util.find_spec(name) is not None]
    assert present == [], f"this Python has packages of the extras: {present}"

    import spoolbox
    from spoolbox.client import Client  # the Python client of the daemon's local API
    from spoolbox.daemon import event_loop_runner

    assert callable(Client)
    imported = [name for name in EXTRAS if sys.modules.get(name) is not None]
    assert imported == [], f"importing the library imported {imported}"
    asyncio.run(_deliver_and_fail_imap(root))
    # The spooler loaded the IMAP provider (its entry point) without aioimaplib.
    assert spoolbox.load_provider_class("imap").__name__ == "IMAPProvider"

    assert event_loop_runner("auto") is asyncio.run
    try:
        event_loop_runner("uvloop")
    except ImportError as exc:
        refused = str(exc)
    else:
        raise AssertionError('event_loop = "uvloop" without uvloop was accepted')
    assert "pip install 'spoolbox[uvloop]'" in refused, refused
    print("core ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
