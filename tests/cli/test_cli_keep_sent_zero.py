"""``[store] keep_sent = 0`` as a user meets it: the daemon delivers a message and its
settle deletes it; ``queue show`` of its id exits 4 and says it may have been sent
and not kept; ``queue list`` no longer shows it; without the setting the same
question gets the plain answer."""

from __future__ import annotations

from conftest import Daemons, Home, wait_until


def test_a_message_sent_and_not_kept(home: Home, daemons: Daemons) -> None:
    text = home.profile.read_text()
    home.profile.write_text(text.replace("[store]\n", "[store]\nkeep_sent = 0\n", 1))
    daemons.start(home)
    r = home.run("send", "--to", "MAILDIR:bob", "--subject", "not kept", "--body", "hello")
    assert r.returncode == 0, r.stderr
    mid = r.stdout.strip()
    wait_until("delivery", lambda: list(home.delivered()) == ["not kept"])
    wait_until("the settle", lambda: home.run("queue", "show", mid).returncode == 4)
    shown = home.run("queue", "show", mid)
    assert f"no message with id '{mid}'" in shown.stderr
    assert "may have been sent and not kept: [store] keep_sent = 0" in shown.stderr
    assert home.json("queue", "list")["messages"] == []


def test_an_unknown_id_without_the_setting_gets_the_plain_answer(home: Home) -> None:
    shown = home.run("queue", "show", "18f0abc")
    assert shown.returncode == 4
    assert shown.stderr.strip() == "spoolbox: no message with id '18f0abc'"
