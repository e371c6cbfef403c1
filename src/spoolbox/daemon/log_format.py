"""The daemon's log formats, ``[log] format``: ``text``, ``journald`` and ``json``.

* ``text``: ``2026-12-03 07:12:01,532 INFO spoolbox.delivery: 3Fz9...: to=<...>, ...``
* ``journald``: a priority prefix as sd-daemon(3) reads it (``<3>`` error, ``<4>``
  warning, ``<6>`` info, ``<7>`` debug) and no time stamp (the journal has its own):
  ``<6>spoolbox.delivery: 3Fz9...: to=<...>, ...``; every line of a multi-line record
  (a traceback) gets the prefix, since the journal reads each line as an entry.
* ``json``: one object per line with ``ts`` (RFC 3339, UTC), ``level``, ``logger``,
  ``msg``, the structured fields a record carries (a delivery line's ``id``, ``to``,
  ``transport``, ``relay``, ``delay``, ``dsn``, ``status``, ``response``) and
  ``exc`` (the traceback) when there is one.

``auto`` (the default) is ``journald`` when stderr is the journal's stream (systemd sets
``JOURNAL_STREAM`` to the ``device:inode`` of the stream it connects) and ``text``
otherwise.  Redaction happens before formatting (:class:`~.runtime.RedactingFilter`),
the same for every format.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FIELDS_ATTR",
    "JournaldFormatter",
    "JsonFormatter",
    "TextFormatter",
    "choose_format",
    "make_formatter",
    "on_journal",
]

#: The LogRecord attribute holding a record's structured fields (``extra=``).
FIELDS_ATTR = "spoolbox_fields"

_TEXT = "%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"


def on_journal(environ: Mapping[str, str], fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal: ``JOURNAL_STREAM``
    (``device:inode``) names it (systemd.exec(5))."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def choose_format(configured: str, environ: Mapping[str, str], fd: int = 2) -> str:
    """The format to use: the profile's, or for ``auto`` journald under the journal."""
    if configured != "auto":
        return configured
    return "journald" if on_journal(environ, fd) else "text"


def _priority(levelno: int) -> int:
    """A logging level as a syslog priority (sd-daemon(3))."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` whose time stamp's date and time are formatted once a second
    (``time.strftime`` was a good part of a delivery line's cost, one a message)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        msec = self.default_msec_format
        return msec % (self._stamp, record.msecs) if msec else self._stamp


class JournaldFormatter(logging.Formatter):
    """``<N>logger: message``, each line of it prefixed; no time stamp."""

    def __init__(self, tag: str = "") -> None:
        super().__init__(f"%(name)s{tag}: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line; ``extra`` holds constant keys (the
    listener worker's name and pid)."""

    def __init__(self, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._extra = dict(extra or {})

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        obj.update(self._extra)
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                obj.setdefault(str(key), value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        return json.dumps(obj, ensure_ascii=False, default=str)


def _literal(text: str) -> str:
    """``text`` as it stands in a %-style format string."""
    return text.replace("%", "%%")


def make_formatter(
    fmt: str, *, worker: str | None = None, delivery: str | None = None
) -> logging.Formatter:
    """The formatter for ``fmt`` (``text``, ``journald`` or ``json``); ``worker`` names
    a listener worker process, ``delivery`` a delivery worker (``w1``), shown in each
    line: ``spoolbox.delivery[w1]: ...``, or the ``worker`` field in JSON."""
    pid = os.getpid()  # (a constant of the process: no record's pid looked up)
    tag = f" [listener {_literal(worker)} pid {pid}]" if worker else ""
    extra: dict[str, Any] | None = {"listener": worker, "pid": pid} if worker else None
    if delivery:
        tag = f"[{_literal(delivery)}]"
        extra = {"worker": delivery, "pid": pid}
    if fmt == "journald":
        return JournaldFormatter(tag)
    if fmt == "json":
        return JsonFormatter(extra)
    if fmt == "text":
        return TextFormatter(_TEXT.format(tag=tag))
    raise ValueError(f'unknown log format {fmt!r}: expected "text", "journald" or "json"')
