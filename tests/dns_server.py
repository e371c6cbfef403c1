"""A real DNS server for the SMTP transport's ``delivery = "mx"`` tests: dnsmasq on a
free loopback port, answering only the records a test gives it.

dnsmasq is authoritative here for the ``test`` domain (``--local=/test/``: a name
under it with no record is NXDOMAIN), forwards nothing (``--no-resolv``: any other
name is REFUSED), reads neither ``/etc/hosts`` nor a configuration file, and gives
its answers a TTL of 60 s (``--local-ttl``), so that the transport's cache shows.
Every query is logged (:meth:`Dnsmasq.queries`).  CI installs it (Debian's
``dnsmasq-base``); without it the tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


@dataclass
class Dnsmasq:
    port: int
    log: Path

    @property
    def nameserver(self) -> str:
        """The ``nameservers`` entry for the transport's options."""
        return f"127.0.0.1:{self.port}"

    def queries(self, what: str) -> int:
        """How many queries the log shows for ``what`` (``"MX example.test"``)."""
        rdtype, name = what.split()
        return self.log.read_text().count(f"query[{rdtype}] {name} from")


def free_udp_and_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


@contextlib.contextmanager
def dnsmasq(records: Sequence[str], workdir: Path) -> Iterator[Dnsmasq]:
    """dnsmasq serving ``records`` (its options: ``--mx-host=...``, ``--host-record=...``,
    ``--dns-rr=...``) until the block ends."""
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq not installed: apt-get install dnsmasq-base")
    port = free_udp_and_tcp_port()
    log = workdir / f"dnsmasq-{port}.log"
    args = [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--local=/test/",
        "--local-ttl=60",
        "--log-queries",
        "--log-facility=-",
        *(["--user=root"] if os.geteuid() == 0 else []),
        *records,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_answering(proc, port, log, "dnsmasq", "ready.test")
        yield Dnsmasq(port, log)
    finally:
        proc.kill()
        proc.wait()


def wait_answering(
    proc: subprocess.Popen[bytes], port: int, log: Path, what: str, name: str
) -> None:
    """Until the DNS server ``proc`` answers a query for ``name`` on ``port`` (any
    answer), for up to 10 s; the test fails with its log if it exits or stays mute."""
    probe = dns.message.make_query(name, "A")
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}): {log.read_text()}")
        try:
            dns.query.udp(probe, "127.0.0.1", timeout=0.2, port=port)
            return
        except (OSError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} did not answer: {log.read_text()}")
