"""The README's first command: the demo runs end to end and shows real results, with
nothing but spoolbox's own dependencies (aiosmtpd is the tests' SMTP peer only)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

#: runs the demo as ``python -m spoolbox.demo`` does, with aiosmtpd not importable
_WITHOUT_AIOSMTPD = (
    "import runpy, sys; sys.modules['aiosmtpd'] = None; "
    "runpy.run_module('spoolbox.demo', run_name='__main__', alter_sys=True)"
)


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_AIOSMTPD, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "submitted 5 messages through the SMTP listener" in text
    assert "sendmail -t (exit code 0)" in text
    assert "Undelivered Mail Returned to Sender" in text  # the NDR for the X400 recipient
    assert len(list((out / "mail" / "bob" / "new").iterdir())) == 12
    assert len(list((out / "internet").iterdir())) == 6  # 5 via SMTP + 1 via sendmail
    assert (out / "sms.txt").read_text().count("\n") == 3  # the SMS transport on the modem
    assert list((out / "pickup" / "new").iterdir()) == []


def test_aiosmtpd_is_a_test_dependency_only() -> None:
    needs = [r for r in requires("spoolbox") or [] if r.startswith("aiosmtpd")]
    assert needs, "aiosmtpd is no longer a test dependency: the tests need it as a peer"
    assert all("extra ==" in r and "test" in r for r in needs), needs
