"""A private PostgreSQL cluster for the PostgreSQL store's tests.

:func:`start_cluster` runs Debian's ``initdb`` into a fresh directory and starts
``postgres`` (through ``pg_ctl``) on a free loopback port, its unix socket in the same
directory, fsync on as in production; never the system instance.  PostgreSQL refuses
to run as root, so when the tests run as root the server runs as the ``postgres``
system user (``runuser -u postgres --``), which owns the directory.  Clients log on
over TCP as the superuser :data:`ADMIN` with :data:`PASSWORD` (scram-sha-256), so the
DSN handling (passwords included) is exercised as it is in production.

:meth:`Cluster.new_database` makes a database for one test, a copy of a template
that already holds the migrated schema (``CREATE DATABASE ... TEMPLATE``: a file
copy, much faster than running the migrations for every test).

The binaries are found under ``/usr/lib/postgresql/*/bin`` (Debian's layout) or on
``PATH``; :data:`SKIP_REASON` names the package that installs them.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ADMIN = "spoolbox_admin"
PASSWORD = "pg s3cret"
SKIP_REASON = (
    "PostgreSQL is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin): "
    "apt-get install postgresql"
)


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding initdb and pg_ctl, else the
    directory of ``initdb`` on PATH, else None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if all(os.access(Path(c) / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    bindir: Path
    root: Path
    port: int
    run_as: str | None  # the system user the server runs as (None: this user)
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def dsn(self, dbname: str = "postgres", *, password: str = PASSWORD) -> str:
        return (
            f"host={self.host} port={self.port} dbname={dbname} user={ADMIN} "
            f"password='{password}' connect_timeout=10"
        )

    def url(self, dbname: str) -> str:
        """The same as a URL (``postgresql://user:password@host:port/db``)."""
        from urllib.parse import quote

        return f"postgresql://{ADMIN}:{quote(PASSWORD)}@{self.host}:{self.port}/{dbname}"

    def _command(self, *argv: str) -> list[str]:
        if self.run_as is None:
            return list(argv)
        return ["runuser", "-u", self.run_as, "--", *argv]

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(str(self.bindir / "pg_ctl"), "-D", str(self.data), *args),
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={self.host} "
            "-c fsync=on -c max_connections=200"
        )
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.root / "postgres.log"), "-o", options)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode, "-w", check=False)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "postgres.log").read_text(errors="replace")
        return ""

    # -- databases ------------------------------------------------------------------------
    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """One statement outside any transaction (CREATE/DROP DATABASE), as the admin."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    _names = itertools.count(1)

    def new_database(self, template: str | None = None) -> str:
        """A new database (a copy of ``template`` when given); returns its name."""
        name = f"t{os.getpid()}_{next(self._names)}"
        tail = f" TEMPLATE {template}" if template else ""
        self.execute(f"CREATE DATABASE {name}{tail}")
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_cluster() -> Cluster:
    """A new cluster, started; raises RuntimeError with the server's log if it fails."""
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError(SKIP_REASON)
    run_as = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="spoolbox-pg-"))
    if run_as is not None:
        pw = pwd.getpwnam(run_as)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o700)
    pwfile = root / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if run_as is not None:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    cluster = Cluster(bindir=bindir, root=root, port=free_port(), run_as=run_as)
    init = subprocess.run(
        cluster._command(
            str(bindir / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            ADMIN,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        log = cluster.log()
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log}") from exc
    return cluster


def remove_cluster(cluster: Cluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)
