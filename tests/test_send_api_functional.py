"""The send API end to end: a relay in-process, real HTTP on loopback, the real sink.

Keys from the file and from the admin API; JSON and multipart bodies whose
attachments must arrive byte for byte; headers a request may not set;
Idempotency-Key under repeats and concurrency; a message's status; the site's
limits counting HTTP and SMTP together.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import os
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa

from relay.catalog_controller import StoreObjects, merged_directory
from relay.config import load_config
from relay.core.model import ApiKey
from relay.core.tokens import hash_token
from relay.tables import idempotency_keys, messages
from tests.conftest import (
    SITE_PASSWORD,
    RunningRelay,
    Sink,
    base_config,
    smtp_upstream,
    write_config,
)

KEY = "shop-key-0123456789abcdef"
BLOG_KEY = "blog-key-0123456789abcdef"
EXPIRED_KEY = "old-key-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789"
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4 + b"\r\n\r\n.\r\n\x00%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
NAME = "Résumé \u2013 2026.pdf"  # an en dash


def send_config(tmp_path: Path, sink_port: int, **site: Any) -> dict[str, Any]:
    config = base_config(tmp_path, [smtp_upstream("main", sink_port)])
    config["http"] = {"host": "127.0.0.1", "port": 0}
    config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
    config["admin"]["tokens"] = [{"name": "ops", "token": ADMIN_TOKEN}]
    shop = config["sites"][0]
    shop["api_keys"] = [
        {"name": "backend", "key_hash": hash_token(KEY)},
        {"name": "old", "key_hash": hash_token(EXPIRED_KEY), "expires_at": "2020-01-01"},
    ]
    shop.update(site)
    config["sites"].append(
        {
            "id": "blog",
            "from": {"email": "news@blog.example.com"},
            "upstreams": ["main"],
            "api_keys": [{"name": "cms", "key_hash": hash_token(BLOG_KEY)}],
        }
    )
    return config


class Api:
    def __init__(self, relay: RunningRelay, http: aiohttp.ClientSession) -> None:
        self.relay = relay
        self.http = http
        self.url = f"http://127.0.0.1:{relay.app.http_port}/api/v1"
        self.admin = f"http://127.0.0.1:{relay.app.admin_port}/api/v1"

    async def send(
        self, body: Any, key: str | None = KEY, **headers: str
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        data = body if isinstance(body, aiohttp.FormData) else None
        payload = None if data is not None else body
        async with self.http.post(
            f"{self.url}/send", json=payload, data=data, headers=headers
        ) as reply:
            return reply.status, await reply.json(), reply.headers

    async def status(self, message_id: str, key: str | None = KEY) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.http.get(f"{self.url}/send/{message_id}", headers=headers) as reply:
            return reply.status, await reply.json()

    async def admin_call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.http.request(
            method, self.admin + path, json=body, headers=headers
        ) as reply:
            return reply.status, (await reply.json() if reply.status != 204 else None)


Start = Callable[..., Awaitable[tuple[Api, Sink]]]


@pytest.fixture
async def start(tmp_path: Path, make_sink: Any, start_relay: Any) -> Any:
    sessions: list[aiohttp.ClientSession] = []

    async def started(templates: Any = (), limits: Any = None, **site: Any) -> tuple[Api, Sink]:
        sink = await make_sink()
        config = send_config(tmp_path, sink.port, **site)
        if templates:
            config["templates"] = list(templates)
        if limits:
            config["limits"] = limits
        relay = await start_relay(config)
        http = aiohttp.ClientSession()
        sessions.append(http)
        return Api(relay, http), sink

    yield started
    for http in sessions:
        await http.close()


def parsed(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def attachments_of(message: EmailMessage) -> dict[str, tuple[str, bytes]]:
    found = {}
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        found[str(part.get_filename())] = (part.get_content_type(), part.get_content())
    return found


BODY = {
    "to": ["customer@example.org"],
    "cc": ["copy@example.org"],
    "bcc": ["hidden@example.org"],
    "subject": "Your invoice",
    "text": "Hello,\nyour invoice is attached.\n",
    "html": "<p>Hello,<br>your invoice is <b>attached</b>.</p>",
}


# -- keys


async def test_no_wrong_or_expired_key_is_401(start: Start) -> None:
    api, sink = await start()
    for key in (None, "not-a-key", EXPIRED_KEY, ""):
        status, answer, headers = await api.send(BODY, key=key)
        assert (status, answer["error"]["code"]) == (401, "unauthorized"), key
        assert headers["WWW-Authenticate"] == "Bearer"
    status, answer, _ = await api.send(BODY, key=None, Authorization=f"Basic {KEY}")
    assert status == 401
    assert "expired" in (await api.send(BODY, key=EXPIRED_KEY))[1]["error"]["message"]
    assert sink.messages == []
    count = api.relay.app.metrics.registry.get_sample_value
    assert count("relay_send_api_auth_failures_total", {"reason": "invalid"}) == 2
    assert count("relay_send_api_auth_failures_total", {"reason": "missing"}) == 2
    assert count("relay_send_api_auth_failures_total", {"reason": "expired"}) == 2


async def test_requests_without_a_key_never_lock_the_address_out(start: Start) -> None:
    api, _ = await start()
    for key in [None, ""] * 10:
        assert (await api.send(BODY, key=key))[0] == 401
    assert (await api.send(BODY))[0] == 202


async def test_an_address_failing_too_often_is_throttled(start: Start) -> None:
    api, _ = await start()
    for _ in range(10):
        assert (await api.send(BODY, key="guess"))[0] == 401
    status, answer, headers = await api.send(BODY)  # even with the right key, for a while
    assert (status, answer["error"]["code"]) == (429, "too_many_requests")
    assert int(headers["Retry-After"]) > 0


# -- messages


async def test_json_send_arrives_with_exact_attachments_and_bcc_only_in_the_envelope(
    start: Start,
) -> None:
    api, sink = await start()
    body = {
        **BODY,
        "attachments": [
            {"filename": NAME, "content": base64.b64encode(PDF).decode()},
            {
                "filename": "pixel.png",
                "content": base64.b64encode(PNG).decode(),
                "content_type": "image/png",
            },
        ],
        "headers": {"X-Order": "1234"},
    }
    status, answer, _ = await api.send(body)
    assert (status, answer["status"]) == (202, "queued"), answer
    (received,) = await sink.handler.wait_for(1)
    assert sorted(received.rcpt_tos) == [
        "copy@example.org",
        "customer@example.org",
        "hidden@example.org",
    ]
    assert b"hidden@example.org" not in received.content
    message = parsed(received.content)
    assert message["Bcc"] is None
    assert message["From"] == "Sales Team <sales@example.com>"
    assert message["X-Order"] == "1234"
    assert message["Subject"] == "Your invoice"
    assert "api-key:backend" not in received.content.decode()  # the key's name is not shown
    body_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert body_part is not None and html_part is not None
    assert body_part.get_content().replace("\r\n", "\n") == BODY["text"]
    assert "<b>attached</b>" in html_part.get_content()
    assert attachments_of(message) == {
        NAME: ("application/pdf", PDF),
        "pixel.png": ("image/png", PNG),
    }


async def test_multipart_send_arrives_with_exact_attachments(start: Start) -> None:
    api, sink = await start()
    form = aiohttp.FormData()
    form.add_field("message", json.dumps(BODY), content_type="application/json")
    form.add_field("file", PDF, filename=NAME, content_type="application/octet-stream")
    form.add_field("file", PNG, filename="pixel.png", content_type="image/png")
    status, answer, _ = await api.send(form)
    assert status == 202, answer
    (received,) = await sink.handler.wait_for(1)
    message = parsed(received.content)
    assert attachments_of(message) == {
        NAME: ("application/pdf", PDF),
        "pixel.png": ("image/png", PNG),
    }
    assert message["Bcc"] is None and len(received.rcpt_tos) == 3

    # As curl and browsers send it: the filename's UTF-8 as it is, quotes escaped as %22.
    boundary = "b0undary"
    raw = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="message"\r\n\r\n'
            f"{json.dumps(BODY)}\r\n--{boundary}\r\nContent-Disposition: form-data; "
            f'name="file"; filename="{NAME}"\r\nContent-Type: application/pdf\r\n\r\n'
        ).encode()
        + PDF
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    async with api.http.post(f"{api.url}/send", data=raw, headers=headers) as reply:
        assert reply.status == 202, await reply.text()
    second = (await sink.handler.wait_for(2))[1]
    assert attachments_of(parsed(second.content)) == {NAME: ("application/pdf", PDF)}


async def test_a_message_over_the_size_limit_is_413_and_over_the_body_cap_too(
    start: Start,
) -> None:
    api, sink = await start(limits={"max_message_bytes": 64 * 1024})
    big = {**BODY, "attachments": [{"filename": "a.bin", "content": "A" * 100_000}]}
    status, answer, _ = await api.send(big)
    assert (status, answer["error"]["code"]) == (413, "too_large")

    async def chunks() -> Any:  # no Content-Length: the view counts what it reads
        yield b'--b\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\n'
        for _ in range(41):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--b--\r\n"

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=b"}
    async with api.http.post(f"{api.url}/send", data=chunks(), headers=headers) as reply:
        assert reply.status == 413
    assert sink.messages == []


@pytest.mark.parametrize(
    "headers",
    [{"From": "evil@example.net"}, {"bCC": "spy@example.net"}, {"X-Ok": "a\r\nBcc: x@y.z"}],
)
async def test_headers_the_relay_owns_or_that_would_split_are_422(
    start: Start, headers: dict[str, str]
) -> None:
    api, sink = await start()
    status, answer, _ = await api.send({**BODY, "headers": headers})
    assert (status, answer["error"]["code"]) == (422, "invalid")
    assert answer["error"]["problems"]
    status, answer, _ = await api.send({**BODY, "from": {"email": "x@evil.example.net"}})
    assert status == 422 and "from.email" in answer["error"]["problems"][0]
    assert sink.messages == []


async def test_bodies_that_are_not_json_are_refused(start: Start) -> None:
    api, _ = await start()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with api.http.post(f"{api.url}/send", data=b"{not json", headers=headers) as reply:
        assert reply.status == 400
    headers["Content-Type"] = "text/plain"
    async with api.http.post(f"{api.url}/send", data=b"hello", headers=headers) as reply:
        assert reply.status == 415
    form = aiohttp.FormData()
    form.add_field("file", PDF, filename="a.pdf")
    assert (await api.send(form))[0] == 400  # no message part


async def test_a_named_template_renders_with_the_variables_html_escaped(start: Start) -> None:
    welcome = {
        "name": "welcome",
        "subject": "Welcome, {{ first_name }}",
        "text": "Hello {{ first_name }}, your order {{ order.id }} is on its way.",
        "html": "<p>Hello {{ first_name }}</p>",
    }
    api, sink = await start(templates=[welcome])
    request = {
        "to": ["customer@example.org"],
        "template": "welcome",
        "variables": {"first_name": "<Ann>", "order": {"id": 42}},
    }
    assert (await api.send(request))[0] == 202
    (received,) = await sink.handler.wait_for(1)
    message = parsed(received.content)
    assert message["Subject"] == "Welcome, <Ann>"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content().strip() == "Hello <Ann>, your order 42 is on its way."
    assert "<p>Hello &lt;Ann&gt;</p>" in html.get_content()
    status, answer, _ = await api.send({**request, "template": "nope"})
    assert (status, answer["error"]["problems"]) == (422, ["template: no template named 'nope'"])


async def test_message_class_reaches_the_ingress_and_its_header_does_not_go_out(
    start: Start,
) -> None:
    api, sink = await start()
    status, answer, _ = await api.send({**BODY, "message_class": "bulk"})
    assert status == 202
    (received,) = await sink.handler.wait_for(1)
    assert b"x-relay-class" not in received.content.lower()
    async with api.relay.app.engine.connect() as connection:
        kind = await connection.scalar(
            sa.select(messages.c.message_class).where(messages.c.id == answer["id"])
        )
    assert kind == "bulk"


async def test_status_per_recipient_for_the_same_site_only(start: Start) -> None:
    api, sink = await start()
    _, answer, _ = await api.send(BODY)
    await sink.handler.wait_for(1)

    async def sent() -> Any:
        async with asyncio.timeout(10):
            while True:
                status, found = await api.status(answer["id"])
                assert status == 200
                if found["status"] == "sent":
                    return found
                await asyncio.sleep(0.05)

    found = await sent()
    assert found["id"] == answer["id"]
    assert {r["address"]: r["status"] for r in found["recipients"]} == {
        "customer@example.org": "sent",
        "copy@example.org": "sent",
        "hidden@example.org": "sent",
    }
    assert all(r["reply_code"] == 250 for r in found["recipients"])
    assert (await api.status(answer["id"], key=BLOG_KEY))[0] == 404  # another site's message
    assert (await api.status("01nosuchmessage0000000000"))[0] == 404
    assert (await api.status(answer["id"], key=None))[0] == 401


async def test_the_daily_limit_counts_api_and_smtp_messages_together(start: Start) -> None:
    api, sink = await start(daily_limit=2)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=api.relay.port) as client:
        await client.login("shop", SITE_PASSWORD)
        await client.sendmail(
            "orders@shop.example.com",
            ["b@example.org"],
            b"From: orders@shop.example.com\r\nSubject: by SMTP\r\n\r\nhi\r\n",
        )
    assert (await api.send(BODY))[0] == 202
    status, answer, headers = await api.send(BODY)
    assert (status, answer["error"]["code"]) == (429, "too_many_requests")
    assert int(headers["Retry-After"]) > 0
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=api.relay.port) as client:
        await client.login("shop", SITE_PASSWORD)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.sendmail("orders@shop.example.com", ["b@example.org"], b"\r\nhi\r\n")
    assert refused.value.code // 100 == 4
    await sink.handler.wait_for(2)
    assert len(sink.messages) == 2


# -- Idempotency-Key


async def test_the_same_key_and_body_answer_once_another_body_is_422(start: Start) -> None:
    api, sink = await start()
    first = await api.send(BODY, Idempotency_Key="order-1234")
    again = await api.send(BODY, Idempotency_Key="order-1234")
    assert first[0] == again[0] == 202
    assert first[1] == again[1]
    assert "Idempotent-Replayed" not in first[2]
    assert again[2]["Idempotent-Replayed"] == "true"
    other = await api.send({**BODY, "subject": "Another"}, Idempotency_Key="order-1234")
    assert (other[0], other[1]["error"]["code"]) == (422, "invalid")
    # Keys belong to their site: the blog may use the same one.
    blog = {**BODY, "cc": [], "bcc": []}
    assert (await api.send(blog, key=BLOG_KEY, Idempotency_Key="order-1234"))[0] == 202
    await sink.handler.wait_for(2)
    await asyncio.sleep(0.2)  # nothing else is on its way
    assert len(sink.messages) == 2
    for bad in ("x" * 256, "naïve", "tab\there"):
        status, answer, _ = await api.send(BODY, Idempotency_Key=bad)
        assert (status, answer["error"]["code"]) == (400, "bad_request"), bad


async def test_concurrent_duplicates_queue_one_message(start: Start) -> None:
    api, sink = await start()
    replies = await asyncio.gather(*(api.send(BODY, Idempotency_Key="burst-1") for _ in range(20)))
    statuses = sorted(status for status, _, _ in replies)
    assert set(statuses) <= {202, 409}, statuses
    ids = {answer["id"] for status, answer, _ in replies if status == 202}
    assert len(ids) == 1
    for status, answer, _ in replies:
        if status == 409:
            assert answer["error"]["code"] == "conflict"
    await sink.handler.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 1
    again = await api.send(BODY, Idempotency_Key="burst-1")  # settled: the one answer
    assert (again[0], again[1]["id"]) == (202, ids.pop())


async def test_a_refused_request_gives_its_key_back(start: Start) -> None:
    api, _ = await start(daily_limit=1)
    assert (await api.send(BODY))[0] == 202
    assert (await api.send(BODY, Idempotency_Key="k-1"))[0] == 429
    # Not held: another body under the same key is judged afresh (429 again, not 422).
    assert (await api.send({**BODY, "subject": "x"}, Idempotency_Key="k-1"))[0] == 429
    async with api.relay.app.engine.connect() as connection:
        assert (
            await connection.scalar(sa.select(sa.func.count()).select_from(idempotency_keys)) == 0
        )


# -- keys made through the admin API


async def test_a_key_made_through_the_admin_api_works_until_deleted(start: Start) -> None:
    api, sink = await start()
    status, made = await api.admin_call(
        "POST", "/sites/shop/api-keys", {"name": "crm", "expires_at": "2099-01-01T00:00:00Z"}
    )
    assert status == 201, made
    assert (made["site"], made["name"], made["expires_at"]) == (
        "shop",
        "crm",
        "2099-01-01T00:00:00.000Z",
    )
    key = made["key"]
    assert (await api.send(BODY, key=key))[0] == 202
    status, listed = await api.admin_call("GET", "/sites/shop/api-keys")
    assert status == 200
    by_name = {k["name"]: k for k in listed["items"]}
    assert set(by_name) == {"backend", "old", "crm"}
    assert by_name["crm"]["managed_by"] == "api" and by_name["crm"]["last_used_at"]
    assert by_name["backend"]["managed_by"] == "file"
    assert key not in json.dumps(listed) and hash_token(key) not in json.dumps(listed)
    # A name the file gives this site's key, or one taken: 409; a bad one: 422.
    assert (await api.admin_call("POST", "/sites/shop/api-keys", {"name": "backend"}))[0] == 409
    assert (await api.admin_call("POST", "/sites/shop/api-keys", {"name": "crm"}))[0] == 409
    status, bad = await api.admin_call(
        "POST", "/sites/shop/api-keys", {"name": "no spaces", "expires_at": "2001-01-01"}
    )
    assert status == 422 and len(bad["error"]["problems"]) == 2
    assert (await api.admin_call("POST", "/sites/nope/api-keys", {"name": "x"}))[0] == 404
    assert (await api.admin_call("DELETE", "/sites/shop/api-keys/backend"))[0] == 409

    assert (await api.admin_call("DELETE", "/sites/shop/api-keys/crm"))[0] == 204
    assert (await api.send(BODY, key=key))[0] == 401
    assert (await api.admin_call("DELETE", "/sites/shop/api-keys/crm"))[0] == 404
    status, audit = await api.admin_call("GET", "/audit")
    assert {("create", "api_key", "shop/crm"), ("delete", "api_key", "shop/crm")} <= {
        (e["action"], e["kind"], e["target"]) for e in audit["items"]
    }
    assert key not in json.dumps(audit)
    await sink.handler.wait_for(1)


def test_store_keys_serve_existing_sites_and_the_file_wins_a_name(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, send_config(tmp_path, 2525)))
    store = StoreObjects(
        api_keys=(
            ApiKey("backend", hash_token("store-backend"), "shop"),  # the file's name
            ApiKey("crm", hash_token("store-crm"), "shop"),
            ApiKey("crm", hash_token("blog-crm"), "blog"),  # a file site's, another name space
            ApiKey("x", hash_token("gone"), "deleted-site"),
        )
    )
    directory = merged_directory(config, store)
    assert directory.api_key(hash_token(KEY)) is not None
    assert directory.api_key(hash_token("store-backend")) is None
    assert directory.api_key(hash_token("store-crm")) == store.api_keys[1]
    assert directory.api_key(hash_token("blog-crm")) == store.api_keys[2]
    assert directory.api_key(hash_token("gone")) is None


async def test_deleting_an_api_site_deletes_its_keys(start: Start) -> None:
    api, _ = await start()
    site = {"id": "landing", "from": {"email": "hello@example.com"}, "upstreams": ["main"]}
    assert (await api.admin_call("POST", "/sites", site))[0] == 201
    status, made = await api.admin_call("POST", "/sites/landing/api-keys", {"name": "web"})
    assert status == 201
    assert (await api.send({**BODY, "cc": [], "bcc": []}, key=made["key"]))[0] == 202
    assert (await api.admin_call("DELETE", "/sites/landing"))[0] == 204
    assert (await api.admin_call("POST", "/sites", site))[0] == 201  # the same id again
    assert (await api.admin_call("GET", "/sites/landing/api-keys"))[1]["items"] == []
    assert (await api.send(BODY, key=made["key"]))[0] == 401


async def test_a_key_added_to_the_file_works_after_a_reload_and_a_later_api_change(
    tmp_path: Path, make_sink: Any, start_relay: Any
) -> None:
    sink = await make_sink()
    config = send_config(tmp_path, sink.port)
    relay = await start_relay(config)
    async with aiohttp.ClientSession() as http:
        api = Api(relay, http)
        config["sites"][0]["api_keys"].append(
            {"name": "new", "key_hash": hash_token("new-key-0123456789")}
        )
        write_config(tmp_path, config)
        assert (await api.admin_call("POST", "/reload"))[0] == 200
        assert (await api.send(BODY, key="new-key-0123456789"))[0] == 202
        # A catalog change rebuilds the directory from the running config: the key stays.
        assert (await api.admin_call("POST", "/sites/shop/api-keys", {"name": "crm"}))[0] == 201
        assert (await api.send(BODY, key="new-key-0123456789"))[0] == 202
    await sink.handler.wait_for(2)
