"""A simulated GSM modem on a pseudo-terminal: the SMS transport's test fixture and
the demo's "phone line".

``ModemSimulator()`` opens a pty (``os.openpty``) and answers on its master side,
in a thread of its own, what a modem answers on a serial line; the transport opens
``sim.port`` (the slave's path) like any serial device.  The dialect is the one of
3GPP TS 27.007 / 27.005 as real modems speak it and as gammu's AT engine reads it
(``libgammu/protocol/at/at.c``: the final result codes, the unsolicited result
codes that may come inside a command's answer, the ``"> "`` prompt):

* command lines end in CR; echo is on until ``ATE0``; answers are ``\\r\\n``-framed;
* ``AT``, ``ATZ``, ``ATE0``/``ATE1``, ``AT+CMEE=<n>``, ``AT+CPIN?``, ``AT+CPIN=<pin>``,
  ``AT+CREG=<n>``, ``AT+CREG?``, ``AT+CSQ``, ``AT+CMGF=0``, ``AT+CNMI=...``,
  ``AT+CMGS=<length>`` (prompt ``"> "``, the PDU, Ctrl-Z to send or ESC to cancel;
  answer ``+CMGS: <mr>``), ``AT+CMGL=<stat>``, ``AT+CMGR=<index>``,
  ``AT+CMGD=<index>``; anything else is ``ERROR``;
* unsolicited: ``+CMTI: "SM",<index>`` for a message stored on the SIM,
  ``+CDS: <length>`` and the PDU for a status report (with ``AT+CNMI=..,..,..,1``),
  ``+CREG: <stat>`` for a registration change (with ``AT+CREG=1``).

Fault knobs (attributes, set from any thread):

* ``refuse[number] = code``: AT+CMGS to that number answers ``+CMS ERROR: code``;
* ``report_status[number] = st``: the status report for that number carries TP-ST
  ``st`` (default 0, delivered);
* ``urc_inside = True``: the next command's answer has ``+CMTI`` of a message stored
  just then, in the middle of the answer (between its lines and the final code);
* ``mute = True``: the modem reads but answers nothing (a hung modem, a timeout);
* ``reset_on_send = n``: the next n AT+CMGS PDUs are dropped and the modem restarts
  (echo on, settings lost, PIN asked again) without answering;
* ``delay_reports = True``: status reports wait until :meth:`release_reports` (the
  network takes its time);
* ``fail_delete = n``: the next n AT+CMGD answer ``+CMS ERROR: 320`` (memory failure);
* ``hold_send`` / ``hold_delete`` / ``hold_list``: :class:`threading.Event` s that,
  when cleared, hold that command's answer until set (the kill tests SIGKILL the
  transport while the modem holds one);
* :meth:`lose_registration` / :meth:`regain_registration`: the network goes away
  (AT+CMGS answers ``+CMS ERROR: 331``, no network service) and comes back.

What it did is kept: ``sent`` (every :class:`~.pdu.Submit` the modem accepted, with
its message reference), ``sim`` (stored messages by index), ``commands`` (every
command line received).
"""

from __future__ import annotations

import os
import select
import threading
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .pdu import Concat, Submit, decode_submit, encode_deliver, encode_status_report, split_text

__all__ = ["ModemSimulator", "Stored"]

_CTRL_Z = 0x1A
_ESC = 0x1B


@dataclass(frozen=True, slots=True)
class Stored:
    """A message in the simulated SIM memory: TS 27.005 ``<stat>`` (0 received unread,
    1 received read) and its PDU."""

    stat: int
    pdu: str


class ModemSimulator:
    """A GSM modem on a pty; see the module docstring.  Use as a context manager or
    call :meth:`close`."""

    def __init__(self, *, pin: str | None = None, csq: int = 21) -> None:
        self.pin = pin
        self.csq = csq
        self.refuse: dict[str, int] = {}
        self.report_status: dict[str, int] = {}
        self.urc_inside = False
        self.mute = False
        self.reset_on_send = 0
        self.fail_delete = 0
        self.delay_reports = False
        self._held_reports: list[str] = []
        self.hold_send = threading.Event()
        self.hold_delete = threading.Event()
        self.hold_list = threading.Event()
        for event in (self.hold_send, self.hold_delete, self.hold_list):
            event.set()
        self.holding = threading.Event()  # set while a command's answer is held
        self.sent: list[Submit] = []
        self.sim: dict[int, Stored] = {}
        self.commands: list[str] = []
        self.resets = 0
        self._lock = threading.RLock()
        self._registered = 1  # +CREG <stat>: 1 home network
        self._mr = 0
        self._concat_ref = 0
        self._defaults()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="modem-simulator", daemon=True)
        self._thread.start()

    def _defaults(self) -> None:
        self.echo = True
        self.cmee = 0
        self.creg_urc = 0
        self.cnmi_ds = 0
        self.cnmi_mt = 0
        self.pin_ok = self.pin is None
        self._pending: int | None = None  # the length of AT+CMGS=<length>, until Ctrl-Z

    # -- the test's side --------------------------------------------------------------------
    def __enter__(self) -> ModemSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread and close the pty."""
        if self._closed:
            return
        self._closed = True
        for event in (self.hold_send, self.hold_delete, self.hold_list):
            event.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=10)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            os.close(fd)

    def receive(self, sender: str, text: str, *, when: datetime | None = None) -> list[int]:
        """A message from ``sender`` arrives: stored on the SIM (in parts if long),
        announced with ``+CMTI`` per part if ``AT+CNMI`` asked for it.  Returns the
        indices."""
        when = when or datetime.now(UTC).replace(microsecond=0)
        _coding, parts = split_text(text)
        with self._lock:
            self._concat_ref = (self._concat_ref + 1) % 256
            indices = []
            for seq, part in enumerate(parts, 1):
                concat = Concat(self._concat_ref, len(parts), seq) if len(parts) > 1 else None
                index = self._store(encode_deliver(sender, part, when, concat=concat))
                indices.append(index)
                if self.cnmi_mt == 1:
                    self._write(f'\r\n+CMTI: "SM",{index}\r\n')
        return indices

    def lose_registration(self) -> None:
        """The network goes away (``+CREG: 2``, searching)."""
        self._set_registration(2)

    def regain_registration(self) -> None:
        """The network comes back (``+CREG: 1``, home network)."""
        self._set_registration(1)

    def texts(self) -> list[tuple[str, str]]:
        """(number, text) of every message sent, parts joined in order."""
        out: list[tuple[str, str]] = []
        groups: dict[tuple[str, int], list[Submit]] = {}
        with self._lock:
            sent = list(self.sent)
        for submit in sent:
            if submit.concat is None:
                out.append((submit.number, submit.text))
                continue
            key = (submit.number, submit.concat.ref)
            group = groups.setdefault(key, [])
            group.append(submit)
            if len(group) == submit.concat.total:
                group.sort(key=lambda s: s.concat.seq if s.concat else 0)
                out.append((submit.number, "".join(s.text for s in group)))
                del groups[key]
        return out

    # -- the modem's side -------------------------------------------------------------------
    def _set_registration(self, stat: int) -> None:
        with self._lock:
            self._registered = stat
            if self.creg_urc:
                self._write(f"\r\n+CREG: {stat}\r\n")

    def _store(self, pdu: str) -> int:
        index = 1
        while index in self.sim:
            index += 1
        self.sim[index] = Stored(0, pdu)
        return index

    def _write(self, text: str) -> None:
        if not self.mute:
            os.write(self._master, text.encode("ascii"))

    def _run(self) -> None:
        line = bytearray()
        while not self._closed:
            ready, _, _ = select.select([self._master, self._wake_r], [], [])
            if self._closed or self._wake_r in ready:
                return
            try:
                data = os.read(self._master, 4096)
            except OSError:
                return
            for byte in data:
                self._byte(byte, line)

    def _byte(self, byte: int, line: bytearray) -> None:
        with self._lock:
            if self._pending is not None:
                self._pdu_byte(byte, line)
                return
            if self.echo:
                self._write(chr(byte) if byte < 0x80 else "?")
            if byte in (0x0D,):
                text = line.decode("ascii", "replace").strip()
                line.clear()
                if text:
                    self.commands.append(text)
                    self._command(text)
            elif byte >= 0x20:  # control characters (a stray ESC, LF) are not part of a line
                line.append(byte)

    def _pdu_byte(self, byte: int, line: bytearray) -> None:
        assert self._pending is not None
        if self.echo and byte not in (_CTRL_Z, _ESC):
            self._write(chr(byte))
        if byte == _ESC:  # cancel: no message sent
            self._pending = None
            line.clear()
            self._final("OK")
        elif byte == _CTRL_Z:
            length = self._pending
            pdu = line.decode("ascii", "replace").strip()
            self._pending = None
            line.clear()
            self._submit(length, pdu)
        elif byte not in (0x0D, 0x0A):
            line.append(byte)

    def _final(self, code: str, *lines: str) -> None:
        framed = [f"\r\n{text}\r\n" for text in lines]
        if self.urc_inside:  # an unsolicited code between the answer's lines and its code
            self.urc_inside = False
            index = self._store(encode_deliver("+15550009999", "inside", datetime.now(UTC)))
            framed.insert(2 if len(framed) >= 4 else len(framed), f'\r\n+CMTI: "SM",{index}\r\n')
        self._write("".join(framed) + f"\r\n{code}\r\n")

    def _error(self, kind: str, code: int) -> None:
        if self.cmee:
            self._final(f"+{kind} ERROR: {code}")
        else:
            self._final("ERROR")

    def _reset(self) -> None:
        self.resets += 1
        self._defaults()

    def _command(self, text: str) -> None:
        upper = text.upper()
        if not upper.startswith("AT"):
            return
        cmd = upper[2:]
        if cmd in ("", "Z"):
            if cmd == "Z":
                pin_ok = self.pin_ok
                self._defaults()
                self.pin_ok = pin_ok
            self._final("OK")
        elif cmd in ("E0", "E1"):
            self.echo = cmd == "E1"
            self._final("OK")
        elif cmd.startswith("+CMEE="):
            self.cmee = int(cmd[6:] or 0)
            self._final("OK")
        elif cmd == "+CPIN?":
            self._final("OK", "+CPIN: READY" if self.pin_ok else "+CPIN: SIM PIN")
        elif cmd.startswith("+CPIN="):
            given = text[8:].strip().strip('"')
            if self.pin is None or given == self.pin:
                self.pin_ok = True
                self._final("OK")
            else:
                self._error("CME", 16)  # incorrect password
        elif not self.pin_ok:
            self._error("CME", 11)  # SIM PIN required
        elif cmd.startswith("+CREG="):
            self.creg_urc = int(cmd[6:] or 0)
            self._final("OK")
        elif cmd == "+CREG?":
            self._final("OK", f"+CREG: {self.creg_urc},{self._registered}")
        elif cmd == "+CSQ":
            rssi = self.csq if self._registered in (1, 5) else 99
            self._final("OK", f"+CSQ: {rssi},99")
        elif cmd.startswith("+CMGF="):
            if cmd[6:] == "0":
                self._final("OK")
            else:
                self._error("CMS", 303)  # operation not supported: PDU mode only
        elif cmd.startswith("+CNMI="):
            fields = (cmd[6:].split(",") + ["0"] * 5)[:5]
            self.cnmi_mt = int(fields[1] or 0)
            self.cnmi_ds = int(fields[3] or 0)
            self._final("OK")
        elif cmd.startswith("+CMGS="):
            self._pending = int(cmd[6:])
            self._write("\r\n> ")
        elif cmd.startswith("+CMGL"):
            self._list(cmd)
        elif cmd.startswith("+CMGR="):
            stored = self.sim.get(int(cmd[6:]))
            if stored is None:
                self._error("CMS", 321)  # invalid memory index
            else:
                self._final("OK", f"+CMGR: {stored.stat},,{_tpdu_len(stored.pdu)}", stored.pdu)
                self.sim[int(cmd[6:])] = Stored(1, stored.pdu)
        elif cmd.startswith("+CMGD="):
            self._hold(self.hold_delete)
            index = int(cmd[6:].split(",")[0])
            if self.fail_delete > 0:
                self.fail_delete -= 1
                self._error("CMS", 320)  # memory failure
            elif self.sim.pop(index, None) is None:
                self._error("CMS", 321)
            else:
                self._final("OK")
        else:
            self._final("ERROR")

    def _hold(self, event: threading.Event) -> None:
        """Wait (lock released) until ``event`` is set: the modem is slow to answer."""
        if event.is_set():
            return
        self.holding.set()
        self._lock.release()
        try:
            event.wait()
        finally:
            self._lock.acquire()
            self.holding.clear()

    def _list(self, cmd: str) -> None:
        self._hold(self.hold_list)
        want = cmd.partition("=")[2] or "0"
        lines = []
        for index, stored in sorted(self.sim.items()):
            if want == "4" or str(stored.stat) == want:
                lines += [f"+CMGL: {index},{stored.stat},,{_tpdu_len(stored.pdu)}", stored.pdu]
        for index in list(self.sim):
            if want in ("0", "4") and self.sim[index].stat == 0:
                self.sim[index] = Stored(1, self.sim[index].pdu)
        self._final("OK", *lines)

    def _submit(self, length: int, pdu: str) -> None:
        self._hold(self.hold_send)
        if self.reset_on_send > 0:
            self.reset_on_send -= 1
            self._reset()
            return  # the PDU is lost, nothing is answered
        try:
            submit = decode_submit(pdu)
        except ValueError:
            self._error("CMS", 304)  # invalid PDU mode parameter
            return
        if submit.length != length:
            self._error("CMS", 304)
            return
        if self._registered not in (1, 5):
            self._error("CMS", 331)  # no network service
            return
        code = self.refuse.get(submit.number)
        if code is not None:
            self._error("CMS", code)
            return
        self._mr = (self._mr + 1) % 256
        mr = self._mr
        self.sent.append(
            Submit(
                submit.pdu,
                submit.length,
                submit.number,
                submit.text,
                submit.coding,
                submit.concat,
                submit.status_report,
                mr,
            )
        )
        self._final("OK", f"+CMGS: {mr}")
        if submit.status_report and self.cnmi_ds == 1:
            status = self.report_status.get(submit.number, 0)
            report = encode_status_report(mr, submit.number, status, datetime.now(UTC))
            self._held_reports.append(report)
            if not self.delay_reports:
                self.release_reports()

    def release_reports(self) -> int:
        """Send the status reports held back (``delay_reports``); how many."""
        with self._lock:
            reports, self._held_reports = self._held_reports, []
            for report in reports:
                self._write(f"\r\n+CDS: {_tpdu_len(report)}\r\n{report}\r\n")
        return len(reports)

    def stored(self) -> Iterator[tuple[int, Stored]]:
        """The SIM's messages, by index."""
        with self._lock:
            yield from sorted(self.sim.items())


def _tpdu_len(pdu: str) -> int:
    smsc = int(pdu[:2], 16)
    return len(pdu) // 2 - 1 - smsc
