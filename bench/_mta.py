"""Shared helpers of the relay and latency benchmarks: the sink and the systems under test.

* :class:`Sink`: Postfix's ``smtp-sink`` on a free loopback port, started with ``-c``
  (running counters).  smtp-sink writes ``sess=N quit=N mesg=N`` followed by a carriage
  return each time it receives the final dot of a message (and when a session ends); a
  reader thread parses that stream from a pipe and records when each count was first
  seen (``time.perf_counter``), so "the sink has everything" and "this message is on
  the wire" are read from smtp-sink itself.
* :class:`SpoolboxDaemon`: ``spoolbox run`` with a generated profile in a fresh data
  directory: SQLite store (``synchronous = "FULL"``), the SMTP submission listener on a
  free port, the ``smtp`` transport to the sink (``tls = "none"``), ``nice = 0``,
  ``[policy] idle = "always"``.
* :class:`PostfixRelay`: a private Postfix instance (its own ``config_directory``,
  ``queue_directory`` and ``data_directory`` in a fresh directory, started with
  ``postfix -c DIR start``): smtpd on a free loopback port, ``relayhost`` the sink, no
  local delivery, no TLS, no chroot.  Postfix's cleanup(8) fsyncs every queue file
  before smtpd answers 250 to the final dot (Postfix's default; there is no setting).
* :func:`ensure_peers`: installs the ``postfix`` package (smtp-sink, smtp-source,
  postfix) with apt-get when one of the programs is missing.

Every process these classes start is stopped by ``close()`` (use them as context
managers); nothing is killed by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

PEER_PROGRAMS = ("smtp-sink", "smtp-source", "postfix", "postconf")
SPOOLBOX = Path(sys.executable).with_name("spoolbox")


def source_digest() -> str:
    """The first 12 hex digits of a SHA-256 over the spoolbox sources being measured."""
    import spoolbox

    root = Path(spoolbox.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def machine() -> str:
    """nproc, kernel, Python and Postfix versions, for the table's caption."""
    pf = subprocess.run(
        [program("postconf"), "-h", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}, "
        f"Postfix {pf}, spoolbox sources {source_digest()}"
    )


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ensure_peers() -> None:
    """Install Postfix (smtp-sink, smtp-source and the MTA) if a program is missing."""
    missing = [p for p in PEER_PROGRAMS if shutil.which(p, path=_sbin_path()) is None]
    if not missing:
        return
    log(f"bench: {', '.join(missing)} not found: installing the 'postfix' package with apt-get")
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            "bench: needs Postfix's smtp-sink, smtp-source and postfix; install them "
            "as root with: apt-get install -y postfix"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    selections = "postfix postfix/main_mailer_type select No configuration\n"
    subprocess.run(["debconf-set-selections"], input=selections.encode(), check=False, env=env)
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], check=True, env=env)
    still = [p for p in PEER_PROGRAMS if shutil.which(p, path=_sbin_path()) is None]
    if still:
        raise SystemExit(f"bench: still missing after installing postfix: {', '.join(still)}")


#: What an emulated slow disk (``bench/slowsync.c``) needs in a process's environment.
SLOW_SYNC_VARIABLES = ("LD_PRELOAD", "SLOW_SYNC_US", "SLOW_SYNC_LOCK")


def slow_sync_library(workdir: Path) -> Path:
    """``bench/slowsync.c`` built into ``workdir`` (every fsync and fdatasync of a
    process that preloads it takes ``SLOW_SYNC_US`` microseconds longer)."""
    target = workdir / "slowsync.so"
    source = Path(__file__).with_name("slowsync.c")
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("bench: --slow-sync-us needs a C compiler (apt-get install gcc)")
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(target), str(source), "-ldl"], check=True
    )
    return target


def _import_environment() -> str:
    """Postfix's ``import_environment`` with the slow disk's variables added when this
    process has them: Postfix's master passes its children only what it lists."""
    default = (
        "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ XAUTHORITY DISPLAY LANG=C "
        "POSTLOG_SERVICE POSTLOG_HOSTNAME"
    )
    extra = [f"{k}={os.environ[k]}" for k in SLOW_SYNC_VARIABLES if os.environ.get(k)]
    return " ".join([default, *extra])


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def program(name: str) -> str:
    found = shutil.which(name, path=_sbin_path())
    if found is None:
        raise SystemExit(f"bench: {name} not found (apt-get install -y postfix)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                ) from None
            time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process we started, then SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


class _Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Sink(_Closing):
    """``smtp-sink -c`` on a free loopback port; counts the messages it received."""

    _RECORD = re.compile(rb"mesg=(\d+)")

    def __init__(self) -> None:
        self.port = free_port()
        cmd = [program("smtp-sink"), "-c"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # smtp-sink refuses to run as root without -u
        cmd += [f"127.0.0.1:{self.port}", "256"]
        self.command = cmd
        self.count = 0
        self.seen: list[float] = [0.0]  # seen[k]: when mesg=k was first read
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self._reader = threading.Thread(target=self._read, name="smtp-sink reader", daemon=True)
        self._reader.start()
        try:
            wait_port(self.port, 10, self._proc)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 65536)
            now = time.perf_counter()
            if not chunk:
                return
            pending += chunk
            *records, pending = pending.split(b"\r")
            top = self.count
            for rec in records:
                m = self._RECORD.search(rec)
                if m:
                    top = max(top, int(m.group(1)))
            if top > self.count:
                with self._cond:
                    self.seen.extend([now] * (top - self.count))
                    self.count = top
                    self._cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> float:
        """The time (perf_counter) the sink had received ``n`` messages in all."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= n, timeout):
                raise TimeoutError(f"smtp-sink has {self.count} of {n} messages after {timeout} s")
            return self.seen[n]

    def close(self) -> None:
        stop_process(self._proc, 5)
        self._reader.join(5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class SpoolboxDaemon(_Closing):
    """``spoolbox run`` on a fresh data directory, relaying SMTP: to ``sink_port``."""

    name = "spoolbox"

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        max_connections: int = 10,
        synchronous: str = "FULL",
        event_loop: str = "auto",
        listener_processes: int = 0,
        extra_profile: str = "",
        *,
        workers: int = 0,
        as_init: bool = False,
        init_sink: Sequence[str] = (),
        init_listener: Sequence[str] = (),
        init_daemon: Sequence[str] = (),
        init_without_local: bool = False,
        init_store: Sequence[str] = (),
        init_mx: str | None = None,
        command_prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        """``command_prefix``: run ``spoolbox run`` under it (Valgrind), with ``env``
        and ``start_timeout`` seconds for its listener to open."""
        self.dir = workdir
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.profile = self.dir / "spoolbox.toml"
        if as_init:
            self._init_profile(
                sink_port,
                init_sink,
                init_listener,
                init_daemon,
                init_store,
                without_local=init_without_local,
                mx=init_mx,
            )
            if extra_profile:
                self.profile.write_text(self.profile.read_text() + "\n" + extra_profile)
        else:
            self._bench_profile(
                sink_port,
                max_connections,
                synchronous,
                event_loop,
                listener_processes,
                extra_profile,
                workers,
            )
        self.log_path = self.dir / "daemon.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*command_prefix, str(SPOOLBOX), "-p", str(self.profile), "run", "--no-dialog"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
        )
        self.pid = self.proc.pid
        try:
            wait_port(self.port, start_timeout, self.proc)
        except BaseException:
            self.close()
            log(self.log_path.read_text(errors="replace")[-2000:])
            raise

    def _init_profile(
        self,
        sink_port: int,
        sink_keys: Sequence[str],
        listener_keys: Sequence[str],
        daemon_keys: Sequence[str] = (),
        store_keys: Sequence[str] = (),
        *,
        without_local: bool = False,
        mx: str | None = None,
    ) -> None:
        """The profile exactly as ``spoolbox init`` writes it (its listener on a free
        port), plus an ``smtp`` transport to the sink with nothing but where it is
        (with ``mx``, a name server: ``delivery = "mx"``, the sink found by DNS);
        ``sink_keys``, ``listener_keys``, ``daemon_keys`` and ``store_keys`` (``key =
        value`` lines) are added to the transport's options, the listener's table,
        ``[daemon]`` and ``[store]`` (to measure candidate defaults); ``without_local``
        drops the ``local`` (maildir) transport ``init`` writes."""
        subprocess.run(
            [str(SPOOLBOX), "init", "--dir", str(self.dir), "--smtp-port", str(self.port)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        text = self.profile.read_text()
        block = _SINK_TRANSPORT if mx is None else _MX_TRANSPORT
        sink = block.format(port=sink_port, nameserver=mx) + "".join(f"{k}\n" for k in sink_keys)
        text = _set_keys(text, "[daemon]", daemon_keys)
        text = _set_keys(text, "[store]", store_keys)
        text = _set_keys(text, "[listeners.submission]", listener_keys)
        if without_local:
            text, n = re.subn(_LOCAL_TRANSPORT, "", text, count=1)
            if n != 1:
                raise RuntimeError("bench: no local transport in the profile spoolbox init wrote")
        text = text.replace("[listeners.submission]\n", sink + "\n[listeners.submission]\n", 1)
        self.profile.write_text(text)

    def _bench_profile(
        self,
        sink_port: int,
        max_connections: int,
        synchronous: str,
        event_loop: str,
        listener_processes: int,
        extra_profile: str,
        workers: int,
    ) -> None:
        self.profile.write_text(
            f"""\
data_dir = "."
node = "bench"

[store]
backend = "sqlite"
path = "spool.sqlite3"
synchronous = "{synchronous}"

[daemon]
nice = 0
log_level = "warning"
event_loop = "{event_loop}"
{f"workers = {workers}" if workers else ""}

[policy]
idle = "always"

{_SINK_TRANSPORT.format(port=sink_port)}max_connections = {max_connections * (workers + 1)}

[listeners.submission]
kind = "smtp"
host = "127.0.0.1"
port = {self.port}
processes = {listener_processes}
{extra_profile}"""
        )

    def store_commits(self) -> tuple[int, int]:
        """Write transactions so far of the daemon's store and its listener processes'
        stores (as last reported): (all, durable ones).  Listener processes commit
        only submissions, which are durable."""
        from spoolbox.client import Client

        st = Client(self.profile).statistics()
        store = st["store"]
        commits = int(store.get("commits", 0))
        durable = commits - int(store.get("progress_commits", 0))
        for listener in (st.get("listeners") or {}).values():
            commits += int(listener.get("store_commits", 0))
            durable += int(listener.get("store_commits", 0))
        return commits, durable

    def cpu_seconds(self) -> float:
        """User + system CPU time the daemon and its running children (listener
        processes) have used so far."""
        own, children = self.cpu_split()
        return own + children

    def cpu_split(self) -> tuple[float, float]:
        """User + system CPU time so far of the daemon itself and of its running
        children (listener processes, delivery workers) together."""
        own = children = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            if stat.parent.name == str(self.pid):
                own += int(fields[11]) + int(fields[12])
            elif fields[1] == str(self.pid):
                children += int(fields[11]) + int(fields[12])
        tick = os.sysconf("SC_CLK_TCK")
        return own / tick, children / tick

    def lock_seconds(self) -> float:
        """Seconds the daemon's store and its listener processes' stores have spent in
        write transactions, i.e. holding SQLite's write lock, as last reported (a
        listener process reports its counters once a second)."""
        from spoolbox.client import Client

        st = Client(self.profile).statistics()
        total = float(st["store"]["write_seconds"])
        for listener in (st.get("listeners") or {}).values():
            total += float(listener.get("store_write_ms", 0)) / 1000
        return total

    def close(self) -> None:
        try:
            stop_process(self.proc, 30)
        finally:
            self._log.close()


def _set_keys(text: str, table: str, lines: Sequence[str]) -> str:
    """``text`` (a profile) with each ``key = value`` of ``lines`` in ``table``: the
    key's line replaced where the table has it (commented out or not), else added
    at the table's start."""
    start = text.index(table + "\n") + len(table) + 1
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end + 1
    body, added = text[start:end], []
    for line in lines:
        key = line.split("=", 1)[0].strip()
        body, n = re.subn(rf"^#? ?{re.escape(key)}\s*=.*$", line, body, count=1, flags=re.M)
        if not n:
            added.append(line + "\n")
    return text[:start] + "".join(added) + body + text[end:]


#: The ``local`` (maildir) transport of ``spoolbox init``'s profile, to its blank line.
_LOCAL_TRANSPORT = re.compile(r'\[\[transports\]\]\nname = "local"\n.*?\n\n', re.S)

#: The transport ``SpoolboxDaemon(as_init=True)`` adds to ``spoolbox init``'s profile.
_SINK_TRANSPORT = """\
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
inbound = false
[transports.options]
host = "127.0.0.1"
port = {port}
tls = "none"
"""

#: Direct delivery as a user writes it: the sink is the MX of the recipients' domain
#: (:class:`Dnsmasq`), on the sink's port; TLS as shipped (opportunistic: smtp-sink
#: offers none).
_MX_TRANSPORT = """\
[[transports]]
name = "relay"
provider = "smtp"
address_types = ["SMTP"]
inbound = false
[transports.options]
delivery = "mx"
nameservers = ["{nameserver}"]
port = {port}
"""

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixRelay(_Closing):
    """A private Postfix instance in ``workdir`` relaying everything to ``sink_port``
    (``main_cf``: more lines for its main.cf, after the others: a key given again there
    overrides, as Postfix takes a parameter's last line)."""

    name = "postfix"

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        concurrency: int = 10,
        main_cf: Sequence[str] = (),
    ) -> None:
        if os.geteuid() != 0:
            raise SystemExit("bench: a private Postfix instance must be started as root")
        self.dir = workdir
        self.etc = workdir / "etc"
        self.spool = workdir / "spool"
        self.maillog = workdir / "maillog"
        self.port = free_port()
        self.etc.mkdir(parents=True)
        self.spool.mkdir()
        (workdir / "data").mkdir()
        shutil.chown(workdir / "data", "postfix")
        for d in (workdir, *workdir.parents):  # the postfix user must reach its queue
            if not d.stat().st_mode & 0o001:
                raise SystemExit(f"bench: {d} is not searchable by others; postfix cannot use it")
        (self.etc / "main.cf").write_text(
            f"""\
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {workdir / "data"}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localdomain
mydomain = localdomain
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks reject
relayhost = [127.0.0.1]:{sink_port}
smtp_destination_concurrency_limit = {concurrency}
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file = {self.maillog}
maillog_file_prefixes = {workdir}
import_environment = {_import_environment()}
"""
            + "".join(line + "\n" for line in main_cf)
        )
        (self.etc / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        self._started = False
        try:
            self._postfix("start")
            self._started = True
            wait_port(self.port, 30)
        except BaseException:
            self.close()
            raise

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            [program("postfix"), "-c", str(self.etc), command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            tail = self.maillog.read_text(errors="replace")[-1500:] if self.maillog.exists() else ""
            raise RuntimeError(f"postfix -c {self.etc} {command} failed:\n{tail}")

    def master_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.spool / "pid" / "master.pid").read_text().strip())
        return None

    def close(self) -> None:
        pid = self.master_pid()
        if self._started:
            try:
                self._postfix("stop")
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log(f"bench: {exc}")
        if pid is None:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # master waits for its children, then exits
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the master of our own instance, by its pid


def smtp_source(port: int, messages: int, sessions: int, size: int) -> subprocess.Popen[bytes]:
    """Start smtp-source: ``sessions`` parallel sessions, one message per connection."""
    cmd = [
        program("smtp-source"),
        "-c",
        "-s",
        str(sessions),
        "-l",
        str(size),
        "-m",
        str(messages),
        "-f",
        "from@example.org",
        "-t",
        "to@example.org",
        f"127.0.0.1:{port}",
    ]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


class Dnsmasq(_Closing):
    """dnsmasq on a free loopback port: ``example.org`` (smtp-source's recipients'
    domain) has the MX ``mx.example.org``, 127.0.0.1; answers live 60 s."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("dnsmasq", path=_sbin_path())
        if exe is None:
            raise SystemExit("bench: dnsmasq not found (apt-get install -y dnsmasq-base)")
        self.port = free_port()
        self.nameserver = f"127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = (workdir / "dnsmasq.log").open("wb")
        self.proc = subprocess.Popen(
            [
                exe,
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--local=/example.org/",
                "--local-ttl=60",
                "--mx-host=example.org,mx.example.org,10",
                "--host-record=mx.example.org,127.0.0.1",
                *(["--user=root"] if os.geteuid() == 0 else []),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        import dns.exception
        import dns.message
        import dns.query

        probe = dns.message.make_query("example.org", "MX")
        deadline = time.monotonic() + 10
        while True:
            try:
                dns.query.udp(probe, "127.0.0.1", timeout=0.2, port=self.port)
                return
            except (OSError, dns.exception.Timeout):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("bench: dnsmasq did not answer") from None

    def close(self) -> None:
        stop_process(self.proc, 5)
        self._log.close()
