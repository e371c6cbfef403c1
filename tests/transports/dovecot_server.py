"""A private Dovecot (IMAP and POP3 on 127.0.0.1) for the inbound transport tests.

:func:`start_dovecot` writes a configuration into a fresh directory, starts
``/usr/sbin/dovecot -F`` on two free ports and waits until both answer.  Users are
added at any time with :meth:`Dovecot.add_user` (Dovecot rereads the passwd-file
when it changes), so each test gets a mailbox of its own; messages are seeded by
writing files into the user's ``Maildir/new`` (owned by the uid the mail processes
run as).  :meth:`Dovecot.stop` ends the server and removes the directory.

The server directory lives in a ``mkdtemp`` under the system temporary directory and
is world-traversable, not under pytest's ``tmp_path`` (mode 0700, owned by root):
Dovecot's auth and mail processes run as unprivileged users and must reach it.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOVECOT = "/usr/sbin/dovecot"
SKIP_REASON = "dovecot not installed: apt-get install dovecot-imapd dovecot-pop3d"
PASSWORD = "s3cret pass"
USERS = 64

_CONF = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = {gid}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
mailbox_idle_check_interval = 1 secs
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
"""


def available() -> bool:
    return os.path.exists(DOVECOT) and os.access(DOVECOT, os.X_OK)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user(*names: str) -> pwd.struct_passwd:
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LookupError(f"none of the users {names} exists (dovecot's package creates them)")


_seq = itertools.count(1)


@dataclass
class Dovecot:
    root: Path
    imap_port: int
    pop3_port: int
    imaps_port: int
    pop3s_port: int
    uid: int
    gid: int
    proc: subprocess.Popen[bytes] | None = None
    users: list[str] = field(default_factory=list)

    host: str = "127.0.0.1"

    @property
    def ca_file(self) -> str:
        """The CA that signed the server's certificate (for the ``ca_file`` option)."""
        return str(self.root / "ca.pem")

    # -- users and mail -----------------------------------------------------------------
    def add_user(self) -> str:
        """Hand out the next user (they are all in the passwd-file from the start, as
        Dovecot may not notice a passwd-file changed within the same second); its
        INBOX is created empty."""
        name = f"user{len(self.users) + 1}"
        if len(self.users) >= USERS:
            raise RuntimeError(f"all {USERS} test users are taken: raise USERS")
        home = self.root / "home" / name
        for sub in ("tmp", "new", "cur"):
            (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
        self._chown_tree(home)
        self.users.append(name)
        return name

    def maildir(self, user: str, folder: str | None = None) -> Path:
        base = self.root / "home" / user / "Maildir"
        return base if folder is None else base / f".{folder}"

    def deliver(self, user: str, content: bytes, folder: str | None = None) -> Path:
        """Put one message into the user's ``new/`` the way an MDA does (tmp, rename)."""
        md = self.maildir(user, folder)
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(_seq)}.spoolbox-test"
        tmp = md / "tmp" / name
        tmp.write_bytes(content)
        os.chown(tmp, self.uid, self.gid)
        final = md / "new" / name
        os.rename(tmp, final)
        return final

    def files(self, user: str, folder: str | None = None) -> list[Path]:
        """The message files of a mailbox (new/ and cur/)."""
        md = self.maildir(user, folder)
        out: list[Path] = []
        for sub in ("new", "cur"):
            d = md / sub
            if d.is_dir():
                out += [p for p in d.iterdir() if p.is_file()]
        return out

    def reset_uidvalidity(self, user: str) -> None:
        """Make Dovecot assign a new UIDVALIDITY to INBOX (and new UIDs to everything).

        Removing the maildir's uidlist (and index) is what a restore from backup or
        a rebuilt mailbox does; the next session sees a fresh UIDVALIDITY.
        """
        md = self.maildir(user)
        for p in list(md.iterdir()):
            if p.name.startswith("dovecot") and p.is_file():
                p.unlink()

    def _chown_tree(self, path: Path) -> None:
        for dirpath, _dirnames, filenames in os.walk(path):
            os.chown(dirpath, self.uid, self.gid)
            for n in filenames:
                os.chown(os.path.join(dirpath, n), self.uid, self.gid)
        p = path.parent
        while p != self.root / "home" and p != p.parent:
            os.chown(p, self.uid, self.gid)
            p = p.parent

    def log(self) -> str:
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- life ---------------------------------------------------------------------------
    def stop(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float, root: Path) -> None:
    while True:
        if proc.poll() is not None:
            log = (root / "dovecot.log").read_text(errors="replace") if root.exists() else ""
            raise RuntimeError(f"dovecot exited with {proc.returncode}:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(5)
                if s.recv(200).startswith((b"* OK", b"+OK")):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"dovecot did not answer on port {port} in time")
        time.sleep(0.05)


def start_dovecot() -> Dovecot:
    """Start a private Dovecot; the caller must call :meth:`Dovecot.stop`."""
    # Imported here: without trustme only the tests that start Dovecot skip.
    trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes Dovecot's cert")
    mail = _user("nobody")
    group = grp.getgrgid(mail.pw_gid)
    internal = _user("dovecot")
    login = _user("dovenull")
    root = Path(tempfile.mkdtemp(prefix="spoolbox-dovecot-"))
    os.chmod(root, 0o755)
    (root / "home").mkdir()
    os.chmod(root / "home", 0o755)
    (root / "passwd").write_text(
        "".join(f"user{i}:{{PLAIN}}{PASSWORD}\n" for i in range(1, USERS + 1))
    )
    os.chmod(root / "passwd", 0o644)
    ports = [_free_port() for _ in range(4)]
    server = Dovecot(root, *ports, mail.pw_uid, group.gr_gid)
    # A private CA (trustme) and a certificate for 127.0.0.1; clients trust ca.pem.
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    os.chmod(root / "key.pem", 0o600)
    conf = root / "dovecot.conf"
    conf.write_text(
        _CONF.format(
            root=root,
            internal=internal.pw_name,
            login=login.pw_name,
            uid=mail.pw_uid,
            gid=group.gr_gid,
            imap_port=server.imap_port,
            pop3_port=server.pop3_port,
            imaps_port=server.imaps_port,
            pop3s_port=server.pop3s_port,
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
        _wait_port(server.imap_port, server.proc, deadline, root)
        _wait_port(server.pop3_port, server.proc, deadline, root)
    except BaseException:
        server.stop()
        raise
    return server
