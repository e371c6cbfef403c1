"""A real validating DNS resolver for the DANE tests: unbound on a free loopback port,
serving a DNSSEC-signed zone ``test.`` and an unsigned zone ``plain.``.

The ``test.`` zone is signed here with ldns (``ldns-keygen``, ``ldns-signzone``, an
ECDSA P-256 key pair made for each run) and its key is unbound's trust anchor, so
unbound validates every answer from it and sets the AD bit, as a validating resolver
on a mail host does for signed domains on the Internet; ``plain.`` has no trust
anchor (its answers come without AD: insecure).  A record named in ``bogus`` is
changed after signing, so its signature fails and unbound answers SERVFAIL for it,
as for a forged answer.  Both zones are unbound's own (``auth-zone``, no query
leaves the machine).  CI installs both programs (Debian's ``unbound`` and
``ldnsutils``); without them the tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from dns_server import free_udp_and_tcp_port, wait_answering

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
KEYGEN = shutil.which("ldns-keygen")
SIGNZONE = shutil.which("ldns-signzone")


@dataclass
class Unbound:
    port: int
    log: Path

    @property
    def nameserver(self) -> str:
        """The ``nameservers`` entry for the transport's options."""
        return f"127.0.0.1:{self.port}"


def _zone(origin: str, records: Sequence[str]) -> str:
    return "\n".join(
        [
            f"$ORIGIN {origin}",
            "$TTL 60",
            f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 60",
            f"@ IN NS ns.{origin}",
            "ns IN A 127.0.0.1",
            *records,
            "",
        ]
    )


def _run(args: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip()


def _sign(records: Sequence[str], bogus: Sequence[str], workdir: Path) -> tuple[Path, str]:
    """The signed ``test.`` zone file and the DS record of its key."""
    assert KEYGEN is not None and SIGNZONE is not None
    zone = workdir / "test.zone"
    zone.write_text(_zone("test.", records))
    ksk = _run([KEYGEN, "-a", "ECDSAP256SHA256", "-k", "test."], workdir)
    zsk = _run([KEYGEN, "-a", "ECDSAP256SHA256", "test."], workdir)
    _run([SIGNZONE, "-n", str(zone), ksk, zsk], workdir)
    signed = workdir / "test.zone.signed"
    lines = signed.read_text().splitlines()
    for name in bogus:
        owner = f"{name}.test."
        hits = [i for i, line in enumerate(lines) if line.split("\t")[0] == owner]
        changed = [i for i in hits if line_type(lines[i]) not in ("RRSIG", "NSEC", "NSEC3")]
        assert changed, f"no record of {owner} to make bogus"
        for i in changed:  # the data changed, its signature not: validation fails
            head, _, data = lines[i].rpartition("\t")
            lines[i] = f"{head}\t{data[:-4]}{'0000' if data[-4:] != '0000' else 'ffff'}"
    signed.write_text("\n".join(lines) + "\n")
    ds = (workdir / f"{ksk}.ds").read_text().split()
    return signed, " ".join(ds)


def line_type(line: str) -> str:
    """The record type of a line of a signed zone (``owner ttl class type data``)."""
    parts = line.split("\t")
    return parts[3] if len(parts) > 3 else ""


@contextlib.contextmanager
def unbound(
    signed: Sequence[str], plain: Sequence[str], workdir: Path, *, bogus: Sequence[str] = ()
) -> Iterator[Unbound]:
    """unbound serving ``signed`` (zone-file lines relative to ``test.``) signed and
    ``plain`` (relative to ``plain.``) unsigned, ``bogus`` names of ``test.`` with a
    broken signature, until the block ends."""
    if not (KEYGEN and SIGNZONE and shutil.which(UNBOUND)):
        pytest.skip("unbound and ldns-signzone not installed: apt-get install unbound ldnsutils")
    workdir.mkdir(parents=True, exist_ok=True)
    zone, ds = _sign(signed, bogus, workdir)
    plain_zone = workdir / "plain.zone"
    plain_zone.write_text(_zone("plain.", plain))
    port = free_udp_and_tcp_port()
    conf = workdir / "unbound.conf"
    conf.write_text(
        f"""server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    do-ip6: no
    module-config: "validator iterator"
    qname-minimisation: no
    local-zone: "test." nodefault
    trust-anchor: "{ds}"
auth-zone:
    name: "test."
    zonefile: "{zone}"
    for-downstream: no
    for-upstream: yes
    fallback-enabled: no
auth-zone:
    name: "plain."
    zonefile: "{plain_zone}"
    for-downstream: no
    for-upstream: yes
    fallback-enabled: no
"""
    )
    log = workdir / "unbound.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [UNBOUND, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_answering(proc, port, log, "unbound", "ns.test")
        yield Unbound(port, log)
    finally:
        proc.kill()
        proc.wait()
