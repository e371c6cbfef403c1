"""SMTP (RFC 5321) as pure state machines, no I/O: the server side and the client side.

* ``server``: the submission listener's dialogue (bytes in, events out); its I/O is
  :mod:`spoolbox.ingress.listener`.
* ``client``: the SMTP transport's dialogue (commands in, bytes out; bytes in, events
  out); its I/O is :mod:`spoolbox.transports.smtp`.
* ``replies``: the reply reader and what a diagnostic takes from a reply; ``data``: the
  DATA stream encoder.

Nothing here imports the rest of spoolbox.
"""
