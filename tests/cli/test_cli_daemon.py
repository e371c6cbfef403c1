"""``spoolbox run`` as a subprocess: the local API, status and flush through it,
SIGTERM with messages in flight and nothing lost, SIGHUP reload, missing credentials."""

from __future__ import annotations

import base64
import json
import os
import signal
import smtplib
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conftest import CLI, Daemons, Home, wait_until
from spoolbox import Address, NewMessage
from spoolbox.client import Client, ClientError

ROW_KEYS = {
    "name",
    "resource_type",
    "provider",
    "status_code",
    "status_bits",
    "status",
    "progress",
    "identity",
    "counters",
    "detail",
    "updated_at",
    "node",
}


def test_daemon_serves_status_send_queue_flush_and_transports(home: Home, daemons: Daemons) -> None:
    daemons.start(home)
    sock = home.path / "spoolbox.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    status = home.json("status")
    rows = {r["name"]: r for r in status["rows"]}
    assert set(rows["local"]) == ROW_KEYS
    assert "AVAILABLE" in rows["local"]["status_bits"]
    assert "spooler" in rows

    r = home.run("send", "--to", "MAILDIR:bob", "--subject", "via daemon", "--body", "hello")
    assert r.returncode == 0, r.stderr
    mid = r.stdout.strip()
    assert "not running" not in r.stderr
    wait_until("delivery", lambda: home.json("queue", "show", mid)["state"] == "sent")
    assert list(home.delivered()) == ["via daemon"]

    report = home.json("flush", "--upload")
    assert set(report) == {"cancelled", "timed_out", "totals", "results"}
    assert report["cancelled"] is False
    assert [x["transport"] for x in report["results"]] == ["local"]
    assert set(report["results"][0]) == {
        "transport",
        "uploaded",
        "downloaded",
        "bytes",
        "cancelled",
        "error",
        "seconds",
        "timed_out",
        "held",
        "delivered",
        "deferred",
        "failed",
        "queued",
    }
    r = home.run("flush", "--transport", "nosuch")
    assert r.returncode == 4, r.stderr
    assert home.run("queue", "show", "nosuchid").returncode == 4

    t = home.json("transports")
    assert t["source"] == "daemon"
    assert t["configured"][0]["logged_on"] is True
    assert t["configured"][0]["address_types"] == ["MAILDIR"]

    ping = Client(home.profile).ping()
    assert ping["protocol"] == 1
    assert ping["ready"] is True and ping["ready_at"] >= ping["started_at"]
    assert home.json("status")["ready"] is True
    assert Client(home.profile).ready() is True
    assert (home.path / "spoolbox.pid").read_text().strip() == str(ping["pid"])
    # A second daemon on the same data directory refuses to start.
    second = home.run("run", "--no-nice", timeout=60)
    assert second.returncode == 1
    assert "another spoolbox daemon" in second.stderr


def _send(home: Home, i: int) -> tuple[int, str, str]:
    r = home.run("send", "--to", f"MAILDIR:user{i % 5}", "--subject", f"msg-{i:02d}", "--body", "x")
    return r.returncode, r.stdout.strip(), r.stderr


def test_sigterm_with_messages_in_flight_loses_nothing(home: Home, daemons: Daemons) -> None:
    proc = daemons.start(home)
    results: list[tuple[int, str, str]] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(_send, home, i) for i in range(50)]
        for n, fut in enumerate(futures):
            results.append(fut.result())
            if n == 20:
                proc.send_signal(signal.SIGTERM)  # while the rest are submitted and delivered
    assert proc.wait(timeout=60) == 0
    assert [r[0] for r in results] == [0] * 50, [r[2] for r in results if r[0]]
    ids = [r[1] for r in results]
    assert len(set(ids)) == 50

    # Nothing vanished: every message is delivered (once) or still in the queue.
    delivered = home.delivered()
    assert all(len(files) == 1 for files in delivered.values()), delivered
    queued = {m["id"]: m for m in home.json("queue", "list", "--all")["messages"]}
    assert set(ids) <= set(queued)
    for mid in ids:
        m = queued[mid]
        if m["state"] != "sent":
            assert m["subject"] not in delivered
            assert m["state"] in ("queued", "deferred", "active"), m

    daemons.start(home)

    def all_sent() -> bool:
        msgs = home.json("queue", "list", "--all")["messages"]
        return sum(m["state"] == "sent" for m in msgs) == 50

    wait_until("every message to be delivered after the restart", all_sent)
    delivered = home.delivered()
    assert sorted(delivered) == [f"msg-{i:02d}" for i in range(50)]
    assert all(len(files) == 1 for files in delivered.values())


def test_sighup_reloads_a_changed_transport_option(home: Home, daemons: Daemons) -> None:
    proc = daemons.start(home)
    client = Client(home.profile)
    assert client.ping()["reloads"] == 0
    new_root = home.path / "mail2"
    old_root = str(home.mail.resolve())
    text = home.profile.read_text()
    assert old_root in text

    # An invalid profile is refused and the daemon keeps running on the old one.
    home.profile.write_text(text + "\nbogus = 1\n")
    proc.send_signal(signal.SIGHUP)
    wait_until("the refusal in the log", lambda: "reload refused" in _log(home))
    assert client.ping()["reloads"] == 0

    home.profile.write_text(text.replace(old_root, str(new_root)))
    proc.send_signal(signal.SIGHUP)
    wait_until("the reload", lambda: Client(home.profile).ping()["reloads"] == 1)
    mid = home.run("send", "--to", "MAILDIR:bob", "--subject", "after reload").stdout.strip()
    wait_until("delivery", lambda: home.json("queue", "show", mid)["state"] == "sent")
    assert list((new_root / "bob" / "new").iterdir())
    assert not (home.mail / "bob").exists()
    assert daemons.stop(proc) == 0


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _log(home: Home) -> str:
    return "".join(p.read_text(errors="replace") for p in home.path.glob("daemon-*.log"))


def test_missing_credential_shows_in_the_row_and_secrets_never_leak(
    home: Home, daemons: Daemons
) -> None:
    extra = f"""
[[transports]]
name = "relay"
provider = "maildir"
address_types = ["RELAY"]
[transports.options]
root = "{home.path / "relay"}"
password_env = "SPOOLBOX_TEST_UNSET_PASSWORD"

[[transports]]
name = "vault"
provider = "imap"
outbound = false
[transports.options]
host = "127.0.0.1"
port = 9
tls = "none"
username = "ann"
password_file = "token.txt"
"""
    text = home.profile.read_text()
    cut = text.index("[listeners.submission]")
    home.profile.write_text(text[:cut] + extra + "\n" + text[cut:])
    (home.path / "token.txt").write_text("s3cr3t-t0ken-value\n")
    env = {"SPOOLBOX_TEST_UNSET_PASSWORD": ""}
    daemons.start(home, env=env)

    def rows() -> dict[str, dict[str, object]]:
        return {r["name"]: r for r in home.json("status")["rows"]}

    wait_until("the relay row", lambda: "relay" in rows() and "vault" in rows())
    relay = rows()["relay"]
    assert "FAILURE" in relay["status_bits"]  # type: ignore[operator]
    assert "not configured" in str(relay["detail"])
    assert "password" in str(relay["detail"])
    assert "SPOOLBOX_TEST_UNSET_PASSWORD" in str(relay["detail"])
    # The other transports run.
    assert "AVAILABLE" in rows()["local"]["status_bits"]  # type: ignore[operator]
    mid = home.run("send", "--to", "MAILDIR:bob", "--body", "x").stdout.strip()
    wait_until("delivery", lambda: home.json("queue", "show", mid)["state"] == "sent")
    # A message for the unconfigured transport waits for it instead of failing.
    rid = home.run("send", "--to", "RELAY:x", "--body", "x").stdout.strip()
    assert home.json("queue", "show", rid)["state"] in ("queued", "deferred")

    out = home.run("status").stdout + home.run("status", "--json").stdout
    out += home.run("transports", "--json").stdout
    assert "s3cr3t-t0ken-value" not in out
    assert "s3cr3t-t0ken-value" not in _log(home)


def test_submit_while_down_is_delivered_when_the_daemon_starts(
    home: Home, daemons: Daemons
) -> None:
    mid = home.run("send", "--to", "MAILDIR:carol", "--subject", "early").stdout.strip()
    assert home.json("queue", "show", mid)["state"] == "queued"
    daemons.start(home)
    wait_until("delivery", lambda: home.json("queue", "show", mid)["state"] == "sent")
    assert list(home.delivered()) == ["early"]


def test_status_watch_json_streams_rows(home: Home, daemons: Daemons) -> None:
    daemons.start(home)
    env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}
    with subprocess.Popen(
        [*CLI, "--profile", str(home.profile), "status", "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = json.loads(proc.stdout.readline())
            assert first["event"] == "status"
            assert set(first["row"]) == ROW_KEYS
        finally:
            proc.kill()


def test_ctrl_c_cancels_a_flush_cleanly(home: Home, daemons: Daemons) -> None:
    """A flush stuck on a silent SMTP server: Ctrl-C (SIGINT) ends the command with
    130, the daemon clears the flush bit, and the message stays queued."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never says a word
    port = silent.getsockname()[1]
    try:
        with home.profile.open("a") as f:
            f.write(
                '\n[[transports]]\nname = "relay"\nprovider = "smtp"\n'
                'address_types = ["SMTP"]\n[transports.options]\n'
                f'host = "127.0.0.1"\nport = {port}\ntls = "none"\n'
            )
        daemons.start(home)
        r = home.run("send", "--to", "SMTP:bob@example.org", "--subject", "stuck", "--body", "x")
        assert r.returncode == 0, r.stderr
        mid = r.stdout.strip()
        flush = subprocess.Popen(
            [*CLI, "--profile", str(home.profile), "flush", "--upload", "-t", "relay"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=home.path,
            # As at a terminal: a test run started in the background (`make test &`,
            # nohup) inherits SIGINT ignored, and the command would never see Ctrl-C.
            preexec_fn=_default_sigint,
        )
        try:

            def flushing() -> bool:
                rows = {row["name"]: row for row in home.json("status")["rows"]}
                return "OUTBOUND_FLUSH" in rows["relay"]["status_bits"]

            wait_until("the relay flush to start", flushing)
            flush.send_signal(signal.SIGINT)
            try:
                # The client waits up to 30 s for the daemon's last answer after it
                # asked to cancel; give it more than that, so a slow daemon shows.
                out, err = flush.communicate(timeout=45)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    "the flush command did not end after SIGINT; daemon log:\n" + _log(home)
                ) from None
        finally:
            if flush.poll() is None:
                flush.kill()
                flush.communicate()
        assert flush.returncode == 130, (out, err, _log(home))
        wait_until("the flush bit to clear", lambda: not flushing())
        assert home.json("queue", "show", mid)["state"] in ("queued", "active", "deferred")
    finally:
        silent.close()


@pytest.mark.parametrize("loop", ["auto", "asyncio", "uvloop"])
def test_event_loop_choice_serves_the_smtp_listener_and_delivers(
    home: Home, daemons: Daemons, loop: str
) -> None:
    """``[daemon] event_loop``: the daemon runs on the loop asked for (``auto`` is uvloop,
    a dependency on Linux), and the listener, the store and delivery work on it."""
    text = home.profile.read_text()
    assert 'event_loop = "auto"' in text  # the default profile says it
    text = text.replace('event_loop = "auto"', f'event_loop = "{loop}"', 1)
    # What comes in over SMTP goes to the Maildir transport of the default profile.
    text = text.replace(
        "[listeners.submission]\n",
        '[listeners.submission]\ndefault_address_type = "MAILDIR"\n',
        1,
    )
    home.profile.write_text(text)
    daemons.start(home)
    ping = Client(home.profile).ping()
    assert ping["event_loop"] == ("asyncio" if loop == "asyncio" else "uvloop")

    def listening() -> str:
        rows = {r["name"]: r for r in home.json("status")["rows"]}
        return str(rows.get("listener:submission", {}).get("status", ""))

    wait_until("the listener", lambda: listening().startswith("listening on"))
    port = int(listening().rsplit(":", 1)[1])
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        code, _ = client.ehlo()
        assert code == 250
        refused = client.sendmail(
            "alice@example.org",
            ["bob@example.org"],
            b"Subject: over SMTP on " + loop.encode() + b"\r\n\r\nhello\r\n",
        )
        assert refused == {}
    wait_until("delivery", lambda: list(home.delivered()) == [f"over SMTP on {loop}"])


def _lot(*subjects: str) -> list[NewMessage]:
    return [
        NewMessage(
            sender=Address.parse("MAILDIR:alice"),
            recipients=(Address.parse("MAILDIR:bob"),),
            content=f"Subject: {s}\r\n\r\nbody\r\n".encode(),
        )
        for s in subjects
    ]


def test_submit_many_through_the_daemon_and_while_it_is_down(home: Home, daemons: Daemons) -> None:
    client = Client(home.profile)
    early = _lot("early-1", "early-2")
    down = client.submit_many(early)  # no daemon yet: into the store, in one transaction
    assert (down["via"], down["ids"]) == ("store", [m.id for m in early])
    daemons.start(home)
    lot = _lot("lot-1", "lot-2", "lot-3")
    up = client.submit_many(lot)
    assert (up["via"], up["ids"], up["state"]) == ("daemon", [m.id for m in lot], "queued")
    names = ["early-1", "early-2", "lot-1", "lot-2", "lot-3"]
    wait_until("delivery", lambda: sorted(home.delivered()) == names)
    # Again (a retry after a lost answer): idempotent, nothing is delivered twice.
    assert client.submit_many(lot)["ids"] == up["ids"]
    assert Client(home.profile).statistics()["counters"]["submitted"] == 6
    assert all(len(files) == 1 for files in home.delivered().values())


def test_a_submit_through_the_daemon_keeps_its_lifetime_envelope_id_ret_and_orcpt(
    home: Home, daemons: Daemons
) -> None:
    daemons.start(home)
    client = Client(home.profile)
    later = time.time() + 86400.0  # not sent yet: the message stays to be looked at
    message = NewMessage(
        sender=Address.parse("MAILDIR:alice"),
        recipients=(Address.parse("MAILDIR:bob"),),
        content=b"Subject: kept\r\n\r\nbody\r\n",
        send_at=later,
        lifetime=3600.0,
        envelope_id="ENV-42",
        return_content=False,  # RFC 3461 RET=HDRS
        original_recipients=((Address.parse("MAILDIR:bob"), "rfc822;bob@old.example"),),
    )
    assert client.submit(message)["via"] == "daemon"
    shown = client.show(message.id)
    assert shown["envelope_id"] == "ENV-42"
    assert shown["return_content"] is False
    assert [r["original"] for r in shown["recipients"]] == ["rfc822;bob@old.example"]
    assert shown["expires_at"] == pytest.approx(later + 3600.0)  # not the policy's 5 days

    sock, replies = _api(home.path / "spoolbox.sock")
    with sock, replies:
        content = b"Subject: x\r\n\r\nx\r\n"
        args = {"recipients": ["MAILDIR:bob"], "content_length": len(content), "lifetime": -5}
        sock.sendall(json.dumps({"v": 1, "id": 1, "op": "submit", "args": args}).encode())
        sock.sendall(b"\n" + content)
        answer = json.loads(replies.readline())
    assert answer["error"]["code"] == "bad_request", answer
    assert "'lifetime' must be positive" in answer["error"]["message"]
    for originals, error in (
        (["rfc822;bob"], "'original_recipients' must be an object, not a list"),
        ({"MAILDIR:bob": 7}, "'original_recipients' must map recipients to strings"),
        ({"MAILDIR:carol": "rfc822;c@old"}, "which is not a recipient of the message"),
    ):
        sock, replies = _api(home.path / "spoolbox.sock")
        with sock, replies:
            args = {
                "recipients": ["MAILDIR:bob"],
                "content_length": len(content),
                "original_recipients": originals,
            }
            sock.sendall(json.dumps({"v": 1, "id": 1, "op": "submit", "args": args}).encode())
            sock.sendall(b"\n" + content)
            answer = json.loads(replies.readline())
        assert answer["error"]["code"] == "bad_request", answer
        assert error in answer["error"]["message"], answer


def _api(sock_path: object) -> tuple[socket.socket, Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(str(sock_path))
    return sock, sock.makefile("rb")


def test_a_submit_carries_its_content_as_raw_bytes_after_the_line(
    home: Home, daemons: Daemons
) -> None:
    daemons.start(home)
    # Every byte value but NUL and bare CR or LF, lines that start with dots: as sent.
    body = bytes(b for b in range(1, 256) if b not in b"\r\n") + b"\r\n.\r\n..x\r\n"
    content = b"Subject: raw\r\n\r\n" + body * 3
    args = {"recipients": ["MAILDIR:bob"], "sender": None, "content_length": len(content)}
    sock, replies = _api(home.path / "spoolbox.sock")
    with sock, replies:
        # The content, then a second request on the same connection: still in step.
        sock.sendall(json.dumps({"v": 1, "id": 1, "op": "submit", "args": args}).encode())
        sock.sendall(b"\n" + content + b'{"v": 1, "id": 2, "op": "ping"}\n')
        first, second = json.loads(replies.readline()), json.loads(replies.readline())
    assert first["ok"] and first["result"]["via"] == "daemon", first
    assert second["ok"] and second["id"] == 2, second
    wait_until("delivery", lambda: list(home.delivered()) == ["raw"])
    (path,) = home.delivered()["raw"]
    assert path.read_bytes().endswith(b"\r\n" + content)  # under the trace lines

    sock, replies = _api(home.path / "spoolbox.sock")
    with sock, replies:
        bad = {**args, "content_length": -1}
        sock.sendall(json.dumps({"v": 1, "id": 3, "op": "submit", "args": bad}).encode() + b"\n")
        answer = json.loads(replies.readline())
        # What follows cannot be told from the content: the daemon hangs up.
        assert replies.readline() == b""
    assert answer["error"]["code"] == "bad_request", answer
    assert "content_length" in answer["error"]["message"]


def test_submit_many_names_the_bad_message_and_stores_none(home: Home, daemons: Daemons) -> None:
    daemons.start(home)
    good = _lot("fine")[0]
    bad = {"content": "not base64!", "recipients": ["MAILDIR:bob"]}
    item = {"content": base64.b64encode(good.content).decode(), "recipients": ["MAILDIR:bob"]}
    with pytest.raises(ClientError, match=r"messages\[1\]: content is not base64"):
        Client(home.profile).call("submit_many", messages=[item, bad])
    with pytest.raises(ClientError, match=r"messages\[0\].*(address|type)"):
        Client(home.profile).call(
            "submit_many", messages=[{**item, "recipients": ["no type here"]}]
        )
    assert home.json("queue", "list", "--all")["messages"] == []
    # A lot the store refuses part way (an id used by a different message) leaves
    # nothing of itself behind either.
    client = Client(home.profile)
    client.call("submit", **{**item, "id": "taken"})
    with pytest.raises(ClientError, match="'taken' is already used by a different message"):
        client.call(
            "submit_many",
            messages=[{**item, "id": "n1"}, {**item, "id": "taken", "priority": "high"}],
        )
    assert [m["id"] for m in home.json("queue", "list", "--all")["messages"]] == ["taken"]


def test_status_says_when_the_daemon_runs_another_spoolbox(
    home: Home, daemons: Daemons, tmp_path: Any
) -> None:
    """A daemon started before an upgrade runs the old code: ``status`` says so on
    stderr (the table or the JSON on stdout as before), and nothing when they agree."""
    import spoolbox

    r = home.run("status")  # (no daemon yet: exit 3, said as ever)
    assert r.returncode == 3
    daemons.start(home)
    r = home.run("status", "--json")
    assert (r.returncode, r.stderr) == (0, "")
    assert json.loads(r.stdout)["version"] == spoolbox.__version__
    home.run("stop")
    # The same daemon as an older release: its spoolbox says another version.
    old = tmp_path / "old"
    old.mkdir()
    (old / "sitecustomize.py").write_text("import spoolbox\nspoolbox.__version__ = '0.0.9'\n")
    path = os.pathsep.join(p for p in (str(old), os.environ.get("PYTHONPATH", "")) if p)
    daemons.start(home, env={"PYTHONPATH": path})
    r = home.run("status")
    assert r.returncode == 0 and "spooler" in r.stdout, r
    assert r.stderr == (
        f"spoolbox: the daemon runs spoolbox 0.0.9, and {spoolbox.__version__} is installed "
        "here: restart the daemon to run the installed code (systemctl restart spoolbox, "
        "or spoolbox stop, then spoolbox run)\n"
    )
    assert json.loads(home.run("status", "--json").stdout)["version"] == "0.0.9"
