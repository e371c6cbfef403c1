"""Local names (cron's ``root``): the pure rule, and ``sendmail`` taking them."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from spoolbox import Address, AlwaysIdle, Spooler, SpoolerConfig
from spoolbox.ingress import EX_NOUSER, EX_OK, LocalNames, run_sendmail
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
