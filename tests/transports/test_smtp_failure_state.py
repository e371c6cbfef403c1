"""A smart host the SMTP transport cannot log in to or connect to: FAILURE on the status
row with the reason, logged once when it starts and once when it ends (real aiosmtpd)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from smtp_servers import HOST, Recorder, aiosmtpd_server, open_spooler, options, send

from spoolbox import Address, MessageState, NewMessage, Spooler
from spoolbox.model import StatusCode


def message(to: str) -> NewMessage:
    return NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse(to),),
        content=b"From: alice@example.org\r\nSubject: t\r\n\r\nhello\r\n",
    )


async def row_failing(sp: Spooler, failing: bool) -> str:
    """Wait until the smtp row's FAILURE bit is ``failing``; its status text."""
    async with asyncio.timeout(10):
        while True:
            row = sp.status["smtp"]
            if bool(row.status_code & StatusCode.FAILURE) is failing:
                return row.display_string
            await asyncio.sleep(0.01)


def trouble_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "spoolbox.transport" and r.levelno >= logging.INFO
    ]


async def test_a_refused_password_sets_failure_once_and_its_fix_clears_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "spoolbox")
    rec = Recorder()
    users = {"alice": "secret"}
    async with aiosmtpd_server(rec, users=users, auth_require_tls=False) as srv:
        opts = options(srv.port, username="alice", password="wrong", allow_plain_auth=True)
        async with open_spooler(opts) as sp:
            # Three messages to three destinations (no destination back-off between them):
            # three connections, each refused at AUTH.
            for domain in ("a", "b", "c"):
                state, recs = await send(sp, message(f"SMTP:bob@{domain}.example"))
                assert state is MessageState.DEFERRED
                assert recs[0].status == "4.7.8"
            text = await row_failing(sp, True)
            assert text.startswith(f"cannot relay via {HOST}:{srv.port}: smtp; 535")
            assert "authentication as alice failed" in text
            retries = [
                r
                for r in caplog.records
                if r.levelno == logging.DEBUG and "failures in a row" in r.getMessage()
            ]
            assert len(retries) == 2  # the second and third failure, counted quietly
            assert trouble_lines(caplog) == [
                (logging.WARNING, f"smtp: {text}"),
            ]

            users["alice"] = "wrong"  # the administrator fixes the smart host's side
            state, _ = await send(sp, message("SMTP:bob@d.example"))
            assert state is MessageState.SENT
            text = await row_failing(sp, False)
            assert text.startswith(f"connected to {HOST}:{srv.port}, 1 sent")
            assert trouble_lines(caplog)[1:] == [
                (logging.INFO, "smtp: back online after 3 failures"),
            ]
            assert sp.status["smtp"].status_code & StatusCode.AVAILABLE


async def test_the_failure_a_provider_set_belongs_to_its_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "spoolbox")
    rec = Recorder()
    async with aiosmtpd_server(rec, users={"alice": "secret"}, auth_require_tls=False) as srv:
        opts = options(srv.port, username="alice", password="wrong", allow_plain_auth=True)
        async with open_spooler(opts) as sp:
            await send(sp, message("SMTP:bob@a.example"))
            text = await row_failing(sp, True)
            # A new logon (the session failed critically): the new session starts
            # clean, without a "back online" it has not earned ...
            host = sp.host("smtp")
            logons = host.logons
            host.fail_critically("test: the session dies")
            async with asyncio.timeout(10):
                while not (host.logons > logons and host.online):
                    await asyncio.sleep(0.01)
            assert not sp.status["smtp"].status_code & StatusCode.FAILURE
            # ... and sets FAILURE again, with a new warning, when it fails too.
            await send(sp, message("SMTP:bob@b.example"))
            assert await row_failing(sp, True) == text
    assert trouble_lines(caplog) == [(logging.WARNING, f"smtp: {text}")] * 2


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def test_a_refused_connection_sets_failure_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "spoolbox")
    async with open_spooler(options(closed_port())) as sp:
        for domain in ("a", "b"):
            state, recs = await send(sp, message(f"SMTP:bob@{domain}.example"))
            assert state is MessageState.DEFERRED
            assert recs[0].status == "4.4.1"
        text = await row_failing(sp, True)
        # Not delivered, not bounced, and the row's text says why.
        assert text.startswith(f"cannot relay via {HOST}:")
        assert f"cannot connect to {HOST}:" in text and "Connect call failed" in text
        assert trouble_lines(caplog) == [(logging.WARNING, f"smtp: {text}")]
