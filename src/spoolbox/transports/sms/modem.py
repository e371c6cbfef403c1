"""The AT command channel to a GSM modem over asyncio streams: one command at a
time, its answer collected up to its final result code, unsolicited result codes
taken out wherever they come (even in the middle of an answer) and handed to a
callback.

Framing follows V.25ter / 3GPP TS 27.007 as gammu's AT engine reads it
(``libgammu/protocol/at/at.c``): lines end in CR LF; the final result codes are
``OK``, ``ERROR``, ``+CME ERROR: <n>`` and ``+CMS ERROR: <n>``; ``+CMTI:`` is a one-line
unsolicited code, ``+CDS:`` a two-line one (its second line is the PDU), ``+CREG:``
one line unless it answers ``AT+CREG?``; AT+CMGS waits for the ``"> "`` prompt, which
has no line end.  Echoed command lines (``AT...``) and an echoed PDU are skipped, so
a modem that came back from a reset with its echo on is still understood.

The port is opened with pyserial-asyncio-fast (:func:`open_modem`); the class itself
takes any asyncio reader/writer pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CommandError", "Modem", "ModemError", "ModemTimeout", "Urc", "open_modem"]

_FINAL_RE = re.compile(r"^(OK|ERROR|NO CARRIER|\+CM([ES]) ERROR:\s*(\d+).*)$")
_CTRL_Z = b"\x1a"
_ESC = b"\x1b"
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")
_JUNK = "".join(map(chr, range(0x21)))  # white space and control characters (echoed ESC)


class ModemError(Exception):
    """The modem could not do what was asked."""


class ModemTimeout(ModemError):
    """No final answer within the time allowed (a hung or restarting modem)."""


class CommandError(ModemError):
    """A final ``ERROR``, ``+CME ERROR: n`` or ``+CMS ERROR: n``."""

    def __init__(self, command: str, kind: Literal["CME", "CMS"] | None, code: int | None):
        self.command = command
        self.kind = kind
        self.code = code
        what = f"+{kind} ERROR: {code}" if kind else "ERROR"
        super().__init__(f"{command} answered {what}")


@dataclass(frozen=True, slots=True)
class Urc:
    """An unsolicited result code: ``CMTI`` (value: the SIM index), ``CDS`` (value: the
    status report PDU) or ``CREG`` (value: the registration state)."""

    kind: Literal["CMTI", "CDS", "CREG"]
    value: str


@dataclass(slots=True)
class _Pending:
    command: str
    expect: str | None  # the info prefix this command answers with
    lines: list[str]
    done: asyncio.Future[str]
    prompt: asyncio.Future[None] | None = None
    pdu: str = ""


class Modem:
    """The command channel; ``on_urc`` is called (in the reader task) with each
    unsolicited code."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_urc: Callable[[Urc], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_urc = on_urc
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._cds_next = False
        self._buffer = b""
        self.closed = False
        self.last_error = ""
        self._task = asyncio.create_task(self._read_loop(), name="sms-modem-reader")

    async def command(self, command: str, *, timeout: float) -> list[str]:
        """Send ``command`` and return its information lines; raise
        :class:`CommandError` on an error result, :class:`ModemTimeout` after
        ``timeout`` seconds without one."""
        async with self._lock:
            pending = self._start(command)
            self._writer.write(command.encode("ascii") + b"\r")
            return await self._finish(pending, timeout)

    async def send_pdu(self, length: int, pdu: str, *, timeout: float) -> int:
        """``AT+CMGS=<length>``, the prompt, the PDU and Ctrl-Z; the message reference
        of ``+CMGS: <mr>``."""
        async with self._lock:
            command = f"AT+CMGS={length}"
            pending = self._start(command, prompt=True)
            pending.pdu = pdu
            assert pending.prompt is not None
            self._writer.write(command.encode("ascii") + b"\r")
            waited: set[asyncio.Future[Any]] = {pending.prompt, pending.done}
            done, _ = await asyncio.wait(
                waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                self._pending = None
                raise ModemTimeout(f"{command}: no prompt within {timeout:g} s")
            if pending.done.done():  # an error instead of the prompt
                await self._finish(pending, timeout)
                raise ModemError(f"{command}: answered without a prompt")
            self._writer.write(pdu.encode("ascii") + _CTRL_Z)
            lines = await self._finish(pending, timeout)
        for line in lines:
            if line.startswith("+CMGS:"):
                return int(line[6:].split(",")[0])
        raise ModemError(f"{command}: OK without +CMGS: <mr>")

    async def cancel_input(self) -> None:
        """ESC: leaves a PDU prompt the modem may still wait in (after a timeout)."""
        self._writer.write(_ESC)
        await self._writer.drain()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # -- one exchange -----------------------------------------------------------------------
    def _start(self, command: str, *, prompt: bool = False) -> _Pending:
        if self.closed:
            raise ModemError(f"the modem channel is closed: {self.last_error or 'logged off'}")
        loop = asyncio.get_running_loop()
        expect = None
        match = re.match(r"^AT(\+[A-Z]+)[?=]?", command.upper())
        if match:
            expect = match.group(1) + ":"
        self._pending = _Pending(
            command, expect, [], loop.create_future(), loop.create_future() if prompt else None
        )
        return self._pending

    async def _finish(self, pending: _Pending, timeout: float) -> list[str]:
        try:
            final = await asyncio.wait_for(asyncio.shield(pending.done), timeout)
        except TimeoutError:
            raise ModemTimeout(f"{pending.command}: no answer within {timeout:g} s") from None
        finally:
            if self._pending is pending:
                self._pending = None
        match = _FINAL_RE.match(final)
        if final != "OK":
            kind = match.group(2) if match and match.group(2) else None
            code = int(match.group(3)) if match and match.group(3) else None
            raise CommandError(pending.command, _kind(kind), code)
        return pending.lines

    # -- the reader -------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(4096)
                if not data:
                    raise ModemError("the serial port closed")
                self._feed(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.closed = True
            pending, self._pending = self._pending, None
            if pending is not None and not pending.done.done():
                pending.done.set_exception(ModemError(f"{pending.command}: {self.last_error}"))

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            pending = self._pending
            if pending is not None and pending.prompt is not None and not pending.prompt.done():
                stripped = self._buffer.lstrip(b"\r\n")
                if stripped.startswith(b"> "):
                    self._buffer = stripped[2:]
                    pending.prompt.set_result(None)
                    continue
            cut = re.search(rb"\r\n|\r|\n", self._buffer)
            if cut is None:
                return
            line = self._buffer[: cut.start()].decode("ascii", "replace").strip(_JUNK)
            self._buffer = self._buffer[cut.end() :]
            if line:
                self._line(line)

    def _line(self, line: str) -> None:
        pending = self._pending
        if self._cds_next:
            self._cds_next = False
            if _HEX_RE.match(line):
                self._on_urc(Urc("CDS", line))
                return
        if line.upper().startswith("AT") or line.startswith("> "):
            return  # our own command echoed (the modem's echo is on)
        if pending is not None and pending.pdu and line == pending.pdu:
            return  # the PDU echoed
        if line.startswith("+CMTI:"):
            self._on_urc(Urc("CMTI", line.rsplit(",", 1)[-1].strip()))
            return
        if line.startswith("+CDS:"):
            self._cds_next = True
            return
        if line.startswith("+CREG:") and (pending is None or pending.expect != "+CREG:"):
            self._on_urc(Urc("CREG", line[6:].split(",")[-1].strip()))
            return
        if line in ("RING", "RDY") or pending is None or pending.done.done():
            return  # nothing asked, or nothing we use
        if _FINAL_RE.match(line):
            pending.done.set_result(line)
        else:
            pending.lines.append(line)


def _kind(kind: str | None) -> Literal["CME", "CMS"] | None:
    if kind == "E":
        return "CME"
    if kind == "S":
        return "CMS"
    return None


async def open_modem(port: str, baudrate: int, on_urc: Callable[[Urc], None]) -> Modem:
    """Open the serial device ``port`` (pyserial-asyncio-fast: the modem's unsolicited
    codes are read as they come, on the event loop, with no thread parked in a read)."""
    import serial_asyncio_fast

    reader, writer = await serial_asyncio_fast.open_serial_connection(url=port, baudrate=baudrate)
    # pyserial's open discards input already waiting (what the modem said to an
    # earlier owner of the port, a process that died): an old OK is never paired with
    # our first command (the kill tests restart on such a port).
    return Modem(reader, writer, on_urc)
