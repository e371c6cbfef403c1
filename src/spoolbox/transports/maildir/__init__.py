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
``pickup/new`` and ``pickup/cur`` is a message.  Between polls it looks at the
modification times of those two directories every second and raises NEWMAIL when
they change, so a file dropped there comes in within about a second, not at the
next poll (``poll_interval``, a minute by default).  ``start_message`` takes the oldest
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

The options are read by :func:`~spoolbox.contract.read_options`: an unknown key or
a value of the wrong type fails the logon with an
:class:`~spoolbox.contract.OptionError` (a :class:`ValueError`) that names the key.

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

The package: :mod:`.settings` (the options; where a recipient may deliver),
:mod:`.naming` (Maildir file names), :mod:`.files` (shared blocking file-system
steps), :mod:`.delivery` (outbound), :mod:`.pickup` (inbound) and :mod:`.session`
(the session and the provider).
"""

from .delivery import status_for_error
from .naming import unique_name
from .session import ADDRESS_TYPE as ADDRESS_TYPE
from .session import MaildirProvider, MaildirSession

__all__ = ["MaildirProvider", "MaildirSession", "status_for_error", "unique_name"]
