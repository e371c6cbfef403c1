"""What the outbound transports' status rows share (smtp, webhook): the results in words,
and the FAILURE bit a session sets while its peer cannot be reached and clears, once,
when it can be again (the spooler logs each change)."""

from __future__ import annotations

from collections.abc import Mapping

from spoolbox.contract import StatusCode, Support

__all__ = ["ReachabilityRow", "results_text"]


def results_text(counts: Mapping[str, int], last_error: str) -> str:
    """``", 2 deferred, 1 failed; last error: ..."``: what follows the delivered count
    (nothing when all went well)."""
    text = ""
    if counts["deferred"] or counts["failed"]:
        text += f", {counts['deferred']} deferred, {counts['failed']} failed"
    if last_error:
        text += f"; last error: {last_error}"
    return text


class ReachabilityRow:
    """A session's status text, with FAILURE set while the peer cannot be reached."""

    def __init__(self, support: Support) -> None:
        self._support = support
        self._failing = False

    def show(self, text: str, *, unreachable: bool = False) -> None:
        """Show ``text``; set FAILURE if ``unreachable``, else clear it if we had set it."""
        if unreachable:
            self._failing = True
            self._support.modify_status_row(status_string=text, set_bits=StatusCode.FAILURE)
        elif self._failing:
            self._failing = False
            self._support.modify_status_row(status_string=text, clear_bits=StatusCode.FAILURE)
        else:
            self._support.modify_status_row(status_string=text)
