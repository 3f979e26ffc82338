"""The dashboard in a real browser (Debian's chromium through Playwright) over a real relay.

An admin logs in with a token, opens every page that is built, tests an
upstream, adds and removes a suppression, makes a webhook and sends it a test
event that a loopback receiver checks, and retries nothing by accident;
every page loads with no console error (a CSP violation is one), no failed
request and no script dialog, even with a message whose subject and From
name are markup. Screenshots go to
/tmp/dashboard-*.png for a person to look at.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa
from aiohttp import web

from relay.tables import provider_events, webhook_outbox
from tests.browser import Tab, browser, tab
from tests.conftest import SITE_PASSWORD, RunningRelay, Sink, base_config, smtp_upstream
from tests.dns_zone import Zone
from tests.test_admin_messages_functional import poll
from tests.test_webhook_signing import spec_verify
from tests.webhook_receiver import receiving

__all__ = ["browser", "tab"]  # fixtures
TOKEN = "dashboard-browser-token-0123456789"
LATER = "later@example.org"  # primary answers 451, backup is down: the message waits
SCREENSHOTS = Path(tempfile.gettempdir())
CertFiles = tuple[Path, Path, Path]
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"relay-webhook-file-secret-32byte").decode()
pytestmark = pytest.mark.slow

HOSTILE = (
    b'From: "<img src=x onerror=alert(1)>" <news@shop.example.com>\r\n'
    b"To: anna@example.org\r\n"
    b"Subject: <script>alert('subject')</script> Spring offer\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Spring offer: <script>alert('text')</script>\r\n"
    b"--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<h1 style='color:#3b5bdb'>Spring offer</h1><p>20%% off everything.</p>"
    b"<script>alert('html')</script><img src=x onerror=alert('img')>"
    b"<img src='http://127.0.0.1:%d/track.png' alt='remote'>\r\n"
    b"--b1--\r\n"
)  # % the port of a loopback server that counts the requests for its image


def plain(subject: str, to: str) -> bytes:
    return (
        f"From: Shop Orders <orders@shop.example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"\r\nThank you for your order.\r\n"
    ).encode()


async def send(relay: RunningRelay, tls: ssl.SSLContext, to: str, content: bytes) -> str:
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=True, tls_context=tls, timeout=10
    ) as client:
        await client.login("shop", SITE_PASSWORD)
        _, reply = await client.sendmail("orders@shop.example.com", [to], content)
    return reply.split()[-1]


def refused_by_preview(line: str) -> bool:
    return "Content Security Policy" in line or "sandboxed" in line


def refused_request(problem: str) -> bool:
    """A preview's request its policy refused; or, with remote images allowed, its
    ``<img src=x>``, which resolves to a dashboard URL: the sandbox's requests carry no
    session cookie (an opaque origin, SameSite=Strict), so it got the login page, which
    the browser then refused as an image."""
    return problem.startswith("failed (csp)") or (
        problem.startswith("failed (net::ERR_BLOCKED_BY_ORB)") and "/login?next=" in problem
    )


class Tracker:
    """A loopback server with one image that counts who fetched it (the 'remote' image)."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self.fetched = asyncio.Event()

    async def image(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.fetched.set()
        return web.Response(body=PIXEL, content_type="image/png")


PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf00000301010018dd8db00000000049454e44ae426082"
)


@pytest.fixture
async def tracker() -> AsyncIterator[Tracker]:
    counting = Tracker()
    app = web.Application()
    app.router.add_get("/track.png", counting.image)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    counting.port = runner.addresses[0][1]
    yield counting
    await runner.cleanup()


class Watch:
    """What went wrong on the page: failed requests, HTTP errors, console errors, dialogs."""

    def __init__(self, tab: Tab) -> None:
        self.tab = tab
        self.problems: list[str] = []
        page = tab.page
        page.on("requestfailed", self._failed)
        page.on(
            "response",
            lambda r: self.problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
        )
        page.on("dialog", lambda d: self.problems.append(f"dialog: {d.message}"))

    def _failed(self, request: Any) -> None:
        # ERR_ABORTED: the browser dropped it for the next navigation (a favicon still
        # loading when the test moves on), not an answer the relay failed to give.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed ({request.failure}): {request.url}")

    def check(self, where: str, blocked: bool = False) -> None:
        """Nothing went wrong; with ``blocked``, only what a message preview's sandbox and
        policy refused (its scripts, its remote images) was said in the console."""
        console = [line for line in self.tab.console if line.startswith(("error", "warning"))]
        if blocked:
            console = [line for line in console if not refused_by_preview(line)]
        problems = [p for p in self.problems if not (blocked and refused_request(p))]
        self.tab.console.clear()
        self.problems.clear()
        assert not console, (where, console)
        assert not self.tab.take_errors(), where
        assert not problems, (where, problems)

    async def shot(self, name: str, blocked: bool = False) -> None:
        self.check(name, blocked)
        path = SCREENSHOTS / f"dashboard-{name}.png"
        await self.tab.page.screenshot(path=str(path), full_page=True)


async def test_an_admin_logs_in_and_every_built_page_works(
    tmp_path: Path,
    start_relay: Callable[..., Awaitable[RunningRelay]],
    make_sink: Callable[..., Awaitable[Sink]],
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
    closed_port: int,
    tracker: Tracker,
    tab: Tab,
) -> None:
    refusals = {"nobody@example.org": "550 5.1.1 no such user", LATER: "451 4.3.0 try later"}
    sink = await make_sink(replies={"rcpt": refusals})
    limits = {"rate_per_minute": 600, "daily_limit": 5000, "monthly_limit": 100000}
    primary = smtp_upstream("primary", sink.port, priority=1, **limits)
    backup = smtp_upstream("backup", closed_port, priority=2, daily_limit=2000)
    config = base_config(tmp_path, [primary, backup])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)
    for number in range(1, 6):
        to = f"c{number}@example.org"
        await send(relay, client_tls, to, plain(f"Order #{1040 + number}", to))
    nobody = "nobody@example.org"
    failed_id = await send(relay, client_tls, nobody, plain("Order #1046", nobody))
    deferred_id = await send(relay, client_tls, LATER, plain("Order #1047", LATER))
    hostile_id = await send(relay, client_tls, "anna@example.org", HOSTILE % tracker.port)
    await sink.handler.wait_for(6)
    await wait_until_final(relay, failed_id)

    watch, page = Watch(tab), tab.page
    base = f"http://127.0.0.1:{relay.app.admin_port}"
    await page.goto(base + "/messages")
    assert page.url == base + "/login?next=/messages"
    await watch.shot("login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/messages")
    assert await page.locator(".who-name").inner_text() == "ops"
    await watch.shot("messages")

    await page.goto(base + "/")
    assert await page.locator(".chart rect").count() >= 1
    await watch.shot("overview")

    await page.goto(f"{base}/messages/{hostile_id}")
    subject = await page.locator("h2.subject").inner_text()
    assert subject == "<script>alert('subject')</script> Spring offer"  # text, not markup
    preview = page.frame_locator("iframe.preview")
    assert await preview.locator("h1").inner_text() == "Spring offer"
    refusals = [line for line in tab.console if refused_by_preview(line)]
    assert refusals, tab.console  # the preview's script and images were refused, and said so
    assert tracker.hits == 0  # remote images stay blocked until asked
    await watch.shot("message", blocked=True)
    await page.click("text=Load remote images")
    await preview.locator("img[alt=remote]").wait_for()
    await asyncio.wait_for(tracker.fetched.wait(), 10)
    watch.check("message-images", blocked=True)
    async with page.expect_download() as download:
        await page.click("text=Download .eml")
    saved = await (await download.value).path()
    assert b"Spring offer" in await asyncio.to_thread(Path(saved).read_bytes)

    await page.goto(f"{base}/messages/{failed_id}")
    assert "550" in await page.locator(".timeline").inner_text()
    await watch.shot("message-failed")

    await page.goto(base + "/messages?status=failed")
    assert await page.locator("tbody tr").count() == 1
    await page.goto(base + "/messages?page_size=3&q=Order%20%23")  # 7 orders, 3 a page
    seen = []
    for rows in (3, 3, 1):
        assert await page.locator("tbody tr").count() == rows
        seen += await page.locator("tbody td:nth-child(5) > a").all_inner_texts()
        if rows == 3:
            await page.click("a[rel=next]")
    assert sorted(seen) == [f"Order #{n}" for n in range(1041, 1048)]
    assert "7 of 7" in await page.locator(".pager").inner_text()
    watch.check("messages-pages")

    await page.goto(base + "/upstreams")
    primary_chart = page.locator('.upstream-card:has(h2:text-is("primary")) svg.chart-small')
    assert await primary_chart.locator("rect.seg-sent").count() >= 1
    assert await primary_chart.locator("rect.seg-failed").count() >= 1  # nobody@: 550
    await watch.shot("upstreams")
    await page.click('.upstream-card:has(h2:text-is("primary")) button:text-is("Test connection")')
    await page.wait_for_selector(".probe")
    assert "it works" in await page.locator(".probe h2").inner_text()
    await watch.shot("upstream-test")
    primary_card = page.locator('.upstream-card:has(h2:text-is("primary"))')
    await primary_card.locator("summary").click()
    await primary_card.locator("input[name=to]").fill("probe@example.org")
    await primary_card.locator("button:text-is('Send test message')").click()
    await page.wait_for_selector(".probe .step-ok")
    assert "Message id" in await page.locator(".probe").inner_text()
    await watch.shot("upstream-test-message")
    await sink.handler.wait_for(8)
    await page.click('.upstream-card:has(h2:text-is("backup")) button:text-is("Test connection")')
    await page.wait_for_selector(".probe-failed")
    watch.check("upstream-test-failed")
    await page.screenshot(path=str(SCREENSHOTS / "dashboard-upstream-test-failed.png"))

    await page.goto(base + "/sites")
    await watch.shot("sites")
    await page.click('a[href="/sites/shop"]')
    await page.fill("#key-name", "backend")
    await page.click("button:text-is('New API key')")
    key = await page.locator("#new-key").inner_text()
    assert len(key) >= 32 and key not in await page.locator("table").inner_text()
    await watch.shot("site")
    await page.goto(base + "/sites/shop")  # the key is not shown again
    assert key not in await page.content()
    assert "backend" in await page.locator("table").inner_text()

    await page.goto(base + "/templates")
    await page.click("text=New template")
    live = page.locator(".live-preview")
    await page.fill("#t-name", "inquiry")
    await page.fill("#t-subject", "Thanks, {{ first_name }}")
    await page.fill("#t-text", "Hello {{ first_name }},\nwe got your message.")
    await page.fill("#t-html", "<p style='color:#2f9e44'>Hello {{ first_name }}</p>")
    # No variables yet: the preview says what is missing, inline.
    await live.locator(".live-problems li:has-text(\"'first_name' is undefined\")").first.wait_for()
    await page.fill("#t-variables", '{"first_name": "Bo"}')
    await live.locator(".live-subject:text-is('Thanks, Bo')").wait_for()
    await watch.shot("template-new")
    await page.click("button:text-is('Save template')")
    await page.wait_for_url(base + "/templates/inquiry")
    # As the admin types, the preview follows (400 ms after the last key), with no page load.
    await page.evaluate("window.notReloaded = true")
    history = await page.evaluate("history.length")
    await page.fill("#t-variables", '{"first_name": "<b>Ada</b>"}')
    await live.locator(".live-subject:text-is('Thanks, <b>Ada</b>')").wait_for()  # as text
    frame = page.frame_locator("iframe[name=live-frame]")
    await frame.locator("p:text-is('Hello <b>Ada</b>')").wait_for()  # autoescaped
    assert await frame.locator("b").count() == 0
    await page.locator("#t-subject").press_sequentially(" {{ <img src=x onerror=alert(1)>")
    await live.locator(".live-problems li:has-text('subject: line 1:')").wait_for()
    problems = await live.locator(".live-problems").inner_text()
    assert problems.startswith("subject: line 1:"), problems  # the syntax error, as text
    assert await live.locator(".live-problems img").count() == 0
    assert not await live.locator(".live-output").is_visible()
    await watch.shot("template-live-error")
    await page.fill("#t-subject", "Thanks again, {{ first_name }}")
    await live.locator(".live-subject:text-is('Thanks again, <b>Ada</b>')").wait_for()
    assert await page.evaluate("window.notReloaded") is True
    assert await page.evaluate("history.length") == history  # Back leaves the page
    framed = SCREENSHOTS / "dashboard-template-frame.png"  # a full-page shot leaves it blank
    await page.locator("iframe[name=live-frame]").screenshot(path=str(framed))
    await watch.shot("template")
    # The Preview button (the way without script) renders the saved template; then the live
    # preview takes over its place.
    await page.click("button:text-is('Preview')")
    await page.wait_for_load_state()
    await live.locator(".live-subject:text-is('Thanks, <b>Ada</b>')").wait_for()
    assert not await page.locator(".static-rendered").is_visible()
    await page.goto(base + "/templates")
    await watch.shot("templates")

    await wait_for_status(relay, deferred_id, "deferred")
    await page.goto(base + "/queue")
    assert await page.locator("tbody tr").count() == 1
    await watch.shot("queue")
    await page.click("button:text-is('Hold')")
    await page.wait_for_selector(".flash-ok")
    await page.goto(base + "/queue?status=held")
    assert "Order #1047" in await page.locator("tbody").inner_text()
    await watch.shot("queue-held")
    await page.click("button:text-is('Release')")
    await page.wait_for_selector(".flash-ok")
    await page.goto(base + "/queue?status=deferred")
    await page.click("a:text-is('Delete')")
    await page.wait_for_selector(".confirm")
    await watch.shot("queue-delete")
    await page.click("button:text-is('Delete the message')")
    await page.wait_for_selector(".flash-ok")
    assert await relay.app.reports.message(deferred_id) is None
    watch.check("queue-deleted")

    await page.goto(base + "/audit")
    actions = await page.locator("tbody td:nth-child(3)").all_inner_texts()
    assert actions[:3] == ["delete", "release", "hold"], actions
    await watch.shot("audit")

    await page.click(".sidebar a:text-is('Suppressions')")
    await page.wait_for_url(base + "/suppressions")
    # The hard bounce (550 5.1.1) put its recipient on the list already.
    assert "nobody@example.org" in await page.locator("tbody").inner_text()
    for address, reason, expires in (
        ("gone@example.org", "<script>alert('reason')</script> hard bounce", ""),
        ("Quiet@Example.org", "asked to be removed", "2099-06-30T12:00"),
    ):
        await page.select_option("#sup-site", "shop")
        await page.fill("#sup-address", address)
        await page.fill("#sup-reason", reason)
        if expires:
            await page.fill("#sup-expires", expires)
        await page.click("button:text-is('Add')")
        await page.wait_for_selector(".flash-ok")
    rows = await page.locator("tbody tr").all_inner_texts()
    addresses = [row.split()[1] for row in rows]
    assert addresses == ["quiet@example.org", "gone@example.org", nobody], rows
    assert "<script>alert('reason')</script> hard bounce" in rows[1]  # text, not markup
    await watch.shot("suppressions")
    await page.fill("#sup-address", "not an address")
    await page.fill("#sup-reason", "x")
    await page.click("button:text-is('Add')")
    await page.wait_for_selector(".flash-error")
    assert "an email address" in await page.locator(".flash-error").inner_text()
    await page.fill("input[name=q]", "QUIET")
    await page.click("button:text-is('Filter')")
    await page.wait_for_url(base + "/suppressions?q=QUIET&site=")
    assert await page.locator("tbody tr").count() == 1
    await page.click("button:text-is('Remove')")
    await page.wait_for_selector(".flash-ok")
    assert await page.locator("tbody tr").count() == 0
    watch.check("suppressions-removed")

    await page.click("text=Log out")
    await page.wait_for_url(base + "/login")
    await page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    watch.check("logout")


async def wait_for_status(relay: RunningRelay, message_id: str, status: str) -> None:
    async with asyncio.timeout(10):
        while True:
            full = await relay.app.reports.message(message_id)
            if full is not None and full.detail.status.value == status:
                return
            await asyncio.sleep(0.05)


async def wait_until_final(relay: RunningRelay, message_id: str) -> Any:
    async with asyncio.timeout(10):
        while True:
            full = await relay.app.reports.message(message_id)
            if full is not None and full.detail.status.value in {"sent", "failed", "partial"}:
                return full
            await asyncio.sleep(0.05)


async def test_a_new_domain_shows_its_records_and_its_dns_checks(
    tmp_path: Path,
    start_relay: Callable[..., Awaitable[RunningRelay]],
    dns_zone: Zone,
    tab: Tab,
) -> None:
    dns = {"nameservers": [dns_zone.nameserver], "timeout_seconds": 2, "verify_interval_seconds": 0}
    config = base_config(tmp_path, [], dns=dns)
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    relay = await start_relay(config)
    watch, page = Watch(tab), tab.page
    base = f"http://127.0.0.1:{relay.app.admin_port}"
    await page.goto(base + "/login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")
    await page.goto(base + "/domains")
    await watch.shot("domains-empty")
    await page.fill("#domain-name", "shop.example")
    await page.click("button:text-is('Add domain')")
    await page.wait_for_url(base + "/domains/shop.example")
    records = page.locator(".records li")
    assert await records.count() >= 2  # at least DKIM and SPF
    assert "v=DKIM1" in await page.locator(".records").inner_text()
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = records.first.locator("button.copy")
    await copy.click()
    await page.wait_for_selector(".records li:first-child button.copy:text-is('Copied')")
    copied = await page.evaluate("navigator.clipboard.readText()")
    assert copied == await records.first.locator("code.record").inner_text()
    await page.click("button:text-is('Verify now')")
    await page.wait_for_selector("text=Checked just now.")
    assert await page.locator(".badge.check-fail").count() >= 1  # nothing is published
    await watch.shot("domain")
    await page.goto(base + "/domains")
    assert "not verified" in await page.locator("tbody").inner_text()
    await watch.shot("domains")


async def delivered_event(relay: RunningRelay) -> bool:
    async with relay.app.engine.connect() as connection:
        found = await connection.scalar(
            sa.select(sa.func.count())
            .select_from(webhook_outbox)
            .where(webhook_outbox.c.event_type == "message.delivered")
        )
    return bool(found)


async def test_a_new_admin_sets_up_an_upstream_and_a_site_and_follows_a_message(
    tmp_path: Path,
    closed_port: int,
    start_relay: Callable[..., Awaitable[RunningRelay]],
    make_sink: Callable[..., Awaitable[Sink]],
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
    tab: Tab,
) -> None:
    """The issue's first flow, all of it in the browser but the mail itself."""
    sink = await make_sink()
    config = base_config(tmp_path, [], sites=[])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    # An app's endpoint that is down: the message's page shows its events waiting.
    config["events"] = {"allow_private_targets": True}
    down = f"http://127.0.0.1:{closed_port}/hooks"
    config["webhooks"] = [{"name": "app", "url": down, "secret": WEBHOOK_SECRET}]
    relay = await start_relay(config)
    watch, page = Watch(tab), tab.page
    base = f"http://127.0.0.1:{relay.app.admin_port}"
    await page.goto(base + "/")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/")
    watch.check("empty overview")

    await page.goto(base + "/upstreams/new")
    await page.fill("#u-name", "sink")
    await page.fill("#u-host", "127.0.0.1")
    await page.fill("#u-port", str(sink.port))
    await page.select_option("#u-tls", "none")
    await page.fill("#u-priority", "1")
    await watch.shot("upstream-new")
    await page.click("button:text-is('Add upstream')")
    await page.wait_for_url(base + "/upstreams")
    await page.click('.upstream-card:has(h2:text-is("sink")) button:text-is("Test connection")')
    await page.wait_for_selector(".probe-ok")
    steps = await page.locator(".probe .step-name").all_inner_texts()
    assert [s.lower() for s in steps][:2] == ["connect", "ehlo"], steps

    await page.goto(base + "/sites/new")
    await page.fill("#s-id", "landing")
    await page.fill("#s-name", "Landing page")
    await page.fill("#s-from-email", "sales@example.com")
    await page.fill("#s-from-name", "Sales Team")
    await page.select_option("#s-reply-to", "original")
    await page.fill("#s-upstreams", "sink")
    await page.fill("#s-senders", "*@landing.example.com")
    await watch.shot("site-new")
    await page.click("button:text-is('Add site')")
    await page.wait_for_url(base + "/sites/landing")
    await page.click("button:text-is('New credential')")
    username = await page.locator("#new-username").inner_text()
    password = await page.locator("#new-password").inner_text()
    await watch.shot("site-credential")

    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=True, tls_context=client_tls, timeout=10
    ) as client:
        await client.login(username, password)
        _, reply = await client.sendmail(
            "form@landing.example.com",
            ["lead@example.org"],
            b"From: Visitor <form@landing.example.com>\r\nTo: lead@example.org\r\n"
            b"Subject: A new lead\r\n\r\nPlease call me back.\r\n",
        )
    await sink.handler.wait_for(1)
    await poll(lambda: delivered_event(relay), bool, "its delivery's events")  # after the sink
    async with relay.app.engine.begin() as connection:  # as a provider's report is written
        await connection.execute(
            provider_events.insert().values(
                message_id=reply.split()[-1],
                upstream="sink",
                recipient="lead@example.org",
                kind="complained",
                raw_type="Complaint/abuse",
                occurred_at=time.time(),
                received_at=time.time(),
                detail="feedback report from the recipient's mailbox provider",
            )
        )

    await page.goto(base + "/messages?site=landing")
    await page.click("a:text-is('A new lead')")
    await page.wait_for_selector(".timeline")
    assert "sink" in await page.locator(".timeline").first.inner_text()
    diff = await page.locator("table.diff").inner_text()
    assert "Sales Team <sales@example.com>" in diff and "Visitor <form@landing.example.com>" in diff
    # No HTML part: the text part is open on the page.
    assert "Please call me back." in await page.locator(".body-text").inner_text()
    provider = "section:has(h2:text-is('Reported by the provider'))"
    reported = await page.locator(provider).inner_text()
    assert "complained" in reported and "lead@example.org" in reported
    notified = await page.locator("section:has(h2:text-is('Webhook events'))").inner_text()
    assert "message.accepted" in notified and "message.delivered" in notified
    await watch.shot("flow-message")


async def test_a_long_list_of_templates_pages_by_fifty(
    tmp_path: Path, start_relay: Callable[..., Awaitable[RunningRelay]], tab: Tab
) -> None:
    config = base_config(tmp_path, [])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    relay = await start_relay(config)
    base = f"http://127.0.0.1:{relay.app.admin_port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for n in range(60):
            body = {"name": f"reply-{n:02d}", "subject": "Re: {{ topic }}", "text": "Hi"}
            async with session.post(f"{base}/api/v1/templates", json=body, headers=auth) as r:
                assert r.status == 201
    watch, page = Watch(tab), tab.page
    await page.goto(base + "/login?next=/templates")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/templates")
    assert await page.locator("tbody tr").count() == 50
    assert "1–50 of 60" in await page.locator(".pager").inner_text()  # noqa: RUF001
    await watch.shot("templates-page-1")
    await page.click("a[rel=next]")
    await page.wait_for_url(base + "/templates?page=2")
    assert await page.locator("tbody tr").count() == 10
    assert await page.locator("a[rel=next]").count() == 0
    await watch.shot("templates-page-2")
    await page.click("a[rel=prev]")
    await page.wait_for_url(base + "/templates?page=1")
    assert "reply-00" in await page.locator("tbody tr").first.inner_text()


async def test_webhook_pages_make_an_endpoint_send_a_test_and_show_the_log(
    tmp_path: Path,
    start_relay: Callable[..., Awaitable[RunningRelay]],
    closed_port: int,
    tab: Tab,
) -> None:
    async with receiving() as receiver:
        config = base_config(tmp_path, [])
        config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
        config["events"] = {"allow_private_targets": True}  # the receiver is on loopback
        down = f"http://127.0.0.1:{closed_port}/hooks/relay/events/with/a/long/path?tenant="
        config["webhooks"] = [
            {"name": "billing", "url": down + "x" * 90, "secret": WEBHOOK_SECRET, "sites": ["shop"]}
        ]
        relay = await start_relay(config)
        watch, page = Watch(tab), tab.page
        base = f"http://127.0.0.1:{relay.app.admin_port}"
        await page.goto(base + "/login?next=/webhooks")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_url(base + "/webhooks")
        # The file's endpoint fails: its try's error shows in its log.
        await page.click("tr:has(a:text-is('billing')) button:text-is('Send test')")
        await page.wait_for_selector(".flash-ok")

        await page.click("text=New webhook")
        await page.fill("#w-name", "crm")
        await page.fill("#w-url", receiver.url + "?source=relay&" + "k=v&" * 30)
        await page.check("input[value='message.delivered']")
        await page.check("input[value='message.bounced']")
        await page.check("input[name=sites][value=shop]")
        await watch.shot("webhook-new")
        await page.click("button:text-is('Add webhook')")
        await page.wait_for_selector(".secret-once")
        secret = await page.locator("#new-secret").inner_text()
        assert secret.startswith("whsec_")
        assert await page.locator("button.copy").is_visible()  # the script showed it
        await watch.shot("webhook-created")
        await page.click("text=Go to crm")
        await page.wait_for_url(base + "/webhooks/crm")
        assert secret not in await page.content()

        await page.click("button:text-is('Send test')")
        await page.wait_for_selector(".flash-ok")
        flash = await page.locator(".flash-ok").inner_text()
        (got,) = await receiver.wait_accepted(1)
        assert got.headers["webhook-id"] in flash
        spec_verify(secret, got.headers, got.body, time.time())
        await page.fill("#replay-since", "2001-01-01T00:00")
        await page.click("button:text-is('Replay')")
        await page.wait_for_selector(".flash-ok:has-text('1 event given to crm')")
        await receiver.wait_accepted(2)
        rows = page.locator("table.deliveries tbody tr")
        async with asyncio.timeout(10):
            while await rows.count() < 2:
                await asyncio.sleep(0.1)
                await page.reload()
        await rows.first.locator("summary").click()
        assert "thanks" in await rows.first.locator("details pre").inner_text()
        await watch.shot("webhook")

        await page.click("button:text-is('Disable')")
        await page.wait_for_selector(".flash-ok")
        await page.click(".sidebar a:text-is('Webhooks')")
        await page.wait_for_url(base + "/webhooks")
        assert "disabled by ops" in await page.locator("tr:has(a:text-is('crm'))").inner_text()
        async with asyncio.timeout(10):  # billing's try was refused: it shows as failing
            while await page.locator(".state-failing").count() == 0:
                await asyncio.sleep(0.1)
                await page.reload()
        await watch.shot("webhooks")
        await page.goto(base + "/")  # the overview lists the two not delivering
        troubled = page.locator("section:has(h2:text-is('Webhooks not delivering'))")
        assert {"crm", "billing"} <= set(await troubled.locator("tbody a").all_inner_texts())
        await watch.shot("overview-webhooks")
        await page.goto(base + "/webhooks")
        await page.click("a:text-is('billing')")
        await page.wait_for_url(base + "/webhooks/billing")
        assert "Read-only here" in await page.content()
        assert await page.locator(".deliveries .error-text").count() >= 1
        await watch.shot("webhook-file")

        await page.goto(base + "/webhooks/crm")
        await page.click("button:text-is('Enable')")
        await page.wait_for_selector(".flash-ok")
        await page.click("button:text-is('Rotate secret')")
        rotated = await page.locator("#new-secret").inner_text()
        assert rotated.startswith("whsec_") and rotated != secret
        watch.check("webhook-rotated")
        await page.click("a:text-is('Delete…')")
        await page.wait_for_selector(".confirm")
        await watch.shot("webhook-delete")
        await page.click("button:text-is('Delete the webhook')")
        await page.wait_for_url(base + "/webhooks")
        assert "Webhook crm deleted" in await page.locator(".flash-ok").inner_text()
        assert await page.locator("tbody tr").count() == 1
        watch.check("webhook-deleted")
