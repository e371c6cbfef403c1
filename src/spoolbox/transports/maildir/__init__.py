"""The Maildir transport (address type ``MAILDIR``): local delivery out, pickup in.

Outbound, a recipient ``MAILDIR:/var/mail/bob`` (absolute, or relative to ``root``)
gets the message delivered into that Maildir the way the specification
(https://cr.yp.to/proto/maildir.html) says: written to ``tmp/`` under a unique name
(``sec.M<usec>P<pid>Q<counter>.<host>``), fsynced, hard-linked into ``new/`` (renamed
where the file system has no hard links), the ``tmp/`` name removed, and ``new/``
fsynced.  Two trace lines go on top: ``Return-Path: <sender>`` (``<>`` for a null
sender) and ``Delivered-To: MAILDIR:<path>``, with the line ending the content uses;
the content follows byte for byte (no CRLF conversion).

Inbound (when ``pickup`` is set) the session polls: every regular, non-empty file in
``pickup/new`` and ``pickup/cur`` is a message.  ``start_message`` takes the oldest
one (by modification time), streams it into the inbox, and removes the file only in
its ``after_commit`` callback, i.e. once the message is durably in the inbox.

Configuration (the transport's ``options`` in the profile):

``root``
    Optional absolute directory.  Relative ``MAILDIR:`` values are taken relative to
    it, and when it is set *every* destination must lie inside it (after ``..`` is
    resolved lexically), so a submitter cannot make the spooler write elsewhere.
    Symbolic links the administrator put inside ``root`` are followed.
``pickup``
    Optional absolute path of a Maildir to pick inbound mail up from.
``create``
    Bool, default true: create missing maildirs (``tmp``/``new``/``cur``, and missing
    parents) with mode 0o700.  With false a missing maildir fails the recipient, and a
    missing pickup maildir fails the logon.

An unknown key or a value of the wrong type fails the logon with a
:class:`ValueError` that names the key.

Guarantees:

* Nothing partial is ever visible in ``new/``: content reaches ``new/`` only after
  it was completely written and fsynced, and any failure or cancellation on the
  way removes the ``tmp/`` file.  An existing file is never overwritten.  A ``tmp/``
  file left by a crash is removed by the first delivery of a later session to that
  maildir, once untouched for 36 hours (as the specification allows).
* The loop never blocks on the disk: every blocking step runs through
  ``support.run_blocking``, and content is streamed one chunk at a time.
* Each recipient gets exactly one result, reported in one ``status_recips`` call
  per message (also when the message is cancelled between recipients: those
  already delivered are reported as delivered, the rest are left to the spooler).
  Errors map to results by ``errno`` (:func:`status_for_error`): a missing maildir
  or one that is not a directory (ENOENT, ENOTDIR: also when ``new`` is a regular
  file) fails with 5.1.1; a destination outside ``root``, relative without ``root``,
  or a name too long fails with 5.1.3; a file-size limit (EFBIG) fails with 5.3.4;
  permission problems (EACCES, EPERM) are deferred with 4.2.0 (an administrator may
  fix them), a read-only file system with 4.3.0, a full disk (ENOSPC) with 4.3.1, an
  exceeded quota (EDQUOT, "mailbox full" in RFC 3463) with 4.2.2, anything else
  with 4.3.0.
* A picked-up file is removed only after its message was committed to the inbox,
  and the commit records the file (name, size, modification time) in the
  session's profile section atomically with the message.  After a crash between
  the commit and the removal, the next logon removes the file without delivering
  it again; the record is cleared once the removal is durable.  A file whose
  removal fails is never picked up again; removal is retried at every poll.  A file
  handed out whose commit did not happen (the store failed, the message was
  cancelled) is offered again by the next ``start_message``; until then no second
  ``start_message`` takes it.
* A picked-up file that cannot be read is skipped for the rest of the session so
  it cannot stall the others; empty files, dot files and symbolic links are never
  picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from spoolbox.contract import (
    BaseTransportSession,
    FailOneProvider,
    InboundWriter,
    LogonCaps,
    LogonFlags,
    MessageCancelled,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    StatusCode,
    SubmitFlags,
    Support,
)

__all__ = ["MaildirProvider", "MaildirSession", "status_for_error", "unique_name"]

ADDRESS_TYPE = "MAILDIR"
_OPTIONS = ("create", "pickup", "root")
_CHUNK = 65536
_NAME_TRIES = 100
#: Profile-section key prefix of picked-up files committed but not yet removed.
_PICKED = "picked:"
_NO_HARDLINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV}
)

#: errno -> (enhanced status, what it means); the class says failed (5) or deferred (4).
_ERRNO_STATUS: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("5.1.1", "no such maildir"),
    errno.ENOTDIR: ("5.1.1", "not a maildir"),
    errno.ENAMETOOLONG: ("5.1.3", "maildir path too long"),
    errno.EFBIG: ("5.3.4", "message too big for the file system"),
    errno.EACCES: ("4.2.0", "permission denied"),
    errno.EPERM: ("4.2.0", "operation not permitted"),
    errno.EROFS: ("4.3.0", "read-only file system"),
    errno.ENOSPC: ("4.3.1", "file system full"),
    errno.EDQUOT: ("4.2.2", "quota exceeded"),
}
_DEFAULT_STATUS = ("4.3.0", "file system error")

_counter = itertools.count(1)


def status_for_error(exc: OSError) -> tuple[str, str]:
    """The enhanced status code (RFC 3463) and a short reason for a delivery error.

    A code of class 5 fails the recipient for good, class 4 defers it.
    """
    return _ERRNO_STATUS.get(exc.errno or 0, _DEFAULT_STATUS)


def _hostname() -> str:
    return socket.gethostname() or "localhost"


def unique_name(host: str | None = None) -> str:
    """A Maildir file name: ``sec.M<usec>P<pid>Q<counter>.<host>``.

    The counter makes names from one process unique even within one microsecond;
    the pid and host make them unique across processes and machines.  ``/`` and
    ``:`` in the host name are written as ``\\057`` and ``\\072``, as the spec says.
    """
    usecs = time.time_ns() // 1000
    sec, usec = divmod(usecs, 1_000_000)
    where = (host or _hostname()).replace("/", "\\057").replace(":", "\\072")
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{where}"


class _BadDestination(ValueError):
    """A MAILDIR: value that names no acceptable maildir (status 5.1.3)."""


# -- configuration -----------------------------------------------------------------------
def _path_option(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise ValueError(
            f"maildir option {key!r} must be a path string, not {type(value).__name__}"
        )
    path = os.path.expanduser(os.fspath(value))
    if not isinstance(path, str) or not path:
        raise ValueError(f"maildir option {key!r} must be a non-empty path string")
    if not os.path.isabs(path):
        raise ValueError(f"maildir option {key!r} must be an absolute path, not {path!r}")
    return os.path.normpath(path)


@dataclass(frozen=True, slots=True)
class _Settings:
    root: str | None
    pickup: str | None
    create: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> _Settings:
        unknown = sorted(str(k) for k in config if k not in _OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown maildir option {unknown[0]!r}"
                + (f" (and {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else "")
                + f"; the options are: {', '.join(_OPTIONS)}"
            )
        create = config.get("create", True)
        if not isinstance(create, bool):
            raise ValueError(f"maildir option 'create' must be true or false, not {create!r}")
        return cls(_path_option(config, "root"), _path_option(config, "pickup"), create)

    def resolve(self, value: str) -> str:
        """The maildir a ``MAILDIR:`` value names, or :class:`_BadDestination`."""
        if self.root is None:
            if not os.path.isabs(value):
                raise _BadDestination(
                    f"{value!r} is not an absolute path (relative ones need the 'root' option)"
                )
            return os.path.normpath(value)
        path = os.path.normpath(os.path.join(self.root, value))
        prefix = self.root.rstrip(os.sep) + os.sep
        if path != self.root and not path.startswith(prefix):
            raise _BadDestination(f"{value!r} lies outside the maildir root {self.root}")
        return path


# -- blocking helpers (run through support.run_blocking) -----------------------------------
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(path: str) -> None:
    """Create ``path`` and missing parents (0o700), each made durable in its parent."""
    missing: list[str] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile, or a file: the delivery reports ENOTDIR
        _fsync_dir(os.path.dirname(d))


def _ensure_maildir(path: str, create: bool) -> None:
    if create:
        _mkdirs(path)
        for sub in ("tmp", "new", "cur"):
            _mkdirs(os.path.join(path, sub))
        return
    st = os.stat(path)  # FileNotFoundError -> 5.1.1
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)


#: A ``tmp/`` file not touched for this long is left over from a crash (the Maildir
#: specification's 36 hours): the first delivery of a session to a maildir removes it.
STALE_TMP_SECONDS = 36 * 3600


def _remove_stale_tmp(path: str, now: float) -> list[str]:
    """Remove the regular files in ``path/tmp`` not accessed or modified for
    STALE_TMP_SECONDS (left by a delivery cut off by a crash); returns their names."""
    removed: list[str] = []
    tmp = os.path.join(path, "tmp")
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return removed
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - max(st.st_atime, st.st_mtime) > (
                STALE_TMP_SECONDS
            ):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue  # gone meanwhile, or not ours to remove: leave it
    return removed


class _TmpFile:
    """One delivery in progress: ``tmp/<name>`` being written, then put into ``new/``.

    Every method runs in a worker thread; a lock keeps :meth:`abort` from closing
    the descriptor under a write still running in another thread after a cancel.
    """

    def __init__(self, maildir: str, host: str, name: str, fd: int) -> None:
        self._lock = threading.Lock()
        self.maildir = maildir
        self.host = host
        self.name = name
        self.tmp = os.path.join(maildir, "tmp", name)
        self._fd: int | None = fd
        self._tmp_exists = True

    @classmethod
    def create(cls, maildir: str, host: str) -> _TmpFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        for _ in range(_NAME_TRIES):
            name = unique_name(host)
            try:
                fd = os.open(os.path.join(maildir, "tmp", name), flags, 0o600)
            except FileExistsError:
                continue
            return cls(maildir, host, name, fd)
        raise FileExistsError(errno.EEXIST, "no unique name found", os.path.join(maildir, "tmp"))

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise ValueError("write to a delivery already finished")
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]

    def commit(self) -> str:
        """fsync, close, put into ``new/`` and fsync it; the path in ``new/``."""
        with self._lock:
            if self._fd is None:
                raise ValueError("commit of a delivery already finished")
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            final = self._publish()
            try:
                _fsync_dir(os.path.join(self.maildir, "new"))
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(final)  # not durable: take it back, the recipient is retried
                raise
            return final

    def _publish(self) -> str:
        new_dir = os.path.join(self.maildir, "new")
        name = self.name
        for _ in range(_NAME_TRIES):
            target = os.path.join(new_dir, name)
            try:
                os.link(self.tmp, target)
            except FileExistsError:
                name = unique_name(self.host)
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARDLINKS:
                    raise
                if os.path.lexists(target):
                    name = unique_name(self.host)
                    continue
                os.rename(self.tmp, target)  # a file system without hard links
                self._tmp_exists = False
                return target
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
                self._tmp_exists = False
            return target
        raise FileExistsError(errno.EEXIST, "no unique name found", new_dir)

    def abort(self) -> None:
        """Close and remove the ``tmp/`` file (best effort, idempotent)."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self._tmp_exists:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.tmp)
                self._tmp_exists = False


@dataclass(frozen=True, slots=True)
class _PickupFile:
    sub: str  # "new" or "cur"
    name: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        """The unique part of the name (a reader moving it to cur/ appends ``:2,...``)."""
        return self.name.split(":", 1)[0]

    @property
    def rel(self) -> str:
        return f"{self.sub}/{self.name}"

    def to_state(self) -> dict[str, str | int]:
        return {"sub": self.sub, "name": self.name, "size": self.size, "mtime": str(self.mtime_ns)}

    @classmethod
    def from_state(cls, value: Any) -> _PickupFile | None:
        try:
            f = cls(str(value["sub"]), str(value["name"]), int(value["size"]), int(value["mtime"]))
        except (TypeError, KeyError, ValueError):
            return None
        if f.sub not in ("new", "cur") or "/" in f.name or f.name in ("", ".", ".."):
            return None
        return f


def _scan_pickup(pickup: str) -> list[_PickupFile]:
    """Regular, non-empty, non-dot files of new/ and cur/, oldest first."""
    found: list[_PickupFile] = []
    for sub in ("new", "cur"):
        try:
            entries = os.scandir(os.path.join(pickup, sub))
        except FileNotFoundError:
            continue
        with entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_size > 0:
                    found.append(_PickupFile(sub, e.name, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda f: (f.mtime_ns, f.name))
    return found


def _remove_picked(pickup: str, f: _PickupFile) -> bool:
    """Remove the file picked up as ``f`` (also after a reader moved it to cur/) if it
    is still the same file (size and mtime); make the removal durable.  False if gone."""
    candidates = [os.path.join(pickup, f.sub, f.name)]
    with contextlib.suppress(FileNotFoundError), os.scandir(os.path.join(pickup, "cur")) as it:
        candidates += [e.path for e in it if e.name.split(":", 1)[0] == f.key]
    for path in candidates:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == f.size and st.st_mtime_ns == f.mtime_ns:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            _fsync_dir(os.path.dirname(path))
            return True
    return False


class _Source:
    """A picked-up file being read (in worker threads; see :class:`_TmpFile`)."""

    def __init__(self, fd: int) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = fd

    @classmethod
    def open(cls, path: str) -> _Source:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def read(self, size: int) -> bytes:
        with self._lock:
            if self._fd is None:
                return b""
            return os.read(self._fd, size)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)


async def _finally_blocking(support: Support, fn: Callable[[], None]) -> None:
    """Run cleanup ``fn`` off the loop; if cancelled meanwhile, finish it here."""
    try:
        await support.run_blocking(fn)
    except BaseException:
        fn()  # idempotent; a cancel arrived while the cleanup was on its way
        raise


def _line_ending(first: bytes) -> bytes:
    """The line ending the content uses (CRLF, RFC 5322's, when it cannot tell)."""
    i = first.find(b"\n")
    if i == -1 or first[i - 1 : i] == b"\r":
        return b"\r\n"
    return b"\n"


# -- the session ---------------------------------------------------------------------------------
class MaildirSession(BaseTransportSession):
    """One logon of the Maildir transport; see the module docstring."""

    ADDRESS_TYPES: ClassVar[Collection[str]] = (ADDRESS_TYPE,)

    def __init__(self, support: Support, settings: _Settings) -> None:
        super().__init__(support)
        self.settings = settings
        self._host = _hostname()
        self._pending: dict[str, _PickupFile] = {}  # handed out, commit not seen yet
        self._committed: dict[str, _PickupFile] = {}  # committed, removal not durable yet
        self._bad: dict[str, str] = {}  # unreadable this session -> why
        self._swept: set[str] = set()  # maildirs whose stale tmp/ files are gone
        self.counts = {"delivered": 0, "failed": 0, "deferred": 0, "received": 0}

    def __repr__(self) -> str:
        return f"<MaildirSession root={self.settings.root} pickup={self.settings.pickup}>"

    def capabilities(self) -> LogonCaps:
        return LogonCaps.SP_POLL if self.settings.pickup is not None else LogonCaps.NONE

    def describe(self) -> str:
        s = self.settings
        out = f"delivering into maildirs under {s.root}" if s.root else "delivering into maildirs"
        if s.pickup:
            out += f"; picking up from {s.pickup}"
        return out

    def status_object(self) -> Mapping[str, Any]:
        return {
            "root": self.settings.root,
            "pickup": self.settings.pickup,
            "create": self.settings.create,
            **self.counts,
            "pickup_pending_removal": len(self._committed),
            "pickup_skipped": dict(self._bad),
        }

    def _status(self, text: str) -> None:
        self.support.modify_status_row(status_string=text)

    async def _start(self) -> None:
        """Logon work: check the pickup maildir and finish removals a crash cut off."""
        pickup = self.settings.pickup
        if pickup is None:
            return
        run = self.support.run_blocking
        if self.settings.create:
            await run(_ensure_maildir, pickup, True)
        if not await run(os.path.isdir, os.path.join(pickup, "new")):
            raise FailOneProvider(
                f"pickup {pickup} is not a maildir (no new/ directory)"
                + ("" if self.settings.create else " and 'create' is false")
            )
        section = self.support.profile_section()
        for key, value in section.snapshot().items():
            if not key.startswith(_PICKED):
                continue
            f = _PickupFile.from_state(value)
            if f is None:
                await section.update({key: None})
            else:
                self._committed[f.key] = f
        await self._retry_removals()

    # -- outbound ---------------------------------------------------------------------
    async def submit_message(self, message: OutboundMessage, flags: SubmitFlags) -> None:
        results: list[RecipientResult] = []
        try:
            async for r in message.iter_recipients():
                if results:
                    await self.support.spooler_yield()  # MessageCancelled propagates
                results.append(await self._deliver(message, r))
        except (Exception, asyncio.CancelledError):
            if results:  # what is in new/ is delivered: say so, or it is sent twice
                await self._report(message, results)
            raise
        if results:
            await self._report(message, results)

    async def _report(self, message: OutboundMessage, results: list[RecipientResult]) -> None:
        await self.support.status_recips(message, results)
        last_error = ""
        last_path = ""
        for res in results:
            self.counts[str(res.outcome)] += 1
            if res.status.startswith("2"):
                last_path = res.diagnostic.removeprefix("maildir; delivered to ")
            else:
                last_error = res.diagnostic
        if last_error:
            self._status(f"{last_error} (delivered {self.counts['delivered']})")
        elif last_path:
            self._status(f"delivered {self.counts['delivered']}, last: {last_path}")

    async def _deliver(self, message: OutboundMessage, r: OutboundRecipient) -> RecipientResult:
        try:
            path = self.settings.resolve(r.value)
        except _BadDestination as exc:
            return RecipientResult.failed(r, f"maildir; {exc}", status="5.1.3")
        try:
            final = await self._write(message, r, path)
        except OSError as exc:
            status, reason = status_for_error(exc)
            text = f"maildir; {path}: {reason} ({exc.strerror or exc})"
            if status.startswith("5"):
                return RecipientResult.failed(r, text, status=status)
            return RecipientResult.deferred(r, text, status=status)
        return RecipientResult.delivered(r, f"maildir; delivered to {final}")

    def _trace(self, message: OutboundMessage, path: str, first: bytes) -> bytes:
        eol = _line_ending(first)
        sender = message.sender
        who = "" if sender is None else sender.value if sender.type == "SMTP" else str(sender)
        rp = f"<{who}>"
        lines = f"Return-Path: {rp}", f"Delivered-To: {ADDRESS_TYPE}:{path}"
        return b"".join(line.encode("utf-8", "backslashreplace") + eol for line in lines)

    async def _write(self, message: OutboundMessage, r: OutboundRecipient, path: str) -> str:
        run = self.support.run_blocking
        await run(_ensure_maildir, path, self.settings.create)
        if path not in self._swept:
            self._swept.add(path)
            removed = await run(_remove_stale_tmp, path, time.time())
            if removed:
                self.support.logger.info(
                    "maildir %s: removed %d tmp/ files left over from an interrupted "
                    "delivery (untouched for 36 hours)",
                    path,
                    len(removed),
                )
        tmp = await run(_TmpFile.create, path, self._host)
        try:
            first = True
            async for chunk in message.iter_content(_CHUNK):
                if first:
                    chunk = self._trace(message, path, chunk) + chunk
                    first = False
                await run(tmp.write, chunk)
            if first:  # no content at all: the trace lines alone
                await run(tmp.write, self._trace(message, path, b""))
            return await run(tmp.commit)
        except BaseException:
            await _finally_blocking(self.support, tmp.abort)
            raise

    # -- inbound ------------------------------------------------------------------------
    def _available(self, files: list[_PickupFile]) -> list[_PickupFile]:
        skip = self._committed.keys() | self._bad.keys()
        return [f for f in files if f.key not in skip]

    def _settle_pending(self) -> None:
        """Sort out the files earlier ``start_message`` calls handed out.

        The spooler calls ``start_message`` once at a time and commits (or drops)
        its message before the next call, so an earlier call's message is committed
        by now, or never will be.  A commit stores the
        ``picked:`` record with it (set_state), so the record tells which: committed
        files wait for their removal; the others are offered again.
        """
        section = self.support.profile_section()
        for key, f in list(self._pending.items()):
            del self._pending[key]
            if section.get(_PICKED + key) is not None:
                self._committed[key] = f

    async def poll(self) -> int:
        pickup = self.settings.pickup
        if pickup is None:
            return 0
        await self._retry_removals()
        files = await self.support.run_blocking(_scan_pickup, pickup)
        # Files handed out whose commit is not known yet count: if the commit failed,
        # the next start_message offers them again (poll must not decide that, as it
        # may run while a commit is still in progress).
        return len(self._available(files))

    async def start_message(self, message: InboundWriter) -> None:
        pickup = self.settings.pickup
        if pickup is None:
            return
        run = self.support.run_blocking
        self._settle_pending()
        files = self._available(await run(_scan_pickup, pickup))
        if not files:
            return
        f = files[0]
        self._pending[f.key] = f
        try:
            source = await run(_Source.open, os.path.join(pickup, f.sub, f.name))
        except FileNotFoundError:
            del self._pending[f.key]  # vanished (a reader took it): nothing delivered
            return
        except OSError as exc:
            self._skip(f, exc)
            raise
        try:
            while chunk := await run(source.read, _CHUNK):
                await message.write(chunk)
        except MessageCancelled:
            del self._pending[f.key]
            raise
        except Exception as exc:
            self._skip(f, exc)
            raise
        except BaseException:
            del self._pending[f.key]
            raise
        finally:
            await _finally_blocking(self.support, source.close)
        if message.size == 0:  # emptied since the scan: nothing to deliver
            del self._pending[f.key]
            return
        message.set_remote_id(f.name)
        message.set_state(_PICKED + f.key, f.to_state())

        async def committed() -> None:
            await self._picked_up(f)

        message.after_commit(committed)

    def _skip(self, f: _PickupFile, exc: BaseException) -> None:
        self._pending.pop(f.key, None)
        self._bad[f.key] = f"{type(exc).__name__}: {exc}"
        text = f"skipping pickup file {f.rel}: {exc}"
        self.support.logger.warning("%s", text)
        self._status(text)

    async def _picked_up(self, f: _PickupFile) -> None:
        """after_commit: the message is in the inbox; now remove its file."""
        self._pending.pop(f.key, None)
        self._committed[f.key] = f
        self.counts["received"] += 1
        if await self._remove(f):
            self._status(f"received {self.counts['received']}, last: {f.rel}")

    async def _remove(self, f: _PickupFile) -> bool:
        pickup = self.settings.pickup
        assert pickup is not None
        try:
            await self.support.run_blocking(_remove_picked, pickup, f)
        except OSError as exc:
            text = f"cannot remove picked-up {f.rel} (retrying at the next poll): {exc}"
            self.support.logger.warning("%s", text)
            self._status(text)
            return False
        await self.support.profile_section().update({_PICKED + f.key: None})
        self._committed.pop(f.key, None)
        return True

    async def _retry_removals(self) -> None:
        for f in list(self._committed.values()):
            await self._remove(f)


class MaildirProvider:
    """The Maildir transport provider (entry point ``maildir``)."""

    display_name: ClassVar[str] = "Maildir"

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> MaildirSession:
        settings = _Settings.from_config(config)
        session = MaildirSession(support, settings)
        support.modify_status_row(
            update=False, status_code=StatusCode.AVAILABLE, status_string=session.describe()
        )
        await session._start()
        return session

    async def shutdown(self) -> None:
        return None
