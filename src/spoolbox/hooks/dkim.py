"""The ``dkim`` hook: DKIM-signs outbound mail (RFC 6376) with dkimpy.

Needs the ``dkim`` extra (``pip install 'spoolbox[dkim]'``: dkimpy, and PyNaCl for
Ed25519).  Options (``[hooks.options]``), one table per signing domain::

    [hooks.options.domains."example.org"]
    selector = "mail2026"                 # the DNS name: mail2026._domainkey.example.org
    key_file = "dkim/example.org.key"     # relative to the profile's directory
    algorithm = "rsa-sha256"              # or "ed25519-sha256"

or, for a single domain, ``domain``, ``selector``, ``key_file`` and ``algorithm``
directly in ``[hooks.options]``.  ``headers`` lists the header fields to sign
(default: :data:`DEFAULT_HEADERS`; ``From`` is always signed).  Canonicalisation is
relaxed/relaxed.

A message is signed for the domain of its ``From:`` address (what DMARC aligns
with), else of its envelope sender; a domain without a table is sent unsigned (KEEP).
The key is read once, when the hook is made: a missing or bad key fails the hook at
start, on its status row, and mail waits for it rather than going out unsigned.

Signing runs in a worker *process* of the hook's own (started on the first message,
stopped when the spooler closes): dkimpy's RSA is Python's big-integer ``pow``, which
holds the GIL for tens of milliseconds, so a thread would still stall the event loop.
A worker that dies fails that message's signing (it is retried) and is replaced.
The worker ends by itself within a second of the process that started it (it looks
at its parent once a second): a daemon killed with SIGKILL, which cannot stop it,
leaves no signing process behind.

Run it last among the outbound hooks, after anything that changes headers.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal

from ..contract import KEEP, Change, HookMessage, Keep, OptionError, option, read_options
from .header_block import split

__all__ = ["DEFAULT_HEADERS", "DkimHook", "DomainKey", "sign"]

#: The fields signed by default (RFC 6376 §5.4.1's list; absent ones are skipped).
DEFAULT_HEADERS = (
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)


@dataclass(frozen=True, slots=True)
class _DomainOptions:
    selector: str = option(help="the DKIM selector (the s= tag)")
    key_file: str = option(help="the private key: PEM (RSA) or base64 (Ed25519)")
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


@dataclass(frozen=True, slots=True)
class _Options:
    domain: str | None = None
    selector: str | None = None
    key_file: str | None = None
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"
    headers: tuple[str, ...] = DEFAULT_HEADERS


@dataclass(frozen=True, slots=True)
class DomainKey:
    """How one domain signs."""

    domain: str
    selector: str
    algorithm: str
    key: bytes  # as dkimpy takes it

    def __repr__(self) -> str:
        return f"DomainKey({self.domain!r}, s={self.selector!r}, a={self.algorithm})"


def _dkimpy() -> Any:
    try:
        return importlib.import_module("dkim")
    except ImportError:
        raise RuntimeError("the dkim hook needs dkimpy: pip install 'spoolbox[dkim]'") from None


def _domains(opts: _Options, raw: object) -> dict[str, _DomainOptions]:
    if raw is not None and not isinstance(raw, Mapping):
        raise OptionError("domains", f"expected a table of domains, not {raw!r}")
    tables: dict[str, Any] = dict(raw or {})
    if opts.domain is not None:
        if opts.domain in tables:
            raise OptionError("domain", f"{opts.domain!r} is also in domains")
        tables[opts.domain] = {
            k: v
            for k, v in (
                ("selector", opts.selector),
                ("key_file", opts.key_file),
                ("algorithm", opts.algorithm),
            )
            if v is not None
        }
    elif opts.selector is not None or opts.key_file is not None:
        raise OptionError("domain", "is needed with selector and key_file")
    if not tables:
        raise OptionError("domains", "is empty: name at least one signing domain")
    out = {}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise OptionError("domains", f"{name!r}: expected a table, not {table!r}")
        out[name.lower().rstrip(".")] = read_options(
            _DomainOptions, table, kind=f"dkim hook domain {name!r}"
        )
    return out


class DkimHook:
    """Signs outbound mail with DKIM (an outbound hook)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        opts = read_options(
            _Options, {k: v for k, v in options.items() if k != "domains"}, kind="dkim hook"
        )
        headers = tuple(dict.fromkeys(("From", *opts.headers)))
        self._headers = tuple(h.encode("ascii") for h in headers)
        _dkimpy()  # the extra is missing: say so now
        self._pool: ProcessPoolExecutor | None = None
        self._keys: dict[str, DomainKey] = {}
        for domain, d in _domains(opts, options.get("domains")).items():
            path = Path(d.key_file)
            try:
                key = path.read_bytes()
            except OSError as exc:
                raise OSError(
                    f"dkim hook: cannot read the key of {domain!r} from {path}: "
                    f"{exc.strerror or exc}"
                ) from None
            dk = DomainKey(domain, d.selector, d.algorithm, key)
            try:  # a bad key is found now, not on the first message
                sign(dk, b"From: a@" + domain.encode() + b"\r\n\r\nkey check\r\n", self._headers)
            except Exception as exc:  # dkimpy: DKIMException, or binascii's ValueError
                raise ValueError(
                    f"dkim hook: the key in {path} cannot sign {d.algorithm} for {domain!r}: {exc}"
                ) from None
            self._keys[domain] = dk

    def key_for(self, message: HookMessage) -> DomainKey | None:
        """The key of the message's From: domain, else of its envelope sender's."""
        froms = split(message.content).get_all("From")
        candidates = [addr for _name, addr in getaddresses(froms) if "@" in addr]
        if message.sender is not None:
            candidates.append(message.sender.split(":", 1)[-1])
        for addr in candidates:
            domain = addr.rpartition("@")[2].strip().lower().rstrip(".>")
            if domain in self._keys:
                return self._keys[domain]
        return None

    async def outbound(self, message: HookMessage) -> Change | Keep:
        key = self.key_for(message)
        if key is None:
            return KEEP
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=end_with_parent,
                initargs=(os.getpid(),),
            )
        loop = asyncio.get_running_loop()
        try:
            signed = await loop.run_in_executor(
                self._pool, sign, key, message.content, self._headers
            )
        except BrokenProcessPool:
            self._pool = None  # the next message starts a new worker
            raise
        return Change(signed)

    async def close(self) -> None:
        """Stop the signing process (the spooler calls this when it closes)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown)


#: How often the signing process looks whether its parent is still there (seconds).
PARENT_CHECK = 1.0


def end_with_parent(parent: int) -> None:
    """In the signing process, at its start: a thread that ends the process once
    ``parent`` (the process that started it) is gone; it was re-parented then."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        os._exit(0)

    threading.Thread(target=watch, name="spoolbox-dkim-parent", daemon=True).start()


def sign(key: DomainKey, content: bytes, headers: Sequence[bytes]) -> bytes:
    """``content`` with a DKIM-Signature field on top (relaxed/relaxed)."""
    dkim = _dkimpy()
    newline = b"\r\n" if b"\r\n" in content[: content.find(b"\n") + 1] else b"\n"
    present = {f.name.lower() for f in split(content).fields}
    headers = [h for h in headers if h.decode("ascii").lower() in present or h == b"From"]
    field: bytes = dkim.sign(
        content,
        key.selector.encode("ascii"),
        key.domain.encode("ascii"),
        key.key,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=key.algorithm.encode("ascii"),
        include_headers=list(headers),
        linesep=newline,
    )
    return field + content
