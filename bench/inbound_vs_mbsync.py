"""Inbound: download a mailbox from Dovecot over IMAP (or POP3), spoolbox against mbsync
and fetchmail.

What it measures: the time to copy every message of one IMAP folder (default 10,000
messages of 2-4 KB) from a private Dovecot on 127.0.0.1 into a durable local store,
from starting the client until the last message is committed, and the rate
(messages per second).  IMAP is plaintext on loopback (``ssl = no``, plain LOGIN):
no TLS cost for anyone.

Systems, each run against the same mailbox restored from the same snapshot:

* ``spoolbox``: ``Spooler`` in this process on a ``SQLiteStore`` (WAL,
  ``synchronous=FULL``) with the ``imap`` transport (``tls = "none"``,
  ``after_fetch = "keep"``, ``idle = false``); ``await spooler.flush(upload=False)``,
  then ``wait_inbox(N)`` confirms all N are in the inbox.  The IMAP transport fetches
  up to 64 messages per ``UID FETCH`` and the spooler commits them, with the UID
  watermark of the last one, in one transaction (one fsync; group commit, see
  ``Policy.inbound_commit_batch``): nothing is reported received before its commit.
  The clock starts before ``Spooler.open`` (logon included).
* ``mbsync``: isync's ``mbsync`` with a temporary ``.mbsyncrc``: the IMAP INBOX
  pulled into a fresh local Maildir (``Sync Pull``, ``Create Near``, ``Expunge
  None``, ``Remove None``), ``FSync yes`` (the default: each message file and the
  sync state are fsynced).  The clock runs from the start to the exit of the process.
* ``fetchmail``: ``fetchmail --keep --all`` (IMAP) handing every message to an MDA
  that writes it into a Maildir: ``dd conv=fsync`` into ``tmp/`` then ``mv`` to
  ``new/`` (the file's data is fsynced; the directory is not).  One MDA process per
  message, as ``--mda`` does.  Start to exit of the process.

The mailbox is seeded once by writing Maildir files (CRLF, deterministic sizes and
content), indexed once by Dovecot (a SELECT), and snapshotted; before every client's
run the user's Maildir is replaced by a copy of the snapshot (``cp -a``, then
``sync``), so every client sees the same UIDs and index.  After each run the result
is checked: N messages in the inbox / Maildir, byte for byte the seeded ones for a
sample (spoolbox compares every Message-ID).  The raw ``write + fsync`` rate of the
disk is measured in every run too.  The order of the systems rotates from run to run.

``--protocol pop3``: the same over POP3 (``after_fetch = "keep"``): spoolbox's ``pop3``
transport and ``fetchmail --keep --all`` with ``protocol POP3``; mbsync speaks IMAP
only and is left out.

Reported: medians over runs of the rates, and the median of per-run ratios of
spoolbox to mbsync (the goal: >= 2x) and to fetchmail.

Run it::

    .venv/bin/python bench/inbound_vs_mbsync.py --runs 3 [--messages 10000]
        [--protocol pop3] [--only spoolbox] [--profile prof.txt] [--json out.json]

``--profile`` samples the spoolbox run of the first run with pyinstrument (``pip
install pyinstrument`` into the venv); it sees the event-loop thread only, not the
store's writer thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import imaplib
import json
import os
import platform
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _counts import fsync_rate
from spoolbox import (
    AlwaysIdle,
    Policy,
    Spooler,
    SpoolerConfig,
    SQLiteStore,
    TransportConfig,
)

DOVECOT = "/usr/sbin/dovecot"
MBSYNC = "mbsync"
FETCHMAIL = "fetchmail"
SYSTEMS = ("spoolbox", "mbsync", "fetchmail")
USER = "bench"
PASSWORD = "benchpass"
WAIT = 1800.0
MSGID = re.compile(rb"(?im)^Message-ID: <([^>]+)>")

# The private Dovecot, after tests/transports/dovecot_server.py, reduced to plaintext
# IMAP on one free port of 127.0.0.1 and one user.
DOVECOT_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
"""

MBSYNCRC = """\
FSync yes

IMAPAccount bench
Host 127.0.0.1
Port {port}
User {user}
Pass {password}
SSLType None
AuthMechs LOGIN

IMAPStore far
Account bench

MaildirStore near
Path {near}/
Inbox {near}/INBOX

Channel bench
Far :far:INBOX
Near :near:INBOX
Sync Pull
Create Near
Expunge None
Remove None
SyncState *
"""

FETCHMAILRC = """\
set no syslog
poll 127.0.0.1 port {port} protocol {protocol} auth password
  user "{user}" password "{password}" is "{local}" here
  keep fetchall sslproto ''
  mda "/bin/bash {mda}"
"""

#: The MDA for fetchmail: the message from stdin into <maildir>/tmp (data fsynced),
#: then renamed into new/.
MDA_SH = """\
set -e
f="{maildir}/tmp/${{EPOCHREALTIME/./}}.$$"
dd of="$f" conv=fsync status=none
mv "$f" "{maildir}/new/"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(i: int, rng: random.Random) -> bytes:
    """Message ``i``: CRLF, 2-4 KB, ``Message-ID: <bench-i@spoolbox.bench>``."""
    head = (
        f"From: sender{i % 97}@example.org\r\nTo: {USER}@example.org\r\n"
        f"Subject: inbound benchmark message {i}\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
        f"Message-ID: <bench-{i}@spoolbox.bench>\r\n\r\n"
    ).encode()
    size = rng.randint(2048, 4096)
    line = b"%05d " % i + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


@dataclass
class Dovecot:
    """A private Dovecot on a free port; :meth:`stop` ends it and removes ``root``."""

    root: Path
    port: int
    uid: int
    gid: int
    pop3_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def maildir(self) -> Path:
        return self.root / "home" / USER / "Maildir"

    @property
    def snapshot(self) -> Path:
        return self.root / "seed-Maildir"

    def seed(self, n: int) -> None:
        """Write ``n`` messages into ``new/``, let Dovecot index them, snapshot the lot."""
        rng = random.Random(20240101)
        md = self.maildir
        for sub in ("tmp", "new", "cur"):
            (md / sub).mkdir(parents=True, exist_ok=True)
        base = int(time.time()) - n
        for i in range(n):
            # Maildir names sort by delivery time: Dovecot assigns UIDs in this order.
            (md / "new" / f"{base + i}.M{i:06d}P1.bench").write_bytes(message(i, rng))
        for dirpath, _dirs, files in os.walk(self.root / "home"):
            os.chown(dirpath, self.uid, self.gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), self.uid, self.gid)
        with imaplib.IMAP4("127.0.0.1", self.port) as imap:
            imap.login(USER, PASSWORD)
            typ, data = imap.select("INBOX", readonly=True)
            if typ != "OK" or int(data[0] or 0) != n:
                raise RuntimeError(f"dovecot sees {data} messages, not {n}")
            imap.logout()
        subprocess.run(["cp", "-a", str(md), str(self.snapshot)], check=True)

    def restore(self) -> None:
        shutil.rmtree(self.maildir)
        subprocess.run(["cp", "-a", str(self.snapshot), str(self.maildir)], check=True)
        os.sync()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_dovecot(parent: Path | None) -> Dovecot:
    """Start a private Dovecot; the caller must call :meth:`Dovecot.stop`."""
    mail = pwd.getpwnam("nobody")
    gid = grp.getgrgid(mail.pw_gid).gr_gid
    root = Path(tempfile.mkdtemp(prefix="spoolbox-bench-dovecot-", dir=parent))
    os.chmod(root, 0o755)
    (root / "home").mkdir()
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    os.chmod(root / "passwd", 0o644)
    server = Dovecot(root, _free_port(), mail.pw_uid, gid, _free_port())
    conf = root / "dovecot.conf"
    conf.write_text(
        DOVECOT_CONF.format(
            root=root,
            internal=pwd.getpwnam("dovecot").pw_name,
            login=pwd.getpwnam("dovenull").pw_name,
            uid=mail.pw_uid,
            gid=gid,
            port=server.port,
            pop3_port=server.pop3_port,
        )
    )
    try:
        with open(root / "stderr.log", "wb") as err:
            server.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 30
        while True:
            if server.proc.poll() is not None:
                log = (root / "dovecot.log").read_text(errors="replace")
                raise RuntimeError(f"dovecot exited with {server.proc.returncode}:\n{log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", server.port), timeout=1) as s,
            ):
                s.settimeout(5)
                if s.recv(200).startswith(b"* OK"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("dovecot did not answer in time")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    return server


def maildir_files(md: Path) -> list[Path]:
    return [p for sub in ("new", "cur") if (md / sub).is_dir() for p in (md / sub).iterdir()]


def check_maildir(md: Path, n: int, what: str) -> None:
    files = maildir_files(md)
    ids = set()
    for p in files:
        m = MSGID.search(p.read_bytes())
        if m:
            ids.add(m.group(1))
    want = {f"bench-{i}@spoolbox.bench".encode() for i in range(n)}
    if len(files) != n or ids != want:
        raise RuntimeError(f"{what}: {len(files)} files, {len(want - ids)} Message-IDs missing")


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _remove(directory: Path, pattern: str) -> None:
    for p in directory.glob(pattern):
        p.unlink()


# -- the systems --------------------------------------------------------------------------------
async def spoolbox_once(
    server: Dovecot, directory: Path, n: int, profile: Path | None, protocol: str = "imap"
) -> float:
    db = directory / "inbound.db"
    options: dict[str, object] = {
        "host": "127.0.0.1",
        "port": server.port if protocol == "imap" else server.pop3_port,
        "tls": "none",
        "username": USER,
        "password": PASSWORD,
        "after_fetch": "keep",
    }
    if protocol == "imap":
        options["idle"] = False
    cfg = SpoolerConfig(
        transports=(TransportConfig(protocol, protocol, options=options),),
        policy=Policy(poll_interval=3600.0),
        node="bench",
    )
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler  # pip install pyinstrument (not a dependency)

        profiler = Profiler(async_mode="disabled")
        profiler.start()
    t0 = time.perf_counter()
    async with Spooler.open(cfg, store=SQLiteStore(db), idle=AlwaysIdle(), close_store=True) as sp:
        report = await sp.flush(upload=False)
        await sp.wait_inbox(n, timeout=WAIT)
        took = time.perf_counter() - t0
        if profiler is not None and profile is not None:
            profiler.stop()
            _write(profile, profiler.output_text(unicode=False, color=False))
            print(f"profile written to {profile}", file=sys.stderr)
        entries = await sp.store.list_inbox(limit=n + 10)
        ids = set()
        for e in entries:
            m = MSGID.search(await sp.store.read_inbox(e.id))
            if m:
                ids.add(m.group(1))
    _remove(directory, "inbound.db*")
    want = {f"bench-{i}@spoolbox.bench".encode() for i in range(n)}
    result = report.for_transport(protocol)
    if len(entries) != n or ids != want:
        raise RuntimeError(
            f"spoolbox: {len(entries)} in the inbox, {len(want - ids)} missing ({result})"
        )
    return took


def run_spoolbox(
    server: Dovecot, directory: Path, n: int, profile: Path | None, protocol: str
) -> float:
    return asyncio.run(spoolbox_once(server, directory, n, profile, protocol))


def _run_timed(args: list[str], env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    took = time.perf_counter() - t0
    if rc not in (0,):
        raise RuntimeError(f"{args[0]} exited {rc}:\n{log.read_text(errors='replace')[-2000:]}")
    return took


def run_mbsync(server: Dovecot, directory: Path, n: int) -> float:
    work = directory / "mbsync"
    shutil.rmtree(work, ignore_errors=True)
    near = work / "mail"
    near.mkdir(parents=True)
    rc = work / "mbsyncrc"
    rc.write_text(MBSYNCRC.format(port=server.port, user=USER, password=PASSWORD, near=near))
    env = {**os.environ, "HOME": str(work)}
    took = _run_timed([MBSYNC, "-c", str(rc), "-q", "bench"], env, work / "log")
    check_maildir(near / "INBOX", n, "mbsync")
    shutil.rmtree(work)
    return took


def run_fetchmail(server: Dovecot, directory: Path, n: int, protocol: str) -> float:
    work = directory / "fetchmail"
    shutil.rmtree(work, ignore_errors=True)
    md = work / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    mda = work / "mda.sh"
    mda.write_text(MDA_SH.format(maildir=md))
    rc = work / "fetchmailrc"
    rc.write_text(
        FETCHMAILRC.format(
            port=server.port if protocol == "imap" else server.pop3_port,
            protocol=protocol.upper(),
            user=USER,
            password=PASSWORD,
            local=pwd.getpwuid(os.getuid()).pw_name,
            mda=mda,
        )
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(work)}
    args = [
        FETCHMAIL,
        "-f",
        str(rc),
        "--idfile",
        str(work / "fetchids"),
        "--pidfile",
        str(work / "fetchmail.pid"),
        "--nosyslog",
        "--silent",
    ]
    took = _run_timed(args, env, work / "log")
    check_maildir(md, n, "fetchmail")
    shutil.rmtree(work)
    return took


def _version(command: list[str]) -> str:
    """The first line a program prints for ``--version`` (the peers run in this set)."""
    out = subprocess.run(command, capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else ""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="inbound: spoolbox vs mbsync and fetchmail")
    p.add_argument("--protocol", choices=("imap", "pop3"), default="imap")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    p.add_argument("--only", choices=SYSTEMS, action="append", help="run only these systems")
    p.add_argument("--profile", type=Path, default=None, help="pyinstrument the first spoolbox run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    systems = tuple(args.only or SYSTEMS)
    if args.protocol == "pop3":
        systems = tuple(s for s in systems if s != "mbsync")  # IMAP only
    for tool in (DOVECOT, *(s for s in systems if s != "spoolbox")):
        if shutil.which(tool) is None:
            print(f"{tool} not installed (apt-get install dovecot-imapd isync fetchmail)")
            return 2
    versions = {"dovecot": _version([DOVECOT, "--version"])}
    if "mbsync" in systems:
        versions["mbsync"] = _version([MBSYNC, "--version"])
    if "fetchmail" in systems:
        versions["fetchmail"] = _version([FETCHMAIL, "--version"])
    print(f"python {platform.python_version()}, {platform.platform()}")
    print("versions: " + "; ".join(f"{k} {v.strip()}" for k, v in versions.items()))
    n = args.messages
    runs: list[dict[str, float]] = []
    server = start_dovecot(args.dir)
    try:
        t0 = time.perf_counter()
        server.seed(n)
        print(f"seeded {n} messages in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        work = server.root / "clients"
        work.mkdir()
        for r in range(args.runs):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            res: dict[str, float] = {"fsync": fsync_rate(work)}
            for system in order:
                server.restore()
                if system == "spoolbox":
                    took = run_spoolbox(
                        server, work, n, args.profile if r == 0 else None, args.protocol
                    )
                elif system == "mbsync":
                    took = run_mbsync(server, work, n)
                else:
                    took = run_fetchmail(server, work, n, args.protocol)
                res[system] = n / took
                print(f"run {r + 1}: {system} {took:.2f} s = {n / took:,.0f}/s", file=sys.stderr)
            runs.append(res)
    finally:
        server.stop()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"\n{args.protocol.upper()}, N = {n} messages, {len(runs)} runs, medians\n")
    print("| system | messages per second | seconds for N |")
    print("|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} | {'' if k == 'fsync' else f'{n / v:.1f}'} |")
    ratios = {}
    if "spoolbox" in systems:
        for peer in (s for s in systems if s != "spoolbox"):
            ratios[peer] = statistics.median(r["spoolbox"] / r[peer] for r in runs)
            print(f"\nspoolbox / {peer}: {ratios[peer]:.2f} (median of per-run ratios)")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"runs": runs, "medians": med, "ratios": ratios, "versions": versions})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
