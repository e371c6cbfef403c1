"""The built-in hooks: header rewriting, inbound filing rules, and DKIM signing
verified by dkimpy's verifier and by OpenDKIM's (``opendkim -t``, Debian package
``opendkim``), with the public keys from a test key file rather than DNS."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dkim
import nacl.signing
import pytest
from hookkit import Record, recording_transport, spooler
from hookkit import rsa_key as make_rsa_key

from spoolbox import Address, HookConfig, MessageState, NewMessage
from spoolbox.contract import KEEP, Change, Delete, FileTo, HookFlags, HookMessage
from spoolbox.hooks import header_block
from spoolbox.hooks.dkim import DkimHook
from spoolbox.hooks.filing import FilingHook, parse_rules
from spoolbox.hooks.headers import HeadersHook

OPENDKIM = "/usr/sbin/opendkim"
MAIL = (
    b"Received: from a.internal (a.internal [10.0.0.1])\r\n"
    b"\tby mx.internal with ESMTP; Thu, 3 Dec 2026 10:00:00 +0000\r\n"
    b"Received: from outside.example by mx.example.org; Thu, 3 Dec 2026 09:59:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Bcc: secret@example.org\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Body line one\r\n"
    b"Bcc: this is body text, not a header\r\n"
)


def outbound(content: bytes, sender: str | None = "SMTP:alice@example.org") -> HookMessage:
    return HookMessage("m1", HookFlags.OUTBOUND, "smtp", sender, ("SMTP:bob@example.net",), content)


# -- headers -----------------------------------------------------------------------


async def test_headers_hook_strips_bcc_and_internal_received_and_adds() -> None:
    hook = HeadersHook(
        {
            "remove": ["bcc"],
            "remove_matching": {"Received": r"by mx\.internal\b"},
            "add": {"X-Spooled-By": "spoolbox"},
        }
    )
    verdict = await hook.outbound(outbound(MAIL))
    assert isinstance(verdict, Change)
    new = verdict.content
    head, body = new.split(b"\r\n\r\n", 1)
    assert b"Bcc:" not in head and b"a.internal" not in head
    assert b"Received: from outside.example" in head  # the other Received stays
    assert head.endswith(b"X-Spooled-By: spoolbox")
    assert body == MAIL.split(b"\r\n\r\n", 1)[1]  # the body, Bcc-looking line too, untouched


async def test_headers_hook_keeps_what_it_does_not_change() -> None:
    hook = HeadersHook({"remove": ["X-Absent"]})
    assert await hook.outbound(outbound(MAIL)) is KEEP


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"remove": ["Bad Name"]}, "not a header field name"),
        ({"add": {"X-A": "one\r\nX-B: two"}}, "line break"),
        ({"remove_matching": {"Received": "("}}, "bad pattern"),
        ({"drop": ["Bcc"]}, "drop"),
    ],
)
def test_headers_hook_refuses_bad_options(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        HeadersHook(options)


def test_header_block_round_trips_and_decodes_values() -> None:
    block = header_block.split(MAIL)
    assert block.to_bytes() == MAIL
    assert block.get_all("subject") == ["café"]
    assert len(block.get_all("Received")) == 2
    lf = MAIL.replace(b"\r\n", b"\n")
    assert header_block.split(lf).newline == b"\n"
    assert header_block.split(lf).adding([("X-A", "1")]).to_bytes().count(b"X-A: 1\n") == 1


# -- filing ------------------------------------------------------------------------


async def test_filing_rules_first_match_decides() -> None:
    hook = FilingHook(
        {
            "rules": [
                {"header": "Subject", "matches": "^caf", "folder": "cafe"},
                {"header": "From", "contains": "ALICE", "folder": "alice"},
                {"header": "To", "equals": "nobody@example.net", "delete": "gone"},
            ]
        }
    )
    inbound = HookMessage("m", HookFlags.INBOUND, "imap", None, (), MAIL)
    assert await hook.inbound(inbound) == FileTo("cafe")
    other = MAIL.replace(b"=?utf-8?q?caf=C3=A9?=", b"tea")
    assert await hook.inbound(HookMessage("m", HookFlags.INBOUND, "imap", None, (), other)) == (
        FileTo("alice")
    )
    to_nobody = b"To: Nobody@example.net\r\n\r\nx\r\n"
    assert await hook.inbound(HookMessage("m", HookFlags.INBOUND, "i", None, (), to_nobody)) == (
        Delete("gone")
    )
    assert (
        await hook.inbound(HookMessage("m", HookFlags.INBOUND, "i", None, (), b"X: y\r\n\r\n"))
        is KEEP
    )


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        ([], "non-empty array"),
        ([{"header": "To", "folder": "x"}], "exactly one of contains, matches, equals"),
        ([{"header": "To", "contains": "a", "equals": "b", "folder": "x"}], "exactly one of"),
        ([{"header": "To", "contains": "a"}], "exactly one of folder, delete"),
        ([{"header": "To", "matches": "(", "folder": "x"}], "bad pattern"),
        ([{"header": "To", "contains": "a", "folder": "x", "colour": 1}], "unknown key 'colour'"),
        ([{"contains": "a", "folder": "x"}], "needs header"),
    ],
)
def test_filing_rules_are_checked(rules: Any, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_rules(rules)


# -- DKIM --------------------------------------------------------------------------


@pytest.fixture
def rsa_key(tmp_path: Path) -> tuple[Path, str]:
    """A 2048-bit RSA key file and its DNS TXT record (made with openssl)."""
    key = tmp_path / "rsa.key"
    return key, make_rsa_key(key)


@pytest.fixture
def ed_key(tmp_path: Path) -> tuple[Path, str]:
    sk = nacl.signing.SigningKey.generate()
    key = tmp_path / "ed.key"
    key.write_bytes(base64.b64encode(bytes(sk)))
    return key, f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(sk.verify_key)).decode()}"


def dkimpy_verifies(signed: bytes, records: dict[str, str]) -> bool:
    def dns(name: bytes, timeout: int = 5) -> bytes:
        return records[name.decode().rstrip(".")].encode()

    return bool(dkim.verify(signed, dnsfunc=dns))


def opendkim_says(tmp_path: Path, signed: bytes, records: dict[str, str]) -> str:
    """OpenDKIM's verdict on ``signed`` (its test mode, keys from a file)."""
    if not Path(OPENDKIM).exists():
        pytest.skip(f"needs {OPENDKIM} (Debian package opendkim) for the independent verifier")
    keys = tmp_path / "keys.txt"
    keys.write_text("".join(f"{name} {txt}\n" for name, txt in records.items()))
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"Mode v\nSyslog no\nTestPublicKeys {keys}\n")
    msg = tmp_path / "signed.eml"
    msg.write_bytes(signed)
    done = subprocess.run(
        [OPENDKIM, "-x", str(conf), "-t", str(msg)], capture_output=True, text=True, timeout=30
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
async def test_dkim_signature_verifies_with_dkimpy_and_opendkim(
    algorithm: str, rsa_key: tuple[Path, str], ed_key: tuple[Path, str], tmp_path: Path
) -> None:
    key, txt = rsa_key if algorithm == "rsa-sha256" else ed_key
    hook = DkimHook(
        {
            "domains": {
                "example.org": {"selector": "s1", "key_file": str(key), "algorithm": algorithm}
            }
        }
    )
    verdict = await hook.outbound(outbound(MAIL))
    assert isinstance(verdict, Change)
    signed = verdict.content
    assert signed.endswith(MAIL) and signed.count(b"DKIM-Signature:") == 1
    sig = signed[: len(signed) - len(MAIL)].decode()
    assert f"a={algorithm};" in sig and "c=relaxed/relaxed;" in sig and "d=example.org;" in sig
    records = {"s1._domainkey.example.org": txt}
    assert dkimpy_verifies(signed, records)
    said = opendkim_says(tmp_path, signed, records)
    assert "verification (s=s1, d=example.org" in said and "succeeded" in said, said
    # And both refuse a message changed after signing.
    tampered = signed.replace(b"Body line one", b"Body line 1")
    assert not dkimpy_verifies(tampered, records)
    assert "succeeded" not in opendkim_says(tmp_path, tampered, records)


_SIGNER = """
import asyncio, multiprocessing, sys
from spoolbox.contract import Change, HookFlags, HookMessage
from spoolbox.hooks.dkim import DkimHook

async def main() -> None:
    hook = DkimHook({"domain": "example.org", "selector": "s1", "key_file": sys.argv[1]})
    message = HookMessage("m1", HookFlags.OUTBOUND, "smtp", None, ("SMTP:b@example.net",),
                          b"From: a@example.org\\r\\n\\r\\nHi\\r\\n")
    assert isinstance(await hook.outbound(message), Change)
    print(*(child.pid for child in multiprocessing.active_children()), flush=True)
    await asyncio.sleep(60)  # killed before

if __name__ == "__main__":  # (the signing process, spawned, imports this file too)
    asyncio.run(main())
"""


def test_the_signing_process_ends_when_the_one_that_started_it_is_killed(
    rsa_key: tuple[Path, str], tmp_path: Path
) -> None:
    """A process that signed a message (its signing worker started) is killed with
    SIGKILL, which leaves it no chance to stop the worker: the worker ends by itself
    within a few seconds, instead of waiting for work for ever (one left behind by
    each daemon killed)."""
    key, _txt = rsa_key
    script = tmp_path / "signer.py"
    script.write_text(_SIGNER)
    with subprocess.Popen(
        [sys.executable, str(script), str(key)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            pids = [int(pid) for pid in proc.stdout.readline().split()]
            assert pids, "no signing process was started"
            assert all(_alive(pid) for pid in pids)
        finally:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:  # (not left behind by the test either)
        os.kill(pid, signal.SIGKILL)
    assert left == [], "the signing process outlived its parent"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_dkim_key_by_from_domain_then_sender_and_unknown_domains_unsigned(
    rsa_key: tuple[Path, str],
) -> None:
    key, _txt = rsa_key
    hook = DkimHook({"domain": "Example.ORG", "selector": "s1", "key_file": str(key)})
    other_from = MAIL.replace(b"alice@example.org>", b"alice@elsewhere.example>")
    assert hook.key_for(outbound(MAIL)) is not None  # From: example.org
    # The From domain has no key: the envelope sender's domain does.
    assert hook.key_for(outbound(other_from)) is not None
    assert await hook.outbound(outbound(other_from, sender="SMTP:x@elsewhere.example")) is KEEP


def test_dkim_signed_headers_default_and_configured(rsa_key: tuple[Path, str]) -> None:
    key, _txt = rsa_key
    default = DkimHook({"domain": "example.org", "selector": "s1", "key_file": str(key)})
    chosen = DkimHook(
        {"domain": "example.org", "selector": "s1", "key_file": str(key), "headers": ["Subject"]}
    )
    h_default = _h_tag(asyncio.run(default.outbound(outbound(MAIL))))
    h_chosen = _h_tag(asyncio.run(chosen.outbound(outbound(MAIL))))
    # Present fields of the default list only (Bcc and Received are not signed).
    assert h_default == ["from", "subject", "date", "to", "message-id"]
    assert h_chosen == ["from", "subject"]  # From is always signed


def _h_tag(verdict: Any) -> list[str]:
    sig = verdict.content.split(b"\r\nFrom:", 1)[0].decode()
    h = re.search(r"h=([^;]+);", sig)
    assert h is not None
    return [x.strip() for x in h.group(1).replace("\r\n", "").split(":")]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"domain": "example.org", "selector": "s1", "key_file": "/nonexistent/k"}, "cannot read"),
        ({"domain": "example.org", "key_file": "x"}, "selector"),
        ({}, "name at least one signing domain"),
        ({"selector": "s1", "key_file": "k"}, "'domain' is needed"),
    ],
)
def test_dkim_refuses_bad_options(options: dict[str, Any], says: str) -> None:
    with pytest.raises(Exception, match=says):
        DkimHook(options)


def test_dkim_refuses_a_key_that_cannot_sign(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match=re.escape("cannot sign rsa-sha256 for 'example.org'")):
        DkimHook({"domain": "example.org", "selector": "s1", "key_file": str(bad)})


async def test_headers_then_dkim_through_the_spooler(
    rsa_key: tuple[Path, str], tmp_path: Path
) -> None:
    """The chain as an operator configures it: rewrite, then sign what goes out."""
    key, txt = rsa_key
    rec = Record()
    hooks = (
        HookConfig("strip", "headers", {"remove": ["Bcc"]}),
        HookConfig(
            "sign", "dkim", {"domain": "example.org", "selector": "s1", "key_file": str(key)}
        ),
    )
    msg = NewMessage(
        sender=Address.parse("SMTP:alice@example.org"),
        recipients=(Address.parse("SMTP:bob@example.net"),),
        content=MAIL,
    )
    async with spooler(recording_transport(rec), hooks=hooks) as sp:
        await sp.submit(msg)
        assert await sp.wait_for(msg.id, timeout=10) is MessageState.SENT
    [(_mid, sent)] = rec.sent
    assert b"Bcc:" not in sent.split(b"\r\n\r\n", 1)[0]
    records = {"s1._domainkey.example.org": txt}
    assert dkimpy_verifies(sent, records)
    said = opendkim_says(tmp_path, sent, records)
    assert "succeeded" in said, said
