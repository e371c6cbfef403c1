"""``spoolbox systemd-unit --template``: the template unit ``spoolbox@.service``, one
node per instance (docs/operations.md, "Running several nodes")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _env
from spoolbox.cli.systemd_cmd import unit_text


def _service(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_the_template_runs_one_node_per_instance() -> None:
    service = _service(unit_text(template=True))
    assert service["StateDirectory"] == ["spoolbox/%i spoolbox/shared"]
    assert service["RuntimeDirectory"] == ["spoolbox/%i"]
    assert service["Environment"] == ["SPOOLBOX_PROFILE=/var/lib/spoolbox/%i/spoolbox.toml"]
    assert "-/etc/spoolbox/%i.env" in service["EnvironmentFile"]
    assert service["Type"] == ["notify"] and service["NoNewPrivileges"] == ["yes"]
    # The single unit is unchanged by it.
    assert _service(unit_text())["StateDirectory"] == ["spoolbox"]


def test_systemd_unit_template_prints_it(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "spoolbox.cli", "systemd-unit", "--template", "--command", "/x/sb"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert _service(r.stdout)["ExecStart"] == ["/x/sb run --no-dialog --no-nice"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is missing (package systemd): the unit is not verified")
    unit = tmp_path / "spoolbox@.service"
    unit.write_text(r.stdout.replace("/x/sb", "/bin/true"))
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"{unit.parent}/spoolbox@mail1.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in verify.stderr.splitlines() if "spoolbox@" in line]
    assert problems == [], verify.stderr
