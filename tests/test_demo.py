"""The README's first command: the demo runs end to end and shows real results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "spoolbox.demo", str(out)],
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
    assert (out / "faxes.txt").read_text().count("\n") == 3
    assert list((out / "pickup" / "new").iterdir()) == []
