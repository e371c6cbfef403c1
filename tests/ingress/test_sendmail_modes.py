"""sendmail as Postfix's sendmail(1): the Received line and the headers appended as
cleanup appends them, recipients refused when no transport serves them (exit 67),
and the modes (-bv, -bi/-I, --help, and -bs/-bp/-q handed to the caller)."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from spoolbox import AlwaysIdle, Spooler, SpoolerConfig
from spoolbox.ingress import EX_OK, EX_USAGE, run_sendmail
from spoolbox.ingress.sendmail import EX_NOUSER, USAGE
from spoolbox.model import Address


@pytest.fixture
async def spooler() -> AsyncIterator[Spooler]:
    async with Spooler.open(SpoolerConfig(), idle=AlwaysIdle()) as sp:
        yield sp


async def queued(sp: Spooler) -> list[tuple[Any, bytes]]:
    return [
        (s, await sp.store.read_content(s.info.id)) for s in await sp.store.list_messages(now=0)
    ]


def maildir_only(address: Address) -> tuple[bool, str]:
    if address.type == "MAILDIR":
        return True, "deliverable: transport local"
    return False, f"undeliverable: no transport serves address type {address.type}"


class Unread(io.BytesIO):
    """stdin that must not be read."""

    def readline(self, size: int | None = -1) -> bytes:
        raise AssertionError("stdin was read")


async def sendmail(
    sp: Spooler, argv: Sequence[str], stdin: io.BytesIO | bytes, **kw: Any
) -> tuple[int, str, str]:
    err, out = io.StringIO(), io.StringIO()
    source = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
    code = await run_sendmail(
        argv,
        source,
        sp.submit,
        stderr=err,
        stdout=out,
        user="ann",
        hostname="mx.host.test",
        uid=1234,
        **kw,
    )
    return code, out.getvalue(), err.getvalue()


_DATE = r"[A-Z][a-z]{2}, \d\d? [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"


async def test_received_on_top_and_missing_headers_appended_after_the_others(
    spooler: Spooler,
) -> None:
    stdin = b"Subject: s\nX-Custom: keep\n  folded\n\nbody\n\nmore\n"
    assert (await sendmail(spooler, ["bob@example.org"], stdin))[0] == EX_OK
    [(summary, content)] = await queued(spooler)
    pattern = (
        rb"Received: by mx\.host\.test \(spoolbox, from userid 1234\)\r\n"
        rb"\tid (?P<id>[0-9a-f]+); " + _DATE.encode() + rb"\r\n"
        rb"Subject: s\r\nX-Custom: keep\r\n  folded\r\n"  # as given, in place
        rb"Message-ID: <[^>\r\n]+@mx\.host\.test>\r\n"  # then what cleanup appends,
        rb"Date: " + _DATE.encode() + rb"\r\n"  # in its order
        rb"From: ann@mx\.host\.test\r\n"
        rb"\r\nbody\r\n\r\nmore\r\n"
    )
    m = re.fullmatch(pattern, content)
    assert m is not None, content
    assert m["id"].decode() == summary.info.id  # the queue id, as pickup writes it


async def test_only_the_missing_header_is_appended(spooler: Spooler) -> None:
    stdin = b"From: Carol <carol@example.org>\r\nMessage-ID: <m@x>\r\nSubject: s\r\n\r\nb\r\n"
    assert (await sendmail(spooler, ["bob@example.org"], stdin))[0] == EX_OK
    [(_, content)] = await queued(spooler)
    trace, rest = content.split(b"\r\n", 2)[:2], content.split(b"\r\n", 2)[2]
    assert trace[0].startswith(b"Received: by mx.host.test ")
    head, body = rest.split(b"\r\n\r\n", 1)
    assert re.fullmatch(
        rb"From: Carol <carol@example\.org>\r\nMessage-ID: <m@x>\r\nSubject: s\r\nDate: "
        + _DATE.encode(),
        head,
    ), head
    assert body == b"b\r\n"


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["bob@example.org"], b"Subject: x\n\nb\n"),
        (["MAILDIR:ann", "bob@example.org"], b"Subject: x\n\nb\n"),
        (["-t", "MAILDIR:ann"], b"Cc: bob@example.org\nSubject: x\n\nb\n"),
    ],
)
async def test_a_recipient_no_transport_serves_is_refused_and_nothing_is_queued(
    spooler: Spooler, argv: list[str], stdin: bytes
) -> None:
    stream = io.BytesIO(stdin)
    code, _, err = await sendmail(spooler, argv, stream, route=maildir_only)
    assert code == EX_NOUSER == 67
    assert err == (
        "sendmail: SMTP:bob@example.org: undeliverable: no transport serves address type "
        "SMTP; message not queued\n"
    )
    assert stream.read() == b""  # read to its end: the writer never sees a broken pipe
    assert await queued(spooler) == []


async def test_routable_recipients_are_queued(spooler: Spooler) -> None:
    code, _, err = await sendmail(
        spooler, ["MAILDIR:ann"], b"Subject: x\n\nb\n", route=maildir_only
    )
    assert (code, err) == (EX_OK, "")
    assert len(await queued(spooler)) == 1


async def test_bv_says_what_would_happen_and_sends_nothing(spooler: Spooler) -> None:
    code, out, err = await sendmail(
        spooler, ["-bv", "MAILDIR:ann", "bob@example.org"], Unread(), route=maildir_only
    )
    assert code == EX_NOUSER
    assert out == (
        "MAILDIR:ann: deliverable: transport local\n"
        "SMTP:bob@example.org: undeliverable: no transport serves address type SMTP\n"
    )
    assert err == ""
    code, out, _ = await sendmail(spooler, ["-bv", "MAILDIR:ann"], Unread(), route=maildir_only)
    assert (code, out) == (EX_OK, "MAILDIR:ann: deliverable: transport local\n")
    code, _, err = await sendmail(spooler, ["-bv"], Unread(), route=maildir_only)
    assert code == EX_USAGE
    assert "no recipients" in err
    assert await queued(spooler) == []


@pytest.mark.parametrize("argv", [["-bi"], ["-I"], ["-bi", "-oA/etc/aliases"]])
async def test_newaliases_is_accepted_and_does_nothing(spooler: Spooler, argv: list[str]) -> None:
    code, out, err = await sendmail(spooler, argv, Unread())
    assert (code, out) == (EX_OK, "")
    assert "-bi" not in err
    assert await queued(spooler) == []


async def test_help_prints_the_usage(spooler: Spooler) -> None:
    code, out, err = await sendmail(spooler, ["--help"], Unread())
    assert (code, out, err) == (EX_OK, USAGE, "")
    for mode in ("-bs", "-bp", "-q", "-bi", "-I", "-bv", "--help", "67"):
        assert mode in USAGE


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["-bs"], "smtp"),
        (["-bp"], "queue"),
        (["-q"], "flush"),
        (["-q30m"], "flush"),
        (["-q1h30m"], "flush"),
        (["-bm", "-bp"], "queue"),
    ],
)
async def test_the_callers_modes_run_by_their_option(
    spooler: Spooler, argv: list[str], mode: str
) -> None:
    ran: list[str] = []

    def handler(name: str) -> Any:
        async def run() -> int:
            ran.append(name)
            return 42

        return run

    modes = {name: handler(name) for name in ("smtp", "queue", "flush")}
    code, _, err = await sendmail(spooler, argv, Unread(), modes=modes)
    assert (code, err, ran) == (42, "", [mode])
