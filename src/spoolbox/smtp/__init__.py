"""SMTP (RFC 5321) as pure state machines, no I/O: the server side and the client side.

``server`` is the listener's dialogue (bytes in, events out); the I/O around it lives in
:mod:`spoolbox.ingress`.  Nothing here imports the rest of spoolbox.
"""
