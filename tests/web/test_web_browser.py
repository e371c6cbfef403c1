"""End to end in a real browser: Debian's chromium driven by Selenium (chromedriver)
against a real ``spoolbox run`` daemon whose SMTP transport relays to a slow SMTP
server (aiosmtpd, 0.3 s a message, refusing with 451 until the test lets it accept).

The page shows the rows, and those of another node on the same store (a second
``spoolbox run``, node-b, whose only transport takes none of the test's mail); the
queue holds the deferred messages: one is held and released, one cancelled (after
the confirmation), then Send/Receive sends the rest while the bar moves to 100% and
the counters change; an inbox message whose subject and body are HTML and script
shows as text.

What moves is waited for, never read once: the bar's values are recorded by the page
itself (a MutationObserver on its ``value``), and the counters are waited for (the
status events and the flush's end reach the page by different roads).

Skips, saying which Debian packages it needs, when chromium, chromedriver or the
selenium package is missing.  ``SPOOLBOX_WEB_SCREENSHOT=path.png`` saves a screenshot
of the page at the end (docs/web.png is one).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spoolbox import Address, NewMessage
from spoolbox.client import Client

CLI = [sys.executable, "-m", "spoolbox.cli"]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>alert(1)</script>"
WAIT = 60.0
#: node-b's profile: the same SQLite file, a maildir transport of its own.
OTHER_NODE = """
data_dir = "."
node = "node-b"
[store]
path = "{store}"
[identities]
senders = ["MAILDIR:postmaster"]
[[transports]]
name = "archive"
provider = "maildir"
address_types = ["ARCHIVE"]
[transports.options]
root = "{root}"
"""

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (test extra)")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "the browser test needs Debian's chromium and chromium-driver "
        "(apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
from aiosmtpd.controller import Controller  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    StaleElementReferenceException,
)
from selenium.webdriver.common.by import By  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _wait(what: str, predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
    """``predicate()``'s first true value; an element the page replaced meanwhile (the
    queue is redrawn every few seconds) is looked up again."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = predicate()
        except StaleElementReferenceException:
            got = None
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class SlowSink:
    """An SMTP server that answers DATA after ``delay`` s: 451 until ``accept`` is set."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.accept = threading.Event()
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        await asyncio.sleep(self.delay)
        if not self.accept.is_set():
            return "451 4.3.0 not yet, try again later"
        self.received += 1
        return "250 2.0.0 OK"


@pytest.fixture
def sink() -> Iterator[tuple[SlowSink, int]]:
    handler = SlowSink(0.3)
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


class Home:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.profile = path / "spoolbox.toml"
        self.env = {k: v for k, v in os.environ.items() if k != "SPOOLBOX_PROFILE"}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--profile", str(self.profile), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=WAIT,
            cwd=self.path,
        )

    def ok(self, *args: str) -> str:
        r = self.run(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    @property
    def log_path(self) -> Path:
        return self.path / "daemon.log"

    def start(self) -> subprocess.Popen[bytes]:
        """``spoolbox run``, its output in ``daemon.log``."""
        with open(self.log_path, "wb") as log:
            return subprocess.Popen(
                [*CLI, "--profile", str(self.profile), "run", "--no-nice"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.path,
            )


@pytest.fixture
def daemon(tmp_path: Path, sink: tuple[SlowSink, int]) -> Iterator[tuple[Home, str]]:
    home = Home(tmp_path / "sbx")
    r = subprocess.run(
        [*CLI, "init", "--dir", str(home.path), "--smtp-port", "0"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert r.returncode == 0, r.stderr
    pickup = home.path / "pickup"
    for sub in ("tmp", "new", "cur"):
        (pickup / sub).mkdir(parents=True)
    (pickup / "new" / "1.hostile").write_bytes(
        f"From: mallory@example.org\nTo: bob@example.org\nSubject: {HOSTILE}\n\n"
        f"body {HOSTILE}\n".encode()
    )
    text = home.profile.read_text()
    text = text.replace("[transports.options]\n", f'[transports.options]\npickup = "{pickup}"\n', 1)
    # The deferred messages wait for the test's Send/Receive, never for a retry of the
    # spooler's own (60 s by default: a slow run could reach it, and it would deliver
    # some of them before the flush).
    assert 'retry_base = "60s"' in text
    text = text.replace('retry_base = "60s"', 'retry_base = "1h"', 1)
    web_port = _free_port()
    text += (
        '\n[[transports]]\nname = "relay"\nprovider = "smtp"\naddress_types = ["SMTP"]\n'
        f'[transports.options]\nhost = "127.0.0.1"\nport = {sink[1]}\ntls = "none"\n'
        # One connection: the five messages go one after another (0.3 s each), so the
        # bar has steps to show (the default of 10 would send them all at once).
        "max_connections = 1\n"
        f"\n[web]\nenabled = true\nport = {web_port}\n"
    )
    home.profile.write_text(text)
    # node-b: another node on the same store, with one transport of its own (none of
    # the test's mail is routed to it, so it takes none); the page shows its rows.
    other = Home(tmp_path / "node-b")
    (other.path / "mail").mkdir(parents=True)
    other.profile.write_text(
        OTHER_NODE.format(store=home.path / "spool.sqlite3", root=other.path / "mail")
    )
    procs = []
    try:
        for node in (home, other):
            procs.append(proc := node.start())

            def ready(node: Home = node, proc: subprocess.Popen[bytes] = proc) -> bool:
                assert proc.poll() is None, node.log_path.read_text()
                return node.run("status").returncode == 0

            _wait(f"{node.path.name} to answer", ready)
        url = home.ok("web").strip()
        yield home, url
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log_text = home.log_path.read_text()
    token = url.rsplit("token=", 1)[-1]
    assert token not in log_text  # no secret in a log line


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _queue_row(driver: Any, message_id: str) -> Any:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#queue tr[data-id="{message_id}"]')
    return rows[0] if rows else None


def _state_of(driver: Any, message_id: str) -> str | None:
    row = _queue_row(driver, message_id)
    return None if row is None else row.find_element(By.CSS_SELECTOR, ".state").text


def _click_action(driver: Any, message_id: str, action: str) -> None:
    def click() -> bool:
        row = _queue_row(driver, message_id)
        if row is None:
            return False
        row.find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()
        return True

    _wait(f"the {action} button of {message_id}", click)


def test_the_page_in_chromium_against_a_real_daemon(
    daemon: tuple[Home, str], sink: tuple[SlowSink, int], browser: Any
) -> None:
    home, url = daemon
    handler, _ = sink
    ids = [
        home.ok("send", "--to", "SMTP:bob@example.org", "--subject", f"m{n}", "--body", "x").strip()
        for n in range(6)
    ]

    _wait("the 6 messages to be deferred (451)", lambda: _deferred(home) == len(ids))

    browser.get(url)
    assert "token=" not in browser.current_url  # the address lost its token
    _wait("the live stream", lambda: browser.find_element(By.ID, "live").text == "live")
    node = browser.find_element(By.CSS_SELECTOR, 'meta[name="node"]').get_attribute("content")
    names = {
        (tr.get_attribute("data-node"), tr.get_attribute("data-row"))
        for tr in browser.find_elements(By.CSS_SELECTOR, "#status tbody tr")
    }
    assert {(node, "spooler"), (node, "local"), (node, "relay")} <= names
    # Each row once the first status event went through the page's script: this
    # node's transports have Send/Receive; node-b's rows show with its name, and
    # without Send/Receive (node-b's transports flush there).
    relay = _wait("the relay's row, live", lambda: _live_row(browser, node, "relay"))
    assert "online" in relay.find_element(By.CSS_SELECTOR, ".bits").text
    assert relay.find_elements(By.CSS_SELECTOR, "button[data-mode]")
    archive = _wait("node-b's row, live", lambda: _live_row(browser, "node-b", "archive"))
    assert archive.find_element(By.CSS_SELECTOR, ".node").text == "node-b"
    assert archive.find_elements(By.CSS_SELECTOR, "button") == []

    # hold and release, cancel with its confirmation
    _wait("the queue", lambda: _queue_row(browser, ids[0]))
    _click_action(browser, ids[0], "hold")
    _wait("held", lambda: _state_of(browser, ids[0]) == "hold")
    _click_action(browser, ids[0], "release")
    _wait("released", lambda: _state_of(browser, ids[0]) not in (None, "hold"))
    _click_action(browser, ids[1], "cancel")
    alert = _wait("the confirmation", lambda: _alert(browser))
    assert ids[1] in alert.text
    alert.accept()
    _wait("cancelled", lambda: _state_of(browser, ids[1]) in (None, "cancelled"))

    # The released message was tried again at once (and refused): once it is deferred
    # again, none is in flight, and only the flush sends them.
    _wait("the 5 left deferred again", lambda: _deferred(home) == len(ids) - 1)

    # Send/Receive: the bar moves to 100% and the counters change
    handler.accept.set()
    counters = relay.find_element(By.CSS_SELECTOR, ".counters")
    assert "delivered=" not in counters.text
    updates_before = int(relay.get_attribute("data-updates") or 0)
    bar = relay.find_element(By.CSS_SELECTOR, "progress")
    # The page records every value the bar takes (however slowly this test looks).
    browser.execute_script(
        "const bar = arguments[0]; window.barValues = [];"
        "new MutationObserver(() => window.barValues.push(bar.value))"
        '.observe(bar, {attributes: true, attributeFilter: ["value"]});',
        bar,
    )
    relay.find_element(By.CSS_SELECTOR, 'button[data-mode="upload"]').click()  # its "Send"
    _wait(
        "the flush to end",
        lambda: browser.find_element(By.ID, "flush-result").text.startswith("Send/Receive done"),
    )
    assert float(bar.get_property("value")) == 100.0
    values = browser.execute_script("return window.barValues;")
    assert any(0 < value < 100 for value in values), values  # it moved on its way
    assert values[-1] == 100, values
    # The counters come with the status events, the end with the flush's state: they
    # reach the page by different roads, in either order.
    _wait("the relay's counters", lambda: "delivered=5" in counters.text)
    assert int(relay.get_attribute("data-updates") or 0) - updates_before >= 4
    assert handler.received == 5
    assert "delivered 5" in browser.find_element(By.ID, "flush-result").text
    browser.find_element(By.ID, "flush-all").click()  # all transports, both ways
    _wait(
        "the second flush",
        lambda: "delivered 0" in browser.find_element(By.ID, "flush-result").text,
    )

    # the inbox: a hostile message shows as text
    # (the inbox may hold the cancelled message's delivery report too: the row is
    # found by its subject, shown as text)
    row = _wait("the picked-up message in the inbox", lambda: _inbox_row(browser, HOSTILE))
    row.find_element(By.CSS_SELECTOR, "a").click()
    body = _wait(
        "the message",
        lambda: browser.find_element(By.CSS_SELECTOR, "#inbox-message .body").text,
    )
    assert HOSTILE in body
    headers = browser.find_element(By.CSS_SELECTOR, "#inbox-message .headers").text
    assert HOSTILE in headers
    assert browser.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    assert browser.title != "pwned" and _alert(browser) is None

    # A message's recipients, with the original address one came with (ORCPT), a
    # hostile one shown as text; not to be sent for a day, so that it stays listed.
    later = Client(home.profile).submit(
        NewMessage(
            sender=Address("SMTP", "app@example.org"),
            recipients=(Address("SMTP", "bob@example.org"), Address("SMTP", "eve@example.org")),
            content=b"Subject: later\r\n\r\nbody\r\n",
            send_at=time.time() + 86400,
            original_recipients=((Address("SMTP", "bob@example.org"), "rfc822;" + HOSTILE),),
        )
    )["id"]
    link = _wait(
        "the later message in the queue",
        lambda: (row := _queue_row(browser, later)) and row.find_element(By.CSS_SELECTOR, "a"),
    )
    link.click()
    cells = _wait(
        "its recipients",
        lambda: [
            tr.find_elements(By.CSS_SELECTOR, "td")[1].text
            for tr in browser.find_elements(By.CSS_SELECTOR, "#message-detail tbody tr")
        ],
    )
    assert cells == [f"SMTP:bob@example.org (originally rfc822;{HOSTILE})", "SMTP:eve@example.org"]
    assert browser.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    assert browser.title != "pwned" and _alert(browser) is None
    shot = os.environ.get("SPOOLBOX_WEB_SCREENSHOT")
    if shot:
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(shot)
    assert shutil.which("chromium") or os.path.exists(CHROMIUM)


def _deferred(home: Home) -> int:
    listed = json.loads(home.ok("queue", "list", "--json"))["messages"]
    return sum(m["state"] == "deferred" for m in listed)


def _live_row(driver: Any, node: str, name: str) -> Any:
    """The status row of ``node``'s ``name`` once an event updated it."""
    selector = f'#status tr[data-node="{node}"][data-row="{name}"]'
    for row in driver.find_elements(By.CSS_SELECTOR, selector):
        if int(row.get_attribute("data-updates") or 0) > 0:
            return row
    return None


def _inbox_row(driver: Any, subject: str) -> Any:
    for row in driver.find_elements(By.CSS_SELECTOR, "#inbox tbody tr"):
        if row.find_element(By.CSS_SELECTOR, "td.subject").text == subject:
            return row
    return None


def _alert(driver: Any) -> Any:
    try:
        alert = driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None
