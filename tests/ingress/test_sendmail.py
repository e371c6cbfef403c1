"""The sendmail-compatible entry point: argv variants, stdin, exit codes, stored content."""

from __future__ import annotations

import email
import email.policy
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from spoolbox import (
    Address,
    AlwaysIdle,
    MessageError,
    NewMessage,
    Notify,
    Spooler,
    SpoolerConfig,
    StoreError,
)
from spoolbox.api.client import UnroutableRecipient
from spoolbox.ingress import (
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_NOUSER,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    run_sendmail,
)


@pytest.fixture
async def spooler() -> AsyncIterator[Spooler]:
    async with Spooler.open(SpoolerConfig(), idle=AlwaysIdle()) as sp:
        yield sp


async def queued(sp: Spooler) -> list[tuple[Any, bytes]]:
    out = []
    for summary in await sp.store.list_messages(now=0):
        if not summary.info.is_report:
            out.append((summary, await sp.store.read_content(summary.info.id)))
    return out


async def sendmail(sp: Spooler, argv: Sequence[str], stdin: bytes, **kw: Any) -> tuple[int, str]:
    err = io.StringIO()
    code = await run_sendmail(
        argv, io.BytesIO(stdin), sp.submit, stderr=err, user="ann", domain="host.test", **kw
    )
    return code, err.getvalue()


def split_received(content: bytes) -> tuple[bytes, bytes]:
    """The Received line (with its continuation) on top, and the rest."""
    assert content.startswith(b"Received: ")
    end = content.index(b"\r\n", content.index(b"\r\n\t") + 2) + 2
    return content[:end], content[end:]


def headers_of(content: bytes) -> bytes:
    return content.split(b"\r\n\r\n", 1)[0] + b"\r\n"


async def test_plain_recipients_and_missing_headers_added(spooler: Spooler) -> None:
    code, err = await sendmail(spooler, ["bob@example.org"], b"Subject: hi\n\nHello\n.. two\n")
    assert (code, err) == (EX_OK, "")
    [(summary, content)] = await queued(spooler)
    assert [r.address for r in summary.recipients] == [Address("SMTP", "bob@example.org")]
    assert summary.info.sender == Address("SMTP", "ann@host.test")
    head = headers_of(content)
    assert b"From: ann@host.test\r\n" in head
    assert b"\r\nDate: " in b"\r\n" + head
    assert b"Message-ID: <" in head and b"@host.test>" in head
    assert b"Subject: hi\r\n" in head
    assert content.endswith(b"\r\n\r\nHello\r\n.. two\r\n")  # CRLF, dots untouched
    assert b"\n" not in content.replace(b"\r\n", b"")


async def test_existing_headers_are_kept(spooler: Spooler) -> None:
    msg = (
        b"From: Carol <carol@example.org>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
        b"Message-ID: <x@y>\nSubject: s\n\nb\n"
    )
    assert (await sendmail(spooler, ["bob@example.org"], msg))[0] == EX_OK
    [(summary, content)] = await queued(spooler)
    trace, rest = split_received(content)
    assert trace.startswith(b"Received: by ")
    assert rest == msg.replace(b"\n", b"\r\n")  # nothing added, nothing moved
    assert summary.info.sender == Address("SMTP", "carol@example.org")


async def test_dash_t_takes_recipients_from_headers_and_removes_bcc(spooler: Spooler) -> None:
    msg = (
        b"From: ann@example.org\nTo: Bob <bob@example.org>, carol@example.org\n"
        b"Cc: dave@example.org\nBcc: secret@example.org,\n  hidden@example.org\n"
        b"Subject: t\n\nbody\n"
    )
    code, err = await sendmail(spooler, ["-t", "extra@example.org"], msg)
    assert (code, err) == (EX_OK, "")
    [(summary, content)] = await queued(spooler)
    assert {r.address.value for r in summary.recipients} == {
        "extra@example.org",
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
        "secret@example.org",
        "hidden@example.org",
    }
    assert b"Bcc" not in content
    assert b"secret@" not in content
    assert b"hidden@" not in content
    assert b"To: Bob <bob@example.org>, carol@example.org\r\n" in content


async def test_dash_t_uses_resent_headers_when_present(spooler: Spooler) -> None:
    msg = b"To: old@example.org\nResent-To: new@example.org\nSubject: r\n\nb\n"
    assert (await sendmail(spooler, ["-t"], msg))[0] == EX_OK
    [(summary, _)] = await queued(spooler)
    assert [r.address.value for r in summary.recipients] == ["new@example.org"]


async def test_sender_options(spooler: Spooler) -> None:
    code, _ = await sendmail(
        spooler,
        ["-f", "bounce@example.org", "-F", "Ann Example", "bob@example.org"],
        b"S: x\n\nb\n",
    )
    assert code == EX_OK
    code, _ = await sendmail(spooler, ["-f<>", "bob@example.org"], b"Subject: null\n\nb\n")
    assert code == EX_OK
    (first, c1), (second, _) = await queued(spooler)
    assert first.info.sender == Address("SMTP", "bounce@example.org")
    assert b"From: Ann Example <bounce@example.org>\r\n" in c1
    assert second.info.sender is None


async def test_lone_dot_ends_the_message_unless_i(spooler: Spooler) -> None:
    msg = b"Subject: d\n\nbefore\n.\nafter\n"
    assert (await sendmail(spooler, ["bob@example.org"], msg))[0] == EX_OK
    assert (await sendmail(spooler, ["-i", "bob@example.org"], msg))[0] == EX_OK
    assert (await sendmail(spooler, ["-oi", "bob@example.org"], msg))[0] == EX_OK
    (_, cut), (_, full1), (_, full2) = await queued(spooler)
    assert cut.endswith(b"\r\n\r\nbefore\r\n")
    assert full1.endswith(b"\r\n\r\nbefore\r\n.\r\nafter\r\n")
    assert full2.endswith(b"\r\n\r\nbefore\r\n.\r\nafter\r\n")


async def test_notify_and_envelope_id(spooler: Spooler) -> None:
    argv = ["-N", "success,delay", "-V", "env-1", "bob@example.org"]
    assert (await sendmail(spooler, argv, b"Subject: n\n\nb\n"))[0] == EX_OK
    assert (await sendmail(spooler, ["-Nnever", "bob@example.org"], b"Subject: n\n\nb\n"))[0] == 0
    (a, _), (b, _) = await queued(spooler)
    assert a.info.notify == Notify.SUCCESS | Notify.DELAY
    assert a.info.envelope_id == "env-1"
    assert b.info.notify == Notify.NEVER


async def test_r_sets_what_a_report_returns(spooler: Spooler) -> None:
    msg = b"Subject: r\n\nb\n"
    for argv in (["-R", "hdrs"], ["-RFULL"], ["-R", "Hdrs"], []):
        code, err = await sendmail(spooler, [*argv, "bob@example.org"], msg)
        assert (code, err) == (EX_OK, "")
    kept = [summary.info.return_content for summary, _ in await queued(spooler)]
    assert kept == [False, True, False, None]  # RFC 3461 RET: HDRS, FULL; None: default
    for argv in (["-R", "x"], ["-Rnever"], ["-R", ""]):
        code, err = await sendmail(spooler, [*argv, "bob@example.org"], msg)
        assert code == EX_USAGE
        assert err.startswith("sendmail: -R ")
        assert "expected full or hdrs" in err
    code, err = await sendmail(spooler, ["bob@example.org", "-R"], msg)
    assert (code, err) == (EX_USAGE, "sendmail: option -R needs an argument\n")
    assert len(await queued(spooler)) == 4


async def test_ignored_and_unknown_options(spooler: Spooler) -> None:
    code, err = await sendmail(spooler, ["-oem", "-v", "-B", "8BITMIME", "bob@example.org"], b"S\n")
    assert (code, err) == (EX_OK, "")  # cron's flags: taken without a word, as Postfix does
    code, err = await sendmail(spooler, ["-oX", "bob@example.org"], b"S\n")
    assert code == EX_OK
    assert err == "sendmail: warning: ignoring option -oX\n"
    code, err = await sendmail(spooler, ["-Z", "bob@example.org"], b"Subject: x\n\nb\n")
    assert code == EX_USAGE
    assert "unknown option -Z" in err
    assert len(await queued(spooler)) == 2


async def test_double_dash_ends_options(spooler: Spooler) -> None:
    assert (await sendmail(spooler, ["--", "-odd@example.org"], b"Subject: x\n\nb\n"))[0] == 0
    [(summary, _)] = await queued(spooler)
    assert summary.recipients[0].address.value == "-odd@example.org"


async def test_typed_recipient_argument(spooler: Spooler) -> None:
    assert (await sendmail(spooler, ["MAILDIR:bob"], b"Subject: x\n\nb\n"))[0] == EX_OK
    [(summary, _)] = await queued(spooler)
    assert summary.recipients[0].address == Address("MAILDIR", "bob")


@pytest.mark.parametrize(
    ("argv", "stdin", "code", "text"),
    [
        ([], b"Subject: x\n\nb\n", EX_USAGE, "no recipients"),
        (["-t"], b"Subject: x\n\nb\n", EX_USAGE, "no recipients"),
        (["-t"], b"To: undisclosed-recipients:;\n\nb\n", EX_USAGE, "no recipients"),
        (["-f"], b"", EX_USAGE, "-f needs an argument"),
        (["-bp"], b"", EX_USAGE, "the queue mode is not available here"),
        (["-q"], b"", EX_USAGE, "the flush mode is not available here"),
        (["-qRexample.org"], b"", EX_USAGE, "only -q and -q<interval>"),
        (["-bd"], b"", EX_USAGE, "mode -bd is not supported"),
        (["-bv", "b@example.org"], b"", EX_USAGE, "-bv (verify) is not available here"),
        (["-N", "sometimes", "b@example.org"], b"x\n", EX_USAGE, "-N"),
        (["bob"], b"Subject: x\n\nb\n", EX_NOUSER, "no [local_names] to say what it becomes"),
        (["-t"], b"To: ann@example.org, root\n\nb\n", EX_NOUSER, "the To header: 'root' is"),
        (["bob@"], b"Subject: x\n\nb\n", EX_DATAERR, "not user@domain"),
        (["b@example.org\r\nX: y"], b"Subject: x\n\nb\n", EX_DATAERR, "control character"),
        (["-t"], b"To: a@@b, ,,<\n\nb\n", EX_DATAERR, "To header"),
        (["-t"], b"To: \xff@example.org\n\nb\n", EX_DATAERR, "not valid UTF-8"),
        (["b@example.org"], b"Subject: x\n\nnul\x00here\n", EX_DATAERR, "line 3"),
        (["b@example.org"], b"Subject: " + b"y" * 999 + b"\n\nb\n", EX_DATAERR, "1008 octets"),
        (
            ["b@example.org"],
            b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\n" + b"y" * 999 + b"\n--b--\n",
            EX_DATAERR,
            "line 5 of the message is 999 octets long",
        ),
        (
            ["b@example.org"],
            b"Content-Transfer-Encoding: base64\n\n" + b"QUJD" * 300 + b"\n",
            EX_DATAERR,
            "1200 octets long",
        ),
        (["-f", "a\x00@example.org", "b@example.org"], b"S: x\n\nb\n", EX_DATAERR, "sender"),
    ],
)
async def test_error_paths_queue_nothing(
    spooler: Spooler, argv: list[str], stdin: bytes, code: int, text: str
) -> None:
    got, err = await sendmail(spooler, argv, stdin)
    assert got == code
    assert err.startswith("sendmail: ")
    assert text in err
    assert err.count("\n") == 1  # one line
    assert await queued(spooler) == []


async def test_cron_mail_from_an_unqualified_user_gets_the_local_domain(spooler: Spooler) -> None:
    # What cron sends (Debian's and cronie's): "From: root (Cron Daemon)", no domain,
    # with the flags it passes.  Refused, the job's output would be lost; Postfix
    # appends @myorigin, and so does this, to the header and to the envelope sender.
    stdin = (
        b"From: root (Cron Daemon)\nTo: admin@example.org\nSubject: Cron <root@h> job\n"
        b"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\noutput\n"
    )
    argv = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "admin@example.org"]
    code, _err = await sendmail(spooler, argv, stdin)
    assert code == EX_OK
    [(summary, content)] = await queued(spooler)
    assert summary.info.sender == Address.parse("SMTP:root@host.test")
    _received, rest = split_received(content)
    assert rest.startswith(b"From: Cron Daemon <root@host.test>\r\nTo: admin@example.org\r\n")


async def test_a_body_with_lines_too_long_is_queued_quoted_printable(spooler: Spooler) -> None:
    # What cron mails: its own MIME headers, and a command's output with a long line
    # (a progress bar, a JSON dump).  Refused, the output would be lost; it goes
    # quoted-printable instead, and decodes to the same text.
    text = "résumé " + "x" * 3000 + "  \nsecond line\n.leading dot\n"
    stdin = (
        b"Subject: Cron <ann@host> backup\nContent-Type: text/plain; charset=UTF-8\n"
        b"Content-Transfer-Encoding: 8bit\n\n" + text.encode()
    )
    code, err = await sendmail(spooler, ["b@example.org"], stdin)
    assert (code, err) == (EX_OK, "")
    [(_, content)] = await queued(spooler)
    _received, rest = split_received(content)
    assert max(len(line) for line in content.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(rest, policy=email.policy.default)
    assert parsed.get_all("Content-Transfer-Encoding") == ["quoted-printable"]
    assert b"Content-Type: text/plain; charset=UTF-8\r\n" in rest  # kept as it was
    assert parsed.get_payload(decode=True) == text.replace("\n", "\r\n").encode()


async def test_a_plain_body_too_long_gets_the_mime_headers_it_needs(spooler: Spooler) -> None:
    body = b"\xe9t\xe9 " + b"z" * 2000 + b"\n"  # Latin-1, no MIME headers at all
    code, _err = await sendmail(spooler, ["b@example.org"], b"Subject: s\n\n" + body)
    assert code == EX_OK
    [(_, content)] = await queued(spooler)
    parsed = email.message_from_bytes(split_received(content)[1], policy=email.policy.default)
    assert parsed["MIME-Version"] == "1.0"
    assert (parsed.get_content_type(), parsed.get_param("charset")) == (
        "text/plain",
        "unknown-8bit",
    )
    assert parsed.get_payload(decode=True) == body.replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (StoreError("store.sqlite3: database is locked"), EX_TEMPFAIL),
        (TimeoutError("commit timed out"), EX_TEMPFAIL),
        (ConnectionResetError("daemon went away"), EX_TEMPFAIL),
        (PermissionError("store.sqlite3: read-only"), EX_NOPERM),
        (FileNotFoundError("no store at /nowhere"), EX_UNAVAILABLE),
        (MessageError("content too odd"), EX_DATAERR),
        (RuntimeError("bug"), EX_SOFTWARE),
        # The daemon's refusal of a recipient no transport serves (its routing table
        # can know better than the profile's declarations sendmail checked).
        (UnroutableRecipient("refused, nothing queued: SMTP:bob@example.org: ..."), 67),
    ],
)
async def test_submit_failures_map_to_sysexits(exc: Exception, code: int) -> None:
    calls: list[NewMessage] = []

    async def failing(message: NewMessage) -> object:
        calls.append(message)
        raise exc

    err = io.StringIO()
    got = await run_sendmail(
        ["bob@example.org"], io.BytesIO(b"Subject: x\n\nb\n"), failing, stderr=err
    )
    assert got == code
    assert len(calls) == 1  # submitted exactly once, never retried in part
    assert str(exc) in err.getvalue()
    assert err.getvalue().count("\n") == 1


async def test_unreadable_stdin_is_noinput(spooler: Spooler) -> None:
    class Broken(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    err = io.StringIO()
    code = await run_sendmail(["bob@example.org"], Broken(), spooler.submit, stderr=err)
    assert code == EX_NOINPUT
    assert "cannot read the message from stdin" in err.getvalue()
    assert await queued(spooler) == []


async def test_size_limit_and_mbox_from_line(spooler: Spooler) -> None:
    code, err = await sendmail(
        spooler, ["bob@example.org"], b"Subject: x\n\n" + b"z\n" * 100, max_message_size=50
    )
    assert code == EX_DATAERR
    assert "limit of 50 bytes" in err
    msg = b"From ann Mon Jan  1 00:00:00 2024\nSubject: mbox\n\nb\n"
    assert (await sendmail(spooler, ["bob@example.org"], msg))[0] == EX_OK
    [(_, content)] = await queued(spooler)
    assert b"From ann" not in content
    assert b"Subject: mbox\r\n" in content


async def test_body_without_header_section_gets_one(spooler: Spooler) -> None:
    assert (await sendmail(spooler, ["bob@example.org"], b"just a line of text\n"))[0] == EX_OK
    [(_, content)] = await queued(spooler)
    head, body = content.split(b"\r\n\r\n", 1)
    assert b"From: ann@host.test" in head
    assert body == b"just a line of text\r\n"


@pytest.mark.parametrize(
    ("stdin", "limit", "text"),
    [
        # The input's own problems come first, as when it was read whole and checked
        # before its headers were looked at; line numbers count CRLF lines after bare
        # CRs and LFs became line ends.
        (b"To: a@@b\n\nnul\x00here\n", None, "line 3 of the message contains a NUL"),
        (b"To: a@@b\n\n" + b"z\n" * 100, 50, "limit of 50 bytes"),
        (b"To: a@@b\r\rmore\n\nnul\x00\n", None, "line 5 of the message contains a NUL"),
        (b"To: a@@b\n\nnul\x00\n" + b"z\n" * 100, 50, "limit of 50 bytes"),
        (b"To: a@@b\n\nfine\n", None, "cannot parse the addresses in the To header"),
    ],
)
async def test_problems_of_the_input_are_named_before_those_of_its_headers(
    spooler: Spooler, stdin: bytes, limit: int | None, text: str
) -> None:
    kw = {} if limit is None else {"max_message_size": limit}
    code, err = await sendmail(spooler, ["-t"], stdin, **kw)
    assert code == EX_DATAERR
    assert text in err
    assert await queued(spooler) == []


def test_ingress_imports_only_model_and_stdlib() -> None:
    import ast
    from pathlib import Path

    import spoolbox.ingress

    root = Path(spoolbox.ingress.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                # the model, and the SMTP server machine (pure: it imports nothing of ours)
                top = (node.module or "").split(".")[0]
                assert node.level == 1 or top in ("model", "smtp"), path
                if node.level == 2:
                    assert top in ("model", "smtp"), path
