"""The maildrop: where a user who may reach the daemon but not write its store (a
member of ``[daemon] socket_group``: a web application's user, their cron jobs)
leaves mail while the daemon is down, as Postfix's ``postdrop`` leaves it in
``maildrop/``.  The daemon takes it in when it runs (:mod:`spoolbox.daemon.maildrop`).

The directory (``[daemon] maildrop``) belongs to the daemon's user and to
``socket_group``, mode ``1730``: the group may create files there and nothing else
(it cannot list the directory, so it cannot find another user's files, and cannot
rename or remove them: the sticky bit); other users cannot enter it.  A drop file is
mode ``0644``, so that the daemon's user reads it whoever wrote it: behind the
directory only the group reaches it, and only by its name, which has 64 random bits.
(No setgid bit: systemd's ``RestrictSUIDSGID=yes``, in the shipped unit, forbids
setting it.)

One drop is one file holding one or more messages, all taken in one transaction or
none: :data:`MAGIC`, a line of JSON ``{"messages": [ARGS, ...]}`` whose ``ARGS`` are
the local API's ``submit`` arguments without the content and with its ``size``, then
the contents one after the other.  It is written under a name starting with ``.``,
synced and renamed into place, so the daemon never sees half of one.  The file's
owner is what the daemon logs as the sender (``from uid 33``): the contents are taken
as the local API takes them from the same user.

Durability: the file is fsynced before the rename; the directory cannot be (the group
may not open it), so a power cut within moments of a drop may lose the rename, as
with Postfix's maildrop.  Once the daemon has taken the messages, they are in the
store and the file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from ..model import AddressError, MessageError, NewMessage
from .wire import ApiError, message_args, message_from_args

__all__ = [
    "MAGIC",
    "MAX_DROP",
    "MAX_HEADER",
    "DropError",
    "decode_drop",
    "drop",
    "encode_drop",
    "is_drop_name",
]

MAGIC = b"spoolbox-maildrop 1\n"
#: The largest drop file the daemon reads (its messages' contents and the header).
MAX_DROP = 256 * 2**20
#: The longest JSON line (the messages' envelopes) the daemon reads.
MAX_HEADER = 4 * 2**20
#: The mode of a drop file: the owner writes, the daemon reads (module doc).
FILE_MODE = 0o644


class DropError(ValueError):
    """A drop file that is not one (the text says what is wrong)."""


def encode_drop(messages: Sequence[NewMessage]) -> bytes:
    """The bytes of a drop file holding ``messages``."""
    if not messages:
        raise ValueError("a drop holds at least one message")
    head = [{**message_args(m, content=False), "size": len(m.content)} for m in messages]
    line = json.dumps({"messages": head}, separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, line, b"\n", *(m.content for m in messages)])


def decode_drop(data: bytes) -> list[NewMessage]:
    """The messages of a drop file; :class:`DropError` saying what is wrong."""
    if not data.startswith(MAGIC):
        raise DropError(f"not a drop file (it does not start with {MAGIC!r})")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER + 1)
    if end < 0:
        raise DropError(f"no end to the envelope line within {MAX_HEADER} bytes")
    try:
        head = json.loads(data[len(MAGIC) : end])
    except (UnicodeDecodeError, ValueError) as exc:
        raise DropError(f"the envelope line is not JSON: {exc}") from None
    entries = head.get("messages") if isinstance(head, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DropError('the envelope line is not {"messages": [...]} with a message')
    at = end + 1
    messages = []
    for index, args in enumerate(entries):
        if not isinstance(args, dict):
            raise DropError(f"message #{index + 1}: its envelope is not an object")
        size = args.pop("size", None)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DropError(f"message #{index + 1}: no size (a whole number of bytes)")
        if at + size > len(data):
            raise DropError(
                f"message #{index + 1}: {size} bytes said, {len(data) - at} left (cut short?)"
            )
        try:
            messages.append(message_from_args({**args, "content": data[at : at + size]}))
        except (ApiError, AddressError, MessageError, ValueError) as exc:
            raise DropError(f"message #{index + 1}: {exc}") from None
        at += size
    if at != len(data):
        raise DropError(f"{len(data) - at} bytes after the last message")
    return messages


def drop(directory: Path, messages: Sequence[NewMessage]) -> Path:
    """Leave ``messages`` in the maildrop ``directory`` (one file, synced, renamed into
    place); the file's path.  OSError if the directory does not take it."""
    data = encode_drop(messages)
    name = f"{time.time_ns()}.{os.getpid()}.{secrets.token_hex(8)}"
    temporary = directory / f".{name}"
    final = directory / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, FILE_MODE)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask took away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return final


def is_drop_name(name: str) -> bool:
    """Whether ``name`` is a finished drop's (not one being written: ``.NAME``)."""
    return bool(name) and not name.startswith(".") and name.isascii() and "/" not in name
