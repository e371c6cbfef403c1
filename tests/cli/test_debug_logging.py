"""``spoolbox run --log-level debug`` logs what the daemon does, line by line: the local
API's requests and each message queued; at the default level none of that appears, and
what became of each recipient is an INFO line."""

from __future__ import annotations

import re
import signal
import subprocess

from conftest import CLI, DEADLINE, Home, _env, wait_until


def _run_and_send(home: Home, *level: str) -> str:
    log_path = home.path / f"daemon{''.join(level)}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CLI, "--profile", str(home.profile), "run", "--no-nice", *level],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=home.path,
        )
    try:
        wait_until("the daemon", lambda: home.run("status").returncode == 0)
        mid = home.run("send", "--to", "MAILDIR:bob", "--subject", "dbg").stdout.strip()
        wait_until("delivery", lambda: home.json("queue", "show", mid)["state"] == "sent")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0
    return log_path.read_text(errors="replace").replace(mid, "MID")


def test_log_level_debug_shows_what_the_daemon_does(home: Home) -> None:
    text = _run_and_send(home, "--log-level", "debug")
    debug = [ln for ln in text.splitlines() if " DEBUG " in ln]
    assert any("spoolbox.daemon: store " in ln and "journal_mode" in ln for ln in debug)
    assert any("spoolbox.daemon: local API: submit" in ln for ln in debug)
    assert any(
        re.search(
            r"spoolbox.spooler: message MID queued: \d+ bytes, recipients \['MAILDIR:bob'\]", ln
        )
        for ln in debug
    )
    assert " INFO " in text  # the other levels as before


def test_the_default_level_has_no_debug_lines(home: Home) -> None:
    text = _run_and_send(home)
    assert " INFO " in text
    assert " DEBUG " not in text
    # What became of the recipient is said at INFO (docs/operations.md, "Logs").
    assert re.search(
        r" INFO spoolbox\.delivery: MID: to=<MAILDIR:bob>, transport=local, relay=none, "
        r"delay=[0-9.]+, dsn=2\.0\.0, status=sent",
        text,
    ), text
