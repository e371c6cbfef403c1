"""spoolbox.django on Django 6.1 (which needs Python 3.12+, while the suite may run on
3.11 with Django 5.2): a fresh virtualenv of the newest Python found, Django 6.1 from
the package index, this tree's ``src`` on ``PYTHONPATH``; the backend configured
through ``MAILERS`` (6.1's replacement for EMAIL_BACKEND), with deprecation warnings
as errors, queues a rich message whose stored bytes are checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

CHECK = """\
import asyncio, sys
from email import message_from_bytes, policy
from email.message import MIMEPart
from pathlib import Path

import django
from django.conf import settings

profile = Path(sys.argv[1])
settings.configure(
    MAILERS={"default": {"BACKEND": "spoolbox.django.EmailBackend",
                         "OPTIONS": {"profile": str(profile)}}},
    DEFAULT_FROM_EMAIL="Web <web@example.org>",
)
django.setup()
from django.core import mail

from spoolbox import SQLiteStore

blob, png = bytes(range(256)) * 4, b"\\x89PNG\\r\\n\\x1a\\n" + bytes(range(200))
m = mail.EmailMultiAlternatives(
    subject="Figures", body="text", from_email="R <r@example.org>",
    to=["Bob <bob@example.org>"], bcc=["boss@example.org"], headers={"X-Campaign": "q3"},
)
m.attach_alternative('<img src="cid:chart">', "text/html")
m.attach("figures.bin", blob, "application/octet-stream")
image = MIMEPart()
image.set_content(png, maintype="image", subtype="png", disposition="inline",
                  filename="chart.png", cid="<chart>")
m.attach(image)
assert m.send() == 1


async def read():
    store = SQLiteStore(profile.parent / "spool.sqlite3")
    await store.open()
    try:
        rcpts = [str(r.address) for r in await store.recipients(m.spoolbox_id)]
        return await store.read_content(m.spoolbox_id), rcpts
    finally:
        await store.close()


content, rcpts = asyncio.run(read())
assert rcpts == ["SMTP:bob@example.org", "SMTP:boss@example.org"], rcpts
got = message_from_bytes(content, policy=policy.default)
assert "Bcc" not in got and b"boss@" not in content
assert b"\\n" not in content.replace(b"\\r\\n", b"")
parts = {p.get_filename() or p.get_content_type(): p for p in got.walk() if not p.is_multipart()}
assert parts["figures.bin"].get_content() == blob
assert parts["chart.png"].get_content() == png and parts["chart.png"]["Content-ID"] == "<chart>"
print("django", django.__version__, "ok")
"""


def _newer_python() -> str | None:
    """A Python 3.12+ that runs: this one, one on PATH, or one of pyenv's."""
    if sys.version_info >= (3, 12):
        return sys.executable
    found = [shutil.which(f"python3.{minor}") for minor in range(14, 11, -1)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += sorted((str(p) for p in pyenv.glob("3.1[2-9]*/bin/python3")), reverse=True)
    for candidate in found:
        if candidate is None:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys, venv; print(sys.version_info >= (3, 12))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.stdout.strip() == "True":  # a pyenv shim of a version not selected fails
            return candidate
    return None


def test_the_backend_on_django_61_through_mailers(tmp_path: Path) -> None:
    python = _newer_python()
    if python is None:
        pytest.skip("no Python 3.12+ for Django 6.1 here (Debian: python3.12 or newer)")
    venv = tmp_path / "venv"
    done = subprocess.run(
        [python, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = subprocess.run(
        [*pip, "--disable-pip-version-check", "django>=6.1,<7"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    profile = tmp_path / "spool" / "spoolbox.toml"
    profile.parent.mkdir()
    profile.write_text(
        'data_dir = "."\n[[transports]]\nname = "relay"\nprovider = "smtp"\n'
        'address_types = ["SMTP"]\n[transports.options]\nport = 9\ntls = "none"\n'
    )
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-W", "error", str(check), str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("django 6.") and done.stdout.endswith(" ok\n"), done.stdout
