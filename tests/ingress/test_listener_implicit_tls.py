"""``tls = "implicit"``: TLS from the first byte (RFC 8314, the "submissions" port
465 that Django's ``EMAIL_USE_SSL``, PHPMailer's ``ssl`` and mail clients use).

The handshake comes first, then the greeting under TLS; STARTTLS is not offered (and
refused), AUTH is; the Received line says ESMTPSA.  A client that speaks plain text
gets no greeting and is disconnected.  Real handshakes (smtplib's SMTP_SSL, a CA of
trustme's).
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from tls_loops import LOOPS, run_on

from spoolbox import NewMessage
from spoolbox.ingress import ListenerConfig, SubmissionListener

MESSAGE = b"From: ann@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("loop", LOOPS)
def test_the_handshake_comes_first_then_the_session_under_tls(tmp_path: Path, loop: str) -> None:
    ca = trustme.CA()
    pem = tmp_path / "listener.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    kept: list[NewMessage] = []

    async def keep(message: NewMessage) -> object:
        kept.append(message)
        return None

    config = ListenerConfig(
        port=0,
        tls="implicit",
        tls_cert=str(pem),
        require_auth=True,
        users={"ann": "secret"},
        relay_networks=(),
    )
    found: dict[str, Any] = {}

    async def main() -> None:
        listener = SubmissionListener(keep, config)
        await listener.start()
        try:
            found["session"] = await asyncio.to_thread(session, listener.port)
            found["plain"] = await asyncio.to_thread(plain, listener.port)
            # Renewed: the next handshake presents the new certificate.
            renewed = ca.issue_cert("127.0.0.1")
            fresh = tmp_path / "fresh.pem"
            renewed.private_key_and_cert_chain_pem.write_to_path(str(fresh))
            os.replace(fresh, pem)
            found["after"] = await asyncio.to_thread(served, listener.port)
            found["renewed"] = ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
        finally:
            await listener.stop(grace=1.0)

    def session(port: int) -> tuple[dict[str, str], tuple[int, bytes]]:
        with smtplib.SMTP_SSL("127.0.0.1", port, context=client_context(ca), timeout=30) as smtp:
            smtp.ehlo("client.test")
            features = dict(smtp.esmtp_features)
            again = smtp.docmd("STARTTLS")
            smtp.login("ann", "secret")  # offered: the connection is under TLS
            smtp.sendmail("ann@example.org", ["far@elsewhere.net"], MESSAGE)
        return features, again

    def served(port: int) -> bytes:
        with smtplib.SMTP_SSL("127.0.0.1", port, context=client_context(ca), timeout=30) as smtp:
            assert smtp.ehlo("client.test")[0] == 250
            assert isinstance(smtp.sock, ssl.SSLSocket)
            der = smtp.sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    def plain(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"EHLO client.test\r\n")
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
        return received

    run_on(loop, main)
    features, again = found["session"]
    received = found["plain"]
    assert "starttls" not in features and "auth" in features, features
    assert again[0] == 503, again
    [message] = kept
    assert b" with ESMTPSA id " in message.content.split(b"\r\n\r\n", 1)[0]
    # Plain text is not SMTP here: no greeting, only the handshake's failure, closed.
    assert b"220" not in received, received
    # No server name in the hello (an IP address): the renewal is served all the same.
    assert found["after"] == found["renewed"]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"tls": "implicit"}, 'tls = "implicit" needs tls_cert'),
        ({"tls": "ssl", "tls_cert": "x.pem"}, "tls must be one of starttls, implicit, not 'ssl'"),
    ],
)
def test_a_tls_setting_that_cannot_work_is_refused(options: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ListenerConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("loop", LOOPS)
def test_handshakes_count_towards_the_connection_limit(
    tmp_path: Path, loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection is admitted before its handshake, so that clients that open
    connections and never finish (or fail) the handshake count towards
    ``max_connections`` and are dropped after the handshake timeout, instead of each
    holding a socket, unseen by the limits, for asyncio's 60 seconds."""
    ca = trustme.CA()
    pem = tmp_path / "listener.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    config = ListenerConfig(
        port=0, tls="implicit", tls_cert=str(pem), max_connections=2, idle_timeout=1.0
    )
    found: dict[str, Any] = {}
    caplog.set_level(logging.INFO, logger="spoolbox.ingress")

    async def keep(message: NewMessage) -> object:
        return None

    async def main() -> None:
        listener = SubmissionListener(keep, config)
        await listener.start()
        try:
            loop_ = asyncio.get_running_loop()
            silent = [
                await asyncio.to_thread(socket.create_connection, ("127.0.0.1", listener.port))
                for _ in range(2)
            ]
            await wait_for(lambda: listener.statistics()["active"] == 2)
            # Full: a third is closed at once, no handshake, no reply it could not read.
            found["third"] = await asyncio.to_thread(try_session, listener.port)
            found["limit"] = listener.statistics()["rejected_connection_limit"]
            # The silent ones are dropped when the handshake's time is up (idle_timeout
            # here, 60 s at most), and their places are free again.
            started = loop_.time()
            found["dropped"] = [await asyncio.to_thread(read_all, s) for s in silent]
            found["after"] = loop_.time() - started
            await wait_for(lambda: listener.statistics()["active"] == 0)
            # A handshake that fails (plain text) gives its place back at once.
            found["plain"] = await asyncio.to_thread(plain_text, listener.port)
            await wait_for(lambda: listener.statistics()["active"] == 0)
            found["fourth"] = await asyncio.to_thread(try_session, listener.port)
        finally:
            await listener.stop(grace=1.0)

    async def wait_for(condition: Any) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not reached in 5 s")

    def try_session(port: int) -> str:
        try:
            with smtplib.SMTP_SSL(
                "127.0.0.1", port, context=client_context(ca), timeout=30
            ) as smtp:
                return f"{smtp.ehlo('client.test')[0]}"
        except (OSError, smtplib.SMTPException) as exc:
            return type(exc).__name__

    def read_all(sock: socket.socket) -> bytes:
        with sock:
            sock.settimeout(30)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received

    def plain_text(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"EHLO client.test\r\n")
            return read_all(sock)

    run_on(loop, main)
    assert found["third"] != "250", found  # refused before any handshake
    assert found["limit"] == 1
    assert found["dropped"] == [b"", b""]  # closed without a byte
    assert 0.5 < found["after"] < 20, found["after"]
    assert b"220" not in found["plain"]
    assert found["fourth"] == "250"
    said = caplog.text
    assert "refused (closed before its TLS handshake): 2 connections open" in said
    assert "TLS handshake with ('127.0.0.1'," in said and "failed" in said
