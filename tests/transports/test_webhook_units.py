"""The webhook transport's pure parts: the outcome table, Retry-After, redirects, the
URL rules, signatures, the JSON body and the options.  No network."""

from __future__ import annotations

import base64
import json
from email.message import EmailMessage
from pathlib import Path

import pytest

from spoolbox.contract import OptionError, Unconfigured
from spoolbox.profile import load_profile
from spoolbox.profile.default import default_profile_text
from spoolbox.transports.webhook import WebhookProvider
from spoolbox.transports.webhook.outcome import (
    Failure,
    Kind,
    Verdict,
    body_excerpt,
    failure_verdict,
    parse_retry_after,
    redirect_target,
    response_verdict,
)
from spoolbox.transports.webhook.payload import (
    SCHEMA,
    content_json,
    idempotency_key,
    json_body,
)
from spoolbox.transports.webhook.settings import (
    BadTarget,
    Target,
    WebhookSettings,
    under_prefix,
    url_problem,
)
from spoolbox.transports.webhook.signature import (
    SignatureError,
    sign,
    signature_header,
    verify_signature,
)

NOW = 1_764_753_600.0  # 2025-12-03 09:20:00 UTC
WHERE = "https://hooks.example.org"


def verdict(
    code: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    follow: bool = False,
    cap: float = 3600.0,
    refused: str | None = None,
) -> Verdict:
    return response_verdict(
        code,
        "",
        headers or {},
        body,
        where=WHERE,
        now=NOW,
        max_retry_after=cap,
        follow_redirects=follow,
        refused_redirect=refused,
    )


# -- the outcome table ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "outcome", "status"),
    [
        (200, "delivered", "2.0.0"),
        (201, "delivered", "2.0.0"),
        (202, "delivered", "2.0.0"),
        (204, "delivered", "2.0.0"),
        (299, "delivered", "2.0.0"),
        (408, "deferred", "4.4.2"),
        (425, "deferred", "4.3.0"),
        (429, "deferred", "4.4.5"),
        (500, "deferred", "4.3.0"),
        (502, "deferred", "4.3.0"),
        (503, "deferred", "4.3.0"),
        (504, "deferred", "4.3.0"),
        (507, "deferred", "4.3.1"),
        (599, "deferred", "4.3.0"),
        (400, "failed", "5.6.0"),
        (401, "failed", "5.7.1"),
        (403, "failed", "5.7.1"),
        (404, "failed", "5.1.1"),
        (405, "failed", "5.0.0"),
        (409, "failed", "5.0.0"),
        (410, "failed", "5.1.1"),
        (413, "failed", "5.3.4"),
        (415, "failed", "5.6.0"),
        (422, "failed", "5.6.0"),
        (451, "failed", "5.0.0"),
        (499, "failed", "5.0.0"),
        (300, "failed", "5.1.6"),
        (301, "failed", "5.1.6"),
        (302, "failed", "5.1.6"),
        (303, "failed", "5.1.6"),
        (304, "failed", "5.1.6"),
        (307, "failed", "5.1.6"),
        (308, "failed", "5.1.6"),
        (100, "deferred", "4.5.0"),
        (199, "deferred", "4.5.0"),
        (600, "deferred", "4.5.0"),
        (999, "deferred", "4.5.0"),
    ],
)
def test_the_outcome_table(code: int, outcome: str, status: str) -> None:
    v = verdict(code, body=b"why")
    assert (v.outcome, v.status) == (outcome, status)
    assert v.text.startswith(f"http; {code}")


def test_a_refusal_says_the_reason_phrase_the_origin_and_the_first_bytes() -> None:
    v = verdict(404, body=b'{"error": "no such order"}\r\n')
    assert v.text == 'http; 404 Not Found: {"error": "no such order"} (https://hooks.example.org)'
    v = response_verdict(
        418, "I'm a teapot", {}, b"", where=WHERE, now=NOW, max_retry_after=1, follow_redirects=0
    )
    assert v.text == "http; 418 I'm a teapot (https://hooks.example.org)"


def test_the_excerpt_is_one_line_bounded_and_never_a_compressed_body() -> None:
    text = body_excerpt(b"line 1\r\nline\t2\x00\x1b[31m" + b"x" * 1000)
    assert text.startswith("line 1 line 2 [31mxxx")
    assert len(text) == 200
    assert text.endswith("…")
    assert body_excerpt(b"\xff\xfeok") == "\ufffd\ufffdok"
    assert body_excerpt(b"\x1f\x8b\x08\x00", "gzip") == "(gzip-encoded body not shown)"
    assert body_excerpt(b"plain", "identity") == "plain"
    assert verdict(500, {"content-encoding": "br"}, b"\x00\x01").text == (
        "http; 500 Internal Server Error: (br-encoded body not shown) (https://hooks.example.org)"
    )


@pytest.mark.parametrize("code", [408, 425, 429, 500, 503])
def test_retry_after_is_honoured_and_capped(code: int) -> None:
    assert verdict(code, {"retry-after": "120"}).retry_after == 120.0
    assert verdict(code, {"retry-after": "7200"}, cap=3600).retry_after == 3600.0
    assert verdict(code, {"retry-after": "soon"}).retry_after is None
    assert verdict(code).retry_after is None


def test_retry_after_is_ignored_on_other_answers() -> None:
    assert verdict(404, {"retry-after": "5"}).retry_after is None
    assert verdict(200, {"retry-after": "5"}).retry_after is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 30 ", 30.0),
        ("Wed, 03 Dec 2025 09:21:00 GMT", 60.0),  # an HTTP-date a minute ahead
        ("Wed, 03 Dec 2025 09:00:00 GMT", 0.0),  # in the past: now
        ("Wednesday, 03-Dec-25 09:20:30 GMT", 30.0),  # the obsolete RFC 850 form
        ("-5", None),
        ("1.5", None),
        ("", None),
        ("tomorrow", None),
        ("Wed, 03 Dec 2025 09:21:00", None),  # no zone: not an HTTP-date
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_a_redirect_says_where_to_and_why_it_was_not_followed() -> None:
    v = verdict(301, {"location": "https://new.example.org/hook"})
    assert v.text == (
        "http; 301 Moved Permanently from https://hooks.example.org, to "
        "https://new.example.org/hook: redirects are not followed (follow_redirects = false); "
        "point the endpoint at the new URL"
    )
    assert "would turn the POST into a GET" in verdict(302, {"location": "/x"}, follow=True).text
    assert "no usable Location" in verdict(307, follow=True).text
    assert "nowhere (no Location)" in verdict(307, follow=True).text
    refused = verdict(308, {"location": "http://x/"}, follow=True, refused="would drop TLS")
    assert "not followed: would drop TLS" in refused.text


def test_only_307_and_308_are_followed() -> None:
    url = "https://hooks.example.org/a/b"
    assert redirect_target(307, "/c", url) == "https://hooks.example.org/c"
    assert redirect_target(308, "d", url) == "https://hooks.example.org/a/d"
    assert redirect_target(308, "https://x.example/", url) == "https://x.example/"
    for code in (300, 301, 302, 303, 304, 200, 404):
        assert redirect_target(code, "/c", url) is None
    assert redirect_target(307, None, url) is None
    assert redirect_target(307, "", url) is None


@pytest.mark.parametrize(
    ("kind", "outcome", "status", "words"),
    [
        (Kind.CONNECT, "deferred", "4.4.1", "cannot connect to https://hooks.example.org: boom"),
        (Kind.CONNECT_TIMEOUT, "deferred", "4.4.1", "timed out after 3 s connecting"),
        (Kind.WRITE_TIMEOUT, "deferred", "4.4.2", "timed out after 3 s sending the request"),
        (Kind.READ_TIMEOUT, "deferred", "4.4.2", "timed out after 3 s waiting for"),
        (Kind.POOL_TIMEOUT, "deferred", "4.3.0", "no free connection"),
        (Kind.TOTAL_TIMEOUT, "deferred", "4.4.2", "took over 3 s; gave up"),
        (Kind.DROPPED, "deferred", "4.4.2", "lost before a complete response: boom"),
        (Kind.PROTOCOL, "deferred", "4.5.0", "broke the HTTP protocol: boom"),
        (Kind.TLS_VERIFY, "deferred", "4.7.5", "TLS certificate of https://hooks.example.org"),
        (Kind.TLS, "deferred", "4.7.0", "TLS failure with"),
        (Kind.TOO_MANY_REDIRECTS, "failed", "5.4.6", "too many redirects"),
    ],
)
def test_failures_are_temporary_but_a_redirect_loop(
    kind: Kind, outcome: str, status: str, words: str
) -> None:
    v = failure_verdict(Failure(kind, "boom\r\n", 3.0), WHERE)
    assert (v.outcome, v.status) == (outcome, status)
    assert words in v.text
    assert v.text.startswith("x-spoolbox; ")
    assert "\n" not in v.text


def test_every_failure_kind_has_a_verdict() -> None:
    for kind in Kind:
        assert failure_verdict(Failure(kind), WHERE).status[0] in "45"


# -- URLs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://hooks.example.org/orders", None),
        ("http://127.0.0.1:8080/", None),
        ("HTTPS://Hooks.Example.org", None),
        ("https://[::1]:8443/x?token=abc", None),
        ("ftp://example.org/", "not an http:// or https:// URL"),
        ("hooks.example.org/orders", "not an http:// or https:// URL"),
        ("https:///orders", "has no host"),
        ("https://user:pw@example.org/", "user name or password"),
        ("https://example.org/#frag", "has a fragment"),
        ("https://example.org/a#", "has a fragment"),
        ("https://example.org:0/", "port 0"),
        ("https://example.org:99999/", "is not a URL"),
        ("https://example.org/hooks/../admin", "'.' or '..' path segment"),
        ("https://example.org/hooks/%2e%2e/admin", "'.' or '..' path segment"),
        ("https://example.org/a b", "characters a URL cannot have"),
        ("https://exämple.org/", "characters a URL cannot have"),
        ("https://example.org/\r\nX-Injected: 1", "characters a URL cannot have"),
    ],
)
def test_url_problem(url: str, words: str | None) -> None:
    problem = url_problem(url)
    if words is None:
        assert problem is None
    else:
        assert problem is not None
        assert words in problem


@pytest.mark.parametrize(
    ("url", "prefix", "inside"),
    [
        ("https://h.example/hooks/a", "https://h.example/hooks", True),
        ("https://h.example/hooks/a", "https://h.example/hooks/", True),
        ("https://h.example/hooks", "https://h.example/hooks/", True),
        ("https://h.example/hooks", "https://h.example/hooks", True),
        ("https://h.example/hooksmith", "https://h.example/hooks", False),
        ("https://h.example/other", "https://h.example/hooks", False),
        ("https://h.example/anything", "https://h.example", True),
        ("https://h.example:443/hooks/a", "https://H.EXAMPLE/hooks", True),
        ("https://h.example:8443/hooks/a", "https://h.example/hooks", False),
        ("http://h.example/hooks/a", "https://h.example/hooks", False),
        ("https://h.example.evil.org/hooks/a", "https://h.example/hooks", False),
        ("https://evil.org/https://h.example/hooks", "https://h.example/hooks", False),
    ],
)
def test_under_prefix(url: str, prefix: str, inside: bool) -> None:
    assert under_prefix(url, prefix) is inside


def settings(**config: object) -> WebhookSettings:
    return WebhookSettings.from_config(
        {"endpoints": {"orders": "https://h.example/o?token=t0k"}, "secret": "s", **config}
    )


def test_targets() -> None:
    s = settings(url_prefixes=["https://h.example/hooks/"])
    assert s.address_types == ("WEBHOOK", "HTTP")
    assert s.target("WEBHOOK", "orders") == Target(
        "https://h.example/o?token=t0k", "https://h.example", "orders"
    )
    assert s.target("HTTP", "https://h.example/hooks/1").url == "https://h.example/hooks/1"
    with pytest.raises(BadTarget) as e:
        s.target("WEBHOOK", "invoices")
    assert (e.value.status, e.value.text) == (
        "5.1.1",
        "x-spoolbox; no webhook endpoint named 'invoices' (known: orders)",
    )
    with pytest.raises(BadTarget) as e:
        s.target("HTTP", "https://h.example/admin")
    assert e.value.status == "5.7.1"
    assert "not under any of this transport's url_prefixes" in e.value.text
    with pytest.raises(BadTarget) as e:
        s.target("HTTP", "https://h.example/hooks/../admin")
    assert e.value.status == "5.1.3"
    with pytest.raises(BadTarget):
        s.target("SMTP", "bob@example.org")
    assert settings().address_types == ("WEBHOOK",)


def test_redirect_problems() -> None:
    s = settings(url_prefixes=["https://h.example/hooks/"])
    named = s.target("WEBHOOK", "orders")
    assert s.redirect_problem(named, "https://elsewhere.example/new") is None
    assert "without TLS" in (s.redirect_problem(named, "http://h.example/o") or "")
    assert "fragment" in (s.redirect_problem(named, "https://h.example/o#x") or "")
    url = s.target("HTTP", "https://h.example/hooks/1")
    assert s.redirect_problem(url, "https://h.example/hooks/2") is None
    assert "url_prefixes" in (s.redirect_problem(url, "https://h.example/admin") or "")


# -- options -----------------------------------------------------------------------------------
def test_the_defaults() -> None:
    s = settings()
    assert (s.format, s.http, s.verify, s.follow_redirects) == ("json", "auto", True, False)
    assert (s.connect_timeout, s.read_timeout, s.write_timeout, s.pool_timeout) == (
        10.0,
        30.0,
        30.0,
        10.0,
    )
    assert (s.total_timeout, s.max_retry_after, s.max_response_size) == (120.0, 3600.0, 65536)
    assert s.max_connections == 4
    assert s.signing_secret == "s"
    assert "'s'" not in repr(s)  # the secret is not in the repr


def test_missing_options_are_unconfigured() -> None:
    with pytest.raises(Unconfigured) as e:
        WebhookSettings.from_config({"secret": "s"})
    assert e.value.missing == ("endpoints",)
    with pytest.raises(Unconfigured) as e:
        WebhookSettings.from_config({"endpoints": {"a": "https://h.example/"}})
    assert e.value.missing == ("secret",)
    assert "secret_env or secret_file" in str(e.value)
    s = WebhookSettings.from_config({"endpoints": {"a": "https://h.example/"}, "sign": False})
    assert s.signing_secret is None
    assert "UNSIGNED" in s.describe()
    s = settings(sign=False)
    assert s.signing_secret is None


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"endpoint": {}}, "option 'endpoint' is unknown; did you mean 'endpoints'?"),
        ({"endpoints": {"a b": "https://h.example/"}}, "'endpoints.a b' is not a usable"),
        ({"endpoints": {"a": "ftp://h.example/"}}, "'endpoints.a' must be an http(s) URL"),
        ({"endpoints": {"a": 5}}, "'endpoints.a' must be"),
        ({"url_prefixes": ["https://h.example/?q=1"]}, "must not have a query"),
        ({"url_prefixes": ["h.example"]}, "'url_prefixes[0]' must be an http(s) URL"),
        ({"format": "xml"}, "'format' must be one of"),
        ({"http": "3"}, "'http' must be one of"),
        ({"read_timeout": 0}, "'read_timeout' must be a positive number of seconds"),
        ({"max_connections": 0}, "'max_connections' must be"),
        ({"proxy": "socks://p"}, "'proxy' must be an http(s) URL"),
        ({"secret": 5}, "'secret' must be a non-empty string, not an integer"),
    ],
)
def test_wrong_options_name_the_key(config: dict[str, object], words: str) -> None:
    full = {"endpoints": {"a": "https://h.example/"}, "secret": "s"}
    full.update(config)
    if "endpoint" in config:
        full = {"endpoint": {}, "secret": "s"}
    with pytest.raises(OptionError) as e:
        WebhookSettings.from_config(full)
    assert words in str(e.value)
    assert str(e.value).startswith("webhook option ")


# -- signatures -------------------------------------------------------------------------------
BODY = b'{"schema":"spoolbox.webhook/1"}'
KEY = "661b83235771308fa1d71bb.0"


def test_the_signature_is_hmac_sha256_of_timestamp_key_and_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"s3cret", b"1764753600." + KEY.encode() + b"." + BODY, hashlib.sha256)
    assert sign("s3cret", 1764753600, KEY, BODY) == expected.hexdigest()
    header = signature_header("s3cret", 1764753600, KEY, BODY)
    assert header == f"t=1764753600,v1={expected.hexdigest()}"
    assert verify_signature("s3cret", BODY, header, KEY, now=NOW + 10) == 1764753600
    assert verify_signature(b"s3cret", BODY, header, KEY, now=NOW - 10) == 1764753600


def _refused(*args: object, **kw: object) -> str:
    with pytest.raises(SignatureError) as e:
        verify_signature(*args, **kw)  # type: ignore[arg-type]
    return str(e.value)


def test_a_bad_signature_is_refused_saying_why() -> None:
    header = signature_header("s3cret", int(NOW), KEY, BODY)
    assert "no v1 signature matches" in _refused("other", BODY, header, KEY, now=NOW)
    assert "no v1 signature matches" in _refused("s3cret", BODY + b" ", header, KEY, now=NOW)
    assert "no v1 signature matches" in _refused("s3cret", BODY, header, KEY + "x", now=NOW)
    assert "outside the tolerance of 300 s" in _refused("s3cret", BODY, header, KEY, now=NOW + 301)
    assert "+301 s from now" not in _refused("s3cret", BODY, header, KEY, now=NOW - 301)
    assert "no Spoolbox-Signature header" in _refused("s3cret", BODY, None, KEY, now=NOW)
    assert "no Idempotency-Key header" in _refused("s3cret", BODY, header, None, now=NOW)
    assert "exactly one t=" in _refused("s3cret", BODY, header + ",t=1", KEY, now=NOW)
    assert "exactly one t=" in _refused("s3cret", BODY, "v1=00", KEY, now=NOW)
    assert "exactly one t=" in _refused("s3cret", BODY, "t=-5,v1=00", KEY, now=NOW)
    assert "no v1= signature" in _refused("s3cret", BODY, f"t={int(NOW)}", KEY, now=NOW)
    assert "not ASCII" in _refused("s3cret", BODY, header, "clé", now=NOW)
    # within the tolerance, both ways
    assert verify_signature("s3cret", BODY, header, KEY, now=NOW + 300) == int(NOW)
    assert verify_signature("s3cret", BODY, header, KEY, now=NOW - 300, tolerance=300) == int(NOW)


def test_one_matching_v1_among_several_is_enough() -> None:
    old = signature_header("old", int(NOW), KEY, BODY)
    new = signature_header("new", int(NOW), KEY, BODY)
    both = f"{new}, v1={old.split('v1=')[1]}"
    assert verify_signature("old", BODY, both, KEY, now=NOW) == int(NOW)
    assert verify_signature("new", BODY, both, KEY, now=NOW) == int(NOW)
    assert "no v1 signature matches" in _refused("third", BODY, both, KEY, now=NOW)


# -- the JSON body ------------------------------------------------------------------------------
def _message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ann <ann@example.org>"
    msg["To"] = "WEBHOOK:orders"
    msg["Subject"] = "Order 42 ✓"
    msg.set_content("Hello,\nthe order.\n")
    msg.add_alternative("<p>Hello</p>\n", subtype="html")
    msg.add_attachment(b"%PDF-1.4\x00\xff", maintype="application", subtype="pdf", filename="o.pdf")
    msg.add_attachment(b"no name", maintype="application", subtype="octet-stream")
    return msg.as_bytes()


def test_the_json_body_follows_the_schema() -> None:
    part = content_json(_message())
    head = {
        "idempotency_key": idempotency_key("m1", 3),
        "message_id": "m1",
        "recipient": "WEBHOOK:orders",
        "sender": None,
        "submitted_at": 1.5,
        "attempt": 2,
    }
    doc = json.loads(json_body(head, part))
    assert list(doc) == [
        "schema",
        "idempotency_key",
        "message_id",
        "recipient",
        "sender",
        "submitted_at",
        "attempt",
        "subject",
        "headers",
        "text",
        "html",
        "attachments",
    ]
    assert doc["schema"] == SCHEMA == "spoolbox.webhook/1"
    assert doc["idempotency_key"] == "m1.3"
    assert doc["subject"] == "Order 42 ✓"
    assert ["Subject", "Order 42 ✓"] in doc["headers"]
    assert doc["headers"][0] == ["From", "Ann <ann@example.org>"]
    assert doc["text"] == "Hello,\nthe order.\n"
    assert doc["html"] == "<p>Hello</p>\n"
    assert doc["attachments"] == [
        {
            "filename": "o.pdf",
            "content_type": "application/pdf",
            "size": 10,
            "content_base64": base64.b64encode(b"%PDF-1.4\x00\xff").decode(),
        },
        {
            "filename": None,
            "content_type": "application/octet-stream",
            "size": 7,
            "content_base64": base64.b64encode(b"no name").decode(),
        },
    ]


def test_a_plain_message_and_broken_bytes_still_make_valid_json() -> None:
    raw = (
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\nX-Raw: \xe9t\xe9\r\n"
        b"Content-Type: text/plain; charset=x-unknown\r\n\r\nl\xe0\r\n"
    )
    doc = json.loads(content_json(raw))
    assert doc["subject"] == "café"
    assert doc["headers"][1] == ["X-Raw", "\ufffdt\ufffd"]
    assert doc["text"] == "l\ufffd\n"
    assert doc["html"] is None
    assert doc["attachments"] == []
    empty = json.loads(content_json(b"\r\n"))
    assert (empty["subject"], empty["text"], empty["headers"]) == ("", "", [])


# -- the profile `spoolbox init` writes ---------------------------------------------------------
def test_the_default_profiles_webhook_block_works_when_uncommented(tmp_path: Path) -> None:
    text = default_profile_text(tmp_path, smtp_port=0)
    start = text.index("# A webhook:")
    end = text.index("\n\n", start)
    block = text[start:end].splitlines()
    assert block[2] == "# [[transports]]"
    lines = [line.removeprefix("# ") for line in block[2:]]
    profile = tmp_path / "spoolbox.toml"
    profile.write_text(text[:start] + "\n".join(lines) + text[end:])
    prof = load_profile(profile, environ={"WEBHOOK_SECRET": "from-the-env"})
    [hooks] = [t for t in prof.spooler.transports if t.name == "hooks"]
    assert hooks.provider == "webhook"
    assert hooks.address_types == ("WEBHOOK",)
    assert hooks.options["secret"] == "from-the-env"
    assert repr(hooks.options["secret"]) == "'***'"
    WebhookProvider.check_options(hooks.options)
    s = WebhookSettings.from_config(hooks.options)
    assert s.target("WEBHOOK", "orders").origin == "https://hooks.example.org"
    # without the variable, the transport is unconfigured (the others run)
    assert [(m.transport, m.option) for m in load_profile(profile, environ={}).missing] == [
        ("hooks", "secret")
    ]


def test_text_with_surrogates_is_made_valid_unicode() -> None:
    # The standard library's parser already gives U+FFFD for undecodable bytes in every
    # case we found; _clean guards the JSON encoder (it cannot encode a lone surrogate,
    # which would fail the message at every attempt) should one slip through.
    from spoolbox.transports.webhook.payload import _clean

    assert _clean("caf\udce9") == "caf\ufffd"  # a byte kept by surrogateescape
    assert _clean("a\ud800b") == "a?b"  # a lone surrogate no byte stands for
    assert _clean("plain ✓") == "plain ✓"
