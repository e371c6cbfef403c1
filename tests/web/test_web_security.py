# ruff: noqa: F811 - the fixtures imported from webtest_support are parameters here
"""The web page's security: the token (401 without, 403 wrong), the cookie made from
it, CSRF on every action, the headers (a strict CSP) and no secret anywhere."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
from webtest_support import BASE, SECRET, Web, message, script, web  # noqa: F401 - fixtures

from spoolbox.web.security import COOKIE, CSP, cookie_value
from spoolbox.web.token import TOKEN_FILE, load_or_create_token, page_url


async def _anonymous(w: Web) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=w.app), base_url=BASE)


async def test_no_token_is_401_and_a_wrong_one_403(web: Web) -> None:
    async with await _anonymous(web) as anonymous:
        for path in ("/", "/api/status", "/metrics", "/events", "/static/app.js"):
            assert (await anonymous.get(path)).status_code == 401, path
        assert (await anonymous.get("/?token=nope")).status_code == 403
        wrong = {"cookie": f"{COOKIE}=0123"}
        assert (await anonymous.get("/api/status", headers=wrong)).status_code == 403
        bearer = {"authorization": "Bearer nope"}
        assert (await anonymous.get("/metrics", headers=bearer)).status_code == 403
        ok = {"authorization": f"Bearer {web.token}"}
        assert (await anonymous.get("/metrics", headers=ok)).status_code == 200


async def test_the_first_visit_sets_the_cookie_and_drops_the_token_from_the_address(
    web: Web,
) -> None:
    async with await _anonymous(web) as anonymous:
        first = await anonymous.get(f"/api/queue?token={web.token}&state=hold")
        assert first.status_code == 303
        assert first.headers["location"] == "/api/queue?state=hold"
        cookie = first.headers["set-cookie"]
        assert f"{COOKIE}={cookie_value(web.token)}" in cookie
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert web.token not in cookie  # the token travels once, in the first address
        assert (await anonymous.get("/api/status")).status_code == 200


async def test_a_forged_post_without_the_csrf_token_is_refused(web: Web) -> None:
    info = await web.spooler.submit(message())
    forged = await web.client.post(f"/api/queue/{info.id}/hold")
    assert forged.status_code == 403
    assert "CSRF" in forged.text
    wrong = await web.client.post(f"/api/queue/{info.id}/hold", headers={"x-csrf-token": "x"})
    assert wrong.status_code == 403
    other_site = await web.client.post(
        f"/api/queue/{info.id}/hold", headers={**web.csrf, "origin": "https://evil.example"}
    )
    assert other_site.status_code == 403
    assert (await web.spooler.store.get_message(info.id)).held is False
    done = await web.client.post(f"/api/queue/{info.id}/hold", headers={**web.csrf, "origin": BASE})
    assert done.status_code == 200, done.text
    assert (await web.spooler.store.get_message(info.id)).held is True


async def test_every_answer_has_a_strict_csp_and_no_inline_script(web: Web) -> None:
    page = await web.client.get("/")
    assert page.status_code == 200
    for answer in (page, await web.client.get("/api/status"), await web.client.get("/metrics")):
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    html = page.text
    assert '<script src="/static/app.js" defer></script>' in html
    assert html.count("<script") == 1  # the one script is a file
    assert " style=" not in html and "onclick" not in html
    script_file = await web.client.get("/static/app.js")
    assert script_file.status_code == 200 and "EventSource" in script_file.text


async def test_no_secret_in_the_page_the_json_or_the_metrics(web: Web) -> None:
    web.spooler.status.update("relay", detail=f"AUTH failed with password {SECRET}")
    for path in ("/", "/api/status", "/api/statistics", "/metrics", "/api/scheduler"):
        answer = await web.client.get(path)
        assert answer.status_code == 200, path
        assert SECRET not in answer.text, path
    assert "AUTH failed with password ***" in (await web.client.get("/api/status")).text


def test_the_token_file_is_private_and_kept(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path / "data")
    path = tmp_path / "data" / TOKEN_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) >= 32
    assert load_or_create_token(tmp_path / "data") == token
    path.write_text("short\n")
    assert load_or_create_token(tmp_path / "data") not in ("short", token)
    assert page_url("::1", 8025, "a b") == "http://[::1]:8025/?token=a%20b"


async def test_html_in_a_row_is_text_in_the_page(web: Web) -> None:
    web.spooler.status.update("relay", detail='<script>alert("row")</script>')
    html = (await web.client.get("/")).text
    assert "&lt;script&gt;alert(&quot;row&quot;)&lt;/script&gt;" in html
    assert '<script>alert("row")' not in html
