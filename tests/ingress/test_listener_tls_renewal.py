"""A renewed certificate is served without a restart.

certbot and acme.sh renew a certificate every two months or so and replace the files
the profile's ``tls_cert`` names (certbot by pointing its ``live/`` links at new
files, acme.sh by writing over them).  The listener looks at the files at each
STARTTLS and loads them again when they changed; a change that does not load keeps
the certificate before it, said once in the log.  Real TLS handshakes (smtplib, a CA
of trustme's) tell which certificate was served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import ssl
from pathlib import Path

import pytest
import trustme
from tls_loops import LOOPS, run_on

from spoolbox import NewMessage
from spoolbox.ingress import ListenerConfig, SubmissionListener


async def keep(message: NewMessage) -> object:
    return None


def issue(ca: trustme.CA, path: Path, *, in_place: bool = False) -> bytes:
    """A new certificate for 127.0.0.1 with its key, written to ``path`` as a renewal
    does (a new file moved over the old, or ``in_place``); its DER bytes."""
    leaf = ca.issue_cert("127.0.0.1")
    pem = leaf.private_key_and_cert_chain_pem.bytes()
    if in_place:
        path.write_bytes(pem)
    else:
        fresh = path.with_suffix(".new")
        fresh.write_bytes(pem)
        os.replace(fresh, path)
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def served(port: int, ca: trustme.CA) -> bytes:
    """The certificate (DER) the listener presents to a STARTTLS, verified by ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.starttls(context=context)
        assert smtp.ehlo("client.test")[0] == 250
        assert isinstance(smtp.sock, ssl.SSLSocket)
        der = smtp.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.mark.parametrize("loop", LOOPS)
def test_a_renewed_certificate_is_served_at_the_next_starttls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loop: str
) -> None:
    run_on(loop, lambda: _renewals(tmp_path, caplog))


async def _renewals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    pem = tmp_path / "listener.pem"
    first = issue(ca, pem)
    listener = SubmissionListener(keep, ListenerConfig(port=0, tls_cert=str(pem)))
    await listener.start()
    try:
        assert await asyncio.to_thread(served, listener.port, ca) == first
        assert await asyncio.to_thread(served, listener.port, ca) == first

        second = issue(ca, pem)  # certbot: new files behind the same name
        with caplog.at_level(logging.INFO, logger="spoolbox.ingress"):
            assert await asyncio.to_thread(served, listener.port, ca) == second
        assert f"the TLS certificate {pem} changed: loaded again" in caplog.text

        # Half written (or any file that does not load): the certificate before it
        # stays, said once however many clients come meanwhile.
        pem.write_bytes(pem.read_bytes()[:300])
        caplog.clear()
        for _ in range(3):
            assert await asyncio.to_thread(served, listener.port, ca) == second
        refusals = [r for r in caplog.records if "does not load" in r.getMessage()]
        assert len(refusals) == 1, caplog.text
        assert refusals[0].levelno == logging.ERROR

        third = issue(ca, pem, in_place=True)  # acme.sh: written over
        assert await asyncio.to_thread(served, listener.port, ca) == third

        pem.unlink()  # a renewal between its steps: the last good one stays
        assert await asyncio.to_thread(served, listener.port, ca) == third
        fourth = issue(ca, pem)
        assert await asyncio.to_thread(served, listener.port, ca) == fourth
    finally:
        await listener.stop(grace=1.0)


async def test_a_certificate_that_does_not_load_at_start_is_an_error(tmp_path: Path) -> None:
    pem = tmp_path / "listener.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    listener = SubmissionListener(keep, ListenerConfig(port=0, tls_cert=str(pem)))
    with pytest.raises(OSError, match=f"cannot load the TLS certificate {pem}"):
        await listener.start()
