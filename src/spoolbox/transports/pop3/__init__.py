"""The POP3 transport (inbound only): fetch new mail from a POP3 maildrop.

The session polls (``LogonCaps.SP_POLL``) and serves no address type.  It uses the
standard library's :mod:`poplib`, which blocks, so every step runs in a worker
thread through ``support.run_blocking``; each step is bounded by ``timeout`` (the
socket timeout).

Configuration: ``host``, ``username``, ``password`` (required), ``port`` (995 with
``tls = "implicit"``, else 110), ``tls`` (``"implicit"`` default, ``"starttls"``
i.e. STLS, ``"none"``), ``verify`` (default true; false is logged), ``ca_file``,
``after_fetch`` (``"keep"`` default, or ``"delete"``), ``timeout`` (seconds per
network step, default 60), ``max_size`` (bytes, default and at most 256 MiB: a
larger message, by its LIST size, is left on the server, never deleted, not
fetched, and reported once per logon; it does not block the others).  An unknown
key or a value of the wrong type fails the logon with an
:class:`~spoolbox.contract.OptionError` (a :class:`ValueError`, from
:func:`~spoolbox.contract.read_options`) naming it.  The logon opens a session to
check the credentials: a wrong password fails the logon and the status row says
why.

Exactly once, across crashes: POP3 has no watermark, only unique ids (UIDL, which
the server must support).  The profile section keeps ``fetched_uidls``, the UIDLs of
the messages already in the inbox.  ``start_message`` takes the first message whose
UIDL is not in it and sets the new list (the old one pruned to the UIDLs still on
the server, plus the new one) with ``writer.set_state``: it commits in the same
transaction as the inbox message, so a crash keeps both or neither.

Sessions: POP3 applies DELE only at QUIT, and a session sees the maildrop as it was
at login.  So each ``poll`` and each ``start_message`` opens its own session:
``poll`` lists the UIDLs and QUITs; ``start_message`` RETRs one message and, with
``keep``, QUITs at once.  With ``delete`` the session stays open until the message
is committed: its ``after_commit`` callback sends DELE and QUIT (one message per
session, so a deletion never waits for a batch).  If the commit does not happen,
the session is dropped without QUIT and nothing is deleted.  After a crash between
the commit and the QUIT the message is still on the server but its UIDL is in
``fetched_uidls``: the next ``poll`` deletes it without fetching it again.

The package: :mod:`.wire` (the blocking poplib steps, and the answers read) and
:mod:`.session` (the session and the provider).
"""

from .session import POP3Provider, POP3Session

__all__ = ["POP3Provider", "POP3Session"]
