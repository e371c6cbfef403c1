"""SMTPUTF8 (RFC 6531) in the server machine, by feeding it bytes: UTF-8 addresses in
MAIL and RCPT after ``MAIL FROM:<...> SMTPUTF8``; ``553 5.6.7`` for one without it;
UTF-8 nowhere else; octets that are not UTF-8 refused."""

from __future__ import annotations

from test_smtp_server_machine import machine, ready, run

from spoolbox.smtp.server import MailFrom, RcptTo

NEEDS = "553 5.6.7 Error: a non-ASCII address needs SMTPUTF8 on MAIL FROM"


def test_offered_only_when_enabled() -> None:
    _, [ehlo] = run(machine(smtputf8=True), b"EHLO client.test\r\n")
    assert "250-SMTPUTF8" in ehlo.split("\n") or ehlo.endswith("250 SMTPUTF8")
    _, [ehlo] = run(machine(), b"EHLO client.test\r\n")
    assert "SMTPUTF8" not in ehlo


def test_utf8_paths_after_mail_with_smtputf8() -> None:
    m = ready(smtputf8=True)
    events, out = run(
        m,
        "MAIL FROM:<jörg@bücher.example> SMTPUTF8 SIZE=100\r\n"
        "RCPT TO:<用户@例子.广告>\r\nRCPT TO:<ascii@example.org>\r\n".encode(),
    )
    assert events == [
        MailFrom("jörg@bücher.example", (("SMTPUTF8", None), ("SIZE", "100"))),
        RcptTo("用户@例子.广告"),
        RcptTo("ascii@example.org"),
    ]
    assert [r[:3] for r in out] == ["250", "250", "250"]
    assert m.utf8


def test_a_utf8_path_without_smtputf8_gets_553() -> None:
    m = ready(smtputf8=True)
    events, out = run(m, "MAIL FROM:<jörg@example.de>\r\n".encode())
    assert (events, out) == ([], [NEEDS])
    events, out = run(m, "MAIL FROM:<a@example.org>\r\nRCPT TO:<jörg@example.de>\r\n".encode())
    assert events == [MailFrom("a@example.org")]
    assert out == ["250 2.0.0 OK", NEEDS]
    assert not m.utf8
    # A transaction under SMTPUTF8 ends with RSET: the next one is ASCII again.
    run(m, b"RSET\r\n")
    run(m, b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
    assert m.utf8
    _, out = run(m, "RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<é@x.org>\r\n".encode())
    assert out == ["250 2.0.0 OK", "250 2.0.0 OK", NEEDS]


def test_utf8_only_in_the_paths_and_only_utf8() -> None:
    m = ready(smtputf8=True)
    _, out = run(m, "EHLO bücher.example\r\n".encode())
    assert out == ["500 5.5.2 Error: non-ASCII octets outside MAIL and RCPT"]
    _, out = run(m, b"MAIL FROM:<\xff\xfe@x.org> SMTPUTF8\r\n")
    assert out == ["500 5.5.2 Error: the command is not UTF-8"]
    _, out = run(m, b"MAIL FROM:<a@x.org> SMTPUTF8=yes\r\n")
    assert out == ["555 5.5.4 MAIL parameter SMTPUTF8 not supported"]
    # Without the extension, as before.
    _, out = run(ready(), "MAIL FROM:<jörg@x.org> SMTPUTF8\r\n".encode())
    assert out == ["500 5.5.2 Error: strict ASCII mode (SMTPUTF8 is not offered)"]
