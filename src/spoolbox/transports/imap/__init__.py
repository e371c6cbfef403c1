"""The IMAP transport (inbound only): fetch new mail from one IMAP folder.

The session polls (``LogonCaps.SP_POLL``) and serves no address type (``()``): the
spooler dispatches nothing to it.  It keeps one connection (aioimaplib) for
``poll`` / ``start_message`` / removals, opened at logon (so a wrong password fails
the logon, and the status row says so) and opened again after a failure.  With
``idle`` (the default) and a server that announces IDLE, a second connection sits
in IDLE and raises ``spooler_notify(NEWMAIL)`` when the folder grows; otherwise new
mail is found by the spooler's polls.

Configuration (the transport's ``options``):

``host``, ``username``, ``password``
    Required (missing ones fail the logon with :class:`~spoolbox.contract.Unconfigured`).
``port``
    Default 993 with ``tls = "implicit"``, else 143.
``tls``
    ``"implicit"`` (default: TLS from the first byte), ``"starttls"`` (plain, then
    STARTTLS before the login; refused if the server does not offer it) or
    ``"none"``.
``verify``
    Default true: check the server certificate and name.  ``false`` must be given
    explicitly and is logged as a warning at every connection.
``ca_file``
    A PEM file of CA certificates to trust instead of the system ones.
``folder``
    The folder to fetch from, default ``INBOX``.
``after_fetch``
    ``"keep"`` (default), ``"delete"``, or ``"move:<folder>"``.
``idle``
    Default true: use IDLE when the server has it.
``timeout``
    Seconds for each network step (connect, login, each command; a FETCH may take
    longer as long as data keeps arriving), default 60.
``max_size``
    Bytes, default and at most 256 MiB (the spooler's limit for one inbound
    message).  A larger message (by ``RFC822.SIZE``, read before fetching) is left
    on the server, not fetched, and reported once per logon: an error in the log,
    ``last_error`` in the status row, ``skipped`` in the status object.  It never
    blocks the messages after it.  Its UID is kept in the profile section
    (``skipped_uids``) before anything after it is fetched, so ``after_fetch``
    never deletes or moves it; raising ``max_size`` later does not fetch it either.

An unknown key or a value of the wrong type fails the logon with a
:class:`ValueError` that names the key.

Exactly once, across crashes:

* The profile section holds ``{"uidvalidity": V, "last_uid": N}``: every message
  of the folder with a UID <= N (under UIDVALIDITY V) is in the inbox.
  ``start_message`` hands out the lowest UID > N not handed out yet, writes it, and
  sets ``last_uid`` (and ``uidvalidity``) through ``writer.set_state``: the
  watermark commits in the same transaction as the inbox message.  A crash leaves
  both or neither, so a message is never fetched twice and never skipped.
  ``remote_id`` is ``"V:UID"``.
* Messages are fetched ahead, up to 64 (and 8 MiB, by ``RFC822.SIZE``; a larger
  message comes alone) per ``UID FETCH <set> (UID BODY.PEEK[])`` (``PEEK``: the
  ``\\Seen`` flag is not touched), and handed out one per ``start_message``.  The
  session announces ``SP_INBOUND_BATCH``: the spooler may commit several messages
  in one transaction, so the session remembers the UIDs it handed out until their
  ``after_commit`` or ``after_rollback``.  A message whose commit failed goes back
  to the front of the queue (``after_rollback``), before anything fetched after it.
* Deleting or moving happens only after ``writer.after_commit``, i.e. once the
  message is durably in the inbox, for the committed UIDs of a group at once (when
  64 are collected, when nothing more is waiting, at the next fetch, poll or
  logoff).  After a crash between the commit and the removal, the
  message is still on the server with a UID <= N: the next logon and every poll
  remove such messages (``UID SEARCH UID 1:N``) without fetching them again.
  Without UIDPLUS a delete uses plain EXPUNGE, which also expunges other messages
  that some other client had flagged ``\\Deleted``; without MOVE a move is COPY,
  ``\\Deleted`` and EXPUNGE.
* A changed UIDVALIDITY (the folder was recreated, or the server rebuilt its
  index) makes every stored UID meaningless.  The session logs a warning, says so
  in its status row, and starts again from UID 0: **messages still in the folder
  are then fetched again**.  That is IMAP's contract (RFC 3501 section 2.3.1.1):
  no client can tell old messages from new ones after such a change.

Every network step runs under ``timeout``; a failure closes the connection and
raises :class:`~spoolbox.contract.NetworkError` (the spooler counts it, pauses the
session after repeated failures, and calls again later).  When ``start_message``
delivers a message and more are waiting, it raises NEWMAIL again so the spooler
comes back for the next without waiting for its next poll.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import aioimaplib  # type: ignore[import-untyped]  # no py.typed in 2.0

from spoolbox.contract import (
    BaseTransportSession,
    FailOneProvider,
    InboundWriter,
    LogoffFlags,
    LogonCaps,
    LogonFlags,
    NetworkError,
    Progress,
    SpoolerNotifyFlags,
    StatusCode,
    Support,
    TransportNotifyFlags,
)

from .._mailbox import MailboxSettings, fetch_status

__all__ = ["IMAPProvider", "IMAPSession"]

_CHUNK = 65536
_RETRY = 30.0  # NetworkError delay: the spooler's own back-off decides in practice
_IDLE_RENEW = 300.0  # re-issue IDLE this often (RFC 2177: at most 29 minutes)
_IDLE_BACKOFF_CAP = 300.0
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_LITERAL = re.compile(rb"BODY\[\] \{(\d+)\}$")
_UID = re.compile(rb"\bUID (\d+)")
_FETCH = re.compile(rb"^\d+ FETCH \(")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_GONE = re.compile(rb"BODY\[\] NIL\b")
#: Messages fetched per ``UID FETCH`` command, at most, and their bytes (a message
#: larger than this comes alone).
_FETCH_BATCH = 64
_FETCH_BYTES = 8 * 1024 * 1024
#: A ranged fetch may take its timeout plus its size at this rate (bytes per second).
_MIN_RATE = 64 * 1024
_RECV_SIZE = 16 * 1024  # bytes per socket read (see _Connection.open)
_EXISTS = re.compile(rb"^\d+ EXISTS$")


class _ProtocolError(Exception):
    """The server answered a command with NO or BAD (or something unparsable)."""


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lines(resp: Any) -> list[Any]:
    return list(getattr(resp, "lines", []) or [])


def _check(resp: Any, what: str) -> Any:
    if getattr(resp, "result", None) != "OK":
        text = b" ".join(x for x in _lines(resp) if isinstance(x, bytes)).decode(errors="replace")
        raise _ProtocolError(f"{what} failed: {getattr(resp, 'result', '?')} {text}".strip())
    return resp


def _uid_set(uids: Sequence[int]) -> str:
    """``1,3:5,9`` for [1, 3, 4, 5, 9]."""
    out: list[str] = []
    start = prev = None
    for u in sorted(set(uids)):
        if start is None:
            start = prev = u
        elif prev is not None and u == prev + 1:
            prev = u
        else:
            out.append(f"{start}" if start == prev else f"{start}:{prev}")
            start = prev = u
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}:{prev}")
    return ",".join(out)


# -- what the server's answers say (pure functions of aioimaplib's response lines) ------
def _number(digits: bytes, what: str) -> int:
    """A number of the server's (UIDs, UIDVALIDITY and sizes are 32-bit, RFC 3501 section
    9); one too long for ``int`` (4300 digits) is a protocol error, not a ValueError."""
    if len(digits) > 20:
        raise _ProtocolError(f"{what}: a number of {len(digits)} digits")
    return int(digits)


def _uidvalidity(lines: Sequence[Any]) -> int:
    """The UIDVALIDITY a SELECT reported (its last), or 0."""
    value = 0
    for line in lines:
        if isinstance(line, bytes) and (m := _UIDVALIDITY.search(line)):
            value = _number(m.group(1), "SELECT UIDVALIDITY")
    return value


def _search_result(lines: Sequence[Any], lo: int, hi: int | None) -> list[int]:
    """The UIDs of a ``UID SEARCH UID lo:hi`` answer, really in that range, ascending.
    Other untagged data ("3 EXISTS") may come along: all-digit lines are taken."""
    uids: list[int] = []
    for line in lines:
        if isinstance(line, bytes):
            words = line.split()
            if words[:1] == [b"SEARCH"]:
                words = words[1:]
            if words and all(w.isdigit() for w in words):
                uids += [_number(w, "UID SEARCH") for w in words]
    # "n:*" includes the highest UID even when it is below n (RFC 3501 6.4.8).
    return sorted(u for u in set(uids) if u >= lo and (hi is None or u <= hi))


def _sizes_result(lines: Sequence[Any], uids: Sequence[int]) -> dict[int, int]:
    """``RFC822.SIZE`` of each of ``uids`` a ``UID FETCH (UID RFC822.SIZE)`` answered."""
    wanted = set(uids)
    out: dict[int, int] = {}
    for line in lines:
        if not isinstance(line, bytes):
            raise _ProtocolError("UID FETCH RFC822.SIZE: an unexpected literal")
        if not _FETCH.match(line):
            continue  # untagged EXISTS, EXPUNGE, ...
        size = _SIZE.search(line)
        if size is None:
            continue  # an unsolicited FETCH (flags changed by another client)
        got = _UID.search(line)
        if got is None:
            raise _ProtocolError(f"UID FETCH RFC822.SIZE: no UID in {line!r}")
        uid = _number(got.group(1), "UID FETCH RFC822.SIZE")
        if uid in wanted:
            out[uid] = _number(size.group(1), "UID FETCH RFC822.SIZE")
    return out


def _fetch_result(lines: Sequence[Any], uids: Sequence[int], what: str) -> dict[int, bytes]:
    """The messages a ``UID FETCH (UID BODY.PEEK[])`` answered; those gone are absent.

    Strict: a ``BODY[]`` this cannot pair with its UID and its announced length, or a
    UID that was not asked for, is a :class:`_ProtocolError`."""
    wanted = set(uids)
    out: dict[int, bytes] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not isinstance(line, bytes):
            raise _ProtocolError(f"{what}: a literal without its FETCH line")
        m = _LITERAL.search(line)
        if m is None:
            if _FETCH.match(line) and _GONE.search(line):
                i += 1  # expunged by another client: Dovecot sends ``BODY[] NIL``
                continue
            if b"BODY[" in line.upper():
                raise _ProtocolError(f"{what}: cannot parse {line[:200]!r}")
            i += 1  # untagged EXISTS, EXPUNGE, an unsolicited FETCH of flags ...
            continue
        if not _FETCH.match(line):
            raise _ProtocolError(f"{what}: cannot parse {line[:200]!r}")
        data = lines[i + 1] if i + 1 < len(lines) else None
        if not isinstance(data, bytes | bytearray):
            raise _ProtocolError(f"{what}: the literal of {line[:200]!r} is missing")
        announced = _number(m.group(1), what)
        if len(data) != announced:
            raise _ProtocolError(f"{what}: {len(data)} bytes, {announced} announced")
        tail = lines[i + 2] if i + 2 < len(lines) else None
        if not isinstance(tail, bytes) or not tail.rstrip().endswith(b")"):
            raise _ProtocolError(f"{what}: the FETCH of {line[:200]!r} is not closed")
        got = _UID.search(line) or _UID.search(tail)
        if got is None:
            raise _ProtocolError(f"{what}: no UID with {line[:200]!r}")
        uid = _number(got.group(1), what)
        if uid not in wanted or uid in out:
            raise _ProtocolError(f"{what}: UID {uid} was not asked for (or came twice)")
        out[uid] = bytes(data)
        i += 3
    return out


class _Connection:
    """One logged-in IMAP connection with the folder selected."""

    def __init__(self, settings: MailboxSettings, support: Support) -> None:
        self.settings = settings
        self.support = support
        self.imap: aioimaplib.IMAP4 | None = None
        self.uidvalidity = 0
        self.capabilities: frozenset[str] = frozenset()

    async def open(self) -> None:
        s = self.settings
        ctx = s.ssl_context(self.support.logger)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(s.timeout):
            if s.tls == "implicit":
                imap: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
                    s.host, s.port, timeout=s.timeout, ssl_context=ctx
                )
            else:
                imap = aioimaplib.IMAP4(s.host, s.port, timeout=s.timeout)
            self.imap = imap
            await imap.wait_hello_from_server()
            proto = imap.protocol
            if isinstance(getattr(proto.transport, "max_size", None), int):
                # aioimaplib parses each chunk it receives by copying the rest of the
                # chunk after every line: quadratic in the chunk size.  asyncio reads
                # up to 256 KiB at a time; smaller reads make a ranged FETCH of many
                # small messages about a third faster (plain sockets only).
                proto.transport.max_size = _RECV_SIZE
            if s.tls == "starttls":
                assert ctx is not None
                if "STARTTLS" not in proto.capabilities:
                    raise FailOneProvider(
                        f"imap {s.where}: the server does not offer STARTTLS (tls = 'starttls')"
                    )
                cmd = aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop)
                _check(await proto.execute(cmd), "STARTTLS")
                proto.transport = await loop.start_tls(
                    proto.transport, proto, ctx, server_hostname=s.host
                )
                await proto.capability()
            resp = await imap.login(s.username, s.password)
        if resp.result != "OK":
            text = b" ".join(x for x in _lines(resp) if isinstance(x, bytes))
            raise FailOneProvider(
                f"imap login to {s.host}:{s.port} as {s.username!r} refused: "
                f"{text.decode(errors='replace')}"
            )
        async with asyncio.timeout(s.timeout):
            await proto.capability()  # the list after login is the one that counts
            self.capabilities = frozenset(c.upper() for c in proto.capabilities)
            resp = await imap.select(_quote(s.folder))
        if resp.result != "OK":
            raise FailOneProvider(f"imap {s.where}: cannot select folder {s.folder!r}")
        self.uidvalidity = _uidvalidity(_lines(resp))
        if not self.uidvalidity:
            raise _ProtocolError(f"imap {s.where}: SELECT gave no UIDVALIDITY")

    @property
    def alive(self) -> bool:
        imap = self.imap
        if imap is None:
            return False
        proto = imap.protocol
        transport = proto.transport
        return (
            transport is not None
            and not transport.is_closing()
            and proto.state == aioimaplib.SELECTED
        )

    def abort(self) -> None:
        """Drop the connection at once (no LOGOUT)."""
        imap, self.imap = self.imap, None
        if imap is None:
            return
        for task in list(imap.tasks) + list(imap.protocol.tasks):
            task.cancel()
        if imap.protocol.transport is not None:
            imap.protocol.transport.close()
        else:
            imap._client_task.cancel()

    async def discard(self) -> None:
        """After a failed or cancelled ``open``: let a connect still in progress end
        (bounded), then close what it made.  Cancelling asyncio's ``create_connection``
        in the middle of a TLS handshake leaks its transport and socket (CPython 3.11),
        which is what a shutdown during a failing logon would otherwise do."""
        imap = self.imap
        task = getattr(imap, "_client_task", None)
        if task is not None and not task.done():
            with contextlib.suppress(BaseException):
                async with asyncio.timeout(min(5.0, self.settings.timeout)):
                    await asyncio.shield(task)
        self.abort()

    async def close(self) -> None:
        """LOGOUT (best effort, bounded), then close; closed even when cancelled during
        the LOGOUT (the transport would otherwise be left to the garbage collector)."""
        imap = self.imap
        try:
            if imap is not None and self.alive:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(min(5.0, self.settings.timeout)):
                        await imap.logout()
        finally:
            try:
                await self.discard()
            finally:
                self.abort()

    def _imap(self) -> aioimaplib.IMAP4:
        if self.imap is None:
            raise _ProtocolError("not connected")
        return self.imap

    async def search_uids(self, lo: int, hi: int | None) -> list[int]:
        """UIDs in ``lo:hi`` (``hi`` None = ``*``), really in that range, ascending."""
        rng = f"{lo}:{'*' if hi is None else hi}"
        async with asyncio.timeout(self.settings.timeout):
            # A session sees new mail only at a command boundary (Dovecot evaluates a
            # SEARCH on the view before it and reports EXISTS after it): sync first.
            _check(await self._imap().noop(), "NOOP")
            resp = _check(await self._imap().uid_search("UID", rng, charset=None), "UID SEARCH")
        # aioimaplib strips "* SEARCH"; the last line is the tagged completion text.
        return _search_result(_lines(resp)[:-1], lo, hi)

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """``RFC822.SIZE`` of each of ``uids`` still in the folder (one command)."""
        if not uids:
            return {}
        async with asyncio.timeout(self.settings.timeout):
            resp = _check(
                await self._imap().uid("fetch", _uid_set(uids), "(UID RFC822.SIZE)"),
                "UID FETCH RFC822.SIZE",
            )
        return _sizes_result(_lines(resp)[:-1], uids)

    async def fetch_many(self, uids: Sequence[int], size: int = 0) -> dict[int, bytes]:
        """The messages with ``uids`` (one ``UID FETCH``); those gone are absent.
        ``size``: their total size, as announced (RFC822.SIZE), for the time limit.

        Strict: a ``BODY[]`` this cannot pair with its UID and its announced length,
        or a UID that was not asked for, is a :class:`_ProtocolError`."""
        if not uids:
            return {}
        what = f"UID FETCH {_uid_set(uids)}"
        # One time limit for the whole command: the timeout, plus the time the data
        # takes at _MIN_RATE.  (aioimaplib's own limit, "timeout seconds without
        # data", re-arms a timer for every line received: a tenth of the download's
        # CPU time in a profile of 64-message fetches.)
        # A size not known (0: one message fetched alone) keeps aioimaplib's limit.
        if size > 0:
            async with asyncio.timeout(self.settings.timeout + size / _MIN_RATE):
                resp = _check(
                    await self._imap().protocol.uid(
                        "fetch", _uid_set(uids), "(UID BODY.PEEK[])", timeout=None
                    ),
                    what,
                )
        else:
            resp = _check(
                await self._imap().uid("fetch", _uid_set(uids), "(UID BODY.PEEK[])"), what
            )
        return _fetch_result(_lines(resp)[:-1], uids, what)  # [-1]: the tagged completion

    async def remove(self, uids: Sequence[int]) -> None:
        """Delete or move ``uids`` as ``after_fetch`` says."""
        s = self.settings
        if not uids or s.after_fetch == "keep":
            return
        imap = self._imap()
        uid_set = _uid_set(uids)
        async with asyncio.timeout(s.timeout):
            if s.after_fetch == "move":
                assert s.move_to is not None
                if "MOVE" in self.capabilities:
                    _check(await imap.uid("move", uid_set, _quote(s.move_to)), "UID MOVE")
                    return
                _check(await imap.uid("copy", uid_set, _quote(s.move_to)), "UID COPY")
            _check(await imap.uid("store", uid_set, "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE")
            if "UIDPLUS" in self.capabilities:
                _check(await imap.uid("expunge", uid_set), "UID EXPUNGE")
            else:
                _check(await imap.expunge(), "EXPUNGE")


class IMAPSession(BaseTransportSession):
    """One logon of the IMAP transport; see the module docstring."""

    # SP_INBOUND_BATCH: start_message keeps track of what it handed out (_inflight)
    # until after_commit / after_rollback, so it may be called again before a commit.
    CAPABILITIES: ClassVar[LogonCaps] = LogonCaps.SP_POLL | LogonCaps.SP_INBOUND_BATCH

    def __init__(self, support: Support, settings: MailboxSettings) -> None:
        super().__init__(support)
        self.settings = settings
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()  # one command sequence at a time on the connection
        self._queue: collections.deque[int] = collections.deque()  # UIDs from the last search
        # Fetched, not handed out yet: (uidvalidity, uid, content), ascending.
        self._buffer: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._inflight: list[int] = []  # handed out, neither committed nor rolled back
        self._removing: list[int] = []  # committed, to delete or move
        self._prefetch: asyncio.Task[None] | None = None  # the next range, while we commit
        self._idle_task: asyncio.Task[None] | None = None
        self._warned_validity: int | None = None
        self.fetched = 0
        self.bytes = 0
        self.skipped: set[tuple[int, int]] = set()  # (uidvalidity, uid) over max_size
        self.last = ""
        self.last_error = ""
        self.idle_state = "off"
        self._flushing = False
        self._flush_total: int | None = None
        self._flush_done = 0
        self._flush_bytes = 0

    def __repr__(self) -> str:
        return f"<IMAPSession {self.settings.where}>"

    # -- status ------------------------------------------------------------------------
    def status_object(self) -> Mapping[str, Any]:
        section = self.support.profile_section()
        return {
            "server": self.settings.where,
            "tls": self.settings.tls,
            "after_fetch": self.settings.after_fetch,
            "uidvalidity": section.get("uidvalidity"),
            "last_uid": section.get("last_uid"),
            "fetched": self.fetched,
            "bytes": self.bytes,
            "skipped": len(self.skipped),
            "idle": self.idle_state,
            "last_error": self.last_error or None,
        }

    def _status(self) -> None:
        text = fetch_status(self.fetched, self.last, self.last_error)
        self.support.modify_status_row(status_string=text)

    async def _skip(self, uidvalidity: int, uid: int, size: int) -> None:
        """A message over ``max_size``: left on the server, never fetched, said once
        per logon.  Its UID is recorded durably before anything after it is handed
        out, because the watermark passes it then, and the removal of what lies at
        or below the watermark (``_cleanup``) must leave it alone."""
        if (uidvalidity, uid) in self.skipped:
            return
        section = self.support.profile_section()
        recorded = self._skipped_uids(uidvalidity)
        if uid not in recorded:
            await section.update(
                {"uidvalidity": uidvalidity, "skipped_uids": sorted({*recorded, uid})}
            )
        self.skipped.add((uidvalidity, uid))
        self.last_error = (
            f"UID {uid} ({size} bytes) is larger than max_size ({self.settings.max_size}): "
            "left on the server, not fetched"
        )
        self.support.logger.error("imap %s: %s", self.settings.where, self.last_error)
        self._status()

    def _skipped_uids(self, uidvalidity: int) -> set[int]:
        """The UIDs recorded as skipped under ``uidvalidity`` (none under another)."""
        section = self.support.profile_section()
        if section.get("uidvalidity") not in (None, uidvalidity):
            return set()
        value = section.get("skipped_uids", [])
        return {int(u) for u in value} if isinstance(value, list) else set()

    def _error(self, text: str) -> None:
        self.last_error = text
        self.support.logger.warning("imap %s: %s", self.settings.where, text)
        self._status()

    # -- the watermark -------------------------------------------------------------------
    def _watermark(self, uidvalidity: int) -> int:
        """The committed ``last_uid`` if it belongs to ``uidvalidity``, else 0."""
        section = self.support.profile_section()
        stored = section.get("uidvalidity")
        last = section.get("last_uid", 0)
        if stored is None:
            return 0
        if stored != uidvalidity:
            if self._warned_validity != uidvalidity:
                self._warned_validity = uidvalidity
                self._error(
                    f"UIDVALIDITY of {self.settings.folder} changed from {stored} to "
                    f"{uidvalidity}: starting again from UID 0 (messages still in the folder "
                    "are fetched again)"
                )
            return 0
        return int(last) if isinstance(last, int) else 0

    # -- the connection -------------------------------------------------------------------
    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        if conn is not None:
            conn.abort()
            self._conn = None
        conn = _Connection(self.settings, self.support)
        try:
            await conn.open()
        except BaseException:
            await conn.discard()
            raise
        self._conn = conn
        return conn

    def _network_error(self, what: str, exc: BaseException) -> NetworkError:
        if self._conn is not None:
            self._conn.abort()
            self._conn = None
        text = f"{what}: {type(exc).__name__}: {exc}" if str(exc) else f"{what}: {exc!r}"
        self._error(text)
        return NetworkError(_RETRY, f"imap {self.settings.where}: {text}")

    async def _start(self) -> None:
        """Logon: connect (checks the credentials) and finish removals a crash cut off."""
        try:
            conn = await self._connection()
        except FailOneProvider:
            raise
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            raise self._network_error("connect", exc) from exc
        section = self.support.profile_section()
        stored = section.get("uidvalidity")
        if stored is not None and stored != conn.uidvalidity:
            self._watermark(conn.uidvalidity)  # warns
            await section.update(
                {"uidvalidity": conn.uidvalidity, "last_uid": 0, "skipped_uids": None}
            )
        async with self._lock:
            await self._cleanup()

    async def _cleanup(self) -> None:
        """Remove messages at or below the watermark still in the folder (after a crash
        between a commit and its removal, or a removal that failed)."""
        if self.settings.after_fetch == "keep":
            return
        try:
            conn = await self._connection()
            w = self._watermark(conn.uidvalidity)
            if w <= 0:
                return
            skipped = self._skipped_uids(conn.uidvalidity)
            left = [u for u in await conn.search_uids(1, w) if u not in skipped]
            if left:
                await conn.remove(left)
                self.support.logger.info(
                    "imap %s: removed %d fetched messages left on the server",
                    self.settings.where,
                    len(left),
                )
        except FailOneProvider:
            raise
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            raise self._network_error("removing fetched messages", exc) from exc

    # -- inbound ---------------------------------------------------------------------------
    def _handed_out(self, watermark: int) -> int:
        """The highest UID that is committed or on its way to the inbox: the spooler
        may call ``start_message`` again before it committed the earlier messages."""
        return max(watermark, self._inflight[-1]) if self._inflight else watermark

    async def poll(self) -> int:
        async with self._lock:
            await self._cleanup()
            try:
                conn = await self._connection()
                w = self._handed_out(self._watermark(conn.uidvalidity))
                buffered = {uid for _v, uid, _data in self._buffer}
                found = await conn.search_uids(w + 1, None)
                self._queue = collections.deque(u for u in found if u not in buffered)
            except FailOneProvider:
                raise
            except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
                raise self._network_error("poll", exc) from exc
            self._removing.clear()  # the cleanup removed them (all are <= last_uid)
            return len(self._queue) + len(self._buffer)

    async def _fill(self, conn: _Connection) -> None:
        """Fetch the next UIDs of the queue into the buffer: at most _FETCH_BATCH
        messages and _FETCH_BYTES (a larger message comes alone), one UID FETCH."""
        queue = self._queue
        while queue and not self._buffer:
            head = [queue[i] for i in range(min(_FETCH_BATCH, len(queue)))]
            sizes = await conn.sizes(head)
            take: list[int] = []
            total = 0
            for uid in head:
                size = sizes.get(uid)
                if size is None:
                    continue  # gone from the folder meanwhile
                if size > self.settings.max_size:
                    await self._skip(conn.uidvalidity, uid, size)
                    continue
                if take and total + size > _FETCH_BYTES:
                    break
                take.append(uid)
                total += size
            got = await conn.fetch_many(take, total) if take else {}
            if queue is not self._queue:
                return  # a rollback rebuilt the queue meanwhile: these UIDs are in it again
            # Everything up to the last UID asked for is done with: fetched now, or gone.
            last = take[-1] if take else head[-1]
            while queue and queue[0] <= last:
                queue.popleft()
            v = conn.uidvalidity
            self._buffer.extend((v, uid, got[uid]) for uid in take if got.get(uid))

    async def _prefetch_next(self) -> None:
        """The next range into the buffer, in the background (under the connection's
        lock, so start_message waits for it).  A failure here is only logged: the
        next start_message fetches again and reports it."""
        try:
            async with self._lock:
                if self._buffer or not self._queue:
                    return
                conn = await self._connection()
                await self._fill(conn)
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            self._network_error("fetching ahead (retried)", exc)
        finally:
            self._prefetch = None

    async def _stop_prefetch(self) -> None:
        task, self._prefetch = self._prefetch, None
        if task is not None and not task.done():
            task.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            finally:
                if self._conn is not None:
                    self._conn.abort()  # cut mid-response: the session is out of step
                    self._conn = None

    async def _remove_committed(self, conn: _Connection) -> None:
        """Delete or move the committed messages collected so far, in one go."""
        uids, self._removing = sorted(self._removing), []
        if not uids:
            return
        try:
            await conn.remove(uids)
        except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
            # Left on the server: the next poll removes them (they are <= last_uid).
            self._network_error(f"removing {len(uids)} fetched messages (retried at poll)", exc)

    async def start_message(self, message: InboundWriter) -> None:
        async with self._lock:
            try:
                conn = await self._connection()
                if self._removing and (not self._buffer or len(self._removing) >= _FETCH_BATCH):
                    await self._remove_committed(conn)
                    conn = await self._connection()
                v = conn.uidvalidity
                w = self._handed_out(self._watermark(v))
                if self._buffer and self._buffer[0][0] != v:
                    self._buffer.clear()  # fetched under another UIDVALIDITY
                # The queue is sorted: drop what the watermark passed from the front
                # (constant time per message, not a pass over the whole list).
                queue = self._queue
                while queue and queue[0] <= w:
                    queue.popleft()
                if not queue and not self._buffer:
                    self._queue = queue = collections.deque(await conn.search_uids(w + 1, None))
                await self._fill(conn)
            except FailOneProvider:
                raise
            except (OSError, TimeoutError, aioimaplib.AioImapException, _ProtocolError) as exc:
                raise self._network_error("fetch", exc) from exc
            if not self._buffer:
                return
            v, uid, data = self._buffer.popleft()
            self._inflight.append(uid)
            more = bool(self._buffer or self._queue)
            if not self._buffer and self._queue and self._prefetch is None:
                # The last message fetched is handed out: fetch the next range now, so
                # that Dovecot's answer comes while the spooler commits this batch.
                self._prefetch = asyncio.create_task(
                    self._prefetch_next(), name=f"{self.support.transport_name}-imap-prefetch"
                )

        def rolled_back() -> None:
            self._rolled_back(uid)

        # Registered before anything can fail: if the message does not end in the
        # inbox, its UID goes back to the queue (else a later commit would pass it).
        message.after_rollback(rolled_back)
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):
            await message.write(bytes(view[i : i + _CHUNK]))
        message.set_remote_id(f"{v}:{uid}")
        message.set_state("uidvalidity", v)
        message.set_state("last_uid", uid)
        size = len(data)

        async def committed() -> None:
            await self._committed(uid, size, more)

        message.after_commit(committed)

    def _rolled_back(self, uid: int) -> None:
        """after_rollback: not in the inbox after all; offer it again, before anything
        fetched after it (the buffer goes back to the queue too)."""
        with contextlib.suppress(ValueError):
            self._inflight.remove(uid)
        again = {uid} | {u for _v, u, _data in self._buffer} | set(self._queue)
        self._buffer.clear()
        # A new deque, not the old one refilled: a fetch in flight (_fill) sees that
        # the queue it took its UIDs from is gone, and drops what it fetched.
        self._queue = collections.deque(sorted(again))

    async def _committed(self, uid: int, size: int, more: bool) -> None:
        """after_commit: the message is in the inbox; remove it from the server (with
        the others of its batch, at the next fetch or poll)."""
        with contextlib.suppress(ValueError):
            self._inflight.remove(uid)
        self.fetched += 1
        self.bytes += size
        self.last = f"UID {uid} ({size} bytes)"
        # The status row once per committed batch (or when nothing more is waiting),
        # not once per message.
        show = not self._inflight or not more
        if self._flushing:
            self._flush_done += 1
            self._flush_bytes += size
        if self._flushing and show:
            self.support.modify_status_row(
                progress=Progress(
                    self._flush_done,
                    self._flush_total,
                    self._flush_bytes,
                    None,
                    f"fetched {self._flush_done} from {self.settings.where}",
                )
            )
        if self.settings.after_fetch != "keep":
            self._removing.append(uid)
            # Removed in groups: here when nothing more was waiting (the end of a
            # download) or a group is full, else at the next fetch or poll.
            if not more or len(self._removing) >= _FETCH_BATCH:
                async with self._lock:
                    try:
                        conn = await self._connection()
                    except Exception as exc:
                        self._network_error("reconnecting to remove fetched messages", exc)
                    else:
                        await self._remove_committed(conn)
        if show:
            self._status()
        if more and not self._flushing and not self._inflight:
            self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)

    # -- notifications, IDLE ---------------------------------------------------------------
    async def transport_notify(self, flags: TransportNotifyFlags, ref: str | None = None) -> None:
        await super().transport_notify(flags, ref)
        f = TransportNotifyFlags
        if flags & f.BEGIN_INBOUND_FLUSH:
            self._flushing = True
            self._flush_done = self._flush_bytes = 0
            self._flush_total = len(self._queue) + len(self._buffer) or None
        if flags & f.END_INBOUND_FLUSH:
            self._flushing = False
        if flags & f.BEGIN_INBOUND and self.settings.idle and self._idle_task is None:
            conn = self._conn
            if conn is not None and "IDLE" in conn.capabilities:
                self._idle_task = asyncio.create_task(
                    self._idle_loop(), name=f"{self.support.transport_name}-imap-idle"
                )
            else:
                self.idle_state = "not offered by the server: polling"
        if flags & f.END_INBOUND:
            await self._stop_idle()

    async def _stop_idle(self) -> None:
        task, self._idle_task = self._idle_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _idle_loop(self) -> None:
        """Own connection in IDLE; NEWMAIL when the folder grows.  Runs until cancelled
        (END_INBOUND or logoff); failures are logged and retried with back-off."""
        delay = 1.0
        while True:
            conn = _Connection(self.settings, self.support)
            try:
                await conn.open()
                self.idle_state = "idling"
                delay = 1.0
                # Mail that came while no IDLE was running.
                self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
                while True:
                    await self._idle_once(conn)
            except asyncio.CancelledError:
                await conn.close()
                raise
            except Exception as exc:
                await conn.discard()
                self.idle_state = f"failed ({type(exc).__name__}: {exc}); polling meanwhile"
                self.support.logger.warning(
                    "imap %s: IDLE connection failed (retrying in %.0f s): %s",
                    self.settings.where,
                    delay,
                    exc,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _IDLE_BACKOFF_CAP)

    async def _idle_once(self, conn: _Connection) -> None:
        imap = conn._imap()
        renew = min(_IDLE_RENEW, 29 * 60.0)
        idle = await imap.idle_start(timeout=renew)
        try:
            while imap.has_pending_idle():
                push = await imap.wait_server_push(timeout=renew + self.settings.timeout)
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                lines = push if isinstance(push, list) else [push]
                if any(isinstance(x, bytes) and _EXISTS.match(x) for x in lines):
                    self.support.spooler_notify(SpoolerNotifyFlags.NEWMAIL)
        finally:
            if imap.has_pending_idle():
                imap.idle_done()
        async with asyncio.timeout(self.settings.timeout):
            _check(await idle, "IDLE")

    # -- logoff ---------------------------------------------------------------------------
    async def logoff(self, flags: LogoffFlags) -> None:
        await self._stop_idle()
        await self._stop_prefetch()
        conn, self._conn = self._conn, None
        if conn is not None:
            if flags & LogoffFlags.HURRY:
                conn.abort()
            else:
                if self._removing and conn.alive:
                    async with self._lock:
                        self._conn = conn
                        await self._remove_committed(conn)
                        self._conn = None
                await conn.close()


class IMAPProvider:
    """The IMAP transport provider (entry point ``imap``)."""

    display_name: ClassVar[str] = "IMAP"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> IMAPSession:
        settings = MailboxSettings.from_config("imap", config)
        session = IMAPSession(support, settings)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=settings.describe()
        )
        try:
            await session._start()
        except BaseException:
            await session.logoff(LogoffFlags.HURRY)
            raise
        session._status()
        return session

    async def shutdown(self) -> None:
        return None
