"""The SMTP transport (address type ``SMTP``): outbound relay through a smart host, or
direct delivery to each domain's mail servers.

Every recipient ``SMTP:bob@example.org`` is relayed to one configured smart host, or
with ``delivery = "mx"`` delivered to the servers the MX records of ``example.org``
name (below, "Direct delivery"): ``MAIL FROM`` is the message's sender: an ``SMTP:`` address as it
is, ``<>`` when it has none (delivery reports), a local sender of another type
(``MAILDIR:postmaster``, ``spoolbox init``'s default) qualified with the profile's
``hostname`` (``postmaster@HOST``, as Postfix appends ``myorigin`` and as ``spoolbox
send`` writes its From), ``<>`` for one with no such form; one ``RCPT TO`` per
recipient this transport is responsible for, then ``DATA`` with the content byte for
byte (dot stuffed, bare CR and LF written as CRLF, as RFC 5321 asks); to a server
that offers CHUNKING (RFC 3030), a message held whole (up to 1 MiB) goes as ``BDAT
<n> LAST`` with the same octets (CRLF line endings, no dot stuffing), with
PIPELINING in the same write as MAIL and RCPT: one round trip a message.

The logon reads the settings; connections are made when there is mail to send, and
kept for the next message (``max_connections`` at most) until unused for
``idle_timeout``.  ``validate_state`` (``Spooler.validate_state``,
``spoolbox check``) connects at once: greeting, EHLO, STARTTLS and AUTH as configured,
the connection kept for the next message; a smart host that cannot be reached raises
:class:`~spoolbox.contract.NetworkError` with the reason, and the status row shows
FAILURE with it, as after a send.

Configuration (the transport's ``options`` in the profile):

``delivery``
    ``"relay"`` (the default: everything to ``host``) or ``"mx"`` (each domain to
    its own servers; no ``host``, ``username`` or ``password``).
``host``
    The smart host (name or IP address).  Required with ``delivery = "relay"``:
    without it the logon fails with :class:`~spoolbox.contract.Unconfigured`.
``port``
    Default 25; 587 for ``tls="starttls"``, 465 for ``tls="implicit"`` (with
    ``delivery = "mx"``, 25 whatever ``tls`` is: every server's port).
``tls``
    ``"starttls"`` (the default of a relay: the server must offer STARTTLS, or every
    recipient is deferred with 4.7.10), ``"implicit"`` (TLS from the first byte, RFC
    8314), ``"opportunistic"`` (the default of ``delivery = "mx"``: STARTTLS when the
    server offers it, any certificate taken, as RFC 7435 and Postfix's ``may``; a
    server whose TLS handshake fails is tried again at once without TLS) or
    ``"none"``.
``verify``
    Bool, default true: check the server's certificate and host name.  ``false``
    must be written out, and is logged at WARNING once at logon.  ``tls =
    "opportunistic"`` checks none (``verify = true`` with it is refused).
``nameservers``, ``dns_timeout``
    ``delivery = "mx"`` only: the DNS servers to ask (``"192.0.2.53"``,
    ``"192.0.2.53:5353"``, ``"[2001:db8::53]:53"``; default: the system's,
    ``/etc/resolv.conf``) and how long a domain's lookups may take (default 10 s).
``mta_sts``, ``mta_sts_port``
    ``delivery = "mx"`` only: follow the domains' MTA-STS policies (RFC 8461; default
    true; :mod:`.mta_sts`), fetched from ``https://mta-sts.<domain>`` on this port
    (default 443).
``dane``
    ``delivery = "mx"`` only: follow the MX hosts' DNSSEC-signed TLSA records (RFC
    7672; default false; :mod:`.dane`); ``nameservers`` must be a validating
    resolver (its AD bit is trusted).
``ca_file``
    A PEM bundle of the certificate authorities to trust instead of the system's
    (with ``delivery = "mx"``: for MTA-STS's policy servers and the MX hosts an
    ``enforce`` policy names).
``username``, ``password``
    AUTH credentials (both or neither).  Only over TLS, unless
    ``allow_plain_auth`` is true: with ``tls="none"`` the logon is refused with a
    :class:`ValueError` saying so.
``helo_name``
    The name sent in EHLO/HELO (default: the profile's ``hostname``, which the
    session reads as ``Support.hostname``).
``chunking``
    Bool, default true: BDAT to a server that offers CHUNKING (above).  A server
    that offers it and answers BDAT as an unknown command (500, 502, 504) gets that
    message deferred (4.5.0, the connection closed: it may have read the content as
    commands) and DATA from then on; ``false`` sends DATA to every server.  The
    status object's ``sent_with_bdat`` counts the messages taken with BDAT.
``max_connections``
    Default 10 (100 with ``delivery = "mx"``, Postfix's ``default_process_limit``):
    the size of the connection pool, which is also the number of messages the
    spooler may hand this session at once (``concurrency``), i.e. the concurrency
    limit towards the smart host (docs/benchmarks.md, "Shipped defaults", has the
    measurement that chose it).
``idle_timeout``
    Seconds, default 30 (10 with ``delivery = "mx"``): a connection unused this long
    is closed with QUIT, so that a smart host is not held for mail that is not
    coming (servers drop an idle client after 60 s to 5 minutes themselves; Postfix
    keeps one 2 s).  The idle connections are looked at every 5 s (or half the
    ``idle_timeout``): those the server closed meanwhile are dropped then too, and
    the status row says ``idle, relaying via ...`` instead of ``connected to ...``.
``destination_concurrency``
    ``delivery = "mx"`` only: how many of those messages may be for one domain at
    once (default 20, Postfix's ``default_destination_concurrency_limit``; half of a
    ``max_connections`` under 40, rounded up).  A long queue for
    one domain (a newsletter to one big provider, a domain whose servers are slow)
    then leaves the other connections to the mail for other domains: the spooler
    claims the mail behind it in the queue instead of waiting.  Equal to
    ``max_connections``, one domain may have them all, as before.
``destination_rate_delay``
    ``delivery = "mx"`` only: seconds between the end of one message to a domain and
    the start of the next (default 0: none), for receivers that take mail from one
    sender only so fast; one message at a time to each domain then, whatever
    ``destination_concurrency`` says (Postfix's ``default_destination_rate_delay``).
    The other domains' mail goes meanwhile.
``command_timeout``, ``data_timeout``
    Seconds.  ``command_timeout`` (default 60) bounds the wait for the greeting and
    for the reply to every command (EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, RSET,
    QUIT): a smart host that hangs (after AUTH, say) defers the recipients with
    "timed out after 60 s waiting for the reply of host:587 to MAIL FROM:<...>"
    instead of holding the message.  ``data_timeout`` bounds each data block and the
    reply to the final dot; without it they are RFC 5321 section 4.5.3.2's 180 s and
    600 s (a server may scan the message before it answers; giving up then risks a
    duplicate).  RFC 5321 asks 5 minutes for the command replies, which suits a
    queue run better than a smart host a user waits for: set 300 to have them.
``timeouts``
    Finer, per step: a mapping of step to seconds, or the individual keys
    ``connect_timeout``, ``greeting_timeout``, ``mail_timeout``, ``rcpt_timeout``,
    ``data_init_timeout``, ``data_block_timeout`` and ``data_term_timeout``; they
    override the two above.  ``connect`` (30 s) bounds name resolution plus the TCP
    connection.  EHLO, STARTTLS, AUTH, RSET and QUIT use the MAIL timeout.
``max_message_size``
    Optional byte limit of our own: larger messages fail with 5.3.4 before any
    connection is made.  A server's ``SIZE`` announcement is honoured the same way
    (5.3.4 before ``MAIL FROM``).

An unknown key or a value of the wrong type fails the logon with a
:class:`ValueError` that names the key.

Results (one ``status_recips`` call per message):

* ``250``/``251`` to RCPT and ``250`` after the final dot: delivered, diagnostic
  ``smtp; 250 2.0.0 ...``, status from the reply's enhanced code (else 2.0.0),
  ``remote_mta`` ``dns; <host>``.
* ``4xx`` to RCPT: that recipient deferred with the reply's enhanced code (else
  4.0.0); ``5xx``: failed (enhanced code, else 5.0.0).
* ``4xx``/``5xx`` to MAIL, DATA or the final dot: every recipient still open
  deferred or failed accordingly.
* A timeout (4.4.1, "timed out after N s waiting for ...") or a dropped
  connection (4.4.2) at any point after the connection was made defers every
  recipient not yet delivered; a connection that cannot be made defers them with
  4.4.1; a certificate that does not verify with 4.7.5, another TLS failure with
  4.7.0; a malformed or oversized reply with
  4.5.0; a refused AUTH (one mechanism is tried: PLAIN, LOGIN or CRAM-MD5) with the
  reply's code made class 4 (a credentials problem is fixed by an administrator,
  not by bouncing the mail), e.g. 4.7.8.  A ``421`` reply at any step defers what is
  left with the server's text.
  Nothing is reported delivered before the server answered ``250`` to the final
  dot, so a connection lost in the middle of DATA leaves the message queued.
* Addresses that cannot go into a command line (spaces, control characters, ``<``
  or ``>``) fail with 5.1.3; non-ASCII addresses need the server's SMTPUTF8 (else 5.6.7).
* A connection that cannot be made or logged in to (connect, greeting, EHLO, TLS or
  AUTH failed) also sets FAILURE on the transport's status row, with the reason in its
  status text ("cannot relay via host:port: ..."); the next connection made clears it.
  The spooler logs the change both ways, once.

PIPELINING (RFC 2920): when the server's EHLO reply lists it, ``MAIL FROM``, every
``RCPT TO`` and ``DATA`` go out in one write and their replies are read in order,
then (after ``354``) the content and the final dot in one write (content over
``_WHOLE_LIMIT`` is streamed in chunks, the final dot with the last one): two round
trips per message.  The results are those of the dialogue command by command; after
a refused ``MAIL`` the replies to the RCPTs and DATA sent with it are read (and the
connection kept if they are errors, as they should be); when every recipient was
refused but ``DATA`` got ``354`` only the final dot is sent (RFC 2920 section 3.1).
The dialogue is :class:`spoolbox.smtp.client.ClientMachine` (pure, tested by feeding it
bytes); this package is its I/O on an asyncio protocol (``connection.Link``).  Without
PIPELINING each command waits for the reply to the one before.

Connections are pooled: a connection is reused for the next message (after an
``RSET`` that also proves it still alive; a dead one is replaced silently), dropped
after any error, and closed (``QUIT``) at logoff.  ``transport_notify(CANCEL_MESSAGE,
ref)`` closes the connection of the message being sent, so the send stops at once
and the message ends cancelled (unless the server had already accepted it).

Hostile servers: every network step has its timeout; a reply longer than 32 KiB (a
line longer than 8 KiB; so an endless ``250-`` reply ends quickly), a line that is not
a reply, a reply nobody asked for or octets after ``220`` to STARTTLS are a protocol
error (4.5.0); reply text is cleaned (8-bit junk decoded with replacement characters,
control characters removed) before it goes into a diagnostic or the status row.

Direct delivery (``delivery = "mx"``, the ``mx`` extra: dnspython).  A message's
recipients are grouped by domain, one transaction per domain.  :mod:`.mx` finds a
domain's servers: its MX hosts by preference (equal ones in random order), each
host's IPv4 then IPv6 addresses, at most five addresses; a domain without MX records
is its own server; an address literal (``bob@[192.0.2.1]``) needs no lookup.  The
first server that takes the connection (greeting, EHLO, TLS) gets the transaction; a
server that cannot be reached, or refuses at the greeting, EHLO or TLS, passes the
mail to the next, and is not tried again for 60 s (``_MX_DEAD_FOR`` in ``session``);
a reply in the transaction (a 550 to RCPT, a 451 to DATA) is the result, as from a
smart host.  A flush (``flush_queues`` with UPLOAD) forgets the servers held back and
the DNS answers kept.  DNS says no (NXDOMAIN, no MX and no address, not a
domain name): failed, 5.1.2; a null MX (RFC 7505): failed, 5.1.10; DNS does not
answer (timeout, SERVFAIL, REFUSED): deferred, 4.4.3; MX hosts without addresses:
deferred, 4.4.4; no server could be used: deferred with each one's reason.  A server
that answers EHLO with this host's own name is this host: the mail fails with 5.4.6
instead of looping.  Answers are kept for their DNS time to live (at most 5
minutes); a connection to a server is kept for the next message to it and closed
(QUIT) after 10 s idle.  ``validate_state`` connects nowhere (there is no one
server), and the transport's row never shows FAILURE for one domain's servers.

The package: ``settings`` (the options), ``failures`` (replies and network errors as
results), ``connection`` (one connection: the machine on its ``Link`` protocol, with its
timeouts, and the opening dialogue), ``pool`` (the connection pool), ``mx`` (a
domain's servers from DNS), ``session`` (a message's transaction and its results),
``provider`` (logon).
"""

from __future__ import annotations

from spoolbox.smtp.data import DataEncoder
from spoolbox.smtp.replies import clean_text, enhanced_status, reply_text

from .provider import SMTPProvider
from .session import ADDRESS_TYPE, SMTPSession
from .settings import DEFAULT_TIMEOUTS, SMTPSettings

__all__ = [
    "ADDRESS_TYPE",
    "DEFAULT_TIMEOUTS",
    "DataEncoder",
    "SMTPProvider",
    "SMTPSession",
    "SMTPSettings",
    "clean_text",
    "enhanced_status",
    "reply_text",
]
