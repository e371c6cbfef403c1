"""The web page and ``/metrics`` the daemon serves (issue 19; docs/operations.md, "The
web page").

* :mod:`.token`: the access token in the data directory and the CSRF token made from
  it (standard library only: ``spoolbox web`` imports it without the ``web`` extra);
* :mod:`.security`: the middleware every request passes (token, CSRF, headers);
* :mod:`.api`: the JSON endpoints, which call the local API's operations
  (:mod:`spoolbox.daemon.api_ops`): one schema, not two;
* :mod:`.flushes`: Send/Receive started from the page, with Cancel;
* :mod:`.events`: the status table over Server-Sent Events, bounded per client;
* :mod:`.message_view`: a message as text (headers, text part, attachments);
* :mod:`.page`: the server-rendered HTML; ``static/``: its script and style sheet;
* :mod:`.lag`: the event loop's lag, measured;
* :mod:`.metrics`: ``/metrics`` in the Prometheus text format;
* :mod:`.app`: the Starlette application; :mod:`.server`: uvicorn on the daemon's loop.

Nothing here is imported unless ``[web] enabled`` (or ``spoolbox web``) asks for it.
"""
