"""Local names (cron's ``root``): the pure rule, and ``sendmail`` taking them."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiosmtplib
import pytest

from spoolbox import Address, AlwaysIdle, MessageState, NewMessage, Spooler, SpoolerConfig
from spoolbox.ingress import (
    EX_NOUSER,
    EX_OK,
    ListenerConfig,
    LocalNames,
    SubmissionListener,
    run_sendmail,
)
from spoolbox.ingress.local_names import LocalNameError, is_local_name


def smtp(value: str) -> Address:
    return Address("SMTP", value)


# -- the rule -------------------------------------------------------------------------------
def test_a_name_without_alias_takes_the_domain_or_the_type() -> None:
    assert LocalNames.build(domain="example.org").resolve("root") == (smtp("root@example.org"),)
    assert LocalNames.build(domain="example.org.").domain == "example.org"
    by_type = LocalNames.build(address_type="MAILDIR")
    assert by_type.resolve("www-data") == (Address("MAILDIR", "www-data"),)
    with pytest.raises(LocalNameError, match="no alias for it, no domain and no address_type"):
        LocalNames.build({"root": "a@example.org"}).resolve("bob")


def test_aliases_expand_through_names_and_stop_at_themselves() -> None:
    rule = LocalNames.build(
        {
            "root": ["root", "Admin@Example.org", "ops"],
            "www-data": "root",
            "ops": ["MAILDIR:ops", "admin@example.org"],
            "loop-a": "loop-b",
            "loop-b": "loop-a",
        },
        address_type="MAILDIR",
    )
    root = (Address("MAILDIR", "root"), smtp("Admin@Example.org"), Address("MAILDIR", "ops"))
    assert rule.resolve("root") == (*root, smtp("admin@example.org"))
    assert rule.resolve("ROOT") == rule.resolve("root")  # names ignore case
    assert rule.resolve("www-data") == rule.resolve("root")
    # A cycle ends where a name comes round again: that name itself.
    assert rule.resolve("loop-a") == (Address("MAILDIR", "loop-a"),)


@pytest.mark.parametrize(
    ("aliases", "kw", "text"),
    [
        ({}, {"domain": "example.org", "address_type": "MAILDIR"}, "not both"),
        ({}, {"domain": "exa mple.org"}, "domain: expected a DNS domain name"),
        ({}, {"address_type": "9X"}, "address_type: invalid address type"),
        ({"ro ot": "a@example.org"}, {}, "'ro ot' is not a local name"),
        ({"root@h": "a@example.org"}, {}, "'root@h' is not a local name"),
        ({"root": []}, {}, "aliases.root: no address"),
        ({"root": "a@b", "ROOT": "c@d"}, {}, "given twice"),
        ({"root": "admin@"}, {}, "aliases.root: 'admin@': expected user@domain"),
        ({"root": "a b@example.org"}, {}, "aliases.root: 'a b@example.org'"),
        ({"root": "ops"}, {}, "'ops' (from aliases.root) is a local name without a domain"),
        (
            {f"n{i}": f"n{i + 1}" for i in range(12)},
            {"domain": "example.org"},
            "nested more than 10 deep",
        ),
    ],
)
def test_a_wrong_rule_is_refused_when_built(
    aliases: dict[str, Any], kw: dict[str, str], text: str
) -> None:
    with pytest.raises(LocalNameError) as err:
        LocalNames.build(aliases, **kw)
    assert text in str(err.value)


def test_what_is_a_local_name() -> None:
    assert is_local_name("root") and is_local_name("first.last") and is_local_name("www-data")
    for text in ("root@host", "MAILDIR:root", "", "a b", "a..b", ".a", "x" * 65, "<root>"):
        assert not is_local_name(text), text


def test_an_address_at_this_hosts_own_name_is_its_local_name() -> None:
    rule = LocalNames.build(
        {"root": "admin@example.org"},
        address_type="MAILDIR",
        host_names=["Mail.Test.", "localhost"],
    )
    assert rule.host_names == frozenset({"mail.test", "localhost"})
    assert rule.at_this_host(smtp("root@mail.test")) == (smtp("admin@example.org"),)
    assert rule.at_this_host(smtp("Root@MAIL.test.")) == (smtp("admin@example.org"),)
    assert rule.at_this_host(smtp("bob@localhost")) == (Address("MAILDIR", "bob"),)
    assert rule.local_part(smtp("bob@localhost")) == "bob"
    assert rule.stands_for(smtp("bob@localhost")) == (Address("MAILDIR", "bob"),)
    assert rule.stands_for(smtp("bob@example.org")) == (smtp("bob@example.org"),)
    for other in (
        smtp("root@example.org"),  # another domain
        smtp("root@sub.mail.test"),  # not the name itself
        Address("MAILDIR", "root@mail.test"),  # not SMTP
        smtp('"a b"@mail.test'),  # no local name
    ):
        assert rule.at_this_host(other) is None, other
    # Nothing to say for the name, or it stands for itself: it stays as it is.
    assert (
        LocalNames.build({"root": "MAILDIR:x"}, host_names=["h.test"]).at_this_host(
            smtp("bob@h.test")
        )
        is None
    )
    same = LocalNames.build(domain="h.test", host_names=["h.test"])
    assert same.at_this_host(smtp("bob@h.test")) is None
    assert LocalNames.build(address_type="MAILDIR").at_this_host(smtp("bob@localhost")) is None
    with pytest.raises(LocalNameError, match=r"host_names\[1\]: expected a DNS name"):
        LocalNames.build(domain="example.org", host_names=["ok.test", "not a host"])


# -- sendmail -------------------------------------------------------------------------------
@pytest.fixture
async def spooler() -> AsyncIterator[Spooler]:
    async with Spooler.open(SpoolerConfig(), idle=AlwaysIdle()) as sp:
        yield sp


async def sendmail(
    sp: Spooler, argv: Sequence[str], stdin: bytes = b"Subject: s\n\nb\n", **kw: Any
) -> tuple[int, str, str]:
    err, out = io.StringIO(), io.StringIO()
    code = await run_sendmail(
        argv,
        io.BytesIO(stdin),
        sp.submit,
        stderr=err,
        stdout=out,
        user="ann",
        domain="host.test",
        **kw,
    )
    return code, err.getvalue(), out.getvalue()


async def recipients(sp: Spooler) -> list[list[Address]]:
    return [
        [r.address for r in s.recipients]
        for s in await sp.store.list_messages(now=0)
        if not s.info.is_report
    ]


RULE = LocalNames.build(
    {"root": ["admin@example.org", "MAILDIR:root"], "www-data": "root"}, domain="example.org"
)


async def test_cron_mail_to_its_owner_goes_where_the_rule_says(spooler: Spooler) -> None:
    # What Debian's cron runs when MAILTO is not set: the job owner's login name.
    stdin = b"From: root (Cron Daemon)\nTo: www-data\nSubject: Cron <www-data@h> job\n\nout\n"
    argv = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "www-data"]
    code, err, _ = await sendmail(spooler, argv, stdin, local_names=RULE)
    assert (code, err) == (EX_OK, "")
    assert await recipients(spooler) == [[smtp("admin@example.org"), Address("MAILDIR", "root")]]
    # The headers get the local domain, as Postfix's cleanup appends @myorigin (the
    # recipients are what the alias says; the header keeps the name it was sent to).
    [summary] = await spooler.store.list_messages(now=0)
    content = await spooler.store.read_content(summary.info.id)
    assert b"\r\nFrom: Cron Daemon <root@host.test>\r\nTo: www-data@host.test\r\n" in content


async def test_what_a_local_name_became_keeps_it_as_its_original(spooler: Spooler) -> None:
    """A report names the address as it was given (RFC 3461 ORCPT, Original-Recipient),
    as the listener keeps it: a bare local name with the local domain (as the header
    gets it), an address at this host's name as it was written; an address given as
    it is has none."""
    rule = LocalNames.build(
        {"root": ["admin@example.org", "MAILDIR:root"], "www-data": "root"},
        domain="example.org",
        host_names=["localhost"],
    )
    stdin = b"To: www-data\nCc: root@localhost\nSubject: s\n\nb\n"
    code, err, _ = await sendmail(spooler, ["-t", "carol@example.org"], stdin, local_names=rule)
    assert (code, err) == (EX_OK, "")
    [summary] = await spooler.store.list_messages(now=0)
    assert [(str(r.address), r.original) for r in summary.recipients] == [
        ("SMTP:carol@example.org", None),
        ("SMTP:admin@example.org", "rfc822;www-data@host.test"),
        ("MAILDIR:root", "rfc822;www-data@host.test"),  # the first that became it
    ]
    # Given as it is first, then reached through an alias: as given (the listener's
    # rule too: the first occurrence of a recipient is the one kept).
    code, err, _ = await sendmail(
        spooler, ["-i", "admin@example.org", "root"], b"Subject: t\n\nb\n", local_names=rule
    )
    assert (code, err) == (EX_OK, "")
    [second] = [m for m in await spooler.store.list_messages(now=0) if m.info.id != summary.info.id]
    assert [(str(r.address), r.original) for r in second.recipients] == [
        ("SMTP:admin@example.org", None),
        ("MAILDIR:root", "rfc822;root@host.test"),
    ]


async def test_local_names_in_headers_with_t_and_in_address_lists(spooler: Spooler) -> None:
    stdin = b"To: bob, carol@example.org\nCc: Root <root>\nSubject: s\n\nb\n"
    code, err, _ = await sendmail(spooler, ["-t", "dave, Eve <eve>"], stdin, local_names=RULE)
    assert (code, err) == (EX_OK, "")
    [got] = await recipients(spooler)
    assert got == [
        smtp("dave@example.org"),
        smtp("eve@example.org"),
        smtp("bob@example.org"),
        smtp("carol@example.org"),
        smtp("admin@example.org"),
        Address("MAILDIR", "root"),
    ]


async def test_a_bare_sender_takes_the_local_domain(spooler: Spooler) -> None:
    code, _, _ = await sendmail(spooler, ["-f", "backup", "a@example.org"], local_names=RULE)
    assert code == EX_OK
    [summary] = await spooler.store.list_messages(now=0)
    assert summary.info.sender == smtp("backup@host.test")  # the domain run_sendmail was given


async def test_without_a_rule_a_local_name_is_refused_and_nothing_queued(
    spooler: Spooler,
) -> None:
    code, err, _ = await sendmail(spooler, ["a@example.org", "root"])
    assert code == EX_NOUSER
    assert err == (
        "sendmail: the recipient argument 'root': 'root' is a local name without a domain, "
        "and the profile has no [local_names] to say what it becomes (aliases, domain or "
        'address_type; docs/operations.md, "Local names")\n'
    )
    assert await recipients(spooler) == []


async def test_bv_shows_what_a_local_name_becomes(spooler: Spooler) -> None:
    def route(address: Address) -> tuple[bool, str]:
        if address.type == "SMTP":
            return True, "deliverable: transport relay"
        return False, f"undeliverable: no transport serves address type {address.type}"

    code, _, out = await sendmail(spooler, ["-bv", "root", "a@example.org"], route=route)
    assert code == EX_NOUSER
    assert out.splitlines()[0].startswith("root: undeliverable: the recipient argument 'root'")
    assert out.splitlines()[1] == "SMTP:a@example.org: deliverable: transport relay"
    code, _, out = await sendmail(spooler, ["-bv", "www-data"], route=route, local_names=RULE)
    assert code == EX_NOUSER  # MAILDIR:root has no transport here
    assert out.splitlines() == [
        "www-data -> SMTP:admin@example.org: deliverable: transport relay",
        "www-data -> MAILDIR:root: undeliverable: no transport serves address type MAILDIR",
    ]
    assert await recipients(spooler) == []


async def test_mail_to_this_hosts_own_name_stays_on_the_host(spooler: Spooler) -> None:
    """``root@HOST`` (the profile's hostname, or localhost) is the local name root, as
    Postfix delivers mail for mydestination locally: not sent out through DNS."""
    rule = LocalNames.build(
        {"www-data": "root"}, address_type="MAILDIR", host_names=["host.test", "localhost"]
    )
    stdin = b"To: www-data@HOST.test, bob@example.org\nSubject: s\n\nb\n"
    code, err, _ = await sendmail(spooler, ["-t", "root@localhost"], stdin, local_names=rule)
    assert (code, err) == (EX_OK, "")
    assert await recipients(spooler) == [
        [Address("MAILDIR", "root"), smtp("bob@example.org")]  # root once
    ]

    def route(address: Address) -> tuple[bool, str]:
        return True, f"deliverable: transport {address.type.lower()}"

    code, _, out = await sendmail(
        spooler, ["-bv", "root@host.test", "a@example.org"], route=route, local_names=rule
    )
    assert (code, out.splitlines()) == (
        EX_OK,
        [
            "root@host.test -> MAILDIR:root: deliverable: transport maildir",
            "SMTP:a@example.org: deliverable: transport smtp",
        ],
    )


async def test_a_report_to_a_sender_at_this_hosts_name_stays_on_the_host() -> None:
    """sendmail's default sender is ``root@HOST``: the report of a failure goes where
    ``[local_names]`` sends root (MAILDIR:root), not out to the host's name."""
    rule = LocalNames.build(address_type="MAILDIR", host_names=["host.test"])
    config = SpoolerConfig(local_recipients=rule.at_this_host)
    async with Spooler.open(config, idle=AlwaysIdle()) as sp:
        for sender in ("root@host.test", "ann@example.org"):
            info = await sp.submit(
                NewMessage(
                    sender=smtp(sender),
                    recipients=(Address("FAX", "+1555"),),  # no transport: fails
                    content=b"Subject: s\r\n\r\nb\r\n",
                )
            )
            assert await sp.wait_for(info.id, timeout=5) is MessageState.FAILED
        reports = [m for m in await sp.store.list_messages(now=0) if m.info.is_report]
        got = sorted(str(r.address) for m in reports for r in m.recipients)
    assert got == ["MAILDIR:root", "SMTP:ann@example.org"]


def test_the_rule_goes_to_a_listener_process_and_back_the_same() -> None:
    rule = LocalNames.build(
        {"root": ["root", "Admin@Example.org", "ops"], "ops": "MAILDIR:ops", "www-data": "root"},
        address_type="MAILDIR",
        host_names=["host.test", "localhost"],
    )
    again = LocalNames.from_dict(json.loads(json.dumps(rule.to_dict())))
    assert again == rule
    by_domain = LocalNames.build(domain="example.org", host_names=[])
    assert LocalNames.from_dict(by_domain.to_dict()) == by_domain


async def test_the_listener_delivers_mail_for_this_hosts_name_where_the_rule_says(
    spooler: Spooler,
) -> None:
    """An application that sends its alerts to root@localhost over SMTP (as to a
    local Postfix): the recipient is what [local_names] makes of root."""
    rule = LocalNames.build(
        {"www-data": "root"}, address_type="MAILDIR", host_names=["host.test", "localhost"]
    )
    checked: list[Address] = []

    def check(address: Address) -> str | None:
        checked.append(address)
        return "no fax here" if address.type == "FAX" else None

    listener = SubmissionListener(
        spooler.submit,
        ListenerConfig(port=0, hostname="host.test"),
        check_recipient=check,
        local_names=rule,
    )
    await listener.start()
    try:
        errors, _ = await aiosmtplib.send(
            b"Subject: disk full\r\n\r\n/ is 99% full\r\n",
            sender="monitor@host.test",
            recipients=["root@localhost", "www-data@HOST.test", "bob@example.org"],
            hostname="127.0.0.1",
            port=listener.port,
        )
    finally:
        await listener.stop(grace=1.0)
    assert errors == {}
    # The routing check saw where each goes; root once, the sender as written.
    assert checked == [
        Address("MAILDIR", "root"),
        Address("MAILDIR", "root"),
        smtp("bob@example.org"),
    ]
    [summary] = [s for s in await spooler.store.list_messages(now=0) if not s.info.is_report]
    assert [r.address for r in summary.recipients] == [
        Address("MAILDIR", "root"),
        smtp("bob@example.org"),
    ]
    assert summary.info.sender == smtp("monitor@host.test")


async def test_the_listener_refuses_what_a_host_name_becomes_when_nothing_takes_it(
    spooler: Spooler,
) -> None:
    rule = LocalNames.build(address_type="FAX", host_names=["localhost"])
    listener = SubmissionListener(
        spooler.submit,
        ListenerConfig(port=0),
        check_recipient=lambda a: "no transport serves FAX" if a.type == "FAX" else None,
        local_names=rule,
    )
    await listener.start()
    try:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
            await aiosmtplib.send(
                b"Subject: x\r\n\r\nb\r\n",
                sender="a@example.org",
                recipients=["root@localhost"],
                hostname="127.0.0.1",
                port=listener.port,
            )
    finally:
        await listener.stop(grace=1.0)
    [refused] = info.value.recipients
    assert refused.code == 550
    assert "no transport serves FAX" in refused.message
