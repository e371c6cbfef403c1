"""The daemon's CPU priority: as `spoolbox init` writes the profile, not lowered (issue 17:
a niced relay fell behind Postfix on a busy machine); `[daemon] nice` still lowers it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from conftest import CLI, DEADLINE, Home, _env, wait_until


def _run_priority(home: Path, profile: Path) -> int:
    """Start ``spoolbox run`` (without ``--no-nice``) and read its priority once it answers."""
    log_path = home / "priority-daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CLI, "--profile", str(profile), "run", "--no-dialog"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=home,
        )
    try:

        def answers() -> bool:
            assert proc.poll() is None, log_path.read_text()
            status = subprocess.run(
                [*CLI, "--profile", str(profile), "status"],
                capture_output=True,
                env=_env(),
                timeout=DEADLINE,
                check=False,
            )
            return status.returncode == 0

        wait_until("the daemon to answer", answers)
        return os.getpriority(os.PRIO_PROCESS, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_init_profiles_daemon_runs_at_the_priority_it_was_started_with(home: Home) -> None:
    assert re.search(r"^nice = 0\b", home.profile.read_text(), re.M)
    assert _run_priority(home.path, home.profile) == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_profile_without_nice_leaves_the_priority_as_it_was(home: Home) -> None:
    text = re.sub(r"^nice = .*\n", "", home.profile.read_text(), count=1, flags=re.M)
    assert "\nnice" not in text
    home.profile.write_text(text)
    assert _run_priority(home.path, home.profile) == os.getpriority(os.PRIO_PROCESS, 0)


def test_nice_in_the_profile_lowers_the_daemons_priority(home: Home) -> None:
    text = re.sub(r"^nice = 0\b", "nice = 3", home.profile.read_text(), count=1, flags=re.M)
    home.profile.write_text(text)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert _run_priority(home.path, home.profile) == min(ours + 3, 19)
