"""What went wrong, as the result of every recipient still open: :class:`Failure` and the
mapping of replies and network errors to it (the status codes the module docstring of
:mod:`spoolbox.transports.smtp` promises)."""

from __future__ import annotations

import ssl

from spoolbox.smtp.replies import Reply, clean_text, enhanced_status, reply_text

__all__ = ["Failure", "exception_failure", "protocol_failure", "refusal", "reply_failure"]


class Failure(Exception):
    """Every recipient still open gets ``status`` (class 4 or 5) and ``text``.

    ``connected`` is False when no connection to the server was made: then no remote
    MTA answered, and the results name none (the log says ``relay=none``, as Postfix
    does, and a report has no Remote-MTA field)."""

    def __init__(self, status: str, text: str, *, connected: bool = True) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.connected = connected


def reply_failure(reply: Reply, step: str) -> Failure:
    """A 4xx/5xx reply to a command concerning all open recipients."""
    cls = "5" if 500 <= reply.code <= 599 else "4"
    return Failure(enhanced_status(reply, cls), f"smtp; {reply_text(reply)} (in reply to {step})")


def protocol_failure(reply: Reply, step: str, where: str) -> Failure:
    """A reply code that makes no sense at this step."""
    return Failure(
        "4.5.0", f"x-spoolbox; unexpected reply from {where} to {step}: {reply_text(reply)}"
    )


def refusal(reply: Reply, step: str, where: str) -> Failure:
    """A refusal before a transaction (greeting, EHLO, STARTTLS): the server's state, not a
    verdict on the message, so class 4 whatever the code; a code that is no refusal at
    all is a bad reply."""
    if reply.code < 400 or reply.code > 599:
        return Failure(
            "4.5.0", f"x-spoolbox; bad reply from {where} ({step}): {clean_text(reply.text)}"
        )
    status = enhanced_status(reply, "4" if reply.code < 500 else "5")
    return Failure("4." + status.split(".", 1)[1], f"smtp; {reply_text(reply)} ({step})")


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (a failed handshake may come wrapped), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


#: Steps that are not a command whose reply is awaited, as what is awaited at them.
_AWAITED = {
    "the greeting": "the greeting of {where}",
    "sending data": "{where} to take the message data",
    "after end of data": "the reply of {where} to the end of the message data",
}


def _awaited(step: str, where: str) -> str:
    """What was waited for at ``step``: ``the reply of host:25 to MAIL FROM:<a@b>``."""
    return _AWAITED.get(step, "the reply of {where} to " + step).format(where=where)


def exception_failure(exc: BaseException, step: str, timeout: float, where: str) -> Failure:
    """A network exception (or a timeout) at ``step`` as the result of the open recipients."""
    exc = _tls_cause(exc) or exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or str(exc)
        return Failure(
            "4.7.5", f"x-spoolbox; TLS certificate of {where} not verified ({step}): {why}"
        )
    if isinstance(exc, ssl.SSLError):
        return Failure("4.7.0", f"x-spoolbox; TLS failure with {where} ({step}): {exc}")
    if isinstance(exc, TimeoutError):
        return Failure(
            "4.4.1",
            f"x-spoolbox; timed out after {timeout:g} s waiting for {_awaited(step, where)}",
        )
    if isinstance(exc, OSError):
        detail = clean_text(str(exc)) or type(exc).__name__
        return Failure("4.4.2", f"x-spoolbox; connection to {where} lost ({step}): {detail}")
    return Failure("4.3.0", f"x-spoolbox; SMTP error with {where} ({step}): {exc}")
