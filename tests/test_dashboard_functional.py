"""The dashboard over a real relay: login and logout, the session cookie, CSRF, headers,
the shared lockout, the one-time login link, and hostile message text rendered inert.

An aiohttp client with a cookie jar plays the browser; mail goes the real way
(STARTTLS + AUTH into the relay, out to an aiosmtpd sink).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import yaml

from relay.template_controller import RENDER_GRACE_SECONDS, RENDER_SECONDS
from tests.conftest import SITE_PASSWORD, RunningRelay, Sink, base_config, smtp_upstream

TOKEN = "dashboard-token-0123456789"
CertFiles = tuple[Path, Path, Path]
StartRelay = Callable[..., Awaitable[RunningRelay]]
OUR_SCRIPT = '<script src="/static/dashboard.v1.js" defer></script>'  # the only one
CSRF = re.compile(r'name="_csrf" value="([^"]+)"')
HOSTILE_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
)


class Browser:
    """A cookie-keeping client of one relay's admin listener that does not follow redirects."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def get(self, path: str) -> tuple[int, str, Any]:
        async with self.session.get(self.base + path, allow_redirects=False) as response:
            return response.status, await response.text(), response.headers

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, str, Any]:
        async with self.session.post(
            self.base + path, data=data, allow_redirects=False
        ) as response:
            return response.status, await response.text(), response.headers

    async def csrf(self, path: str = "/login") -> str:
        _, html, _ = await self.get(path)
        found = CSRF.search(html)
        assert found, html
        return found.group(1)

    async def log_in(self, token: str = TOKEN) -> tuple[int, str, Any]:
        return await self.post("/login", {"_csrf": await self.csrf(), "token": token})


@pytest.fixture
async def relay(
    tmp_path: Path, start_relay: StartRelay, make_sink: Callable[..., Awaitable[Sink]]
) -> RunningRelay:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("primary", sink.port)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    return await start_relay(config)


@pytest.fixture
async def browser(relay: RunningRelay) -> AsyncIterator[Browser]:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        yield Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")


async def test_pages_need_a_login_and_keep_where_they_were_going(browser: Browser) -> None:
    status, _, headers = await browser.get("/messages?status=failed")
    assert status == 303
    assert headers["Location"] == "/login?next=/messages?status=failed"
    status, html, headers = await browser.get("/login")
    assert status == 200 and "Admin token" in html
    assert "relay_session" in headers.get("Set-Cookie", "")  # the login form's CSRF token


async def test_every_page_carries_the_security_headers(browser: Browser) -> None:
    await browser.log_in()
    for path in ("/login", "/", "/messages", "/upstreams", "/no-such-page"):
        _, html, headers = await browser.get(path)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert "<script" not in html.replace(OUR_SCRIPT, "", 1), path  # nothing inline
        assert " style=" not in html
    status, _, headers = await browser.get("/static/dashboard.v1.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    # The API keeps its own answers: JSON errors, no session cookie.
    status, body, headers = await browser.get("/api/v1/upstreams")
    assert status == 401 and '"unauthorized"' in body and "Set-Cookie" not in headers


async def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(browser: Browser) -> None:
    status, _, headers = await browser.log_in()
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # this admin listener is plain HTTP on loopback
    status, html, headers = await browser.get("/")
    assert status == 200 and "ops" in html and headers["Cache-Control"] == "no-store"
    # Logout is a POST with the CSRF token; without it, nothing happens.
    status, _, _ = await browser.post("/logout", {})
    assert status == 403
    assert (await browser.get("/"))[0] == 200
    status, _, headers = await browser.post("/logout", {"_csrf": await browser.csrf("/")})
    assert status == 303 and headers["Location"] == "/login"
    assert (await browser.get("/"))[0] == 303


async def test_a_post_without_the_sessions_csrf_token_is_refused(browser: Browser) -> None:
    status, html, _ = await browser.post("/login", {"token": TOKEN})
    assert status == 403 and "expired" in html
    status, _, _ = await browser.post("/login", {"token": TOKEN, "_csrf": "forged"})
    assert status == 403
    assert (await browser.get("/"))[0] == 303  # not logged in
    await browser.log_in()
    status, _, _ = await browser.post("/upstreams/primary/test", {"_csrf": "forged"})
    assert status == 403


async def test_a_token_removed_by_a_reload_logs_its_sessions_out(
    relay: RunningRelay, browser: Browser
) -> None:
    await browser.log_in()
    assert (await browser.get("/"))[0] == 200
    path = relay.app.config.path
    config = yaml.safe_load(path.read_text())
    config["admin"]["tokens"] = [{"name": "ops", "token": "another-token-9876543210"}]
    path.write_text(yaml.safe_dump(config))
    assert not relay.app.reload().problems
    status, _, headers = await browser.get("/")  # same name, another token: out
    assert status == 303 and headers["Location"].startswith("/login")


async def test_wrong_tokens_lock_out_and_missing_ones_never_do(
    relay: RunningRelay, browser: Browser
) -> None:
    for _ in range(20):  # empty logins and bare API calls are not guesses
        status, html, _ = await browser.log_in("")
        assert status == 400 and "Enter an admin token" in html
        assert (await browser.get("/api/v1/upstreams"))[0] == 401
    for attempt in range(10):
        status, html, _ = await browser.log_in(f"wrong-{attempt}")
        assert status == 401 and "not valid" in html
    status, html, _ = await browser.log_in()  # even the right token, from this address
    assert status == 429 and "Too many wrong tokens" in html
    async with browser.session.get(
        browser.base + "/api/v1/upstreams", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        assert response.status == 429  # one lockout for the API and the dashboard


async def test_api_guesses_count_toward_the_dashboards_lockout(browser: Browser) -> None:
    for attempt in range(10):
        async with browser.session.get(
            browser.base + "/api/v1/upstreams", headers={"Authorization": f"Bearer x{attempt}"}
        ) as response:
            assert response.status == 401
    assert (await browser.log_in())[0] == 429


async def test_next_never_leaves_the_dashboard(browser: Browser) -> None:
    csrf = await browser.csrf()
    for wanted, landing in (
        ("/messages?page=2", "/messages?page=2"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
    ):
        data = {"_csrf": csrf, "token": TOKEN, "next": wanted}
        status, _, headers = await browser.post("/login", data)
        assert status == 303 and headers["Location"] == landing, wanted
        csrf = await browser.csrf("/")


async def send(relay: RunningRelay, tls: ssl.SSLContext, content: bytes) -> str:
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=True, tls_context=tls, timeout=10
    ) as client:
        await client.login("shop", SITE_PASSWORD)
        _, reply = await client.sendmail("a@shop.example.com", ["to@example.org"], content)
    return reply.split()[-1]


async def test_hostile_subject_and_from_name_render_inert(
    tmp_path: Path,
    start_relay: StartRelay,
    make_sink: Callable[..., Awaitable[Sink]],
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
) -> None:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("primary", sink.port)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)
    hostile = (
        b'From: "<img src=x onerror=alert(1)>" <a@shop.example.com>\r\n'
        b"To: to@example.org\r\n"
        b"Subject: <script>alert('subject')</script>\r\n\r\n"
        b"<script>alert('body')</script>\r\n"
    )
    message_id = await send(relay, client_tls, hostile)
    await sink.handler.wait_for(1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")
        await browser.log_in()
        for path in ("/", "/messages", f"/messages/{message_id}", "/messages?q=%3Cscript"):
            status, html, _ = await browser.get(path)
            assert status == 200, path
            html = html.replace(OUR_SCRIPT, "", 1)
            assert "<script" not in html and "<img" not in html, path
            assert "onerror=alert" not in html or "&lt;img src=x onerror=alert(1)&gt;" in html
        _, html, _ = await browser.get(f"/messages/{message_id}")
        assert "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html  # the From header, as sent
        _, html, _ = await browser.get("/messages")
        assert "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;" in html
        # The body is shown only as the text part (escaped) and in the sandboxed iframe.
        _, html, _ = await browser.get(f"/messages/{message_id}")
        assert '<iframe class="preview"' not in html  # no HTML part in this message
        assert "&lt;script&gt;alert(&#39;body&#39;)&lt;/script&gt;" in html


async def test_retry_needs_csrf_and_says_what_happened(
    tmp_path: Path,
    start_relay: StartRelay,
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
    closed_port: int,
) -> None:
    config = base_config(tmp_path, [smtp_upstream("down", closed_port)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)
    message_id = await send(relay, client_tls, b"Subject: later\r\n\r\nhello\r\n")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")
        await browser.log_in()
        page = f"/messages/{message_id}"
        assert (await browser.post(page + "/retry", {}))[0] == 403
        csrf = await browser.csrf(page)
        status, _, headers = await browser.post(page + "/retry", {"_csrf": csrf})
        assert status == 303 and headers["Location"] == page
        _, html, _ = await browser.get(page)
        assert "Retry scheduled" in html
        status, html, _ = await browser.get("/upstreams")
        assert status == 200 and "down" in html and "file" in html


async def test_the_one_time_link_logs_in_once_while_no_token_is_configured(
    tmp_path: Path, start_relay: StartRelay
) -> None:
    relay = await start_relay(base_config(tmp_path, []))
    line = relay.app.login_link()
    assert line is not None
    port = relay.app.admin_port
    [url] = re.findall(rf"http://127\.0\.0\.1:{port}/login/link\?t=\S+", line)
    path = url.removeprefix(f"http://127.0.0.1:{port}")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{port}")
        status, _, headers = await browser.get(path)
        assert status == 303 and headers["Location"] == "/"
        status, html, _ = await browser.get("/")
        assert status == 200 and "local" in html
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{port}")
        status, html, _ = await browser.get(path)  # the same link again
        assert status == 403 and "used already or has expired" in html
        assert (await browser.get("/"))[0] == 303
        status, _, _ = await browser.get("/login/link?t=AAAA")
        assert status == 403


async def test_no_link_when_tokens_are_configured(relay: RunningRelay, browser: Browser) -> None:
    assert relay.app.login_link() is None
    status, html, _ = await browser.get("/login/link?t=anything")
    assert status == 403 and "only while no admin tokens" in html


async def test_the_cookie_is_secure_when_the_admin_listener_speaks_https(
    tmp_path: Path, start_relay: StartRelay, cert_files: CertFiles, client_tls: ssl.SSLContext
) -> None:
    config = base_config(tmp_path, [])
    config["admin"].update(
        tokens=[{"name": "ops", "token": TOKEN}],
        cert_file=str(cert_files[0]),
        key_file=str(cert_files[1]),
    )
    relay = await start_relay(config)
    connector = aiohttp.TCPConnector(ssl=client_tls)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as session:
        browser = Browser(session, f"https://127.0.0.1:{relay.app.admin_port}")
        status, _, headers = await browser.log_in()
        assert status == 303
        assert "Secure" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
        assert (await browser.get("/"))[0] == 200


async def test_the_html_preview_runs_no_script_and_loads_nothing_remote(
    tmp_path: Path,
    start_relay: StartRelay,
    make_sink: Callable[..., Awaitable[Sink]],
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
) -> None:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("primary", sink.port)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)
    html_mail = (
        b"Subject: html\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<p>Hello</p><script>alert(1)</script>\r\n"
    )
    message_id = await send(relay, client_tls, html_mail)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")
        assert (await browser.get(f"/messages/{message_id}/preview"))[0] == 303  # not logged in
        await browser.log_in()
        _, html, _ = await browser.get(f"/messages/{message_id}")
        assert f'src="/messages/{message_id}/preview" sandbox ' in html
        status, body, headers = await browser.get(f"/messages/{message_id}/preview")
        assert status == 200 and "<p>Hello</p>" in body
        policy = headers["Content-Security-Policy"]
        assert policy.startswith("sandbox; default-src 'none';") and "script-src" not in policy
        assert "img-src data: cid: ;" in policy and "frame-ancestors 'self'" in policy
        assert headers["Referrer-Policy"] == "no-referrer"
        _, _, headers = await browser.get(f"/messages/{message_id}/preview?images=1")
        assert "img-src data: cid: https: http:;" in headers["Content-Security-Policy"]
        status, body, headers = await browser.get(f"/messages/{message_id}/eml")
        assert status == 200 and headers["Content-Type"] == "message/rfc822"
        assert headers["Content-Disposition"] == f'attachment; filename="{message_id}.eml"'
        assert "Subject: html" in body


async def test_queue_actions_are_audited_with_the_tokens_name(
    tmp_path: Path,
    start_relay: StartRelay,
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
    closed_port: int,
) -> None:
    config = base_config(tmp_path, [smtp_upstream("down", closed_port)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)
    message_id = await send(relay, client_tls, b"Subject: waits\r\n\r\nhello\r\n")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")
        await browser.log_in()
        csrf = await browser.csrf("/queue")
        for action in ("hold", "release"):
            status, _, headers = await browser.post(
                f"/queue/{message_id}/{action}", {"_csrf": csrf, "back": "//evil.example/"}
            )
            assert status == 303 and headers["Location"] == "/queue"  # never off-site
        status, html, _ = await browser.get(f"/queue/{message_id}/delete")
        assert status == 200 and "cannot be undone" in html
        status, _, _ = await browser.post(f"/queue/{message_id}/delete", {"_csrf": csrf})
        assert status == 303
        assert await relay.app.reports.message(message_id) is None
        status, _, _ = await browser.post("/queue/flush", {"_csrf": csrf})
        assert status == 303
        _, html, _ = await browser.get("/audit")
        rows = re.findall(r'<span class="badge">(\w+)</span>', html)
        assert rows[:4] == ["flush", "delete", "release", "hold"], rows
        assert (await browser.post(f"/queue/{message_id}/hold", {"_csrf": csrf}))[0] == 404


async def test_api_upstreams_can_be_paused_and_file_ones_are_read_only(
    relay: RunningRelay, browser: Browser, make_sink: Callable[..., Awaitable[Sink]]
) -> None:
    spare = await make_sink()
    async with browser.session.post(
        browser.base + "/api/v1/upstreams",
        json={
            "name": "spare",
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": spare.port,
            "tls": "none",
        },
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        assert response.status == 201, await response.text()
    await browser.log_in()
    _, html, _ = await browser.get("/upstreams")
    assert 'action="/upstreams/spare/deactivate"' in html
    assert 'action="/upstreams/primary/deactivate"' not in html  # the file's: read-only
    assert "Read-only here: declared in" in html
    csrf = await browser.csrf("/upstreams")
    status, _, _ = await browser.post("/upstreams/spare/deactivate", {"_csrf": csrf})
    assert status == 303
    assert not relay.app.directory().upstream("spare").active  # type: ignore[union-attr]
    _, html, _ = await browser.get("/upstreams")
    assert "Upstream spare is inactive" in html and 'action="/upstreams/spare/activate"' in html
    status, html, _ = await browser.post("/upstreams/primary/deactivate", {"_csrf": csrf})
    assert status == 409 and "managed by" in html  # posted anyway: the controller refuses
    status, _, _ = await browser.post("/upstreams/spare/test", {"_csrf": csrf, "to": "nope"})
    _, html, _ = await browser.get("/upstreams")
    assert "is not an email address" in html


async def test_a_credentials_password_is_shown_once_and_the_files_sites_are_read_only(
    relay: RunningRelay, browser: Browser
) -> None:
    async with browser.session.post(
        browser.base + "/api/v1/sites",
        json={"id": "blog", "name": "Blog", "from": {"email": "news@example.com"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        assert response.status == 201, await response.text()
    await browser.log_in()
    _, html, _ = await browser.get("/sites/shop")
    assert "Read-only here" in html and 'action="/sites/shop/credentials"' not in html
    csrf = await browser.csrf("/sites/blog")
    status, html, headers = await browser.post(
        "/sites/blog/credentials", {"_csrf": csrf, "username": "blog-app"}
    )
    assert status == 200 and headers["Cache-Control"] == "no-store"
    [password] = re.findall(r'<code id="new-password">([^<]+)</code>', html)
    assert relay.app.directory().credential("blog-app") is not None
    _, html, _ = await browser.get("/sites/blog")
    assert password not in html and "blog-app" in html
    status, _, _ = await browser.post("/sites/blog/credentials/blog-app/delete", {"_csrf": csrf})
    assert status == 303 and relay.app.directory().credential("blog-app") is None
    status, html, _ = await browser.post("/sites/shop/credentials", {"_csrf": csrf})
    assert status == 303  # refused, said on the page it returns to
    _, html, _ = await browser.get("/sites/shop")
    assert "Nothing made" in html and "managed by" in html


async def test_forms_show_the_controllers_problems_and_never_echo_a_password(
    relay: RunningRelay, browser: Browser
) -> None:
    await browser.log_in()
    csrf = await browser.csrf("/upstreams/new")
    status, html, _ = await browser.post(
        "/upstreams",
        {"_csrf": csrf, "name": "bad", "host": "127.0.0.1", "port": "lots", "tls": "none",
         "password": "hunter2-secret"},
    )  # fmt: skip
    assert status == 422 and "upstream.port" in html
    assert "hunter2-secret" not in html  # typed again, never sent back
    assert relay.app.directory().upstream("bad") is None
    status, html, _ = await browser.post(
        "/sites", {"_csrf": csrf, "id": "blog", "from_email": "not an address"}
    )
    assert status == 422 and "site.from.email" in html
    assert 'value="blog"' in html  # what was typed stays in the form
    status, _, headers = await browser.post(
        "/sites",
        {"_csrf": csrf, "id": "blog", "name": "Blog", "from_email": "news@example.com",
         "reply_to": "address", "reply_to_address": "editor@example.com",
         "upstreams": "primary", "rate_per_minute": "30"},
    )  # fmt: skip
    assert status == 303 and headers["Location"] == "/sites/blog"
    site = relay.app.directory().site("blog")
    assert site is not None and site.reply_to_address == "editor@example.com"
    assert site.upstreams == ("primary",) and site.rate_per_minute == 30
    status, _, _ = await browser.post(
        "/sites/blog/edit",
        {"_csrf": csrf, "name": "Blog", "from_email": "news@example.com", "reply_to": "none"},
    )
    site = relay.app.directory().site("blog")
    assert status == 303 and site is not None
    assert site.reply_to.value == "none" and site.rate_per_minute is None  # emptied: default
    _, html, _ = await browser.get("/sites/shop/edit")
    assert "declared in" in html and "<form" not in html.split("</header>")[1]


async def test_a_sites_page_gives_its_form_snippet(tmp_path: Path, start_relay: StartRelay) -> None:
    config = base_config(tmp_path, [])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["http"] = {"host": "127.0.0.1", "port": 0}  # no fixed address: the page says so
    config["sites"][0]["form"] = {
        "to": ["sales@example.com"],
        "allowed_origins": ["https://shop.example.com"],
        "required": ["email", "message"],
        "honeypot_field": "website",
    }
    relay = await start_relay(config)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")
        await browser.log_in()
        _, html, _ = await browser.get("/sites/shop")
    assert "https://shop.example.com" in html
    action = "https://relay.example.com/api/send-inquiry"
    assert f"&lt;form method=&#34;post&#34; action=&#34;{action}" in html
    assert "Replace <code>https://relay.example.com</code>" in html
    assert 'data-copy="form-snippet"' in html


async def test_a_sites_failover_order_moves_one_step_at_a_time(
    relay: RunningRelay, browser: Browser, make_sink: Callable[..., Awaitable[Sink]]
) -> None:
    spare = await make_sink()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with browser.session.post(
        browser.base + "/api/v1/upstreams",
        json={
            "name": "spare",
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": spare.port,
            "tls": "none",
        },
        headers=auth,
    ) as response:
        assert response.status == 201
    async with browser.session.post(
        browser.base + "/api/v1/sites",
        json={
            "id": "blog",
            "name": "Blog",
            "from": {"email": "news@example.com"},
            "upstreams": ["primary", "spare"],
        },
        headers=auth,
    ) as response:
        assert response.status == 201
    await browser.log_in()
    csrf = await browser.csrf("/sites/blog")
    status, _, _ = await browser.post("/sites/blog/upstreams/spare/up", {"_csrf": csrf})
    assert status == 303
    assert relay.app.directory().site("blog").upstreams == ("spare", "primary")  # type: ignore[union-attr]
    await browser.post("/sites/blog/upstreams/spare/up", {"_csrf": csrf})  # first already
    assert relay.app.directory().site("blog").upstreams == ("spare", "primary")  # type: ignore[union-attr]
    _, html, _ = await browser.get("/sites/blog")
    assert "Failover order: spare, primary." in html
    assert 'action="/sites/blog/upstreams/primary/up"' in html


async def test_the_apis_sites_and_domains_can_be_deleted_and_the_files_cannot(
    relay: RunningRelay, browser: Browser
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with browser.session.post(
        browser.base + "/api/v1/sites",
        json={"id": "blog", "name": "Blog", "from": {"email": "news@example.com"}},
        headers=auth,
    ) as response:
        assert response.status == 201
    await browser.log_in()
    csrf = await browser.csrf("/domains")
    status, _, headers = await browser.post("/domains", {"_csrf": csrf, "name": "blog.example"})
    assert status == 303 and headers["Location"] == "/domains/blog.example"
    _, html, _ = await browser.get("/domains/blog.example")
    assert 'action="/domains/blog.example/delete"' in html
    _, html, _ = await browser.get("/sites/blog/edit")
    assert 'action="/sites/blog/delete"' in html
    assert (await browser.post("/sites/blog/delete", {"_csrf": csrf}))[0] == 303
    assert (await browser.post("/domains/blog.example/delete", {"_csrf": csrf}))[0] == 303
    assert relay.app.directory().site("blog") is None
    assert relay.app.directory().domain("blog.example") is None
    status, html, _ = await browser.post("/sites/shop/delete", {"_csrf": csrf})
    assert status == 409 and "managed by" in html
    assert relay.app.directory().site("shop") is not None


async def test_each_upstream_card_charts_its_recipients_per_hour(
    tmp_path: Path,
    start_relay: StartRelay,
    make_sink: Callable[..., Awaitable[Sink]],
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
) -> None:
    sink = await make_sink()
    config = base_config(
        tmp_path, [smtp_upstream("primary", sink.port), smtp_upstream("idle", sink.port)]
    )
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)
    await send(relay, client_tls, b"Subject: counted\r\n\r\nhello\r\n")
    await sink.handler.wait_for(1)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")
        await browser.log_in()
        for _ in range(100):  # the attempt is recorded just after the sink's reply
            _, html, _ = await browser.get("/upstreams")
            if "1 sent, 0 failed, 0 deferred in 1 attempt<" in html:
                break
            await asyncio.sleep(0.05)
    charts = re.findall(r'<svg class="chart chart-small"[^>]*aria-label="([^"]+)"', html)
    assert charts == [
        "Recipients per hour through primary over the last 24 hours, UTC: sent, failed, deferred"
    ]
    hours = re.findall(r"<title>(\d\d:\d\d-\d\d:\d\d UTC: [^<]*)</title>", html)
    assert len(hours) == 24 and hours[-1].endswith("1 sent, 0 failed, 0 deferred in 1 attempt")
    assert all(h.endswith("0 sent, 0 failed, 0 deferred in 0 attempts") for h in hours[:-1])
    assert 'class="seg-sent"' in html and "No attempts in the last 24 hours." in html  # idle


async def test_the_template_editors_live_preview_renders_what_is_typed(browser: Browser) -> None:
    """POST /templates/_preview renders the parts as typed (not saved) with the controller's
    sandbox; problems come back as a list of text; the HTML has its own sandboxed endpoint;
    and the page's own Preview button (no script) still renders the saved template."""
    await browser.log_in()
    csrf = await browser.csrf("/templates/new")
    status, _, _ = await browser.post(
        "/templates", {"_csrf": csrf, "name": "inquiry", "text": "Saved {{ name }}"}
    )
    assert status == 303

    async def live(path: str = "/templates/_preview", **form: str) -> tuple[int, Any]:
        async with browser.session.post(
            browser.base + path, data={"_csrf": csrf, **form}, allow_redirects=False
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, (await response.text(), response.headers)

    status, answer = await live(
        subject="Hi {{ name }}",
        text="Typed {{ name }}",
        html="<p>{{ name }}</p><script>x()</script>",
        variables='{"name": "<b>Ada</b>"}',
    )
    assert status == 200
    assert answer == {
        "subject": "Hi <b>Ada</b>",  # text: the page writes it as text
        "text": "Typed <b>Ada</b>",
        "html": "<p>&lt;b&gt;Ada&lt;/b&gt;</p><script>x()</script>",  # autoescaped variable
        "problems": [],
    }
    status, answer = await live(text="Hi {{ nme }}", html="{% if %}", variables="{}")
    assert status == 200 and answer["problems"] == [
        "html: line 1: Expected an expression, got 'end of statement block'"
    ]
    status, answer = await live(text="Hi {{ nme }}", variables="{}")
    assert status == 200 and answer["problems"] == ["text: line 1: 'nme' is undefined"]
    status, answer = await live(text="x", variables="[1]")
    assert status == 200 and answer["problems"][0].startswith("variables: a JSON object")
    status, answer = await live(text="", html=" ")
    assert answer["problems"] == ["text: a template needs a text or an html part"]

    started = time.monotonic()
    status, answer = await live(text=HOSTILE_TEMPLATE)  # 10**10 loop steps: the deadline stops it
    assert answer["problems"] == [
        f"text: line 1: template took too long (over {RENDER_SECONDS:g} s)"
    ]
    assert time.monotonic() - started < RENDER_SECONDS + RENDER_GRACE_SECONDS + 1.0

    status, (html, headers) = await live(
        "/templates/_preview.html", html="<p>{{ name }}</p>", variables='{"name": "Ada"}'
    )
    assert status == 200 and html == "<p>Ada</p>"
    assert headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
    async with browser.session.post(
        browser.base + "/templates/_preview", data={"text": "x"}, allow_redirects=False
    ) as response:
        assert response.status == 403  # no CSRF token: refused before anything renders

    _, page, _ = await browser.get("/templates/inquiry")
    assert 'data-live-preview="/templates/_preview"' in page and "<script>" not in page
    status, page, _ = await browser.post(
        "/templates/inquiry/preview", {"_csrf": csrf, "variables": '{"name": "Bo"}'}
    )
    assert status == 200 and "Saved Bo" in page  # the button renders the saved parts


async def test_an_api_domains_key_rotates_from_its_page(
    relay: RunningRelay, browser: Browser
) -> None:
    await browser.log_in()
    csrf = await browser.csrf("/domains")
    await browser.post("/domains", {"_csrf": csrf, "name": "blog.example", "selector": "relay1"})
    page = "/domains/blog.example"
    _, html, _ = await browser.get(page)
    assert 'action="/domains/blog.example/keys"' in html

    status, _, headers = await browser.post(
        f"{page}/keys", {"_csrf": csrf, "selector": "relay2", "algorithm": "ed25519"}
    )
    assert (status, headers["Location"]) == (303, page)
    _, html, _ = await browser.get(page)
    assert "Key relay2 added as next" in html and "Make relay2 sign" in html
    assert "the last check has not found it yet" in html  # DNS was never asked

    activate = f"{page}/keys/relay2/activate"
    await browser.post(activate, {"_csrf": csrf, "retire_until": "2099-01-31"})
    _, html, _ = await browser.get(page)
    assert "Not activated: the DNS record of selector &#39;relay2&#39;" in html
    assert relay.app.directory().domain("blog.example").signing_key.selector == "relay1"

    await browser.post(activate, {"_csrf": csrf, "retire_until": "2099-01-31", "force": "1"})
    _, html, _ = await browser.get(page)
    assert "relay2 signs from now on" in html and "2099-01-31" in html
    assert relay.app.directory().domain("blog.example").signing_key.selector == "relay2"
    status, _, _ = await browser.post(f"{page}/keys", {"selector": "relay3"})  # no CSRF token
    assert status == 403
