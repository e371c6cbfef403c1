"""The built-in spooler hooks, each an entry point of ``spoolbox.hooks``:

* ``dkim`` (:mod:`.dkim`): DKIM-signs outbound mail (RSA-SHA256, Ed25519-SHA256;
  needs the ``dkim`` extra);
* ``headers`` (:mod:`.headers`): adds and removes header fields (strip ``Bcc``, or
  internal ``Received`` lines);
* ``filing`` (:mod:`.filing`): files inbound mail into folders of the inbox by
  simple header rules (or drops it).

Like transports, they import only :mod:`spoolbox.contract`; :mod:`.header_block` is
the header-section surgery they share, on bytes, so the rest of a message is left
byte for byte as it was.
"""
