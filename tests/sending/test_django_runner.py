"""A tiny Django project in a temporary directory whose own test, run by Django's test
runner (``python -m django test``), sends through spoolbox.django.EmailBackend into a
real spoolbox store; this test then reads the store to check what the project queued."""

from __future__ import annotations

import os
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

SETTINGS = """\
SECRET_KEY = "not-a-secret"
INSTALLED_APPS = ["shop"]
EMAIL_BACKEND = "spoolbox.django.EmailBackend"
SPOOLBOX_PROFILE = {profile!r}
DEFAULT_FROM_EMAIL = "Shop <shop@example.org>"
USE_TZ = True
"""

SHOP_TESTS = """\
from django.conf import settings
from django.core import mail
from django.test import SimpleTestCase, override_settings

from spoolbox.client import Client


class OrderMailTests(SimpleTestCase):
    # Django's runner swaps EMAIL_BACKEND for its in-memory one; a test that means
    # the real backend says so.
    @override_settings(EMAIL_BACKEND="spoolbox.django.EmailBackend")
    def test_the_confirmation_is_queued_in_spoolbox(self):
        message = mail.EmailMessage(
            "Order 42 confirmed",
            "Thank you.",
            to=["Customer <customer@example.org>"],
            bcc=["audit@example.org"],
        )
        message.attach("invoice.pdf", b"%PDF-1.4 fake", "application/pdf")
        self.assertEqual(message.send(), 1)
        shown = Client(settings.SPOOLBOX_PROFILE).show(message.spoolbox_id)
        self.assertEqual(shown["state"], "queued")
        self.assertEqual(
            sorted(r["address"] for r in shown["recipients"]),
            ["SMTP:audit@example.org", "SMTP:customer@example.org"],
        )
"""


def test_djangos_test_runner_sends_through_spoolbox(spool: Any, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "mysite").mkdir(parents=True)
    (project / "shop").mkdir()
    (project / "mysite" / "__init__.py").write_text("")
    (project / "mysite" / "settings.py").write_text(SETTINGS.format(profile=str(spool.path)))
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "tests.py").write_text(SHOP_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    env.update(DJANGO_SETTINGS_MODULE="mysite.settings", PYTHONWARNINGS="error")
    done = subprocess.run(
        [sys.executable, "-m", "django", "test", "shop", "-v", "2"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_the_confirmation_is_queued_in_spoolbox" in done.stderr
    assert "Ran 1 test" in done.stderr and "\nOK" in done.stderr, done.stderr
    [stored] = spool.stored()
    assert stored.sender == "SMTP:shop@example.org"
    assert stored.recipients == ["SMTP:customer@example.org", "SMTP:audit@example.org"]
    got = message_from_bytes(stored.content, policy=policy.default)
    assert got["Subject"] == "Order 42 confirmed"
    assert "Bcc" not in got and b"audit@example.org" not in stored.content
    [invoice] = [part for part in got.walk() if part.get_filename() == "invoice.pdf"]
    assert invoice.get_content() == b"%PDF-1.4 fake"
