"""A transport for the crash test, named in its profile as
``signing_smtp:SigningSMTPProvider``: the SMTP transport, which registers at logon a
preprocessor that DKIM-signs (with the built-in hook's signer) and, the first time it
has signed, SIGKILLs its own process, right after preprocessing and before sending.

Its own options sit in ``[transports.options.signing]``: ``key_file``,
``selector``, ``domain``, ``marker`` (the file that says the kill happened) and
``log`` (a line per preprocessor run).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spoolbox.contract import Change, HookMessage, LogonFlags, Support
from spoolbox.hooks.dkim import DkimHook
from spoolbox.transports.smtp import SMTPProvider
from spoolbox.transports.smtp.session import SMTPSession


class SigningSMTPProvider(SMTPProvider):
    @staticmethod
    def check_options(config: Mapping[str, Any]) -> None:
        SMTPProvider.check_options({k: v for k, v in config.items() if k != "signing"})

    async def logon(
        self, support: Support, config: Mapping[str, Any], flags: LogonFlags
    ) -> SMTPSession:
        mine = config["signing"]
        session = await super().logon(
            support, {k: v for k, v in config.items() if k != "signing"}, flags
        )
        signer = DkimHook(
            {"domain": mine["domain"], "selector": mine["selector"], "key_file": mine["key_file"]}
        )
        marker, runs = Path(mine["marker"]), Path(mine["log"])

        async def sign(message: HookMessage) -> bytes | None:
            verdict = await signer.outbound(message)
            _ran(message.ref, runs, marker)
            return verdict.content if isinstance(verdict, Change) else None

        support.register_preprocessor(sign, address_types=["SMTP"])
        return session


def _ran(ref: str, runs: Path, marker: Path) -> None:
    """Note the run; the first time, die right after signing, before the send."""
    with runs.open("a") as f:
        f.write(f"{ref}\n")
    if not marker.exists():
        marker.write_text(ref)
        os.kill(os.getpid(), signal.SIGKILL)
