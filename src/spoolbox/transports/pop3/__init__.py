"""The POP3 transport (inbound only): fetch new mail from a POP3 maildrop.

The session polls (``LogonCaps.SP_POLL``) and serves no address type.  It speaks
POP3 itself on an asyncio connection (:mod:`.wire`; the answers read by the sans-IO
:mod:`.reader`), each read and write bounded by ``timeout``: the standard library's
:mod:`poplib` refuses lines over 2,048 bytes (a message with one, common in HTML
mail, could never be fetched) and reads an answer of any size into memory.  A
``RETR`` may run to ``max_size`` (plus 64 KiB); a server that sends more for a
message its ``LIST`` gave a smaller size is cut off, and the message is skipped like
one over ``max_size``.

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
the server must support).  The profile section keeps one key per message already in
the inbox, ``uidl:<UIDL>``.  ``start_message`` hands out a message whose UIDL has no
key and sets its key with ``writer.set_state``: it commits in the same transaction
as the inbox message, so a crash keeps both or neither.  Each ``poll`` forgets the
keys of UIDLs no longer on the server.  (Earlier versions kept one list,
``fetched_uidls``, rewritten with every message; it is read, and the next poll
turns it into keys.)

Sessions: POP3 applies DELE only at QUIT, and a session sees the maildrop as it was
at login.  ``poll`` opens its own session: it lists the UIDLs, deletes (with
``delete``) what is in the inbox but still on the server, and QUITs.  The messages
are fetched by one session that lists the maildrop once and hands out one message
per ``start_message`` (``SP_INBOUND_BATCH``: the spooler commits them in batches);
when the server offers PIPELINING (its ``CAPA``) it RETRs up to ``PREFETCH`` (32)
messages, ``PREFETCH_BYTES`` by their ``LIST`` sizes, in one write, else one at a
time: one round trip per message is the whole rate from a distant server.  With
``delete``, each message's ``after_commit`` records its number; the session sends
the DELEs (pipelined too) and QUIT, which applies them, once nothing it handed out
waits for its commit and it has handed out everything it listed, or
``DELETES_PER_SESSION`` messages were committed; the next ``start_message`` opens a
new one.  A session unused for ``SESSION_IDLE`` seconds, or still open at the next
``poll`` or at logoff, is ended the same way.  If a commit does not happen the
message is offered again; a session that must end while a message waits for its
commit is dropped without QUIT, and nothing is deleted.  After a crash before the
QUIT the messages are still on the server but their UIDLs are in the section: the
next ``poll`` deletes them without fetching them again.  An empty message (nothing
to put in the inbox) is left on the server and reported, like one over
``max_size``.

A server that lists one UIDL for several messages (RFC 1939 forbids it; a broken
maildrop) is reported once per logon: the first of them is fetched, the others
never, and the key of the one fetched says ``SHARED``, so that no poll deletes by
that UIDL what was never fetched (also once the fetched one is gone).

The package: :mod:`.reader` (the answers, from bytes, bounded), :mod:`.wire` (the
connection, its commands, the UIDL and LIST readers) and :mod:`.session` (the
session and the provider).
"""

from .session import POP3Provider, POP3Session

__all__ = ["POP3Provider", "POP3Session"]
