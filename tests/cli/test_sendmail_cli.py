"""sendmail(1) through the real command: ``spoolbox sendmail`` in subprocesses, with no
daemon and with one running; ``-bs`` driven by smtplib over the process's stdin and
stdout (as Symfony Mailer and Laravel drive ``sendmail -bs``); the ``sendmail``,
``mailq`` and ``newaliases`` links that ``spoolbox install-sendmail`` makes."""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import CLI, DEADLINE, Daemons, Home, _env, wait_until
from spoolbox import SQLiteStore
from spoolbox.cli.install_sendmail import system_profile
from spoolbox.profile import SYSTEM_PROFILE, load_profile

#: the console scripts of this installation (pyproject.toml [project.scripts])
BIN = Path(sys.executable).parent


def script(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"no {path}: reinstall spoolbox (pip install -e .) to get its scripts")
    return path


def content_of(home: Home, message_id: str) -> bytes:
    async def read() -> bytes:
        store = SQLiteStore(home.path / "spool.sqlite3")
        await store.open()
        try:
            return await store.read_content(message_id)
        finally:
            await store.close()

    return asyncio.run(read())


def queue(home: Home) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = home.json("queue", "list")["messages"]
    return messages


def maildir_listener(home: Home) -> None:
    """The default profile, its listener taking bare addresses as MAILDIR ones (so that
    they are routable, and delivered as files by its Maildir transport)."""
    text = home.profile.read_text()
    old = "[listeners.submission]\n"
    assert old in text
    new = old + 'default_address_type = "MAILDIR"\n'
    home.profile.write_text(text.replace(old, new, 1))


# -- no daemon ----------------------------------------------------------------------------
def test_unroutable_recipient_exits_67_and_queues_nothing(home: Home) -> None:
    r = home.run("sendmail", "bob@example.org", input=b"Subject: x\n\nbody\n")
    assert r.returncode == 67, r.stderr
    assert r.stderr == (
        "sendmail: SMTP:bob@example.org: undeliverable: no transport serves address type "
        "SMTP (local: MAILDIR); message not queued\n"
    )
    assert queue(home) == []


def test_bv_verifies_routing_and_sends_nothing(home: Home) -> None:
    r = home.run("sendmail", "-bv", "MAILDIR:bob", "bob@example.org")
    assert r.returncode == 67
    assert r.stdout == (
        "MAILDIR:bob: deliverable: transport local\n"
        "SMTP:bob@example.org: undeliverable: no transport serves address type SMTP "
        "(local: MAILDIR)\n"
    )
    r = home.run("sendmail", "-bv", "MAILDIR:bob")
    assert (r.returncode, r.stdout) == (0, "MAILDIR:bob: deliverable: transport local\n")
    assert queue(home) == []


def test_sendmail_adds_received_and_appends_missing_headers(home: Home) -> None:
    message = b"Subject: local\nX-Keep: 1\n\nbody line\n"
    r = home.run("sendmail", "-f", "ann@example.org", "MAILDIR:bob", input=message)
    assert (r.returncode, r.stderr) == (0, "")
    [queued] = queue(home)
    content = content_of(home, queued["id"])
    head, body = content.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert re.fullmatch(rb"Received: by \S+ \(spoolbox, from userid \d+\)", lines[0])
    assert lines[1].startswith(b"\tid " + queued["id"].encode() + b"; ")
    assert lines[2:4] == [b"Subject: local", b"X-Keep: 1"]
    assert [line.split(b":")[0] for line in lines[4:]] == [b"Message-ID", b"Date", b"From"]
    assert lines[-1] == b"From: ann@example.org"
    assert body == b"body line\r\n"
    assert queued["sender"] == "SMTP:ann@example.org"
    assert [r["address"] for r in queued["recipients"]] == ["MAILDIR:bob"]


def test_r_keeps_what_a_report_returns_and_refuses_another_word(home: Home) -> None:
    r = home.run("sendmail", "-R", "hdrs", "MAILDIR:bob", input=b"Subject: r\n\nbody\n")
    assert (r.returncode, r.stderr) == (0, "")
    [queued] = queue(home)
    assert queued["return_content"] is False  # RFC 3461 RET=HDRS: a report has the header
    assert home.json("queue", "show", queued["id"])["return_content"] is False
    r = home.run("sendmail", "-R", "x", "MAILDIR:bob", input=b"Subject: r\n\nbody\n")
    assert (r.returncode, r.stderr) == (64, "sendmail: -R 'x': expected full or hdrs\n")
    assert len(queue(home)) == 1


def test_bp_lists_the_queue_like_mailq(home: Home) -> None:
    r = home.run("sendmail", "-bp")
    assert (r.returncode, r.stdout) == (0, "Mail queue is empty\n")
    sent = home.run("sendmail", "-f", "ann@example.org", "MAILDIR:bob", input=b"Subject: q\n\nb\n")
    assert sent.returncode == 0, sent.stderr
    [queued] = queue(home)
    r = home.run("sendmail", "-bp")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("-Queue ID- ")
    assert lines[0].endswith(" --Size-- ----Arrival Time---- -Sender/Recipient-------")
    assert lines[1].split()[0] == queued["id"]
    assert lines[1].split()[1] == str(queued["size"])
    assert lines[1].endswith(" ann@example.org")
    assert lines[2].strip() == "MAILDIR:bob"
    assert lines[-1] == "-- 1 Kbytes in 1 Request."


@pytest.mark.parametrize("argv", [["-bi"], ["-I"]])
def test_newaliases_modes_do_nothing_and_exit_0(home: Home, argv: list[str]) -> None:
    r = home.run("sendmail", *argv)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_help_and_unknown_options(home: Home) -> None:
    r = home.run("sendmail", "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: sendmail [options] [recipient ...]")
    r = home.run("sendmail", "-Z", "bob@example.org", input=b"")
    assert (r.returncode, r.stderr) == (64, "sendmail: unknown option -Z\n")
    r = home.run("sendmail", "-bd")
    assert r.returncode == 64
    assert "mode -bd is not supported" in r.stderr


def test_q_needs_the_daemon(home: Home) -> None:
    r = home.run("sendmail", "-q")
    assert r.returncode == 69
    assert "the spoolbox daemon is not running" in r.stderr


# -- -bs: SMTP on stdin/stdout ------------------------------------------------------------
class _PipeSocket:
    """What smtplib needs of a socket, over a child's stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._in: IO[bytes] = proc.stdin
        self._out: IO[bytes] = proc.stdout

    def sendall(self, data: bytes) -> None:
        self._in.write(data)
        self._in.flush()

    def makefile(self, mode: str) -> IO[bytes]:
        return self._out

    def close(self) -> None:
        self._in.close()


def smtp_over_bs(argv: list[str], env: dict[str, str] | None = None) -> tuple[Any, Any]:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(env),
    )
    client = smtplib.SMTP(timeout=DEADLINE)
    client.sock = _PipeSocket(proc)  # type: ignore[assignment]
    return proc, client


MESSAGES = [
    b"From: app@example.org\r\nTo: bob@example.org\r\nSubject: first\r\n\r\n"
    b"line one\r\n.\r\n..two dots\r\n\r\n",
    b"From: app@example.org\r\nTo: carol@example.org\r\nSubject: second\r\n\r\n"
    b"\xc3\xa9t\xc3\xa9 8-bit\r\n",
]


def converse(proc: subprocess.Popen[bytes], client: smtplib.SMTP) -> list[str]:
    """Two messages in one session, as a mailer that keeps its transport open; the
    queue ids from the 250 replies."""
    code, greeting = client.getreply()
    assert code == 220, greeting
    assert client.ehlo("app.example.org")[0] == 250
    ids = []
    for rcpt, message in zip(["bob@example.org", "carol@example.org"], MESSAGES, strict=True):
        client.mail("app@example.org")
        assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(message)
        assert code == 250, reply
        ids.append(reply.decode().rsplit(" ", 1)[1])
    client.quit()  # closes our ends of its stdin and stdout
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=DEADLINE) == 0, err
    return ids


_TRACE = (
    rb"Received: from app\.example\.org \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby \S+ \(spoolbox\) with ESMTP id (?P<id>\w+)\r\n"
    rb"\tfor <[^>]+>;\r\n\t[^\r\n]+\r\n"
)


def test_bs_queues_each_message_byte_exact_with_its_envelope(home: Home) -> None:
    maildir_listener(home)
    proc, client = smtp_over_bs([*CLI, "--profile", str(home.profile), "sendmail", "-bs"])
    ids = converse(proc, client)
    for message_id, rcpt, message in zip(
        ids, ["bob@example.org", "carol@example.org"], MESSAGES, strict=True
    ):
        shown = home.json("queue", "show", message_id)
        assert shown["sender"] == "MAILDIR:app@example.org"
        assert [r["address"] for r in shown["recipients"]] == [f"MAILDIR:{rcpt}"]
        content = content_of(home, message_id)
        m = re.match(_TRACE, content)
        assert m is not None, content[:300]
        assert m["id"].decode() == message_id
        assert content[m.end() :] == message  # dot-unstuffed, 8-bit, every byte


def test_bs_takes_root_at_localhost_as_root(home: Home) -> None:
    """``-bs`` as the listener: an address at this host's own name is what
    ``[local_names]`` makes of the name (the default profile: MAILDIR:root)."""
    proc, client = smtp_over_bs([*CLI, "--profile", str(home.profile), "sendmail", "-bs"])
    assert client.getreply()[0] == 220
    assert client.ehlo("app.example.org")[0] == 250
    client.mail("app@example.org")
    assert client.rcpt("root@localhost")[0] == 250
    code, reply = client.data(b"Subject: alert\r\n\r\nbody\r\n")
    assert code == 250, reply
    client.quit()  # closes our ends of its stdin and stdout
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=DEADLINE) == 0, err
    shown = home.json("queue", "show", reply.decode().rsplit(" ", 1)[1])
    assert [r["address"] for r in shown["recipients"]] == ["MAILDIR:root"]


def test_bs_takes_a_transaction_with_two_notifys_whole(home: Home) -> None:
    """Recipients asking for different DSN NOTIFYs in one transaction (as smtplib
    sends them: one RCPT after another, no second try of a 452) are one message per
    NOTIFY, committed together (without the daemon: into the store), the 250 naming
    both; each keeps its ORCPT."""
    maildir_listener(home)
    proc, client = smtp_over_bs([*CLI, "--profile", str(home.profile), "sendmail", "-bs"])
    assert client.getreply()[0] == 220
    assert client.ehlo("app.example.org")[0] == 250
    assert client.has_extn("dsn")
    client.mail("app@example.org")
    assert client.rcpt("bob@example.org", ["NOTIFY=NEVER"])[0] == 250
    assert client.rcpt("carol@example.org", ["ORCPT=rfc822;c@old.example"])[0] == 250
    code, reply = client.data(b"Subject: two notifys\r\n\r\nbody\r\n")
    assert code == 250, reply
    client.quit()
    assert proc.stderr is not None
    with proc.stderr:
        err = proc.stderr.read()
    assert proc.wait(timeout=DEADLINE) == 0, err
    ids = reply.decode().removeprefix("2.0.0 OK queued as ").split(", ")
    shown = [home.json("queue", "show", i) for i in ids]
    assert [[(r["address"], r["original"]) for r in m["recipients"]] for m in shown] == [
        [("MAILDIR:bob@example.org", None)],
        [("MAILDIR:carol@example.org", "rfc822;c@old.example")],
    ]
    assert {m["subject"] for m in shown} == {"two notifys"}


def test_bs_reads_a_session_from_a_file_and_from_dev_null(home: Home, tmp_path: Path) -> None:
    """Files and devices are not pipes (asyncio's pipe transports refuse them)."""
    maildir_listener(home)
    session = tmp_path / "session.txt"
    session.write_bytes(
        b"HELO app.example.org\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
        b"DATA\r\nSubject: from a file\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    )
    replies = tmp_path / "replies.txt"
    argv = [*CLI, "--profile", str(home.profile), "sendmail", "-bs"]
    with session.open("rb") as stdin, replies.open("wb") as stdout:
        r = subprocess.run(argv, stdin=stdin, stdout=stdout, env=_env(), timeout=DEADLINE)
    assert r.returncode == 0
    codes = [line[:3] for line in replies.read_bytes().split(b"\r\n") if line]
    assert codes == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"]
    [queued] = queue(home)
    assert replies.read_bytes().endswith(f"queued as {queued['id']}\r\n221 2.0.0 Bye\r\n".encode())
    assert queued["subject"] == "from a file"
    with open(os.devnull, "rb") as stdin:
        r = subprocess.run(argv, stdin=stdin, capture_output=True, env=_env(), timeout=DEADLINE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"220 ") and r.stdout.count(b"\r\n") == 1


# -- with the daemon ----------------------------------------------------------------------
def test_with_the_daemon_bs_delivers_q_flushes_and_unroutable_is_refused(
    home: Home, daemons: Daemons
) -> None:
    maildir_listener(home)
    daemons.start(home)
    proc, client = smtp_over_bs([*CLI, "--profile", str(home.profile), "sendmail", "-bs"])
    converse(proc, client)
    wait_until("delivery", lambda: sorted(home.delivered()) == ["first", "second"])
    [bob] = home.delivered()["first"]
    assert bob.read_bytes().endswith(b"\r\n\r\nline one\r\n.\r\n..two dots\r\n\r\n")

    r = home.run("sendmail", "-q")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = home.run("sendmail", "-q30m")
    assert r.returncode == 0, r.stderr

    r = home.run("sendmail", "-bv", "FAX:+15551234", "MAILDIR:bob")
    assert r.returncode == 67
    assert r.stdout.splitlines() == [
        "FAX:+15551234: undeliverable: no transport serves address type FAX (local: MAILDIR)",
        "MAILDIR:bob: deliverable: transport local",
    ]
    r = home.run("sendmail", "FAX:+15551234", input=b"Subject: fax\n\nb\n")
    assert r.returncode == 67
    assert "no transport serves address type FAX" in r.stderr
    assert home.run("sendmail", "-bp").stdout == "Mail queue is empty\n"


def test_routing_is_the_daemons_once_it_runs_else_what_the_profile_declares(
    home: Home, daemons: Daemons
) -> None:
    """A transport that declares no address types may serve anything until it logs on:
    without the daemon a FAX recipient waits (accepted); with it, the session's own
    answer (MAILDIR) is known and the FAX recipient is refused."""
    text = home.profile.read_text()
    old = 'address_types = ["MAILDIR"]\n'
    assert old in text
    home.profile.write_text(text.replace(old, "", 1))
    r = home.run("sendmail", "-bv", "FAX:+15551234")
    assert (r.returncode, r.stdout) == (
        0,
        "FAX:+15551234: queued: waits for transport local (its address types are known "
        "once it logs on)\n",
    )
    daemons.start(home)
    wait_until(
        "the transport's logon",
        lambda: (
            home.run("sendmail", "-bv", "MAILDIR:bob").stdout
            == "MAILDIR:bob: deliverable: transport local\n"
        ),
    )
    r = home.run("sendmail", "-bv", "FAX:+15551234")
    assert r.returncode == 67
    assert r.stdout == (
        "FAX:+15551234: undeliverable: no transport serves address type FAX (local: MAILDIR)\n"
    )


def test_cron_mail_to_root_is_delivered_to_the_local_maildir(home: Home, daemons: Daemons) -> None:
    """What cron runs when MAILTO is not set: the job owner's login name, cron's
    flags, its From header without a domain.  The profile `spoolbox init` writes
    sends such a name to the local Maildir ([local_names] address_type); an alias
    added to it sends root's mail elsewhere."""
    cron = ["sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem"]
    stdin = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@h> backup\n\nout\n"
    r = home.run("sendmail", "-bv", "root")
    assert (r.returncode, r.stdout) == (0, "root -> MAILDIR:root: deliverable: transport local\n")
    daemons.start(home)
    r = home.run(*cron, "root", input=stdin)
    assert (r.returncode, r.stderr) == (0, "")
    wait_until("delivery", lambda: "Cron <root@h> backup" in home.delivered())
    [file] = home.delivered()["Cron <root@h> backup"]
    assert file.parent.parent.name == "root"
    assert b"From: Cron Daemon <root@" in file.read_bytes()
    # root at this host's own name (the profile's hostname, or localhost) is root too,
    # as Postfix's mydestination: it stays here instead of going out by SMTP.
    host = load_profile(home.profile).spooler.hostname
    r = home.run("sendmail", "-bv", f"root@{host}", "root@localhost")
    assert (r.returncode, r.stdout) == (
        0,
        f"root@{host} -> MAILDIR:root: deliverable: transport local\n"
        "root@localhost -> MAILDIR:root: deliverable: transport local\n",
    )
    r = home.run("sendmail", "-i", f"root@{host}", input=stdin.replace(b"backup", b"at host"))
    assert (r.returncode, r.stderr) == (0, "")
    wait_until("delivery", lambda: "Cron <root@h> at host" in home.delivered())
    [file] = home.delivered()["Cron <root@h> at host"]
    assert file.parent.parent.name == "root"

    text = home.profile.read_text()
    old = 'address_type = "MAILDIR"\n'
    assert old in text
    home.profile.write_text(text.replace(old, old + 'aliases = { root = "MAILDIR:admin" }\n'))
    r = home.run("sendmail", "-bv", "Root")
    assert (r.returncode, r.stdout) == (0, "Root -> MAILDIR:admin: deliverable: transport local\n")
    r = home.run(*cron, "root", input=stdin.replace(b"backup", b"second"))
    assert (r.returncode, r.stderr) == (0, "")
    wait_until("delivery", lambda: "Cron <root@h> second" in home.delivered())
    [file] = home.delivered()["Cron <root@h> second"]
    assert file.parent.parent.name == "admin"

    home.profile.write_text(text.replace(old, ""))  # no rule: refused, nothing queued
    r = home.run(*cron, "root", input=stdin)
    assert r.returncode == 67
    assert "'root' is a local name without a domain" in r.stderr
    assert home.run("sendmail", "-bp").stdout == "Mail queue is empty\n"


# -- the sendmail, mailq and newaliases links ---------------------------------------------
def test_install_sendmail_links_work_by_their_name(home: Home, tmp_path: Path) -> None:
    spoolbox = script("spoolbox")
    target = script("spoolbox-sendmail")
    prefix = tmp_path / "usr"
    env = _env({"SPOOLBOX_PROFILE": str(home.profile)})

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(spoolbox), "install-sendmail", "--prefix", str(prefix), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=DEADLINE,
        )

    r = install()
    assert r.returncode == 0, r.stderr
    links = [prefix / "sbin/sendmail", prefix / "bin/mailq", prefix / "bin/newaliases"]
    out = r.stdout.splitlines()
    assert out[:3] == [f"made: {link} -> {target}" for link in links]
    assert [os.readlink(link) for link in links] == [str(target)] * 3
    # cron finds the profile at /etc/spoolbox/spoolbox.toml: said when it is not this one
    if system_profile(home.profile, SYSTEM_PROFILE) == "same":
        assert out[3:] == []
    else:
        assert len(out) == 4
        assert out[3].startswith(f"note: {SYSTEM_PROFILE} ")
        assert out[3].endswith(f"pass --system-profile to link it to {home.profile}")

    def run(link: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(link), *args], input=input, capture_output=True, env=env, timeout=DEADLINE
        )

    sent = run(links[0], "-f", "ann@example.org", "MAILDIR:bob", input=b"Subject: l\n\nb\n")
    assert (sent.returncode, sent.stderr) == (0, b"")
    mailq = run(links[1])
    assert mailq.returncode == 0
    assert b"MAILDIR:bob" in mailq.stdout
    assert mailq.stdout.endswith(b"-- 1 Kbytes in 1 Request.\n")
    assert run(links[2]).returncode == 0
    refused = run(links[0], "bob@example.org", input=b"Subject: x\n\nb\n")
    assert refused.returncode == 67

    # Again: nothing to do.  Someone else's sendmail: refused, untouched, unless --force.
    again = install().stdout.splitlines()[:3]
    assert again == [f"already: {link} -> {target}" for link in links]
    links[0].unlink()
    links[0].write_text('#!/bin/sh\nexec /usr/lib/other-mta "$@"\n')
    r = install()
    assert r.returncode == 1
    assert f"{links[0]} is a file: not spoolbox's" in r.stderr
    assert "--force" in r.stderr
    assert not links[0].is_symlink()
    r = install("--force")
    assert r.returncode == 0, r.stderr
    assert os.readlink(links[0]) == str(target)
