"""The SMS transport through the real spooler, on the simulated modem (a real
pseudo-terminal opened as a serial port).

Where the behaviour comes from: which ``+CMS ERROR`` codes are temporary is gammu's
``ATGEN_HandleCMSError`` (libgammu/phone/at/atgen.c: 38, 41, 42, 47, 111, 331, 332 are
network errors), the codes' meanings 3GPP TS 24.011 E-2 / TS 27.005 3.2.5; delivery
reports routed as ``+CDS`` by ``AT+CNMI=2,1,0,1,0`` and new messages announced as
``+CMTI`` are TS 27.005 3.4.1 (smstools3 and gammu's smsd set the same CNMI).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email import message_from_bytes
from typing import Any

import pytest

from spoolbox import (
    Address,
    AlwaysIdle,
    MessageState,
    NewMessage,
    Policy,
    RecipientState,
    Spooler,
    SpoolerConfig,
    TransportConfig,
)
from spoolbox.contract import StatusCode
from spoolbox.testing import check_provider
from spoolbox.transports.sms.simulator import ModemSimulator

NUMBER = "+15551234567"
FAST = Policy(
    router_interval=0.02,
    housekeeping_interval=0.05,
    relogon_delay=0.05,
    retry_jitter=0.0,
    retry_base=3600.0,  # a deferred SMS waits an hour unless something flushes it
    poll_interval=0.2,
    idle_interval=0.05,
    shutdown_grace=2.0,
)


@asynccontextmanager
async def spooler(
    sim: ModemSimulator, policy: Policy = FAST, **options: Any
) -> AsyncIterator[Spooler]:
    config = SpoolerConfig(
        transports=(
            TransportConfig("gsm", "sms", options={"port": sim.port, **options}, inbound=True),
        ),
        policy=policy,
        node="test",
    )
    async with Spooler.open(config, idle=AlwaysIdle()) as sp:
        ready = await sp.wait_ready(timeout=10)
        assert ready == {"gsm": True}, sp.status.get("gsm")
        yield sp


def mail(subject: str, body: str = "") -> bytes:
    return (
        f"From: alice@example.org\r\nSubject: {subject}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    ).encode()


async def submit(sp: Spooler, content: bytes, *numbers: str) -> str:
    rcpts = tuple(Address("SMS", n) for n in numbers or (NUMBER,))
    info = await sp.submit(NewMessage(Address("SMTP", "alice@example.org"), rcpts, content))
    return info.id


async def until(what: str, predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# -- the contract ----------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"delivery_reports": True}])
async def test_check_provider(sim: ModemSimulator, options: dict[str, Any]) -> None:
    report = await check_provider(
        "sms", address=f"SMS:{NUMBER}", options={"port": sim.port, **options}, timeout=15
    )
    assert report.ok, report.text()
    assert (NUMBER, "conformance: send\nspoolbox provider conformance check") in sim.texts()


async def test_a_sim_pin_from_the_options(sim: ModemSimulator) -> None:
    with ModemSimulator(pin="2468") as locked:
        async with spooler(locked, pin="2468") as sp:
            mid = await submit(sp, mail("pin ok"))
            assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
        assert 'AT+CPIN="2468"' in locked.commands
    with ModemSimulator(pin="2468") as locked:  # a fresh one: a SIM keeps its PIN until off
        config = SpoolerConfig(
            transports=(TransportConfig("gsm", "sms", options={"port": locked.port}),),
            policy=FAST,
            node="test",
        )
        async with Spooler.open(config, idle=AlwaysIdle()) as sp:
            assert await sp.wait_ready(timeout=10) == {"gsm": False}
            row = sp.status.get("gsm")
            assert row is not None and "pin" in (row.detail or "")


# -- sending ---------------------------------------------------------------------------------
async def test_subject_and_text_become_the_sms_and_the_row_shows_the_line(
    sim: ModemSimulator,
) -> None:
    async with spooler(sim) as sp:
        row = sp.status.get("gsm")
        assert row is not None and row.status_string is not None
        assert "registered (home network), signal -71 dBm (21/31)" in row.status_string
        mid = await submit(sp, mail("Server down", "db1 is not answering.\r\n\r\n"))
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
        (record,) = await sp.store.recipients(mid)
        assert record.diagnostic is not None and "accepted by the SMS centre" in record.diagnostic
        assert sp.critsec.entries >= 1  # the AT+CMGS exchange ran in a critical section
    assert sim.texts() == [(NUMBER, "Server down\ndb1 is not answering.")]
    assert sim.commands[:3] == ["AT", "ATE0", "AT+CMEE=1"]


async def test_a_long_text_goes_in_parts_up_to_max_parts_then_is_cut(sim: ModemSimulator) -> None:
    body = "Ünïcödé ж " * 40  # not GSM 7-bit: UCS-2, 67 units a part
    async with spooler(sim, max_parts=2, text="body") as sp:
        mid = await submit(sp, mail("ignored", body))
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
        entries = sp.critsec.entries
    assert len(sim.sent) == 2 and {s.coding for s in sim.sent} == {"ucs2"}
    assert entries >= 2  # one critical section per AT+CMGS exchange
    ((number, text),) = sim.texts()
    assert number == NUMBER and text.endswith("...") and body.startswith(text[:-3])


async def test_a_permanent_cms_error_fails_with_its_code(sim: ModemSimulator) -> None:
    sim.refuse["+15550000001"] = 1  # unassigned (unallocated) number
    sim.refuse["+15550000002"] = 42  # congestion: temporary
    async with spooler(sim) as sp:
        mid = await submit(sp, mail("hi"), "+15550000001", "+15550000002", NUMBER)
        await sp.wait_for(mid, [MessageState.DEFERRED], timeout=10)
        bad, busy, good = await sp.store.recipients(mid)
    assert bad.state is RecipientState.FAILED and bad.status == "5.1.1"
    assert bad.diagnostic is not None and "+CMS ERROR: 1 (unassigned" in bad.diagnostic
    assert busy.state is RecipientState.QUEUED and busy.status == "4.3.0"  # deferred
    assert busy.diagnostic is not None and "+CMS ERROR: 42 (congestion)" in busy.diagnostic
    assert good.state is RecipientState.DELIVERED
    assert sim.texts() == [(NUMBER, "hi")]


async def test_a_number_that_is_not_one_fails_at_once(sim: ModemSimulator) -> None:
    async with spooler(sim) as sp:
        mid = await submit(sp, mail("hi"), "bob@example.org")
        assert await sp.wait_for(mid, timeout=10) is MessageState.FAILED
        (record,) = await sp.store.recipients(mid)
    assert record.status == "5.1.3" and sim.sent == []


async def test_a_modem_that_does_not_answer_defers_and_recovers(sim: ModemSimulator) -> None:
    async with spooler(sim, timeout=0.5, send_timeout=0.5) as sp:
        sim.mute = True
        mid = await submit(sp, mail("hello"))
        await sp.wait_for(mid, [MessageState.DEFERRED], timeout=10)
        (record,) = await sp.store.recipients(mid)
        assert record.status == "4.4.2" and "not answering" in (record.diagnostic or "")
        row = sp.status.get("gsm")
        assert row is not None and row.status_code & StatusCode.FAILURE
        sim.mute = False
        await sp.flush(download=False)
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
        row = sp.status.get("gsm")
        assert row is not None and not row.status_code & StatusCode.FAILURE
    assert sim.texts() == [(NUMBER, "hello")]


async def test_a_modem_reset_mid_send_sends_it_once_after_a_new_init(
    sim: ModemSimulator,
) -> None:
    async with spooler(sim, send_timeout=0.5) as sp:
        sim.reset_on_send = 1
        mid = await submit(sp, mail("after reset"))
        await sp.wait_for(mid, [MessageState.DEFERRED], timeout=10)
        assert sim.resets == 1 and sim.sent == []
        await sp.flush(download=False)
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
    assert sim.texts() == [(NUMBER, "after reset")]
    assert sim.commands.count("ATE0") == 2  # initialised again after the reset


async def test_registration_return_flushes_deferred_sms_by_itself(sim: ModemSimulator) -> None:
    async with spooler(sim) as sp:
        sim.lose_registration()
        await until("the row to show the loss", lambda: "searching" in _row_text(sp))
        row = sp.status.get("gsm")
        assert row is not None and row.status_code & StatusCode.OFFLINE
        mid = await submit(sp, mail("while offline"))
        await sp.wait_for(mid, [MessageState.DEFERRED], timeout=10)
        (record,) = await sp.store.recipients(mid)
        assert record.status == "4.4.1" and record.retry_at > sp.clock.now() + 3000
        sim.regain_registration()  # +CREG: 1: the provider sets OUTBOUND_FLUSH itself
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
        assert "home network" in _row_text(sp)
    assert sim.texts() == [(NUMBER, "while offline")]


def _row_text(sp: Spooler) -> str:
    row = sp.status.get("gsm")
    return (row.status_string or "") if row is not None else ""


# -- delivery reports ------------------------------------------------------------------------
async def test_status_reports_decide_delivered_or_failed(sim: ModemSimulator) -> None:
    sim.report_status["+15550000009"] = 0x41  # incompatible destination: permanent
    async with spooler(sim, delivery_reports=True) as sp:
        mid = await submit(sp, mail("reported " * 30), NUMBER, "+15550000009")
        assert await sp.wait_for(mid, timeout=15) is MessageState.SENT  # one delivered
        good, bad = await sp.store.recipients(mid)
        section = await sp.store.profile_get("transport:gsm")
    assert good.state is RecipientState.DELIVERED
    assert good.diagnostic is not None and "status report: delivered" in good.diagnostic
    assert bad.state is RecipientState.FAILED and "TP-ST 0x41" in (bad.diagnostic or "")
    assert section.get("awaiting") == {}  # nothing left waiting
    assert len(sim.sent) == 4  # two parts each, each sent once


# -- receiving -------------------------------------------------------------------------------
async def test_received_sms_go_to_the_inbox_once_and_leave_the_sim(sim: ModemSimulator) -> None:
    async with spooler(sim) as sp:
        sim.receive("+4915112345678", "Grüße aus Berlin")
        long_text = "part of a long message " * 12  # three parts
        sim.receive("+15557654321", long_text)
        entries = await sp.wait_inbox(2, timeout=10)
        await until("the SIM to be emptied", lambda: not list(sim.stored()))
        texts = {}
        for entry in entries:
            parsed = message_from_bytes(await sp.store.read_inbox(entry.id))
            payload = parsed.get_payload(decode=True)
            assert isinstance(payload, bytes)
            texts[parsed["X-SMS-Sender"]] = payload.decode("utf-8").removesuffix("\r\n")
        assert {e.sender for e in entries} == {"SMS:+4915112345678", "SMS:+15557654321"}
        await sp.flush()  # another listing finds nothing more
        assert len(await sp.store.list_inbox()) == 2
    assert texts == {"+4915112345678": "Grüße aus Berlin", "+15557654321": long_text}


async def test_a_message_already_in_the_inbox_is_deleted_not_delivered_again(
    sim: ModemSimulator,
) -> None:
    # The window between the inbox commit and AT+CMGD: here AT+CMGD fails once (the
    # kill tests cut it with SIGKILL).  The message's key is in the profile section
    # with the inbox entry, so the next listing deletes it and does not deliver it.
    sim.fail_delete = 1
    async with spooler(sim) as sp:
        sim.receive(NUMBER, "once")
        await sp.wait_inbox(1, timeout=10)
        await until("the SIM to be emptied", lambda: not list(sim.stored()))
        assert [c for c in sim.commands if c.startswith("AT+CMGD")] == ["AT+CMGD=1"] * 2
        assert len(await sp.store.list_inbox()) == 1
        section = await sp.store.profile_get("transport:gsm")
    assert isinstance(section["received"], list) and len(section["received"]) == 1


async def test_an_exchange_over_critsec_max_is_taken_away_and_retried(
    sim: ModemSimulator,
) -> None:
    # The spooler's maximum is enforced: a modem that holds AT+CMGS past critsec_max +
    # critsec_grace has the section taken away, the call cancelled, the row says so;
    # the session initialises the modem again (ESC leaves the PDU prompt) and the
    # recipient is retried.  (The row's detail says so too, until the next note.)
    policy = dataclasses.replace(FAST, critsec_max=0.2, critsec_grace=0.1)
    config = SpoolerConfig(
        transports=(TransportConfig("gsm", "sms", options={"port": sim.port}),),
        policy=policy,
        node="test",
    )
    sim.hold_send.clear()
    sim.reset_on_send = 1  # what the modem held never went out
    async with Spooler.open(config, idle=AlwaysIdle()) as sp:
        await sp.wait_ready(timeout=10)
        mid = await submit(sp, mail("slow modem"))
        await until("the section to be taken away", lambda: sp.critsec.expired >= 1)
        stats = sp.statistics()["critical_sections"]  # what `spoolbox status` shows
        assert stats["expired"] == 1 and stats["longest"] >= 0.3
        sim.hold_send.set()
        await sp.wait_for(mid, [MessageState.DEFERRED], timeout=10)
        await sp.flush(download=False)
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
    assert sim.texts() == [(NUMBER, "slow modem")]
    assert sim.commands.count("ATE0") == 2


async def test_a_sent_sms_is_parked_until_its_status_report_comes(sim: ModemSimulator) -> None:
    sim.delay_reports = True  # the network reports later, after end_message
    no_idle = dataclasses.replace(FAST, idle_interval=3600.0)  # the +CDS alone brings it back
    async with spooler(sim, no_idle, delivery_reports=True) as sp:
        mid = await submit(sp, mail("later"))
        assert await sp.wait_for(mid, [MessageState.DEFERRED], timeout=10) is MessageState.DEFERRED
        (record,) = await sp.store.recipients(mid)
        assert record.state is RecipientState.PARKED
        section = await sp.store.profile_get("transport:gsm")
        assert list(section["awaiting"]) == [f"{mid}/0"]  # type: ignore[arg-type]
        assert sim.release_reports() == 1  # +CDS: the session asks for the message back
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT
        (record,) = await sp.store.recipients(mid)
    assert "status report: delivered" in (record.diagnostic or "")
    assert sim.texts() == [(NUMBER, "later")]  # sent once; the second submit only reports


async def test_a_status_report_that_never_comes_times_out(sim: ModemSimulator) -> None:
    sim.delay_reports = True
    async with spooler(sim, delivery_reports=True, report_timeout=0.3) as sp:
        mid = await submit(sp, mail("lost report"))
        assert await sp.wait_for(mid, timeout=10) is MessageState.SENT  # via idle()
        (record,) = await sp.store.recipients(mid)
    assert "no status report within 0.3 s" in (record.diagnostic or "")


async def test_without_the_extra_the_logon_says_what_to_install(
    sim: ModemSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "serial_asyncio_fast", None)  # as if not installed
    config = SpoolerConfig(
        transports=(TransportConfig("gsm", "sms", options={"port": sim.port}),),
        policy=FAST,
        node="test",
    )
    async with Spooler.open(config, idle=AlwaysIdle()) as sp:
        assert await sp.wait_ready(timeout=10) == {"gsm": False}
        row = sp.status.get("gsm")
    assert row is not None and "pip install 'spoolbox[sms]'" in (row.detail or "")
