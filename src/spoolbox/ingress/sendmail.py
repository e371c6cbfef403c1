"""A ``sendmail``-compatible entry point: ``spoolbox sendmail [options] [recipients...]``.

The message is read from stdin in full, checked, completed as Postfix's pickup and
cleanup complete it (a ``Received: by HOST (spoolbox, from userid UID)`` trace line on
top; ``Message-ID``, ``Date`` and ``From`` appended at the end of the header section
when missing; ``Bcc`` removed) and submitted once: a message is never queued in
part.  A recipient no transport could take is refused before anything is queued
(exit 67, EX_NOUSER), when the caller gives a ``route`` check.  It is held once:
the header section is read first, then the body is written after the completed
headers line by line as it is read, and never copied again.  Exit codes follow
``sysexits.h``; every error is one line on stderr naming what was wrong.  A
recipient that a local name (or an address at this host's own name) became keeps what
it was given as, the bare name with the local domain, as its original (RFC 3461
ORCPT: reports name it), as the SMTP listener keeps it.

Modes (Postfix's sendmail(1)): ``-bm`` (the default: deliver the message on stdin),
``-bs`` (SMTP on stdin/stdout), ``-bp`` (list the queue, as ``mailq``), ``-q`` and
``-q<interval>`` (flush the queue now), ``-bi`` and ``-I`` (``newaliases``: the aliases
are the profile's ``[local_names]``, given as ``local_names``; nothing to build),
``-bv`` (say which transport would take each
recipient; nothing is sent), ``--help``.  The modes that need the spooler (``-bs``,
``-bp``, ``-q``) are the caller's: it passes them as ``modes``.

Options (as sendmail and Postfix's sendmail take them)::

    -t            recipients from To, Cc and Bcc (Resent-* when present), added to
                  those on the command line; Bcc headers are removed (always)
    -f SENDER     envelope sender (also -fSENDER, -r SENDER); "<>" is the null sender
    -F NAME       full name for the From header if one is added
    -i, -oi       a line with a single "." does not end the message (read to EOF)
    -N DSN        never, or a comma list of success, failure, delay
    -V ENVID      envelope id (RFC 3461), echoed in delivery reports
    -R RET        full or hdrs (RFC 3461 RET, any case): a delivery report returns
                  the whole message or its header only (without -R: the report
                  kind's default)
    -B TYPE, -v, -m, -n, -G, -U, -L TAG, -h N, -bm   accepted, no effect
    -oem, -oee, -oep, -oeq, -oew, -om, -o7, -o8       accepted, no effect
    -oX..., -O OPT=VALUE, -C FILE, -X FILE           ignored with a warning
    --            end of options

Line endings are normalised to CRLF; a leading mbox ``From `` line is dropped.  The
envelope sender without ``-f`` is the From header's address, else ``user@domain``.
"""

from __future__ import annotations

import binascii
import getpass
import io
import itertools
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import BinaryIO, TextIO

from ..model import Address, AddressError, MessageError, NewMessage, Notify, new_message_id
from ..model.hostname import my_hostname
from ..model.message import with_originals
from .local_names import LocalNameError, LocalNames, is_local_name

__all__ = [
    "EX_DATAERR",
    "EX_NOINPUT",
    "EX_NOPERM",
    "EX_NOUSER",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "MODES",
    "USAGE",
    "Mode",
    "Route",
    "run_sendmail",
]

EX_OK = 0
EX_USAGE = 64  # bad arguments, no recipients
EX_DATAERR = 65  # malformed message or bad address
EX_NOUSER = 67  # a recipient no transport serves
EX_NOINPUT = 66  # stdin cannot be read
EX_UNAVAILABLE = 69  # the spool is not there
EX_SOFTWARE = 70  # internal error
EX_TEMPFAIL = 75  # the spool is busy or unavailable for now: try again
EX_NOPERM = 77  # not allowed to write to the spool

MAX_LINE = 998  # RFC 5322 section 2.1.1, octets without CRLF

_HEADER_RE = re.compile(rb"^[!-9;-~]+[ \t]*:")
_NEWLINE_RE = re.compile(rb"\r\n|\r|\n")
_EMPTY_GROUP_RE = re.compile(r'[^,:;"<>]*:\s*;')
_STRAY_COMMA_RE = re.compile(r"^\s*,|,\s*(?=,|$)")

Submit = Callable[[NewMessage], Awaitable[object]]
#: A recipient -> (whether a transport could take it, one line saying which or why not)
Route = Callable[[Address], tuple[bool, str]]
#: A mode the caller runs (``smtp``, ``queue``, ``flush``): returns the exit code
Mode = Callable[[], Awaitable[int]]

#: The modes: deliver (-bm), smtp (-bs), queue (-bp), flush (-q), aliases (-bi, -I),
#: verify (-bv), help (--help)
MODES = ("deliver", "smtp", "queue", "flush", "aliases", "verify", "help")
_B_MODES = {"m": "deliver", "s": "smtp", "p": "queue", "v": "verify", "i": "aliases"}
#: -q with a queue run interval (sendmail's -q30m, -q1h30m): a flush now
_INTERVAL_RE = re.compile(r"(?:[0-9]+[smhdw]?)+")

USAGE = """\
usage: sendmail [options] [recipient ...]     (also: mailq, newaliases)

Modes:
  (none), -bm   deliver the message read from stdin (to EOF, or a lone "." line)
  -bs           speak SMTP on stdin/stdout (Symfony Mailer's and Laravel's default)
  -bp           list the queue (as mailq)
  -q, -q30m     flush the queue now, through the daemon (an interval is a flush too)
  -bi, -I       as newaliases: aliases are the profile's [local_names], nothing to do
  -bv           say which transport would take each recipient; nothing is sent
  --help        this text

Options:
  -t            recipients from To, Cc and Bcc too; Bcc is removed
  -f SENDER     envelope sender (also -r); "<>" is the null sender
  -F NAME       full name for an added From header
  -i, -oi       a lone "." line does not end the message
  -N DSN        never, or success,failure,delay
  -V ENVID      envelope id (RFC 3461)
  -R RET        full or hdrs: what a delivery report returns of the message

Exit codes (sysexits.h): 0 ok, 64 usage, 65 data error, 66 no input, 67 no transport
for a recipient, 69 unavailable, 70 internal error, 75 try again later, 77 no permission.
"""


class _Exit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Options:
    mode: str = "deliver"
    extract: bool = False
    sender: str | None = None
    full_name: str | None = None
    ignore_dots: bool = False
    notify: Notify | None = None
    envelope_id: str | None = None
    return_content: bool | None = None  # -R: True full, False hdrs
    recipients: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# option letter -> takes an argument
_IGNORED_QUIET = {"v": False, "m": False, "n": False, "G": False, "U": False, "B": True}
_IGNORED_QUIET.update({"L": True, "h": True})
_IGNORED_WARN = {"O": True, "C": True, "X": True}
#: -R's words (RFC 3461 RET, any case) -> NewMessage.return_content
_RET = {"full": True, "hdrs": False}
#: -o options taken without a word, as Postfix's sendmail takes them: the error modes
#: (cron passes -oem: errors are mailed back, as spoolbox's delivery reports are),
#: -om (send to me too), -o7 and -o8
_O_QUIET = {"em", "ee", "ep", "eq", "ew", "m", "7", "8"}


def _parse_args(argv: Sequence[str]) -> _Options:
    opts = _Options()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.recipients.extend(args[i:])
            break
        if arg == "--help":
            opts.mode = "help"
            continue
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        letter, rest = arg[1], arg[2:]

        def value(letter: str = letter, rest: str = rest) -> str:
            nonlocal i
            if rest:
                return rest
            if i >= len(args):
                raise _Exit(EX_USAGE, f"option -{letter} needs an argument")
            i += 1
            return args[i - 1]

        if letter == "t" and not rest:
            opts.extract = True
        elif letter == "i" and not rest:
            opts.ignore_dots = True
        elif letter in ("f", "r"):
            opts.sender = value()
        elif letter == "F":
            opts.full_name = value()
        elif letter == "o":
            if rest == "i":
                opts.ignore_dots = True
            elif not rest:
                raise _Exit(EX_USAGE, "option -o needs a letter (e.g. -oi)")
            elif rest not in _O_QUIET:
                opts.warnings.append(f"ignoring option {arg}")
        elif letter == "b":
            if rest not in _B_MODES:
                raise _Exit(
                    EX_USAGE,
                    f"mode {arg} is not supported: -bm (deliver), -bs (SMTP), -bp (list "
                    "the queue), -bv (verify), -bi (aliases) are",
                )
            opts.mode = _B_MODES[rest]
        elif letter == "I" and not rest:
            opts.mode = "aliases"
        elif letter == "N":
            opts.notify = _parse_notify(value())
        elif letter == "V":
            envid = value()
            if not (1 <= len(envid) <= 100) or any(not "!" <= c <= "~" for c in envid):
                raise _Exit(
                    EX_USAGE, f"-V {envid!r}: the envelope id must be 1-100 printable ASCII"
                )
            opts.envelope_id = envid
        elif letter == "R":
            ret = value()
            if ret.lower() not in _RET:
                raise _Exit(EX_USAGE, f"-R {ret!r}: expected full or hdrs")
            opts.return_content = _RET[ret.lower()]
        elif letter == "q":
            if rest and not _INTERVAL_RE.fullmatch(rest):
                raise _Exit(
                    EX_USAGE,
                    f"{arg}: only -q and -q<interval> (a flush now) are supported, not "
                    "queue runs for a site, sender or id (use `spoolbox flush`)",
                )
            opts.mode = "flush"
        elif letter in _IGNORED_QUIET:
            if _IGNORED_QUIET[letter]:
                value()
            elif rest:
                raise _Exit(EX_USAGE, f"unknown option {arg}")
        elif letter in _IGNORED_WARN:
            if _IGNORED_WARN[letter]:
                value()
            opts.warnings.append(f"ignoring option -{letter}")
        else:
            raise _Exit(EX_USAGE, f"unknown option {arg}")
    return opts


def _parse_notify(text: str) -> Notify:
    try:
        return Notify.from_text(text)
    except ValueError as exc:
        raise _Exit(EX_USAGE, f"-N {exc}") from None


class _Input:
    """stdin, one line at a time (or up to a lone "." line without -i), line endings as
    CRLF; the size limit is checked as it is read.  The first line that breaks the
    rules (a NUL byte) is kept in :attr:`problem`, the first longer than
    :data:`MAX_LINE` in :attr:`too_long` (the body can be encoded to fix that):
    reading goes on, so that a message over the size limit is refused as such.

    Nothing is held here: the lines go to the caller one by one (a list of them, or
    the message joined and split again, held a large message several times over)."""

    def __init__(self, stdin: BinaryIO, ignore_dots: bool, limit: int) -> None:
        self._stdin = stdin
        self._ignore_dots = ignore_dots
        self._limit = limit
        self._number = 0
        self.problem: _Exit | None = None
        self.too_long: _Exit | None = None

    def lines(self) -> Iterator[bytes]:
        """The lines, each with its CRLF (the last one may lack it)."""
        size = 0
        try:
            while True:
                raw = self._stdin.readline()
                if not raw:
                    return
                if not self._ignore_dots and raw.rstrip(b"\r\n") == b".":
                    return
                size += len(raw)
                if size > self._limit:
                    raise _Exit(
                        EX_DATAERR, f"the message is larger than the limit of {self._limit} bytes"
                    )
                line = _NEWLINE_RE.sub(b"\r\n", raw)
                for piece in line.splitlines(keepends=True) if line.count(b"\r") > 1 else (line,):
                    self._check(piece)
                    yield piece
        except (OSError, ValueError) as exc:
            raise _Exit(EX_NOINPUT, f"cannot read the message from stdin: {exc}") from exc

    def _check(self, piece: bytes) -> None:
        self._number += 1
        if self.problem is not None:
            return
        text = piece[:-2] if piece.endswith(b"\r\n") else piece
        if b"\x00" in text:
            self.problem = _Exit(
                EX_DATAERR, f"line {self._number} of the message contains a NUL byte"
            )
        elif len(text) > MAX_LINE and self.too_long is None:
            self.too_long = _Exit(
                EX_DATAERR,
                f"line {self._number} of the message is {len(text)} octets long; the limit "
                f"is {MAX_LINE} (RFC 5322 section 2.1.1)",
            )


def _headers(lines: Iterator[bytes]) -> tuple[list[tuple[str, bytes]], bytes | None]:
    """Headers as (lower-case name, raw bytes with CRLF and continuations), read from
    ``lines`` up to the end of the header section; and the body's first line if it
    was read already.

    The header section ends at the first empty line, or at the first line that is not
    a header (the body then starts there: a blank line is put in between).  A leading
    mbox ``From`` line is dropped.
    """
    headers: list[tuple[str, bytes]] = []
    for number, line in enumerate(lines):
        if number == 0 and line.startswith(b"From ") and not _HEADER_RE.match(line):
            continue  # mbox "From " line
        if line == b"\r\n":
            return headers, None
        if line[:1] in (b" ", b"\t") and headers:
            name, raw = headers[-1]
            headers[-1] = (name, raw + line)
        elif _HEADER_RE.match(line):
            name = line.split(b":", 1)[0].strip().decode("ascii").lower()
            headers.append((name, line if line.endswith(b"\r\n") else line + b"\r\n"))
        else:
            return headers, line
    return headers, None


def _header_value(raw: bytes, name: str) -> str:
    name = raw.split(b":", 1)[0].strip().decode("ascii")  # as written, for messages
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Exit(EX_DATAERR, f"the {name} header is not valid UTF-8") from None
    value = text.split(":", 1)[1]
    return re.sub(r"\r\n(?=[ \t])", "", value).strip()


def _smtp_address(value: str, where: str) -> Address:
    try:
        addr = Address("SMTP", value)
    except AddressError as exc:
        raise _Exit(EX_DATAERR, f"bad address in {where}: {exc}") from None
    local, at, domain = value.rpartition("@")
    if not (local and at and domain) or " " in domain:
        raise _Exit(EX_DATAERR, f"bad address in {where}: {value!r} is not user@domain")
    return addr


#: The headers whose addresses without a domain get the local domain.
_QUALIFIED = ("from", "to", "cc")


def _qualified(raw: bytes, local_domain: str) -> bytes:
    """A From, To or Cc header whose addresses lack a domain (cron's ``From: root (Cron
    Daemon)`` and ``To: root``) written again with the local domain, as Postfix's
    cleanup appends ``@myorigin``; any other header as it was (a bad one is refused
    later, naming it)."""
    header = raw.split(b":", 1)[0].strip().decode("ascii")  # as written
    try:
        value = _header_value(raw, header)
    except _Exit:
        return raw
    pairs = getaddresses([value])
    if not pairs or not all(addr and " " not in addr for _, addr in pairs):
        return raw
    if all("@" in addr for _, addr in pairs):
        return raw
    written = ", ".join(
        formataddr((name, addr if "@" in addr else f"{addr}@{local_domain}"), "utf-8")
        for name, addr in pairs
    )
    return f"{header}: {written}\r\n".encode()


@dataclass
class _Originals:
    """What the recipients a local name or an address at this host's name became were
    given as (RFC 3461 ORCPT, ``rfc822;root@host.example.org``), as the listener keeps
    it: a bare local name with the local domain (``domain``; this host's name when
    None), as Postfix appends ``@myorigin``."""

    domain: str | None
    #: Each recipient's original as it was first reached (None: given as it is).
    found: dict[Address, str | None] = field(default_factory=dict)

    def note(self, targets: Sequence[Address], given: Address) -> None:
        for target, original in with_originals(targets, given, None):
            self.found.setdefault(target, original)

    def pairs(self) -> tuple[tuple[Address, str], ...]:
        return tuple((a, o) for a, o in self.found.items() if o is not None)

    def qualified(self, name: str) -> Address:
        return Address("SMTP", f"{name}@{self.domain or my_hostname()}")


def _recipient(
    value: str, where: str, local: LocalNames | None, note: _Originals | None = None
) -> list[Address]:
    """A recipient: ``user@domain``, or a local name (cron's ``root``) as the profile's
    ``[local_names]`` says; without a rule for it, EX_NOUSER saying where to give one.
    ``note`` keeps what each address it became was given as."""
    if not is_local_name(value):
        return _at_this_host(_smtp_address(value, where), local, note)
    if local is None:
        raise _Exit(
            EX_NOUSER,
            f"{where}: {value!r} is a local name without a domain, and the profile has no "
            "[local_names] to say what it becomes (aliases, domain or address_type; "
            'docs/operations.md, "Local names")',
        )
    try:
        found = list(local.resolve(value))
    except LocalNameError as exc:
        raise _Exit(EX_NOUSER, f"{where}: {exc}") from None
    if note is not None:
        note.note(found, note.qualified(value))
    return found


def _at_this_host(
    address: Address, local: LocalNames | None, note: _Originals | None = None
) -> list[Address]:
    """``address``, or what it stands for when it is at this host's own name
    (``root@HOST``: ``[local_names]`` resolves ``root``), as Postfix delivers mail for
    ``mydestination`` locally."""
    found = list(local.stands_for(address)) if local is not None else [address]
    if note is not None:
        note.note(found, address)
    return found


def _header_addresses(
    headers: list[tuple[str, bytes]],
    names: Sequence[str],
    local: LocalNames | None = None,
    *,
    recipients: bool = True,
    note: _Originals | None = None,
) -> list[Address]:
    """The addresses of the headers ``names``; ``recipients``: a local name in them is
    taken as :func:`_recipient` takes it (a sender's is refused)."""
    found: list[Address] = []
    for name, raw in headers:
        if name not in names:
            continue
        value = _header_value(raw, name)
        name = raw.split(b":", 1)[0].strip().decode("ascii")
        if not value:
            continue
        # An empty group ("undisclosed-recipients:;") and stray commas name nobody.
        tidy = _EMPTY_GROUP_RE.sub("", value)
        tidy = _STRAY_COMMA_RE.sub("", tidy).strip()
        if not tidy:
            continue
        pairs = getaddresses([tidy])
        if not pairs or any(not addr for _, addr in pairs):
            raise _Exit(EX_DATAERR, f"cannot parse the addresses in the {name} header: {value!r}")
        for _, addr in pairs:
            where = f"the {name} header"
            if recipients:
                found.extend(_recipient(addr, where, local, note))
            else:
                found.append(_smtp_address(addr, where))
    return found


def _argument_addresses(
    args: Sequence[str], local: LocalNames | None = None, note: _Originals | None = None
) -> list[Address]:
    found: list[Address] = []
    for arg in args:
        text = arg.strip()
        if not text:
            raise _Exit(EX_USAGE, "an empty recipient argument")
        if "<" in text or "," in text:
            pairs = getaddresses([text])
            if not pairs or any(not a for _, a in pairs):
                raise _Exit(EX_DATAERR, f"cannot parse the recipient argument {arg!r}")
            for _, a in pairs:
                found.extend(_recipient(a, f"the recipient argument {arg!r}", local, note))
            continue
        if is_local_name(text):
            found.extend(_recipient(text, f"the recipient argument {arg!r}", local, note))
            continue
        try:
            addr = Address.parse(text, default_type="SMTP")
        except AddressError as exc:
            raise _Exit(EX_DATAERR, f"bad recipient {arg!r}: {exc}") from None
        if addr.type == "SMTP":
            addr = _smtp_address(addr.value, f"the recipient argument {arg!r}")
        found.extend(_at_this_host(addr, local, note))
    return found


def _exit_for(exc: BaseException) -> tuple[int, str]:
    """The exit code for an exception from submit."""
    if isinstance(exc, MessageError | AddressError):
        return EX_DATAERR, f"message refused: {exc}"
    if isinstance(exc, PermissionError):
        return EX_NOPERM, f"not allowed to queue: {exc}"
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return EX_UNAVAILABLE, f"the spool is unavailable: {exc}"
    temporary = getattr(exc, "temporary", None)
    names = {c.__name__ for c in type(exc).__mro__}
    if "UnroutableRecipient" in names:  # the daemon's refusal (api.client; no import here)
        return EX_NOUSER, f"{exc}"
    if "StoreFull" in names:  # here or in the daemon's store (api.client)
        return EX_TEMPFAIL, f"the spool's disk is full, try again later: {exc}"
    if temporary is True or "StoreError" in names or isinstance(exc, OSError | TimeoutError):
        return EX_TEMPFAIL, f"the spool is busy or unavailable, try again later: {exc}"
    return EX_SOFTWARE, f"internal error: {type(exc).__name__}: {exc}"


async def run_sendmail(
    argv: Sequence[str],
    stdin: BinaryIO,
    submit: Submit,
    *,
    stderr: TextIO,
    stdout: TextIO | None = None,
    user: str | None = None,
    domain: str | None = None,
    hostname: str | None = None,
    uid: int | None = None,
    max_message_size: int = 25 * 1024 * 1024,
    route: Route | None = None,
    modes: Mapping[str, Mode] | None = None,
    local_names: LocalNames | None = None,
) -> int:
    """Run ``sendmail`` with ``argv`` (the arguments, without the program name).

    ``user`` and ``domain`` make the address for an added From header and the default
    envelope sender (default: the login name at this host's name); ``hostname`` and
    ``uid`` go in the Received line (default: :func:`~spoolbox.model.hostname.my_hostname`
    and this process's user id).  ``route`` says whether a transport could take a
    recipient: a message with a recipient it refuses is not queued (``EX_NOUSER``);
    ``-bv`` prints its answers on ``stdout``.  ``modes`` runs ``smtp`` (-bs), ``queue``
    (-bp) and ``flush`` (-q); a mode it lacks is a usage error.  ``local_names`` says
    what a recipient without a domain (cron's ``root``) becomes; without it such a
    recipient is refused (``EX_NOUSER``).  Returns an exit code
    from ``sysexits.h``; messages go to ``stderr``, one line each.
    """
    try:
        opts = _parse_args(argv)
        for w in opts.warnings:
            print(f"sendmail: warning: {w}", file=stderr)
        if opts.mode == "help":
            print(USAGE, end="", file=stdout)
            return EX_OK
        if opts.mode == "aliases":
            return EX_OK  # aliases are read from the profile: no database to build
        if opts.mode == "verify":
            return _verify(opts, route, stdout, local_names)
        if opts.mode != "deliver":
            run = (modes or {}).get(opts.mode)
            if run is None:
                raise _Exit(EX_USAGE, f"the {opts.mode} mode is not available here")
            return await run()
        message = _build(
            opts, stdin, user, domain, hostname, uid, max_message_size, route, local_names
        )
    except _Exit as exc:
        print(f"sendmail: {exc}", file=stderr)
        return exc.code
    try:
        await submit(message)
    except Exception as exc:
        code, text = _exit_for(exc)
        print(f"sendmail: {text}".replace("\n", " "), file=stderr)
        return code
    return EX_OK


def _verify(
    opts: _Options, route: Route | None, stdout: TextIO | None, local: LocalNames | None
) -> int:
    """``-bv``: one line per recipient (a local name with what it became, ``root ->
    MAILDIR:root``); EX_NOUSER when any has no transport, or is a local name the
    profile gives nothing for."""
    if route is None:
        raise _Exit(EX_USAGE, "-bv (verify) is not available here: no routing table")
    if not opts.recipients:
        raise _Exit(EX_USAGE, "no recipients: give the addresses to verify as arguments")
    code = EX_OK
    for arg in opts.recipients:
        try:
            addresses = _argument_addresses([arg], local)
        except _Exit as exc:
            if exc.code != EX_NOUSER:
                raise
            print(f"{arg.strip()}: undeliverable: {exc}", file=stdout)
            code = EX_NOUSER
            continue
        # What a local name (or an address at this host's name) became: "root -> ".
        name = arg.strip()
        changed = is_local_name(name) or addresses != _argument_addresses([arg])
        shown = f"{name} -> " if changed else ""
        for addr in addresses:
            ok, text = route(addr)
            print(f"{shown}{addr}: {text}", file=stdout)
            if not ok:
                code = EX_NOUSER
    return code


def _refused(recipients: Sequence[Address], route: Route | None) -> _Exit | None:
    """EX_NOUSER naming the first recipient ``route`` refuses, or None."""
    if route is None:
        return None
    for addr in recipients:
        ok, text = route(addr)
        if not ok:
            return _Exit(EX_NOUSER, f"{addr}: {text}; message not queued")
    return None


def _build(
    opts: _Options,
    stdin: BinaryIO,
    user: str | None,
    domain: str | None,
    hostname: str | None,
    uid: int | None,
    limit: int,
    route: Route | None,
    local: LocalNames | None,
) -> NewMessage:
    note = _Originals(domain or hostname)
    explicit = _argument_addresses(opts.recipients, local, note)
    if not explicit and not opts.extract:
        raise _Exit(EX_USAGE, "no recipients: give addresses as arguments, or use -t")

    source = _Input(stdin, opts.ignore_dots, limit)
    lines = source.lines()
    headers, first = _headers(lines)
    # The message is written once, as it is read: the completed header section, then
    # the body line by line.  What is wrong with the headers is said after what is
    # wrong with the input (its size, its lines), as when it was read whole first.
    refused: _Exit | None = None
    message_id = new_message_id()
    host = hostname or my_hostname()
    try:
        sender, recipients, head = _envelope(
            opts, headers, explicit, user, domain or host, local, note
        )
        refused = _refused(recipients, route)
    except _Exit as exc:
        refused = exc
    out = io.BytesIO()
    body_at = 0
    received = b""
    if refused is None:
        received = _received(host, os.getuid() if uid is None else uid, message_id)
        out.write(received)
        out.write(head)
        body_at = out.tell()
    for line in itertools.chain((first,) if first is not None else (), lines):
        if refused is None:
            out.write(line)
    if source.problem is not None:
        raise source.problem
    if refused is not None:
        raise refused
    content = out.getvalue()  # (the buffer itself, not a copy: a message is held once)
    if source.too_long is not None:
        # A cron job's output, a script's JSON: lines no message may carry as they
        # are.  A single-part body goes quoted-printable (decoded, the same bytes).
        encoded = _quoted_printable(head, content[body_at:])
        if encoded is None:
            raise source.too_long
        content = received + encoded[0] + encoded[1]
    try:
        return NewMessage(
            sender=sender,
            recipients=tuple(recipients),
            content=content,
            notify=opts.notify if opts.notify is not None else Notify.FAILURE,
            envelope_id=opts.envelope_id,
            return_content=opts.return_content,
            id=message_id,
            original_recipients=note.pairs(),
        )
    except MessageError as exc:
        raise _Exit(EX_DATAERR, f"message refused: {exc}") from None


def _envelope(
    opts: _Options,
    headers: list[tuple[str, bytes]],
    explicit: list[Address],
    user: str | None,
    local_domain: str,
    local: LocalNames | None = None,
    note: _Originals | None = None,
) -> tuple[Address | None, list[Address], bytes]:
    """The sender, the recipients and the header section as it is queued (with the
    blank line that ends it): the headers as given (Bcc removed), then those missing
    appended as Postfix's cleanup appends them (Message-ID, Date, From)."""
    recipients = list(explicit)
    if opts.extract:
        present = {name for name, _ in headers}
        resent = {"resent-to", "resent-cc", "resent-bcc"} & present
        names = ("resent-to", "resent-cc", "resent-bcc") if resent else ("to", "cc", "bcc")
        recipients.extend(_header_addresses(headers, names, local, note=note))
        if not recipients:
            raise _Exit(EX_USAGE, "no recipients: none in the To, Cc or Bcc headers (-t)")

    local_user = user or _login()
    default_addr = f"{local_user}@{local_domain}"
    headers = [
        (name, _qualified(raw, local_domain) if name in _QUALIFIED else raw)
        for name, raw in headers
    ]

    sender: Address | None
    if opts.sender is not None:
        text = opts.sender.strip()
        if text in ("", "<>"):
            sender = None
        else:
            text = text.removeprefix("<").removesuffix(">")
            if is_local_name(text):  # -f root: Postfix appends @myorigin
                text = f"{text}@{local_domain}"
            try:
                sender = Address.parse(text, default_type="SMTP")
            except AddressError as exc:
                raise _Exit(EX_DATAERR, f"bad sender -f {opts.sender!r}: {exc}") from None
    else:
        froms = _header_addresses(headers, ("from",), recipients=False)
        sender = froms[0] if froms else _smtp_address(default_addr, "the default sender")

    kept = [(n, raw) for n, raw in headers if n not in ("bcc", "resent-bcc")]
    present = {n for n, _ in kept}
    added: list[str] = []
    if "message-id" not in present:
        added.append(f"Message-ID: {make_msgid(domain=local_domain)}")
    if "date" not in present:
        added.append(f"Date: {formatdate(localtime=True)}")
    if "from" not in present:
        addr = sender.value if sender is not None and sender.type == "SMTP" else default_addr
        added.append(f"From: {formataddr((opts.full_name or '', addr))}")
    tail = "".join(f"{h}\r\n" for h in added).encode("utf-8")
    return sender, recipients, b"".join(raw for _, raw in kept) + tail + b"\r\n"


def _quoted_printable(head: bytes, body: bytes) -> tuple[bytes, bytes] | None:
    """``head`` (the header section with its ending blank line) and ``body`` again,
    the body quoted-printable (RFC 2045) with the MIME headers that say so: for a
    single-part message whose body has lines over :data:`MAX_LINE`.  None where that
    cannot be done: a header line over it, a multipart or ``message/`` body, a body
    already in base64 or quoted-printable."""
    if any(len(line) > MAX_LINE for line in head.split(b"\r\n")):
        return None
    fields = [f for f in re.split(rb"\r\n(?![ \t])", head.removesuffix(b"\r\n\r\n")) if f]

    def name(one: bytes) -> bytes:
        return one.split(b":", 1)[0].strip().lower()

    def value(wanted: bytes) -> bytes:
        for one in fields:
            if name(one) == wanted:
                return b" ".join(one.split(b":", 1)[1].split()).lower()
        return b""

    if value(b"content-type").startswith((b"multipart/", b"message/")):
        return None
    if value(b"content-transfer-encoding") in (b"base64", b"quoted-printable"):
        return None
    kept = [f for f in fields if name(f) != b"content-transfer-encoding"]
    present = {name(f) for f in kept}
    if b"mime-version" not in present:
        kept.append(b"MIME-Version: 1.0")
    if b"content-type" not in present:
        try:
            body.decode("utf-8")
            charset = b"utf-8"
        except UnicodeDecodeError:
            charset = b"unknown-8bit"  # RFC 1428
        kept.append(b"Content-Type: text/plain; charset=" + charset)
    kept.append(b"Content-Transfer-Encoding: quoted-printable")
    return b"\r\n".join(kept) + b"\r\n\r\n", binascii.b2a_qp(body, istext=True)


def _received(hostname: str, uid: int, message_id: str) -> bytes:
    """The trace line of a local submission, as Postfix's pickup writes it (RFC 5321
    section 4.4: ``by`` and ``id`` without ``from``, the user id in a comment)."""
    host = "".join(c for c in hostname if c.isalnum() or c in ".-_")[:255] or "localhost"
    return (
        f"Received: by {host} (spoolbox, from userid {uid})\r\n"
        f"\tid {message_id}; {formatdate(localtime=True)}\r\n"
    ).encode("ascii")


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "nobody"
