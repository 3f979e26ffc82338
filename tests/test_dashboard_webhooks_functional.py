"""The dashboard's webhook pages over a real relay and a real receiver on loopback: the list,
a new endpoint (its secret shown once, never again), a test event that arrives signed with
that secret and its try in the delivery log, disable and enable, replay, edit, a new secret,
delete after a confirmation page, and the file's endpoint read-only but for its state.

An aiohttp client with a cookie jar plays the browser (tests/test_dashboard_functional.py);
what the pages did is checked through the admin API, over the same controller.
"""

from __future__ import annotations

import asyncio
import base64
import html as markup
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import RunningRelay, base_config, smtp_upstream
from tests.test_dashboard_functional import OUR_SCRIPT, TOKEN, Browser
from tests.test_webhook_signing import spec_verify
from tests.webhook_receiver import Receiver, receiving

API = "/api/v1/webhooks"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FLASH = re.compile(r'<div class="flash flash-(\w+)" role="status">(.*?)</div>', re.S)
SECRET_SHOWN = re.compile(r'<code id="new-secret">(whsec_[A-Za-z0-9+/=]+)</code>')
FILE_SECRET = "whsec_" + base64.b64encode(b"relay-webhook-file-secret-32byte").decode()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as got:
        yield got


@pytest.fixture
async def relay(
    tmp_path: Path, start_relay: Callable[..., Awaitable[RunningRelay]], receiver: Receiver
) -> RunningRelay:
    config = base_config(tmp_path, [smtp_upstream("primary", 2525)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["events"] = {"allow_private_targets": True}  # the receiver is on loopback
    filed = {"name": "filed", "url": receiver.url, "secret": FILE_SECRET}
    config["webhooks"] = [filed]
    return await start_relay(config)


@pytest.fixture
async def browser(relay: RunningRelay) -> AsyncIterator[Browser]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        yield Browser(session, f"http://127.0.0.1:{relay.app.admin_port}")


async def api(browser: Browser, method: str, path: str, **options: Any) -> tuple[int, Any]:
    async with browser.session.request(
        method, browser.base + API + path, headers=AUTH, **options
    ) as reply:
        body = await reply.json() if reply.content_type == "application/json" else None
        return reply.status, body


async def flash_after(browser: Browser, location: str) -> tuple[str, str]:
    _, page, _ = await browser.get(location)
    found = FLASH.search(page)
    assert found, page
    return found.group(1), markup.unescape(found.group(2))


async def create(browser: Browser, csrf: str, **fields: Any) -> tuple[int, str]:
    form = aiohttp.FormData({"_csrf": csrf})
    for key, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            form.add_field(key, one)
    async with browser.session.post(
        browser.base + "/webhooks", data=form, allow_redirects=False
    ) as reply:
        return reply.status, await reply.text()


async def test_the_list_shows_each_endpoint_its_filters_state_and_origin(
    browser: Browser, receiver: Receiver
) -> None:
    await browser.log_in()
    status, page, headers = await browser.get("/webhooks")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert 'href="/webhooks/filed"' in page and receiver.url in page
    row = page[page.index('href="/webhooks/filed"') :]
    row = row[: row.index("</tr>")]
    assert 'class="badge file"' in row and row.count(">all</span>") == 2  # events, sites
    assert "state-enabled" in row and "Send test" in row and "Disable" in row
    nav = page[page.index('aria-label="Sections"') :]
    assert nav.index('href="/suppressions"') < nav.index('href="/webhooks"')
    assert 'aria-current="page"' in nav[nav.index('href="/webhooks"') - 80 :]


async def test_a_new_endpoint_shows_its_secret_once_and_a_test_arrives_signed_with_it(
    browser: Browser, receiver: Receiver
) -> None:
    await browser.log_in()
    status, page, _ = await browser.get("/webhooks/new")
    assert status == 200
    assert 'value="message.delivered"' in page and 'value="webhook.test"' not in page
    assert 'name="sites" value="shop"' in page  # the directory's sites
    csrf = await browser.csrf("/webhooks/new")
    fields = {"name": "crm", "url": receiver.url, "events": ["message.delivered"]}
    assert (await create(browser, "forged", **fields))[0] == 403
    assert (await api(browser, "GET", "/crm"))[0] == 404
    status, page = await create(
        browser,
        csrf,
        **fields | {"events": ["message.delivered", "message.bounced"]},
        sites=["shop"],
    )
    assert status == 200, page
    found = SECRET_SHOWN.search(page)
    assert found, page
    secret = found.group(1)
    assert 'data-copy="new-secret"' in page and "Verifying the signature" in page
    _, stored = await api(browser, "GET", "/crm")
    assert stored["events"] == ["message.bounced", "message.delivered"]
    assert stored["sites"] == ["shop"] and stored["managed_by"] == "api"
    assert stored["secret_set"] is True and "secret" not in stored
    # Never shown again: not on its page, not in the list, not on its edit form.
    for path in ("/webhooks/crm", "/webhooks", "/webhooks/crm/edit"):
        assert secret not in (await browser.get(path))[1], path

    # Send test: a flash with the event id, a request signed with the shown secret.
    status, _, headers = await browser.post("/webhooks/crm/test", {"_csrf": csrf})
    assert status == 303 and headers["Location"] == "/webhooks/crm"
    kind, text = await flash_after(browser, "/webhooks/crm")
    assert kind == "ok"
    event_id = re.search(r"Test event (evt_\w+) queued for crm", text)
    assert event_id, text
    (got,) = await receiver.wait_accepted(1)
    assert got.headers["webhook-id"] == event_id.group(1)
    spec_verify(secret, got.headers, got.body, time.time())
    assert got.event["type"] == "webhook.test" and got.event["data"] == {"webhook": "crm"}

    # The delivery log shows the try: time, type, id, status, duration, the answer's head.
    page = await until_logged(browser, "crm", event_id.group(1))
    log = page[page.index("Delivery log") :]
    assert "webhook.test" in log and 'status-delivered">200<' in log
    assert re.search(r"\d+ ms|\d\.\d s", log)
    assert '<details class="answer"><summary>first 512 characters</summary>' in log
    assert "thanks thanks" in log


async def until_logged(browser: Browser, name: str, event_id: str) -> str:
    for _ in range(200):
        _, page, _ = await browser.get(f"/webhooks/{name}")
        if event_id in page[page.index("Delivery log") :]:
            return page
        await asyncio.sleep(0.05)  # the try's record follows the receiver's answer
    raise AssertionError(f"{event_id} never reached the delivery log")


async def test_the_forms_problems_are_shown_beside_it_escaped(
    browser: Browser, receiver: Receiver
) -> None:
    await browser.log_in()
    csrf = await browser.csrf("/webhooks/new")
    status, page = await create(
        browser, csrf, name="<b>x</b>", url="ftp://example.org/", events=["message.nope"]
    )
    assert status == 422
    assert "webhook.name: use letters, digits" in page
    assert "webhook.url: must be an http:// or https:// URL" in page
    assert "webhook.events[0]: not an event type: &#39;message.nope&#39;" in page
    assert "<b>x</b>" not in page and 'value="&lt;b&gt;x&lt;/b&gt;"' in page
    assert 'value="ftp://example.org/"' in page  # what was typed, shown again
    status, page = await create(browser, csrf, name="filed", url=receiver.url)
    assert status == 422 and "is managed by" in page
    status, page = await create(browser, csrf, name="meta", url="http://169.254.169.254/x")
    assert status == 200  # allow_private_targets: true here, so the address passes
    assert (await api(browser, "GET", ""))[1]["total"] == 2


async def test_disable_enable_and_a_test_while_disabled(
    browser: Browser, receiver: Receiver
) -> None:
    await browser.log_in()
    assert "Webhooks not delivering" not in (await browser.get("/"))[1]
    csrf = await browser.csrf("/webhooks")
    form = {"_csrf": csrf, "back": "/webhooks"}
    assert (await browser.post("/webhooks/filed/disable", {"back": "/webhooks"}))[0] == 403
    status, _, headers = await browser.post("/webhooks/filed/disable", form)
    assert status == 303 and headers["Location"] == "/webhooks"
    kind, text = await flash_after(browser, "/webhooks")
    assert kind == "ok" and "Webhook filed disabled" in text
    _, stored = await api(browser, "GET", "/filed")
    assert stored["enabled"] is False and stored["disabled_reason"] == "disabled by ops"
    _, page, _ = await browser.get("/webhooks")
    assert "state-disabled" in page and "disabled by ops" in page
    assert "Send test" not in page and "/webhooks/filed/enable" in page
    _, overview, _ = await browser.get("/")  # the overview says so
    assert "Webhooks not delivering" in overview and 'href="/webhooks/filed"' in overview
    await browser.post("/webhooks/filed/test", form)
    kind, text = await flash_after(browser, "/webhooks")
    assert kind == "error" and text.startswith("No test sent:") and "is disabled" in text
    await browser.post("/webhooks/filed/enable", {"_csrf": csrf})
    kind, text = await flash_after(browser, "/webhooks/filed")
    assert kind == "ok" and "Webhook filed enabled" in text
    assert (await api(browser, "GET", "/filed"))[1]["enabled"] is True
    await browser.post("/webhooks/filed/test", form)
    await receiver.wait_accepted(1)
    # The audit log has them.
    _, page, _ = await browser.get("/audit")
    assert (
        page.count('<span class="muted">webhook</span> filed') == 3
    )  # disable, enable, the test sent


async def test_replay_sends_the_same_event_again(browser: Browser, receiver: Receiver) -> None:
    await browser.log_in()
    csrf = await browser.csrf("/webhooks/filed")
    assert 'name="since" type="datetime-local"' in (await browser.get("/webhooks/filed"))[1]
    await browser.post("/webhooks/filed/test", {"_csrf": csrf})
    (first,) = await receiver.wait_accepted(1)
    status, _, headers = await browser.post(
        "/webhooks/filed/replay", {"_csrf": csrf, "since": "2001-01-01T00:00"}
    )
    assert status == 303 and headers["Location"] == "/webhooks/filed"
    kind, text = await flash_after(browser, "/webhooks/filed")
    assert kind == "ok" and text.startswith("1 event given to filed since 2001-01-01 00:00:00")
    again = (await receiver.wait_accepted(2))[1]
    assert again.headers["webhook-id"] == first.headers["webhook-id"] and again.body == first.body
    await browser.post("/webhooks/filed/replay", {"_csrf": csrf, "since": "yesterday"})
    kind, text = await flash_after(browser, "/webhooks/filed")
    assert kind == "error" and text.startswith("Nothing replayed: since:")


async def test_edit_and_rotate_an_api_endpoint_and_not_the_files(
    browser: Browser, receiver: Receiver
) -> None:
    await browser.log_in()
    csrf = await browser.csrf("/webhooks/new")
    await create(browser, csrf, name="crm", url=receiver.url, max_in_flight="3")
    _, page, _ = await browser.get("/webhooks/crm/edit")
    assert 'value="3"' in page and "Rotate secret" not in page
    form = aiohttp.FormData({"_csrf": csrf, "url": receiver.url + "?v=2", "max_in_flight": ""})
    form.add_field("events", "message.failed")
    async with browser.session.post(
        browser.base + "/webhooks/crm/edit", data=form, allow_redirects=False
    ) as reply:
        assert reply.status == 303 and reply.headers["Location"] == "/webhooks/crm"
    kind, _ = await flash_after(browser, "/webhooks/crm")
    _, stored = await api(browser, "GET", "/crm")
    assert kind == "ok" and stored["url"] == receiver.url + "?v=2"
    assert stored["events"] == ["message.failed"] and stored["max_in_flight"] is None
    status, page, _ = await browser.post(
        "/webhooks/crm/edit", {"_csrf": csrf, "url": "not a url", "max_in_flight": "many"}
    )
    assert status == 422 and "webhook.url: " in page and "webhook.max_in_flight: " in page

    # A new secret, shown once, signs from now on.
    status, page, _ = await browser.post("/webhooks/crm/rotate-secret", {"_csrf": csrf})
    found = SECRET_SHOWN.search(page)
    assert status == 200 and found, page
    assert found.group(1) not in (await browser.get("/webhooks/crm"))[1]
    await browser.post("/webhooks/crm/test", {"_csrf": csrf})
    (got,) = await receiver.wait_accepted(1)
    spec_verify(found.group(1), got.headers, got.body, time.time())

    # The file's endpoint: read-only, with the reason; its state still changes here.
    _, page, _ = await browser.get("/webhooks/filed")
    assert "Read-only here: declared in" in page and "/webhooks/filed/edit" not in page
    assert "Rotate secret" not in page and "Delete" not in page and "Disable" in page
    _, page, _ = await browser.get("/webhooks/filed/edit")
    assert "is declared in" in page and "<form" not in page.split("<main", 1)[1]
    status, page, _ = await browser.post("/webhooks/filed/edit", {"_csrf": csrf, "url": "x"})
    assert status == 422 and "is managed by" in page
    await browser.post("/webhooks/filed/rotate-secret", {"_csrf": csrf})
    kind, text = await flash_after(browser, "/webhooks/filed")
    assert kind == "error" and "Secret not changed" in text


async def test_delete_after_a_confirmation_page(browser: Browser, receiver: Receiver) -> None:
    await browser.log_in()
    csrf = await browser.csrf("/webhooks/new")
    await create(browser, csrf, name="crm", url=receiver.url)
    status, page, _ = await browser.get("/webhooks/crm/delete")
    assert status == 200 and "Delete the webhook crm?" in page and receiver.url in page
    assert (await api(browser, "GET", "/crm"))[0] == 200  # a GET changes nothing
    assert (await browser.post("/webhooks/crm/delete", {}))[0] == 403
    status, _, headers = await browser.post("/webhooks/crm/delete", {"_csrf": csrf})
    assert status == 303 and headers["Location"] == "/webhooks"
    kind, text = await flash_after(browser, "/webhooks")
    assert kind == "ok" and "Webhook crm deleted" in text
    assert (await api(browser, "GET", "/crm"))[0] == 404
    assert (await browser.get("/webhooks/crm"))[0] == 404
    # The file's: the confirmation page says where it lives; a POST is refused with it.
    _, page, _ = await browser.get("/webhooks/filed/delete")
    assert "remove it there and reload" in page and "Delete the webhook</button>" not in page
    await browser.post("/webhooks/filed/delete", {"_csrf": csrf})
    kind, text = await flash_after(browser, "/webhooks/filed")
    assert kind == "error" and "Not deleted" in text and "is managed by" in text


async def test_the_delivery_log_pages_with_the_controllers_cursor(
    browser: Browser, receiver: Receiver
) -> None:
    await browser.log_in()
    sent = []
    for _ in range(53):
        status, answer = await api(browser, "POST", "/filed/test")
        assert status == 202
        sent.append(answer["event_id"])
    await receiver.wait_accepted(53)
    for _ in range(200):
        _, body = await api(browser, "GET", "/filed/deliveries?page_size=200")
        if len(body["items"]) == 53:
            break
        await asyncio.sleep(0.05)
    newest_first = [d["event_id"] for d in body["items"]]
    _, page, _ = await browser.get("/webhooks/filed")
    assert page.count('<td class="nowrap" title=') == 50
    assert newest_first[0] in page and newest_first[49] in page and newest_first[50] not in page
    older = re.search(r'href="(/webhooks/filed\?cursor=[\w-]+)" rel="next"', page)
    assert older, page
    _, page, _ = await browser.get(older.group(1))
    assert page.count('<td class="nowrap" title=') == 3
    assert all(i in page for i in newest_first[50:]) and newest_first[0] not in page
    assert 'href="/webhooks/filed">← Newest' in page and 'rel="next"' not in page
    status, page, _ = await browser.get("/webhooks/filed?cursor=forged")
    assert status == 400 and "cursor: not a cursor" in page


async def test_the_pages_carry_no_inline_script_and_render_hostile_urls_inert(
    browser: Browser, receiver: Receiver
) -> None:
    await browser.log_in()
    hostile = receiver.url + '?q="><script>alert(1)</script><img/src=x/onerror=alert(2)>'
    status, _ = await api(browser, "POST", "", json={"name": "odd", "url": hostile})
    assert status == 201
    for path in (
        "/webhooks",
        "/webhooks/new",
        "/webhooks/odd",
        "/webhooks/odd/edit",
        "/webhooks/odd/delete",
        "/webhooks/filed",
    ):
        status, page, headers = await browser.get(path)
        assert status == 200 and headers["Cache-Control"] == "no-store", path
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "<script" not in page.replace(OUR_SCRIPT, "", 1), path
        assert " style=" not in page and "<img" not in page, path
        if "odd" in path or path == "/webhooks":
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page, path
