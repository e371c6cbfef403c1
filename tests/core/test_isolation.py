"""Isolated transports (``isolate = true``): the session runs in a real child process;
a provider that never yields cannot stall the spooler, one that dies loses nothing
and is restarted, and the contract (status rows, status_recips, critical sections,
inbound writes and their callbacks) works across the pipe."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import FAST, message, spooler

from spoolbox import MessageState, RecipientState, Spooler, TransportConfig
from spoolbox._core.hosts.isolated import IsolatedSession
from spoolbox.model import StatusCode
from spoolbox.profile import ProfileError, load_profile
from spoolbox.testing import check_provider


def isolated(name: str, cls: str, **options: object) -> TransportConfig:
    return TransportConfig(name, f"isolated_providers:{cls}", options=options, isolate=True)


async def until(check: Callable[[], object], timeout: float = 20.0) -> None:
    """Wait (polling the spooler's state) until ``check()`` is true."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def row_text(sp: Spooler, name: str) -> str:
    row = sp.status.get(name)
    return row.status_string or "" if row is not None else ""


async def test_an_isolated_hog_does_not_stall_the_spooler(tmp_path: Path) -> None:
    release = tmp_path / "release"
    hog = isolated("hog", "Hog", release=str(release))
    cheap = TransportConfig("cheap", "isolated_providers:Cheap")
    async with spooler(hog, cheap) as sp:
        assert await sp.wait_ready(timeout=20) == {"hog": True, "cheap": True}
        stuck = await sp.submit(message("HOG:x"))
        await until(lambda: row_text(sp, "hog").startswith("hogging"))
        # While the child burns its CPU without yielding, the spooler's loop delivers
        # twenty messages through another transport.
        infos = [await sp.submit(message(f"SMTP:r{i}@example.org")) for i in range(20)]
        for info in infos:
            assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT
        assert row_text(sp, "hog").startswith("hogging")  # still at it
        # The child's CPU time shows in its row (the hog burns it as we watch).
        await until(lambda: sp.status["hog"].counters.get("child_cpu_ms", 0) >= 300)
        assert await sp.store.state_of(stuck.id, now=sp.clock.now()) is not MessageState.SENT
        release.touch()
        assert await sp.wait_for(stuck.id, timeout=20) is MessageState.SENT
        assert sp.statistics()["scheduler"]["stalls"] == 0


async def test_a_child_killed_mid_submit_loses_nothing_and_is_restarted(tmp_path: Path) -> None:
    healed = tmp_path / "healed"
    pol = replace(FAST, retry_base=0.05, failure_backoff_cap=0.2)
    async with spooler(isolated("flaky", "Hang", healed=str(healed)), policy=pol) as sp:
        assert await sp.wait_ready(timeout=20) == {"flaky": True}
        host = sp.host("flaky")
        first = host.session
        assert isinstance(first, IsolatedSession)
        info = await sp.submit(message("SMTP:bob@example.org", "SMTP:carol@example.org"))
        await until(lambda: row_text(sp, "flaky") == f"hanging {first.pid}")
        healed.touch()  # the next child delivers; this one hangs until killed
        os.kill(first.pid, signal.SIGKILL)
        # The row says why the session failed ...
        await until(lambda: "killed by SIGKILL" in (sp.status["flaky"].detail or ""))
        assert sp.status["flaky"].status_code & StatusCode.FAILURE
        # ... the recipients in flight are back in the queue with a temporary error ...
        await until(lambda: host.session is not first and host.session is not None)
        recs = await sp.store.recipients(info.id)
        assert [r.state for r in recs] != [RecipientState.FAILED] * 2
        # ... and a new child delivers them.
        assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT
        second = host.session
        assert isinstance(second, IsolatedSession) and second.pid != first.pid
        recs = await sp.store.recipients(info.id)
        assert [r.state for r in recs] == [RecipientState.DELIVERED] * 2
        assert recs[0].attempts >= 1  # the killed attempt counted as a temporary failure
        await until(lambda: sp.status["flaky"].counters.get("child_pid") == second.pid)
        counters = sp.status["flaky"].counters
        assert counters["child_restarts"] == 1
        assert counters["child_rss_kb"] > 0
        assert sp.statistics()["transports"]["flaky"]["counters"]["child_restarts"] == 1
        # The second child saw what the first wrote to the profile section.
        assert await sp.store.profile_get("transport:flaky") == {"logons": 2}
    # Logged off: no child is left behind.
    assert second.proc.returncode is not None


async def test_status_rows_and_status_recips_come_from_the_child(tmp_path: Path) -> None:
    async with spooler(isolated("iso", "Cheap")) as sp:
        assert await sp.wait_ready(timeout=20) == {"iso": True}
        session = sp.host("iso").session
        assert isinstance(session, IsolatedSession)
        # Created in logon, in the child (its pid is not ours).
        assert row_text(sp, "iso") == f"pid {session.pid}"
        assert session.pid != os.getpid()
        assert sp.status["iso"].provider_display == "isolated_providers:Cheap (isolated)"
        info = await sp.submit(message("SMTP:bob@example.org", "SMTP:carol@example.org"))
        assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT
        recs = await sp.store.recipients(info.id)
        assert [(r.state, r.status) for r in recs] == [(RecipientState.DELIVERED, "2.0.0")] * 2
        assert row_text(sp, "iso") == f"sent {info.id} ({info.size} bytes, pid {session.pid})"
        assert sp.status["iso"].counters["delivered"] == 2


async def test_the_childs_concurrency_and_destination_concurrency_reach_the_spooler() -> None:
    async with spooler(isolated("iso", "Limited"), isolated("plain", "Cheap")) as sp:
        assert await sp.wait_ready(timeout=20) == {"iso": True, "plain": True}
        host = sp.host("iso")
        assert (host.concurrency, host.destination_concurrency) == (3, 2)
        assert host.destination_rate_delay == 0.25
        plain = sp.host("plain")
        assert (plain.concurrency, plain.destination_concurrency) == (1, None)
        assert plain.destination_rate_delay is None
        info = await sp.submit(message("SMTP:bob@example.org", "SMTP:carol@example.net"))
        assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT


async def test_a_critical_section_in_the_child_is_the_spoolers(tmp_path: Path) -> None:
    async with spooler(isolated("iso", "Cheap", critsec=True)) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT
        # The child left after its status_recips: the leave follows the delivery.
        await until(lambda: sp.critsec.holder is None)
        stats = sp.critsec.statistics()
    assert stats["entries"] == 1


async def test_inbound_from_the_child_is_committed_then_its_source_removed(
    tmp_path: Path,
) -> None:
    pickup = tmp_path / "pickup"
    pickup.mkdir()
    for i in range(2):
        (pickup / f"m{i}").write_bytes(f"Subject: in {i}\r\n\r\nbody {i}\r\n".encode())
    async with spooler(isolated("in", "Pickup", pickup=str(pickup))) as sp:
        entries = await sp.wait_inbox(2, timeout=20)
        contents = sorted([await sp.store.read_inbox(e.id) for e in entries])
        # after_commit ran in the child: the files are gone once committed.
        await until(lambda: not list(pickup.iterdir()))
        state = await sp.store.profile_get("transport:in")
    assert contents == [b"Subject: in 0\r\n\r\nbody 0\r\n", b"Subject: in 1\r\n\r\nbody 1\r\n"]
    assert state == {"last": "m1", "logons": 1}


async def test_an_isolated_maildir_passes_the_conformance_suite(tmp_path: Path) -> None:
    report = await check_provider(
        "maildir",
        address="MAILDIR:box",
        options={"root": str(tmp_path), "create": True},
        isolate=True,
    )
    assert report.ok, report.text()
    assert "submit reports every recipient" in report.passed
    delivered = list((tmp_path / "box" / "new").iterdir())
    assert len(delivered) >= 1


def _profile(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "spoolbox.toml"
    path.write_text(
        f'[[transports]]\nname = "local"\nprovider = "maildir"\n{line}\n'
        f'[transports.options]\nroot = "{tmp_path}"\n'
    )
    return path


def test_the_profile_says_isolate_true(tmp_path: Path) -> None:
    [on] = load_profile(_profile(tmp_path, "isolate = true")).spooler.transports
    [off] = load_profile(_profile(tmp_path, "")).spooler.transports
    assert (on.isolate, off.isolate) == (True, False)
    with pytest.raises(
        ProfileError, match=r"\[transports\.local\] isolate: expected true or false"
    ):
        load_profile(_profile(tmp_path, 'isolate = "yes"'))


async def test_a_child_that_dies_in_logon_fails_the_logon_with_its_exit_status() -> None:
    async with spooler(isolated("dies", "DiesInLogon")) as sp:
        assert await sp.wait_ready(timeout=20) == {"dies": False}
        row = sp.status["dies"]
        host = sp.host("dies")
    assert row.status_code & StatusCode.FAILURE and row.status_code & StatusCode.OFFLINE
    assert row.detail is not None
    assert "logon failed: ChildDied" in row.detail
    assert "exited with status 3" in row.detail
    assert not host.critical_error  # a failed logon, not a session that died


async def test_a_flush_bit_set_in_the_child_flushes_the_transport() -> None:
    async with spooler(isolated("iso", "Flushing")) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        assert await sp.wait_for(info.id, timeout=20) is MessageState.SENT
        # The flush ends (its END notification reached the child), and then the
        # spooler clears the bit.
        await until(
            lambda: (
                "END_OUTBOUND_FLUSH" in row_text(sp, "iso")
                and not sp.status["iso"].status_code & StatusCode.OUTBOUND_FLUSH
            )
        )
        row = sp.status["iso"]
    assert row.status_string == (
        "flush_queues upload=True, BEGIN_OUTBOUND_FLUSH, END_OUTBOUND_FLUSH"
    )


async def test_a_message_cancelled_in_the_spooler_is_cancelled_in_the_child() -> None:
    async with spooler(isolated("iso", "Patient")) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        await until(lambda: row_text(sp, "iso") == f"waiting {info.id}")
        await sp.cancel(info.id)  # it is in the child's hands: cancelled at its next yield
        assert await sp.wait_for(info.id, timeout=20) is MessageState.CANCELLED
        [rec] = await sp.store.recipients(info.id)
    assert rec.state is RecipientState.CANCELLED


async def test_an_error_from_end_message_in_the_child_reaches_the_spooler() -> None:
    async with spooler(isolated("iso", "EndFails")) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        # Settled as a temporary failure: deferred to its retry time.
        assert await sp.wait_for(info.id, (MessageState.DEFERRED,), timeout=20)
        [rec] = await sp.store.recipients(info.id)
        stats = sp.statistics()["transports"]["iso"]
    assert rec.state is RecipientState.QUEUED  # retried later, not lost
    assert rec.diagnostic is not None and f"link down after {info.id}" in rec.diagnostic
    assert stats["last_error"] == f"end_message raised NetworkError: link down after {info.id}"


async def test_no_end_message_after_the_child_reported_a_critical_error() -> None:
    async with spooler(isolated("iso", "Critical")) as sp:
        info = await sp.submit(message("SMTP:bob@example.org"))
        # Settled after submit_message's answer, which follows anything the child
        # said before it (in order, on one pipe).
        assert await sp.wait_for(info.id, (MessageState.DEFERRED,), timeout=20)
        text = row_text(sp, "iso")
        [rec] = await sp.store.recipients(info.id)
    assert text != "end_message called"
    assert rec.diagnostic == "transport reported a critical error"
