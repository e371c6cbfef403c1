"""The SMS transport: short messages over a GSM modem (AT commands, PDU mode).

Recipients of the address type ``SMS`` (``SMS:+15551234567``) are sent with
``AT+CMGS`` in PDU mode (3GPP TS 27.005); messages the SIM receives land in the
inbox.  The modem is opened with pyserial-asyncio-fast, so its unsolicited codes
(new message, status report, registration) are read as they come on the event
loop (docs/providers.md, "The SMS transport", says why not pyserial in a thread).

Options (``[transports.options]``): ``port`` (required: the serial device),
``baudrate`` (115200), ``pin`` (a secret: ``pin_env`` / ``pin_file`` in the profile;
asked only if the SIM wants one), ``timeout`` (seconds per AT command, 10),
``send_timeout`` (seconds for one AT+CMGS exchange, 30), ``max_parts`` (parts of a
concatenated SMS, 1-255, default 3), ``text`` (what of a mail becomes the text:
``"subject+body"``, ``"subject"`` or ``"body"``; :mod:`.text`), ``validity``
(seconds the centre keeps trying, 86400), ``delivery_reports`` (false: a recipient
is delivered once the centre accepts the SMS; true: once its status report says so),
``report_timeout`` (86400: a recipient whose report has not come by then is
delivered with a diagnostic saying so), ``check_interval`` (seconds between
registration and signal checks, 60).

Guarantees:

* **Sending.** Each ``AT+CMGS`` exchange (one part) runs in a critical section and
  nothing else does; between recipients the session yields.  ``+CMS ERROR``
  codes are classified (:mod:`.errors`): a permanent one fails the recipient with
  the code in its report, a temporary one (no network, busy, network timeout)
  defers it; a modem that does not answer defers it and is initialised again
  before its next use.  After a crash between the modem's ``+CMGS`` and the
  spooler's commit the SMS is sent again (at least once: no modem can say whether a
  lost exchange went out).
* **Delivery reports** (``delivery_reports = true``): a sent recipient is parked
  (``DONT_RESEND``) with its message references recorded in the profile section;
  each ``+CDS`` report is matched to it, and once every part's report is in, the
  message is asked back (``SENTDEFERRED``) and the recipient reported delivered or
  failed.
* **Receiving, exactly once.** ``+CMTI`` raises NEWMAIL; ``poll`` and each
  ``start_message`` list the SIM (``AT+CMGL=4``).  A message (all parts of a
  concatenated one) goes into the inbox with its key recorded in the same
  transaction (``set_state``), and is deleted from the SIM (``AT+CMGD``) only after
  the commit.  A key found on the SIM again is already in the inbox: it is deleted,
  not delivered twice.
* **The line.** Registration (``+CREG``) and signal (``+CSQ``) are in the status row.
  When the network comes back after a loss the session sets ``OUTBOUND_FLUSH`` on
  its row (a provider-initiated flush), so that deferred SMS go out at once.

The package: :mod:`.gsm7` and :mod:`.pdu` (the codec), :mod:`.modem` (the AT
channel), :mod:`.errors`, :mod:`.line`, :mod:`.ledger`, :mod:`.text` (pure
decisions), :mod:`.session` (the session and provider), :mod:`.simulator` (a modem on
a pseudo-terminal, for the tests and the demo).
"""

from .session import SMSProvider, SMSSession

__all__ = ["SMSProvider", "SMSSession"]
