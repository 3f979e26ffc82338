"""The dashboard in a real browser (Debian's chromium through Playwright) over a real relay.

An admin logs in with a token, opens every page that is built, tests an
upstream and retries nothing by accident; every page loads with no console
error (a CSP violation is one), no failed request and no script dialog, even
with a message whose subject and From name are markup. Screenshots go to
/tmp/dashboard-*.png for a person to look at.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.browser import Tab, browser, tab
from tests.conftest import SITE_PASSWORD, RunningRelay, Sink, base_config, smtp_upstream

__all__ = ["browser", "tab"]  # fixtures
TOKEN = "dashboard-browser-token-0123456789"
SCREENSHOTS = Path(tempfile.gettempdir())
CertFiles = tuple[Path, Path, Path]
pytestmark = pytest.mark.slow

HOSTILE = (
    b'From: "<img src=x onerror=alert(1)>" <news@shop.example.com>\r\n'
    b"To: anna@example.org\r\n"
    b"Subject: <script>alert('subject')</script> Spring offer\r\n\r\n"
    b"<script>alert('body')</script>\r\n"
)


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


class Watch:
    """What went wrong on the page: failed requests, HTTP errors, console errors, dialogs."""

    def __init__(self, tab: Tab) -> None:
        self.tab = tab
        self.problems: list[str] = []
        page = tab.page
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))
        page.on(
            "response",
            lambda r: self.problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None,
        )
        page.on("dialog", lambda d: self.problems.append(f"dialog: {d.message}"))

    def check(self, where: str) -> None:
        console = [line for line in self.tab.console if line.startswith(("error", "warning"))]
        assert not console, (where, console)
        assert not self.tab.take_errors(), where
        assert not self.problems, (where, self.problems)

    async def shot(self, name: str) -> None:
        self.check(name)
        path = SCREENSHOTS / f"dashboard-{name}.png"
        await self.tab.page.screenshot(path=str(path), full_page=True)


async def test_an_admin_logs_in_and_every_built_page_works(
    tmp_path: Path,
    start_relay: Callable[..., Awaitable[RunningRelay]],
    make_sink: Callable[..., Awaitable[Sink]],
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
    closed_port: int,
    tab: Tab,
) -> None:
    sink = await make_sink(replies={"rcpt": {"nobody@example.org": "550 5.1.1 no such user"}})
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
    hostile_id = await send(relay, client_tls, "anna@example.org", HOSTILE)
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
    await watch.shot("message")

    await page.goto(f"{base}/messages/{failed_id}")
    assert "550" in await page.locator(".timeline").inner_text()
    await watch.shot("message-failed")

    await page.goto(base + "/messages?status=failed")
    assert await page.locator("tbody tr").count() == 1
    await page.goto(base + "/messages?page_size=25&q=Order%20%23")
    assert await page.locator("tbody tr").count() == 6

    await page.goto(base + "/upstreams")
    await watch.shot("upstreams")
    await page.click('.upstream-card:has(h2:text-is("primary")) button')
    await page.wait_for_selector(".probe")
    assert "it works" in await page.locator(".probe h2").inner_text()
    await watch.shot("upstream-test")
    await page.click('.upstream-card:has(h2:text-is("backup")) button')
    await page.wait_for_selector(".probe-failed")
    watch.check("upstream-test-failed")
    await page.screenshot(path=str(SCREENSHOTS / "dashboard-upstream-test-failed.png"))

    await page.click("text=Log out")
    await page.wait_for_url(base + "/login")
    await page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    watch.check("logout")


async def wait_until_final(relay: RunningRelay, message_id: str) -> Any:
    async with asyncio.timeout(10):
        while True:
            full = await relay.app.reports.message(message_id)
            if full is not None and full.detail.status.value in {"sent", "failed", "partial"}:
                return full
            await asyncio.sleep(0.05)
