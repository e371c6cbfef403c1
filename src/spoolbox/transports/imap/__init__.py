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

The options are read by :func:`~spoolbox.contract.read_options` (into
``IMAPOptions``, in :mod:`spoolbox.transports._mailbox`): an unknown key or a value
of the wrong type fails the logon with an :class:`~spoolbox.contract.OptionError`
(a :class:`ValueError`) that names the key; the password never appears in it.

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
session after repeated failures, and calls again later).  A command in flight when
the server closes the connection fails at once, as a ``ConnectionResetError`` naming
the command (aioimaplib alone would leave it waiting for ``timeout`` and report a
timeout).  What the server sends is bounded (:mod:`.lines`): for a ``UID FETCH``
twice the ``RFC822.SIZE`` it announced (plus a little), 64 MiB for any other
command; past that the connection is dropped and the fetch fails, saying so
(aioimaplib would hold any amount in memory, and a server whose sizes lie would
get past ``max_size``).  The UIDs of such a fetch are fetched one at a time from
then on; the one the server lies about, cut off alone, is left on the server and
recorded as a message over ``max_size`` is (``skipped_uids``; the log and the status
row say "the server sent far more than the N bytes it announced"), and the rest of
the folder comes in: it is not held behind that message at every poll.  With
``tls = "starttls"``, bytes after the STARTTLS answer, sent in the clear, are
refused before TLS starts (STARTTLS command injection).
When ``start_message`` delivers a message and more are waiting, it raises NEWMAIL
again so the spooler comes back for the next without waiting for its next poll.

The IDLE connection (option ``idle``, when the server offers it) is watched for its
loss as well as for the server's pushes: dropped by the server (a restart, ``doveadm
kick``), it is made again at once rather than when its IDLE would have been renewed.
aioimaplib's parser gets what arrives a few hundred lines at a time
(:mod:`.lines`): a read of thousands of lines (another client expunging a large
folder while this connection idles) no longer overflows its recursion, which closed
the connection with a fatal error in the log.

The package: :mod:`.wire` (IMAP's text: commands and answers, no I/O),
:mod:`.connection` (one connection and its commands), :mod:`.lines` (aioimaplib's
parser fed a few hundred lines at a time), :mod:`.state` (the durable
record in the profile section), :mod:`.idle` (IDLE), :mod:`.session` (the session)
and :mod:`.provider` (the provider; it loads without aioimaplib, the ``imap`` extra,
and its logon then fails saying so).
"""

from typing import Any

from .provider import IMAPProvider

__all__ = ["IMAPProvider", "IMAPSession"]


def __getattr__(name: str) -> Any:
    # IMAPSession on first use: its module imports aioimaplib (the ``imap`` extra),
    # which the provider, and so the entry point, does without.
    if name == "IMAPSession":
        from .session import IMAPSession

        return IMAPSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
