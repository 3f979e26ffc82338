"""examples/contact-form.html in a real browser, against a relay set up like config.example.yaml.

Chromium opens the page from a loopback HTTP server (as ``python3 -m
http.server`` in examples/ does), on an origin the form allows; the page's
scripts fetch form tokens across origins (CORS preflights included) and post
to the relay's public listener; the relay writes each inquiry into its outbox
(``kind: file``). A visitor types like a person and takes the form's
``min_fill_seconds`` (3) before sending: a quicker post would be taken for a
bot's and dropped. Screenshots go to /tmp/contact-form-*.png for a person to
look at.
"""

from __future__ import annotations

import asyncio
import email.policy
import tempfile
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from aiohttp import web

from relay.tables import messages
from tests.browser import Tab, browser, tab
from tests.conftest import RunningRelay

__all__ = ["browser", "tab"]  # fixtures
REPO = Path(__file__).parent.parent
EXAMPLES = REPO / "examples"
META = '<meta name="relay" content="{}">'  # the page's one setting: where the relay is
EXAMPLE_RELAY = "http://127.0.0.1:8080"  # what the page ships with (config.example.yaml's)
FILL_SECONDS = 3.3  # the form's min_fill_seconds (3), and a little more
SCREENSHOTS = Path(tempfile.gettempdir())  # /tmp/contact-form-*.png: for a person to look at
pytestmark = pytest.mark.slow


class Examples:
    """examples/ over HTTP on loopback, contact-form.html pointed at the relay under test."""

    def __init__(self) -> None:
        self.relay_url = EXAMPLE_RELAY
        self.origin = ""

    async def page(self, request: web.Request) -> web.Response:
        text = (EXAMPLES / "contact-form.html").read_text()
        shipped = META.format(EXAMPLE_RELAY)
        assert text.count(shipped) == 1, "the page's relay setting moved: update this test"
        text = text.replace(shipped, META.format(self.relay_url))
        return web.Response(text=text, content_type="text/html")


@pytest.fixture
async def examples() -> AsyncIterator[Examples]:
    served = Examples()
    app = web.Application()
    app.router.add_get("/contact-form.html", served.page)
    app.router.add_static("/", EXAMPLES)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    served.origin = f"http://{host}:{port}"
    yield served
    await runner.cleanup()


def example_config(tmp_path: Path, origin: str) -> dict[str, Any]:
    """config.example.yaml under tmp_path, on free ports, its form allowing ``origin``."""
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    data = tmp_path / "data"
    config["server"].update(data_dir=str(data), secret_key_file=str(data / "secret.key"))
    config["store"]["url"] = f"sqlite+aiosqlite:///{data / 'relay.db'}"
    config["upstreams"][0]["path"] = str(data / "outbox")
    for section in (config["listeners"][0], config["admin"], config["http"]):
        section["port"] = 0  # the test may not own the example's ports
    form = config["sites"][0]["form"]
    assert form["min_fill_seconds"] == 3
    form.update(allowed_origins=[origin], redirect=f"{origin}/thanks.html")
    return config


@pytest.fixture
async def relay(
    tmp_path: Path, examples: Examples, start_relay: Any
) -> AsyncIterator[RunningRelay]:
    running = await start_relay(example_config(tmp_path, examples.origin))
    examples.relay_url = f"http://127.0.0.1:{running.app.http_port}"
    yield running


async def open_form(tab: Tab, examples: Examples) -> float:
    """Open the page; the moment its form tokens are in hand (time.monotonic())."""
    await tab.page.goto(f"{examples.origin}/contact-form.html")
    await tab.page.wait_for_function(
        "document.querySelector('#plain [name=formToken]').value !== ''", timeout=10_000
    )
    return time.monotonic()


async def fill(tab: Tab, form: str, fields: dict[str, str]) -> None:
    """Click each field and type into it, a key at a time."""
    for name, value in fields.items():
        field = tab.page.locator(f"#{form} [name='{name}']")
        await field.click()
        await field.press_sequentially(value, delay=15)


async def take_the_time(since: float) -> None:
    """A person takes a few seconds to fill a form; the relay refuses a token used sooner."""
    await asyncio.sleep(max(0.0, since + FILL_SECONDS - time.monotonic()))


def eml_files(folder: Path) -> list[Path]:
    """The outbox's messages, oldest first."""
    found = folder.glob("*.eml") if folder.exists() else []
    return sorted(found, key=lambda path: path.stat().st_mtime_ns)


async def outbox(folder: Path, count: int) -> list[EmailMessage]:
    """The messages in the outbox ``folder``, once it holds ``count`` (waits at most 10 s)."""
    deadline = time.monotonic() + 10
    while len(found := await asyncio.to_thread(eml_files, folder)) < count:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return [parsed(await asyncio.to_thread(path.read_bytes)) for path in found]


def parsed(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def stored(relay: RunningRelay) -> int:
    async with relay.app.engine.connect() as c:
        return int((await c.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one())


def assert_inquiry(message: EmailMessage, visitor: str, *lines: str) -> None:
    assert (message["From"], message["To"]) == (
        "Sales Team <sales@example.com>",
        "sales@example.com",
    )
    assert message["Reply-To"] == visitor
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    for line in lines:
        assert line in text, (line, text)


async def test_a_visitor_sends_the_plain_form_and_lands_on_the_thank_you_page(
    tab: Tab, examples: Examples, relay: RunningRelay, tmp_path: Path
) -> None:
    ready = await open_form(tab, examples)
    action = await tab.page.get_attribute("#plain", "action")
    assert action == f"{examples.relay_url}/api/send-inquiry"
    await fill(
        tab,
        "plain",
        {
            "formData[name]": "Ada Lovelace",
            "formData[email]": "ada@example.net",
            "formData[message]": "Do you ship to Lyon?",
        },
    )
    await tab.page.screenshot(path=SCREENSHOTS / "contact-form-filled.png", full_page=True)
    await take_the_time(ready)
    async with tab.page.expect_navigation(url=f"{examples.origin}/thanks.html", timeout=10_000):
        await tab.page.locator("#plain button[type=submit]").click()
    assert await tab.page.locator("h1").inner_text() == "Thank you"
    await tab.page.screenshot(path=SCREENSHOTS / "contact-form-thanks.png", full_page=True)

    [message] = await outbox(tmp_path / "data" / "outbox", 1)
    assert_inquiry(
        message, "ada@example.net", "name: Ada Lovelace", "message: Do you ship to Lyon?"
    )
    assert tab.take_errors() == []


async def test_a_visitor_sends_with_fetch_and_sees_the_answer_on_the_page(
    tab: Tab, examples: Examples, relay: RunningRelay, tmp_path: Path
) -> None:
    status = tab.page.locator("#status")
    ready = await open_form(tab, examples)
    fields = {"name": "Grace Hopper", "email": "grace@example.org", "message": "A quote, please."}
    await fill(tab, "scripted", fields)
    await tab.page.screenshot(path=SCREENSHOTS / "contact-form-filled-fetch.png", full_page=True)
    await take_the_time(ready)
    await tab.page.locator("#scripted button[type=submit]").click()
    await status.filter(has_text="Thank you: we received your message.").wait_for(timeout=10_000)
    assert await tab.page.input_value("#scripted [name=email]") == ""  # the form was reset
    await tab.page.screenshot(path=SCREENSHOTS / "contact-form-sent.png", full_page=True)
    [message] = await outbox(tmp_path / "data" / "outbox", 1)
    assert_inquiry(message, "grace@example.org", "name: Grace Hopper", "message: A quote, please.")

    # An address the browser takes (no dot needed) but the relay does not: the page says so.
    again = time.monotonic()  # the page fetched a new token after the message went
    await fill(tab, "scripted", {**fields, "email": "grace@example"})
    await take_the_time(again)
    await tab.page.locator("#scripted button[type=submit]").click()
    await status.filter(has_text="Please check").wait_for(timeout=10_000)
    assert await status.inner_text() == "Please check: Your email: not an email address"
    email_field = tab.page.locator("#scripted [name=email]")
    assert await email_field.get_attribute("aria-invalid") == "true"  # marked, and focused
    assert await email_field.evaluate("field => field === document.activeElement")
    await tab.page.screenshot(path=SCREENSHOTS / "contact-form-error.png", full_page=True)

    # One the browser refuses itself: nothing is posted, the browser points at the field.
    await email_field.fill("grace at example.org")
    await tab.page.locator("#scripted button[type=submit]").click()
    assert await email_field.evaluate("field => field.validationMessage") != ""
    assert await status.inner_text() == "Please check: Your email: not an email address"

    assert await stored(relay) == 1  # nothing queued after the first message
    assert len(await outbox(tmp_path / "data" / "outbox", 1)) == 1
    assert tab.take_errors() == []
