"""POP3 through the standard library's blocking :mod:`poplib`: the steps the session
runs in worker threads (``support.run_blocking``), and pure readers of the UIDL and
LIST answers.

Every step is bounded by the socket timeout (the ``timeout`` option).  A refused
login is :class:`_LoginRefused`; on any failure while opening, the connection is
closed.
"""

from __future__ import annotations

import contextlib
import poplib
import ssl

from .._mailbox import MailboxSettings


class _LoginRefused(Exception):
    """The server refused USER or PASS; the text is its answer."""


# -- blocking helpers (worker threads) -------------------------------------------------------
def _open(s: MailboxSettings, ctx: ssl.SSLContext | None) -> poplib.POP3:
    conn: poplib.POP3
    if s.tls == "implicit":
        conn = poplib.POP3_SSL(s.host, s.port, timeout=s.timeout, context=ctx)
    else:
        conn = poplib.POP3(s.host, s.port, timeout=s.timeout)
    try:
        if s.tls == "starttls":
            conn.stls(ctx)
        try:
            conn.user(s.username)
            conn.pass_(s.password)
        except poplib.error_proto as exc:
            why = exc.args[0] if exc.args else b""
            text = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
            raise _LoginRefused(text) from None
    except BaseException:
        _close(conn)
        raise
    return conn


def _close(conn: poplib.POP3) -> None:
    """Drop the connection without QUIT (nothing marked for deletion is deleted)."""
    with contextlib.suppress(OSError):
        conn.close()


def _quit(conn: poplib.POP3) -> None:
    try:
        conn.quit()
    finally:
        _close(conn)


def _decode(b: bytes) -> str:
    return b.decode("ascii", "replace")


def _uidl(conn: poplib.POP3) -> list[tuple[int, str]]:
    """(message number, UIDL) in maildrop order."""
    _resp, lines, _octets = conn.uidl()
    return _uidl_result(lines)


def _uidl_result(lines: list[bytes]) -> list[tuple[int, str]]:
    """The lines of a UIDL answer as (message number, UIDL); malformed lines are skipped."""
    out: list[tuple[int, str]] = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            out.append((int(parts[0]), _decode(parts[1])))
    return out


def _sizes(conn: poplib.POP3) -> dict[int, int]:
    """Message number -> size in octets (LIST)."""
    _resp, lines, _octets = conn.list()
    return _list_result(lines)


def _list_result(lines: list[bytes]) -> dict[int, int]:
    """The lines of a LIST answer as message number -> size; malformed lines are skipped."""
    out: dict[int, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def _retr(conn: poplib.POP3, n: int) -> bytes:
    _resp, lines, _octets = conn.retr(n)  # dot-unstuffed, without line ends
    return b"".join(line + b"\r\n" for line in lines)


def _dele(conn: poplib.POP3, numbers: list[int]) -> None:
    for n in numbers:
        conn.dele(n)
