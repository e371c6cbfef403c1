"""Fixtures the listener tests share."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A PEM file with a private key and a certificate for localhost and 127.0.0.1,
    from a throw-away CA (trustme, a test dependency): what ``tls_cert`` takes."""
    pem = tmp_path / "cert.pem"
    trustme.CA().issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(pem)
    )
    return pem
