"""The AT channel (spoolbox.transports.sms.modem) against the simulated modem on a
real pseudo-terminal, opened through pyserial-asyncio-fast as a serial device.

Where the behaviour comes from: the final result codes, the unsolicited codes that
may arrive inside an answer (``+CMTI`` one line, ``+CDS`` two lines, ``+CREG``) and the
``"> "`` prompt without a line end are gammu's AT engine (libgammu/protocol/at/at.c,
``StatusStrings`` / ``SpecialAnswers`` / the ``EditMode`` prompt check); the command
set and answers are 3GPP TS 27.005 / 27.007 as real modems speak them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from spoolbox.transports.sms.ledger import parse_listing, whole_messages
from spoolbox.transports.sms.modem import CommandError, Modem, ModemTimeout, Urc, open_modem
from spoolbox.transports.sms.pdu import decode_status_report, submit_pdus
from spoolbox.transports.sms.simulator import ModemSimulator


@pytest.fixture
async def channel(sim: ModemSimulator) -> AsyncIterator[tuple[Modem, list[Urc]]]:
    urcs: list[Urc] = []
    modem = await open_modem(sim.port, 115200, urcs.append)
    try:
        yield modem, urcs
    finally:
        await modem.close()


async def _until(predicate: object, what: str) -> None:
    for _ in range(500):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_echo_is_skipped_and_ate0_turns_it_off(
    sim: ModemSimulator, channel: tuple[Modem, list[Urc]]
) -> None:
    modem, _ = channel
    assert sim.echo  # a modem starts with its echo on (V.250 E1)
    assert await modem.command("AT+CSQ", timeout=5) == ["+CSQ: 21,99"]  # echo line skipped
    await modem.command("ATE0", timeout=5)
    assert not sim.echo
    assert await modem.command("AT+CREG?", timeout=5) == ["+CREG: 0,1"]


async def test_an_unsolicited_code_inside_an_answer_is_taken_out(
    sim: ModemSimulator, channel: tuple[Modem, list[Urc]]
) -> None:
    modem, urcs = channel
    sim.receive("+15550001111", "first")
    sim.receive("+15550002222", "second")
    sim.urc_inside = True  # +CMTI between the first listed message and the rest
    lines = await modem.command("AT+CMGL=4", timeout=5)
    assert [line for line in lines if line.startswith("+CMTI")] == []
    assert [u.kind for u in urcs] == ["CMTI"]
    whole, bad = whole_messages(parse_listing(lines))
    assert [w.text for w in whole] == ["first", "second"] and bad == []


async def test_cms_errors_carry_their_code(
    sim: ModemSimulator, channel: tuple[Modem, list[Urc]]
) -> None:
    modem, _ = channel
    await modem.command("AT+CMEE=1", timeout=5)
    sim.refuse["+15559990000"] = 1  # unassigned number
    (pdu,) = submit_pdus("+15559990000", "hi", ref=1)
    with pytest.raises(CommandError) as caught:
        await modem.send_pdu(pdu.length, pdu.pdu, timeout=5)
    assert (caught.value.kind, caught.value.code) == ("CMS", 1)
    # without AT+CMEE=1 a modem says only ERROR
    await modem.command("AT+CMEE=0", timeout=5)
    with pytest.raises(CommandError) as caught:
        await modem.send_pdu(pdu.length, pdu.pdu, timeout=5)
    assert (caught.value.kind, caught.value.code) == (None, None)


async def test_send_returns_the_message_reference_and_the_report_follows(
    sim: ModemSimulator, channel: tuple[Modem, list[Urc]]
) -> None:
    modem, urcs = channel
    await modem.command("AT+CNMI=2,1,0,1,0", timeout=5)
    (pdu,) = submit_pdus("+15551234567", "hello", ref=1, status_report=True)
    mr = await modem.send_pdu(pdu.length, pdu.pdu, timeout=5)
    assert sim.texts() == [("+15551234567", "hello")]
    await _until(lambda: any(u.kind == "CDS" for u in urcs), "+CDS")
    report = decode_status_report(next(u.value for u in urcs if u.kind == "CDS"))
    assert (report.mr, report.recipient, report.outcome) == (mr, "+15551234567", "delivered")


async def test_no_answer_is_a_timeout_and_the_channel_recovers(
    sim: ModemSimulator, channel: tuple[Modem, list[Urc]]
) -> None:
    modem, _ = channel
    sim.mute = True
    with pytest.raises(ModemTimeout, match="no answer within"):
        await modem.command("AT", timeout=0.3)
    sim.mute = False
    assert await modem.command("AT+CSQ", timeout=5) == ["+CSQ: 21,99"]


async def test_a_reset_mid_send_loses_the_message_and_the_settings(
    sim: ModemSimulator, channel: tuple[Modem, list[Urc]]
) -> None:
    modem, _ = channel
    await modem.command("ATE0", timeout=5)
    sim.reset_on_send = 1
    (pdu,) = submit_pdus("+15551234567", "lost", ref=1)
    with pytest.raises(ModemTimeout):
        await modem.send_pdu(pdu.length, pdu.pdu, timeout=0.5)
    assert sim.resets == 1 and sim.sent == [] and sim.echo  # back to factory settings
    await modem.cancel_input()
    assert await modem.command("AT+CSQ", timeout=5) == ["+CSQ: 21,99"]  # echo skipped again


async def test_registration_loss_and_return_are_unsolicited(
    sim: ModemSimulator, channel: tuple[Modem, list[Urc]]
) -> None:
    modem, urcs = channel
    await modem.command("AT+CMEE=1", timeout=5)
    await modem.command("AT+CREG=1", timeout=5)
    sim.lose_registration()
    await _until(lambda: Urc("CREG", "2") in urcs, "+CREG: 2")
    (pdu,) = submit_pdus("+15551234567", "no network", ref=1)
    with pytest.raises(CommandError) as caught:
        await modem.send_pdu(pdu.length, pdu.pdu, timeout=5)
    assert caught.value.code == 331  # no network service
    assert await modem.command("AT+CREG?", timeout=5) == ["+CREG: 1,2"]  # an answer, no URC
    sim.regain_registration()
    await _until(lambda: Urc("CREG", "1") in urcs, "+CREG: 1")


async def test_the_pin(channel: tuple[Modem, list[Urc]]) -> None:
    with ModemSimulator(pin="4321") as locked:
        modem = await open_modem(locked.port, 115200, lambda urc: None)
        try:
            await modem.command("AT+CMEE=1", timeout=5)
            assert await modem.command("AT+CPIN?", timeout=5) == ["+CPIN: SIM PIN"]
            with pytest.raises(CommandError) as caught:
                await modem.command("AT+CMGF=0", timeout=5)
            assert caught.value.code == 11  # SIM PIN required
            with pytest.raises(CommandError):
                await modem.command('AT+CPIN="0000"', timeout=5)
            await modem.command('AT+CPIN="4321"', timeout=5)
            assert await modem.command("AT+CPIN?", timeout=5) == ["+CPIN: READY"]
        finally:
            await modem.close()
