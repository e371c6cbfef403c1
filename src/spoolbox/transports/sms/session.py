"""The SMS session (send with AT+CMGS, receive from the SIM, follow the line) and the
provider that logs it on.  The package docstring says what it guarantees."""

from __future__ import annotations

import asyncio
import importlib
import random
from collections.abc import Mapping
from typing import Any, ClassVar

from spoolbox.contract import (
    BaseTransportSession,
    EndFlags,
    FailOneProvider,
    FlushFlags,
    InboundWriter,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    MessageCancelled,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    SpoolerNotifyFlags,
    StatusCode,
    SubmitFlags,
    Support,
    TransportNotifyFlags,
    Unconfigured,
    ValidateFlags,
    read_options,
)

from .errors import classify_cms
from .ledger import Awaiting, apply_report, expect, parse_listing, verdict, whole_messages
from .line import LineState, registered
from .modem import CommandError, Modem, ModemError, Urc, open_modem
from .pdu import (
    PDUError,
    StatusReport,
    decode_status_report,
    encode_address,
    submit_pdus,
    validity_code,
)
from .settings import SMSOptions
from .text import mail_to_text, sms_to_mail

__all__ = ["SMSProvider", "SMSSession"]

_RECEIVED = "received"  # profile-section key: keys of SIM messages already in the inbox
_AWAITING = "awaiting"  # profile-section key: recipients waiting for a status report
_SEARCHING = 2  # +CREG <stat> of a modem that lost its network


class SMSSession(BaseTransportSession):
    """One logon of the SMS transport on one modem."""

    ADDRESS_TYPES: ClassVar[tuple[str, ...]] = ("SMS",)
    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.SP_POLL | LogonCaps.SP_IDLE

    def __init__(self, support: Support, options: SMSOptions) -> None:
        super().__init__(support)
        self.options = options
        self.modem: Modem | None = None
        self.line = LineState()
        self._ready = False  # the modem is initialised (echo off, PIN given, ...)
        self._live = True  # until logoff: the support object may be used
        self._taken: set[str] = set()  # inbound keys handed out, not yet committed
        self._in_hand: set[str] = set()  # outbound refs between submit and end_message
        self._early: list[StatusReport] = []  # reports that came before their +CMGS
        self._awaiting: Awaiting = dict(support.profile_section().get(_AWAITING, {}) or {})
        self._save_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._concat_ref = random.randrange(256)
        self._last_check = support.now()
        self.sent = 0
        self.received = 0

    def __repr__(self) -> str:
        return f"<SMSSession {self.options.port}>"

    # -- the modem --------------------------------------------------------------------------
    async def _open(self) -> Modem:
        """The initialised modem: the port opened and the init sequence run if needed.
        Raises ModemError (or OSError from the port).  One caller at a time: the
        others wait for its init instead of running theirs interleaved."""
        async with self._open_lock:
            return await self._open_locked()

    async def _open_locked(self) -> Modem:
        if self.modem is not None and self.modem.closed:
            await self.modem.close()
            self.modem = None
            self._ready = False
        if self.modem is None:
            self.modem = await open_modem(self.options.port, self.options.baudrate, self._on_urc)
        if not self._ready:
            await self._init(self.modem)
        return self.modem

    async def _init(self, modem: Modem) -> None:
        t = self.options.timeout
        await modem.cancel_input()  # a PDU prompt left from before a reset or a timeout
        for attempt in range(3):  # the first lines after a reset may be lost
            try:
                await modem.command("AT", timeout=min(t, 2.0) if attempt < 2 else t)
                break
            except CommandError:
                break  # it answers: that is all this step wants
            except ModemError:
                if attempt == 2:
                    raise
        for command in ("ATE0", "AT+CMEE=1"):
            await modem.command(command, timeout=t)
        pin_state = " ".join(await modem.command("AT+CPIN?", timeout=t))
        if "SIM PIN" in pin_state:
            if not self.options.pin:
                raise Unconfigured(["pin"], detail=f"the SIM in {self.options.port} asks a PIN")
            try:
                await modem.command(f'AT+CPIN="{self.options.pin}"', timeout=t)
            except CommandError as exc:
                raise FailOneProvider(
                    f"the SIM in {self.options.port} refused the PIN (+CME ERROR: {exc.code}): "
                    "check the pin option before the SIM locks"
                ) from None
        elif "READY" not in pin_state:
            raise FailOneProvider(f"the SIM in {self.options.port} is not ready: {pin_state!r}")
        for command in ("AT+CMGF=0", "AT+CREG=1", "AT+CNMI=2,1,0,1,0"):
            await modem.command(command, timeout=t)
        self._ready = True
        await self._check_line(modem)
        if self.line.failure:
            self.line = self.line.with_modem("")
            if self._live:
                self.support.modify_status_row(clear_bits=StatusCode.FAILURE)

    async def _check_line(self, modem: Modem) -> None:
        """AT+CREG? and AT+CSQ into the status row."""
        t = self.options.timeout
        creg = await modem.command("AT+CREG?", timeout=t)
        csq = await modem.command("AT+CSQ", timeout=t)
        stat = _field(creg, "+CREG:", -1)
        rssi = _field(csq, "+CSQ:", 0)
        self._last_check = self.support.now()
        self._registration(stat if stat is not None else _SEARCHING, rssi)

    def _lost_modem(self, why: str) -> None:
        """The modem stopped answering: initialise it again before its next use."""
        self._ready = False
        self.line = self.line.with_modem(why)
        self.support.logger.warning("sms %s: %s", self.options.port, why)
        if self._live:
            self.support.modify_status_row(
                set_bits=StatusCode.FAILURE, status_string=self.line.text()
            )

    def _registration(self, stat: int, rssi: int | None = None) -> None:
        """A registration state (+CREG) seen; the line coming back starts a flush."""
        was = self.line
        self.line = self.line.with_registration(stat, rssi)
        if not self._live:
            return
        if registered(stat):
            came_back = was.stat is not None and not registered(was.stat)
            self.support.modify_status_row(
                set_bits=StatusCode.AVAILABLE
                | (StatusCode.OUTBOUND_FLUSH if came_back and self.outbound else StatusCode.NONE),
                clear_bits=StatusCode.OFFLINE,
                status_string=self.line.text(),
            )
            if came_back:
                self.support.logger.info(
                    "sms %s: the network is back: flushing deferred SMS", self.options.port
                )
        else:
            self.support.modify_status_row(
                set_bits=StatusCode.OFFLINE,
                clear_bits=StatusCode.AVAILABLE,
                status_string=self.line.text(),
            )

    def _on_urc(self, urc: Urc) -> None:
        """An unsolicited code (called in the modem's reader task)."""
        if not self._live:
            return
        if urc.kind == "CMTI" and self.inbound:
            self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
        elif urc.kind == "CREG" and urc.value.isdigit():
            self._registration(int(urc.value))
        elif urc.kind == "CDS":
            task = asyncio.create_task(self._status_report(urc.value))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- sending ----------------------------------------------------------------------------
    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        self._in_hand.add(message.ref)
        mail = await message.email()
        text, cut = mail_to_text(mail, self.options.text, self.options.max_parts)
        results: list[RecipientResult] = []
        try:
            async for rcpt in message.iter_recipients():
                if f"{message.ref}/{rcpt.index}" in self._awaiting:
                    continue  # sent before: its status report decides (end_message)
                result = await self._send(message.ref, rcpt, text, cut)
                if result is not None:
                    results.append(result)
                await self.support.spooler_yield()  # between messages, the others run
        except MessageCancelled:
            if results:
                await self.support.status_recips(message, results)
            raise
        if results:
            await self.support.status_recips(message, results)

    async def _send(
        self, ref: str, rcpt: OutboundRecipient, text: str, cut: bool
    ) -> RecipientResult | None:
        """Send ``text`` to one recipient; its result, or None if it now waits for its
        status report."""
        number = rcpt.value
        try:
            encode_address(number)
        except ValueError as exc:
            return RecipientResult.failed(rcpt, str(exc), status="5.1.3")
        if self.line.stat is not None and not registered(self.line.stat):
            return RecipientResult.deferred(rcpt, f"sms: {self.line.text()}", status="4.4.1")
        try:
            modem = await self._open()
        except (ModemError, OSError) as exc:
            self._lost_modem(f"modem not answering: {exc}")
            return RecipientResult.deferred(rcpt, f"sms: {self.line.text()}", status="4.4.2")
        self._concat_ref = (self._concat_ref + 1) % 256
        pdus = submit_pdus(
            number,
            text,
            ref=self._concat_ref,
            status_report=self.options.delivery_reports,
            validity=validity_code(self.options.validity),
        )
        mrs: list[int] = []
        for pdu in pdus:
            try:
                mrs.append(await self._exchange(modem, pdu.length, pdu.pdu))
            except CommandError as exc:
                return self._refused(rcpt, exc)
            except ModemError as exc:
                self._lost_modem(f"modem not answering: {exc}")
                return RecipientResult.deferred(rcpt, f"sms: {self.line.text()}", status="4.4.2")
        self.sent += 1
        parts = f"{len(pdus)} part{'s' if len(pdus) > 1 else ''}" + (", cut" if cut else "")
        if self.options.delivery_reports:
            await self._expect(f"{ref}/{rcpt.index}", number, mrs)
            return None
        refs = ", ".join(map(str, mrs))
        return RecipientResult.delivered(
            rcpt, f"sms: accepted by the SMS centre ({parts}; message reference {refs})"
        )

    async def _exchange(self, modem: Modem, length: int, pdu: str) -> int:
        """One AT+CMGS exchange, in a critical section: the modem talks to the network
        and does not wait for us (the contract's NOTIFY_CRITSEC ... NOTIFY_NONCRIT)."""
        try:
            async with self.support.critical_section():
                return await modem.send_pdu(length, pdu, timeout=self.options.send_timeout)
        except asyncio.CancelledError:
            self._ready = False  # taken away in the middle: the modem state is unknown
            raise

    def _refused(self, rcpt: OutboundRecipient, exc: CommandError) -> RecipientResult:
        if exc.kind != "CMS" or exc.code is None:
            return RecipientResult.deferred(rcpt, f"sms: {exc}", status="4.3.0")
        cms = classify_cms(exc.code)
        if exc.code == 331:  # no network service: the line is down until +CREG says
            self._registration(_SEARCHING)
        if cms.temporary:
            return RecipientResult.deferred(rcpt, f"sms: {cms.text}", status=cms.status)
        return RecipientResult.failed(rcpt, f"sms: {cms.text}", status=cms.status)

    async def end_message(self, message: OutboundMessage) -> EndFlags:
        self._in_hand.discard(message.ref)
        if not self.options.delivery_reports:
            return EndFlags.SENT
        results, waiting = self._settled(message.ref)
        known = {rcpt.index: rcpt for rcpt in message.recipients}
        results = [r for r in results if r.index in known]
        if results:
            await self.support.status_recips(message, results)
            await self._forget([f"{message.ref}/{r.index}" for r in results])
        return EndFlags.DONT_RESEND if waiting else EndFlags.SENT

    def _settled(self, ref: str) -> tuple[list[RecipientResult], bool]:
        """Results for the recipients of ``ref`` whose reports are in (or overdue), and
        whether any still waits."""
        now = self.support.now()
        results: list[RecipientResult] = []
        waiting = False
        for key, entry in self._awaiting.items():
            if key.rpartition("/")[0] != ref:
                continue
            index = int(key.rpartition("/")[2])
            outcome, why = verdict(entry, now, self.options.report_timeout)
            if outcome == "failed":
                results.append(RecipientResult.failed(index, f"sms: {why}", status="5.4.0"))
            elif outcome in ("delivered", "timeout"):
                results.append(RecipientResult.delivered(index, f"sms: {why}"))
            else:
                waiting = True
        return results, waiting

    async def _expect(self, key: str, number: str, mrs: list[int]) -> None:
        self._awaiting = expect(self._awaiting, key, number, mrs, self.support.now())
        early, self._early = self._early, []
        for report in early:
            self._awaiting, found = apply_report(self._awaiting, report)
            if found is None:
                self._early.append(report)
        await self._save()

    async def _forget(self, keys: list[str]) -> None:
        self._awaiting = {k: v for k, v in self._awaiting.items() if k not in keys}
        await self._save()

    async def _save(self) -> None:
        async with self._save_lock:
            await self.support.profile_section().update({_AWAITING: dict(self._awaiting)})

    async def _status_report(self, pdu: str) -> None:
        try:
            report = decode_status_report(pdu)
        except PDUError as exc:
            self.support.logger.warning("sms %s: bad status report: %s", self.options.port, exc)
            return
        self._awaiting, key = apply_report(self._awaiting, report)
        if key is None:
            self._early = [*self._early[-63:], report]
            return
        await self._save()
        self._release(key.rpartition("/")[0])

    def _release(self, ref: str) -> None:
        """A parked message whose reports are all in: back to the queue (SENTDEFERRED)."""
        if ref in self._in_hand or not self._live:
            return
        if not self._settled(ref)[1]:
            self.support.spooler_notify(SpoolerNotifyFlags.SENTDEFERRED, ref)

    # -- receiving ----------------------------------------------------------------------------
    async def _listing(self) -> list[Any]:
        modem = await self._open()
        listed = parse_listing(await modem.command("AT+CMGL=4", timeout=self.options.timeout))
        whole, _bad = whole_messages(listed)
        received = set(self.support.profile_section().get(_RECEIVED, []) or [])
        for sms in [w for w in whole if w.key in received]:
            await self._delete(modem, sms.indices)  # in the inbox already (a crash came
            # between the commit and AT+CMGD): delete it, never deliver it twice
        return [w for w in whole if w.key not in received]

    async def _delete(self, modem: Modem, indices: tuple[int, ...]) -> None:
        for index in indices:
            try:
                await modem.command(f"AT+CMGD={index}", timeout=self.options.timeout)
            except CommandError as exc:
                if exc.code != 321:  # 321: invalid index, already gone
                    raise

    async def poll(self) -> int:
        try:
            return sum(1 for w in await self._listing() if w.key not in self._taken)
        except (ModemError, OSError) as exc:
            self._lost_modem(f"modem not answering: {exc}")
            raise

    async def start_message(self, message: InboundWriter) -> None:
        try:
            waiting = [w for w in await self._listing() if w.key not in self._taken]
        except (ModemError, OSError) as exc:
            self._lost_modem(f"modem not answering: {exc}")
            raise
        if not waiting:
            return
        sms = waiting[0]
        self._taken.add(sms.key)
        message.after_rollback(lambda: self._taken.discard(sms.key))
        message_id = f"<sms.{sms.key}@{self.support.hostname}>"
        await message.write(sms_to_mail(sms.sender, sms.when, sms.text, message_id))
        message.set_envelope(sender=f"SMS:{sms.sender}")
        message.set_remote_id(",".join(map(str, sms.indices)))
        on_sim = {w.key for w in waiting}
        kept = [k for k in self.support.profile_section().get(_RECEIVED, []) or [] if k in on_sim]
        message.set_state(_RECEIVED, [*kept, sms.key])

        async def committed() -> None:  # only once the message is durably in the inbox
            self.received += 1
            self._taken.discard(sms.key)
            modem = await self._open()
            await self._delete(modem, sms.indices)

        message.after_commit(committed)

    # -- the rest of the contract ----------------------------------------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        abort = TransportNotifyFlags.CANCEL_MESSAGE | TransportNotifyFlags.ABORT_DEFERRED
        if flags & abort == abort and ref is not None:
            await self._forget([k for k in self._awaiting if k.rpartition("/")[0] == ref])

    async def idle(self) -> None:
        now = self.support.now()
        if now - self._last_check >= self.options.check_interval or not self._ready:
            self._last_check = now
            try:
                await self._check_line(await self._open())
            except (ModemError, OSError) as exc:
                self._lost_modem(f"modem not answering: {exc}")
        for ref in {k.rpartition("/")[0] for k in self._awaiting}:
            self._release(ref)

    async def flush_queues(self, flags: FlushFlags) -> None:
        if flags & FlushFlags.UPLOAD:
            for ref in {k.rpartition("/")[0] for k in self._awaiting}:
                self._release(ref)

    async def validate_state(self, flags: ValidateFlags) -> None:
        await self._check_line(await self._open())

    def status_object(self) -> Mapping[str, Any]:
        return {
            "port": self.options.port,
            "registration": self.line.stat,
            "signal": self.line.rssi,
            "line": self.line.text(),
            "sent": self.sent,
            "received": self.received,
            "awaiting_reports": len(self._awaiting),
        }

    async def logoff(self, flags: LogoffFlags) -> None:
        self._live = False
        for task in list(self._tasks):
            task.cancel()
        if self.modem is not None:
            await self.modem.close()
            self.modem = None


def _field(lines: list[str], prefix: str, position: int) -> int | None:
    for line in lines:
        if line.startswith(prefix):
            fields = line[len(prefix) :].split(",")
            value = fields[position].strip()
            return int(value) if value.isdigit() else None
    return None


class SMSProvider:
    """The SMS transport provider (entry point ``sms``)."""

    display_name: ClassVar[str] = "SMS (GSM modem)"

    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        """Read ``config`` as :meth:`logon` does, without opening the port."""
        read_options(SMSOptions, config, kind="sms")

    @staticmethod
    def process_limits(config: Mapping[str, Any]) -> dict[str, bool]:
        """One process only: the modem on its serial port is this transport's (a
        daemon with delivery workers delivers for it itself: ``spoolbox.daemon.shares``)."""
        return {"one_process": True}

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> SMSSession:
        options = read_options(SMSOptions, config, kind="sms")
        try:  # imported in a worker: pyserial's modules take tens of ms to load
            await support.run_blocking(importlib.import_module, "serial_asyncio_fast")
        except ImportError:
            raise FailOneProvider(
                "the sms transport needs pyserial-asyncio-fast, which is not installed: "
                "pip install 'spoolbox[sms]'"
            ) from None
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=f"opening {options.port}"
        )
        session = SMSSession(support, options)
        try:
            await session._open()
        except (ModemError, OSError) as exc:
            await session.logoff(LogoffFlags.NORMAL)
            why = f"sms: the modem on {options.port} does not answer: {exc}"
            raise FailOneProvider(why) from exc
        except BaseException:
            await session.logoff(LogoffFlags.NORMAL)
            raise
        return session

    async def shutdown(self) -> None:
        return None
