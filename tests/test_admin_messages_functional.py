"""The admin API over real traffic: message search and detail, retry, statistics, upstream tests.

Mail goes the real way (a client with STARTTLS + AUTH -> the relay -> aiosmtpd
sinks on loopback) and the admin API is called over HTTP with a bearer
token. A FakeClock drives the relay's decisions, so a deferred message waits
until the test retries it and the time filters have exact boundaries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import trustme

from tests.conftest import (
    SITE_PASSWORD,
    SITE_PASSWORD_HASH,
    FakeClock,
    RunningRelay,
    Sink,
    base_config,
    smtp_upstream,
)

TOKEN = "test-token-0123456789"
START = 1_800_000_000.0  # FakeClock's default: 2027-01-15 08:00:00 UTC
LATER = START + 120.0  # the second batch is sent two minutes later
SHOP_SENDER = "orders@shop.example.com"
BLOG_SENDER = "editor@blog.example.com"
WAITING = {"queued", "deferred"}
FINAL = {"sent", "failed", "partial"}

MakeSink = Callable[..., Awaitable[Sink]]
StartRelay = Callable[..., Awaitable[RunningRelay]]
CertFiles = tuple[Path, Path, Path]


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat().replace("+00:00", "Z")


def mail(subject: str, sender: str, to: str, extra: str = "") -> bytes:
    return (
        f"From: Customer <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\nhello\r\n"
    ).encode()


def with_admin(config: dict[str, Any], cert_files: CertFiles) -> dict[str, Any]:
    """The admin token, and a listener certificate the test client trusts."""
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    return config


class Admin:
    """The admin API of one running relay."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"

    async def call(
        self, method: str, path: str, params: dict[str, str] | None = None, json: Any = None
    ) -> tuple[int, Any]:
        async with self.session.request(
            method,
            self.base + path,
            params=params,
            json=json,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            body = await response.json() if response.content_length != 0 else None
            return response.status, body

    async def get(self, path: str, **params: str) -> Any:
        status, body = await self.call("GET", path, params)
        assert status == 200, (path, params, body)
        return body

    async def ids(self, **params: str) -> set[str]:
        found = await self.get("/api/v1/messages", page_size="500", **params)
        assert found["total"] == len(found["items"])
        return {item["id"] for item in found["items"]}

    async def wait_for_one(self, **params: str) -> str:
        """The id of the one message matching ``params``, once there is one."""
        found = await poll(lambda: self.ids(**params), bool, f"a message with {params}")
        [message_id] = found
        return message_id

    async def wait_status(self, message_id: str, wanted: set[str]) -> Any:
        """The message once its status is one of ``wanted``."""
        return await poll(
            lambda: self.get(f"/api/v1/messages/{message_id}"),
            lambda detail: detail["status"] in wanted,
            f"{message_id} in {wanted}",
        )


async def poll(
    fetch: Callable[[], Awaitable[Any]],
    done: Callable[[Any], bool],
    what: str,
    seconds: float = 10.0,
) -> Any:
    """``fetch()`` again every 50 ms until ``done`` with its value; bounded by ``seconds``."""
    value: Any = None
    try:
        async with asyncio.timeout(seconds):
            while True:
                value = await fetch()
                if done(value):
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"waited {seconds}s for {what}; last seen: {value}") from None


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def submit(
    relay: RunningRelay,
    tls: ssl.SSLContext,
    sender: str,
    recipients: list[str],
    content: bytes,
    username: str = "shop",
) -> str:
    """STARTTLS + AUTH; the id from "250 2.0.0 queued as <id>"."""
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=True, tls_context=tls, timeout=10
    ) as client:
        await client.login(username, SITE_PASSWORD)
        _, reply = await client.sendmail(sender, recipients, content)
    assert reply.startswith("2.0.0 queued as "), reply
    return reply.split()[-1]


# -- Traffic: two sites, two upstreams; sent, refused, deferred, and a later batch.


@dataclass
class Traffic:
    relay: RunningRelay
    clock: FakeClock
    admin: Admin
    main: Sink  # upstream "main" (site shop)
    backup: Sink  # upstream "backup" (site blog)
    order: str  # shop -> Alice + a Bcc recipient, sent
    invoice: str  # shop -> bad@example.org, refused with 550: failed
    newsletter: str  # shop -> later@example.org, 451: deferred
    dsn: str  # the relay's own bounce about the invoice, to its sender, sent through main
    digest: str  # blog, two minutes later, sent through backup


ORDER = mail(
    "Order 1001 confirmed",
    SHOP_SENDER,
    "Alice <Alice@Example.org>",
    "Bcc: hidden@example.org\r\n",
)


@pytest.fixture
async def traffic(
    tmp_path: Path,
    make_sink: MakeSink,
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
) -> Traffic:
    main = await make_sink(
        replies={
            "rcpt": {
                "bad@example.org": "550 5.1.1 no such user",
                "later@example.org": "451 4.2.1 mailbox busy, try later",
            }
        }
    )
    backup = await make_sink()
    upstreams = [
        smtp_upstream("main", main.port, daily_limit=100),
        smtp_upstream("backup", backup.port),
    ]
    config = with_admin(base_config(tmp_path, upstreams), cert_files)
    # A long backoff: the deferred message waits for the test's retry, even as the clock moves.
    config["delivery"] = {"retry_first_seconds": 3600, "retry_max_seconds": 7200}
    shop = config["sites"][0]
    shop.update(upstreams=["main"], daily_limit=50)
    config["sites"].append(
        {
            "id": "blog",
            "name": "Blog",
            "credentials": [{"username": "blog", "password_hash": SITE_PASSWORD_HASH}],
            "senders": ["*@blog.example.com"],
            "from": {"email": "news@example.net", "name": "Blog News"},
            "upstreams": ["backup"],
        }
    )
    clock = FakeClock(START)
    relay = await start_relay(config, clock=clock)
    admin = Admin(http, relay.app.admin_port)

    recipients = ["Alice@Example.org", "hidden@example.org"]
    order = await submit(relay, client_tls, SHOP_SENDER, recipients, ORDER)
    invoice = await submit(
        relay,
        client_tls,
        SHOP_SENDER,
        ["bad@example.org"],
        mail("Invoice 77", SHOP_SENDER, "bad@example.org"),
    )
    newsletter = await submit(
        relay,
        client_tls,
        SHOP_SENDER,
        ["later@example.org"],
        mail("Newsletter weekly", SHOP_SENDER, "later@example.org"),
    )
    for message_id in (order, invoice):
        await admin.wait_status(message_id, FINAL)
    await admin.wait_status(newsletter, {"deferred"})
    dsn = await admin.wait_for_one(recipient=SHOP_SENDER)
    await admin.wait_status(dsn, FINAL)

    clock.advance(LATER - START)
    digest = await submit(
        relay,
        client_tls,
        BLOG_SENDER,
        ["reader@example.org"],
        mail("Blog digest", BLOG_SENDER, "reader@example.org"),
        username="blog",
    )
    await admin.wait_status(digest, FINAL)
    return Traffic(relay, clock, admin, main, backup, order, invoice, newsletter, dsn, digest)


# -- GET /api/v1/messages


async def test_search_filters(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    shop = {t.order, t.invoice, t.newsletter, t.dsn}
    assert await admin.ids() == {*shop, t.digest}

    assert await admin.ids(status="sent") == {t.order, t.dsn, t.digest}
    assert await admin.ids(status="failed") == {t.invoice}
    assert await admin.ids(status="deferred") == {t.newsletter}
    assert await admin.ids(status="held") == set()

    assert await admin.ids(site="shop") == shop
    assert await admin.ids(site="blog") == {t.digest}
    assert await admin.ids(site="nobody") == set()

    assert await admin.ids(upstream="main") == shop
    assert await admin.ids(upstream="nowhere") == set()
    assert await admin.ids(upstream="backup") == {t.digest}

    # Case-insensitive, exact address: a Bcc recipient is a recipient too.
    assert await admin.ids(recipient="alice@EXAMPLE.ORG") == {t.order}
    assert await admin.ids(recipient="HIDDEN@example.org") == {t.order}
    assert await admin.ids(recipient="example.org") == set()
    assert await admin.ids(recipient=SHOP_SENDER.upper()) == {t.dsn}

    assert await admin.ids(q="invoice") == {t.invoice}
    assert await admin.ids(q="WEEKLY") == {t.newsletter}
    assert await admin.ids(q="%") == set()  # a wildcard is a literal character
    assert await admin.ids(q="digest", site="shop") == set()  # filters combine (AND)
    assert await admin.ids(q="ORDERS@shop") == {t.order, t.invoice, t.newsletter}  # sender
    assert await admin.ids(q=t.invoice[-8:]) == {t.invoice}  # part of the id
    assert await admin.ids(q="orders@", status="sent", site="shop") == {t.order}


async def test_search_time_window_iso_and_unix_seconds(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    middle = START + 60
    first_batch = {t.order, t.invoice, t.newsletter, t.dsn}

    assert await admin.ids(since=iso(middle)) == {t.digest}
    assert await admin.ids(since=str(int(middle))) == {t.digest}
    assert await admin.ids(until=iso(middle)) == first_batch
    assert await admin.ids(until=f"{middle:.3f}") == first_batch
    # An offset is honoured: 09:01 in +01:00 is 08:01 UTC.
    assert await admin.ids(since="2027-01-15T09:01:00+01:00") == {t.digest}
    # A naive time is UTC.
    assert await admin.ids(since="2027-01-15T08:01:00") == {t.digest}
    # since is inclusive, until exclusive.
    assert await admin.ids(since=str(LATER), until=str(LATER + 1)) == {t.digest}
    assert await admin.ids(since=str(START), until=str(LATER)) == first_batch
    assert await admin.ids(since=iso(LATER + 1)) == set()


async def test_search_pagination(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    seen = []
    for page in range(1, 6):
        found = await admin.get("/api/v1/messages", page_size="1", page=str(page))
        assert (found["total"], found["page"], found["page_size"]) == (5, page, 1)
        [item] = found["items"]
        seen.append(item["id"])
    assert seen[0] == t.digest  # newest first
    assert sorted(seen) == sorted({t.order, t.invoice, t.newsletter, t.dsn, t.digest})

    beyond = await admin.get("/api/v1/messages", page_size="1", page="6")
    contract = {k: beyond[k] for k in ("items", "total", "page", "page_size")}
    assert contract == {"items": [], "total": 5, "page": 6, "page_size": 1}
    # Added to the list contract: how exact the total is, and where the next page starts.
    assert (beyond["total_exact"], beyond["next_cursor"], beyond["complete"]) == (True, None, True)
    far = await admin.get("/api/v1/messages", page="999999999")
    assert (far["items"], far["total"]) == ([], 5)
    filtered = await admin.get("/api/v1/messages", site="shop", page_size="3", page="2")
    assert (len(filtered["items"]), filtered["total"], filtered["page_size"]) == (1, 4, 3)
    default = await admin.get("/api/v1/messages")
    assert (default["page"], default["page_size"], len(default["items"])) == (1, 50, 5)


async def test_search_cursor(traffic: Traffic) -> None:
    """next_cursor, passed as cursor, walks the log newest first, each message once."""
    admin = traffic.admin
    everything = await admin.get("/api/v1/messages")
    seen: list[str] = []
    params = {"page_size": "2"}
    for _ in range(10):  # bounded
        found = await admin.get("/api/v1/messages", **params)
        assert (found["total"], found["total_exact"], found["complete"]) == (5, True, True)
        seen += [item["id"] for item in found["items"]]
        if found["next_cursor"] is None:
            break
        params = {"page_size": "2", "cursor": found["next_cursor"]}
    assert seen == [item["id"] for item in everything["items"]]
    shop = await admin.get("/api/v1/messages", site="shop", page_size="3")
    rest = await admin.get("/api/v1/messages", site="shop", cursor=shop["next_cursor"])
    assert len(shop["items"]) + len(rest["items"]) == 4
    assert rest["next_cursor"] is None


async def test_search_summary_fields(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    [order] = (await admin.get("/api/v1/messages", q="Order 1001"))["items"]
    assert order["id"] == t.order
    assert order["site"] == "shop"
    assert order["status"] == "sent"
    assert order["subject"] == "Order 1001 confirmed"
    assert order["original_sender"] == SHOP_SENDER
    assert order["envelope_sender"] == "sales@example.com"
    assert order["recipients"] == ["Alice@Example.org", "hidden@example.org"]
    assert order["created_at"] == "2027-01-15T08:00:00.000Z"
    assert order["next_attempt_at"] is None  # final
    assert order["attempt_count"] == 1
    assert order["last_error"] is None

    [dsn] = (await admin.get("/api/v1/messages", recipient=SHOP_SENDER))["items"]
    assert dsn["id"] == t.dsn
    assert (dsn["site"], dsn["envelope_sender"]) == ("shop", "")  # a bounce has a null sender

    [deferred] = (await admin.get("/api/v1/messages", status="deferred"))["items"]
    assert deferred["next_attempt_at"] is not None
    assert deferred["last_error"] is not None and "451" in deferred["last_error"]


@pytest.fixture
async def quiet(
    tmp_path: Path,
    make_sink: MakeSink,
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    cert_files: CertFiles,
) -> Admin:
    """The admin API of a relay with one upstream and no traffic yet."""
    sink = await make_sink()
    relay = await start_relay(
        with_admin(base_config(tmp_path, [smtp_upstream("main", sink.port)]), cert_files)
    )
    return Admin(http, relay.app.admin_port)


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"status": "bogus"}, "status"),
        ({"status": "SENT"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2027-13-45"}, "until"),
        ({"page": "0"}, "page"),
        ({"page_size": "-1"}, "page_size"),
        ({"page_size": "501"}, "page_size"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "WzEsIDJd"}, "cursor"),  # [1, 2]: no id
        ({"cursor": "WzEuNSwgIm0xIl0", "page": "2"}, "cursor"),  # [1.5, "m1"] with a page
    ],
)
async def test_search_bad_parameters_are_400(
    quiet: Admin, params: dict[str, str], mentions: str
) -> None:
    status, body = await quiet.call("GET", "/api/v1/messages", params)

    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert mentions in body["error"]["message"]


# -- GET /api/v1/messages/{id}


async def test_detail_of_a_sent_message(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    detail = await admin.get(f"/api/v1/messages/{t.order}")

    assert detail["id"] == t.order
    assert (detail["site"], detail["status"]) == ("shop", "sent")
    assert detail["subject"] == "Order 1001 confirmed"
    assert detail["envelope_sender"] == "sales@example.com"
    assert detail["size"] > 0
    assert detail["created_at"] == "2027-01-15T08:00:00.000Z"
    assert detail["next_attempt_at"] is None
    assert [
        (r["address"], r["status"], r["upstream"], r["reply_code"]) for r in detail["recipients"]
    ] == [
        ("Alice@Example.org", "sent", "main", 250),
        ("hidden@example.org", "sent", "main", 250),
    ]
    assert all(r["reply_text"] for r in detail["recipients"])

    [attempt] = detail["attempts"]
    assert attempt["upstream"] == "main"
    assert attempt["started_at"] == "2027-01-15T08:00:00.000Z"
    assert isinstance(attempt["duration_seconds"], int | float)
    assert attempt["duration_seconds"] >= 0
    assert (attempt["reply_code"], attempt["outcome"]) == (250, "sent")
    assert attempt["reply_text"] == "2.0.0 OK accepted"  # the sink's DATA reply
    assert sorted(attempt["recipients"]) == ["Alice@Example.org", "hidden@example.org"]

    # The header diff: what the relay changed between the client's header and what went out.
    changes = {c["name"].lower(): c for c in detail["header_changes"]}
    assert changes["from"]["change"] == "changed"
    assert changes["from"]["before"] == [f"Customer <{SHOP_SENDER}>"]
    assert changes["from"]["after"] == ["Sales Team <sales@example.com>"]
    assert changes["bcc"]["change"] == "removed"
    assert changes["bcc"]["before"] == ["hidden@example.org"]
    assert changes["bcc"]["after"] == []
    assert changes["received"]["change"] == "added"
    assert changes["received"]["before"] == []
    [received] = changes["received"]["after"]
    assert t.order in received
    assert changes["reply-to"]["change"] == "added"
    assert changes["reply-to"]["after"] == [f"Customer <{SHOP_SENDER}>"]
    assert "subject" not in changes and "to" not in changes  # untouched fields are not listed

    original = message_from_bytes(detail["headers"]["original"].encode() + b"\r\n\r\n")
    sent = message_from_bytes(detail["headers"]["sent"].encode() + b"\r\n\r\n")
    assert original["Bcc"] == "hidden@example.org"
    assert original["From"] == f"Customer <{SHOP_SENDER}>"
    assert sent["Bcc"] is None
    assert sent["From"] == "Sales Team <sales@example.com>"
    assert sent["Reply-To"] == f"Customer <{SHOP_SENDER}>"
    # What went out is what the sink received.
    [delivered] = [
        m for m in t.main.messages if t.order in message_from_bytes(m.content)["Message-ID"]
    ]
    assert delivered.content.startswith(detail["headers"]["sent"].encode())
    assert "\r\n\r\n" not in detail["headers"]["sent"]  # the header block only, no body


async def test_detail_of_refused_and_deferred_messages(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    failed = await admin.get(f"/api/v1/messages/{t.invoice}")
    [recipient] = failed["recipients"]
    assert recipient == {
        "address": "bad@example.org",
        "status": "failed",
        "upstream": "main",
        "reply_code": 550,
        "reply_text": "5.1.1 no such user",
    }
    [attempt] = failed["attempts"]
    assert (attempt["upstream"], attempt["outcome"], attempt["reply_code"]) == (
        "main",
        "failed",
        550,
    )
    assert attempt["reply_text"] == "5.1.1 no such user"

    deferred = await admin.get(f"/api/v1/messages/{t.newsletter}")
    assert deferred["status"] == "deferred"
    assert deferred["next_attempt_at"] is not None
    assert "451" in deferred["last_error"]
    # A recipient's row holds its final state; until then the replies are in the attempts.
    [recipient] = deferred["recipients"]
    assert (recipient["address"], recipient["status"]) == ("later@example.org", "pending")
    [attempt] = deferred["attempts"]
    assert (attempt["upstream"], attempt["outcome"]) == ("main", "defer")
    assert attempt["reply_code"] == 451
    assert attempt["reply_text"] == "4.2.1 mailbox busy, try later"
    assert attempt["recipients"] == ["later@example.org"]


async def test_detail_of_unknown_message_is_404(traffic: Traffic) -> None:
    status, body = await traffic.admin.call("GET", "/api/v1/messages/no-such-message")
    assert status == 404
    assert body["error"]["code"] == "not_found"


# -- POST /api/v1/messages/{id}/retry


async def test_retry_a_deferred_message_after_the_upstream_is_fixed(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    assert len(t.main.messages) == 2  # the order, and the bounce about the invoice

    # Still broken: the retry happens now (the fake clock has not reached the backoff).
    status, body = await admin.call("POST", f"/api/v1/messages/{t.newsletter}/retry")
    assert (status, body) == (200, {"id": t.newsletter, "status": "deferred"})
    await wait_attempts(admin, t.newsletter, 2)
    assert (await admin.get(f"/api/v1/messages/{t.newsletter}"))["status"] == "deferred"

    del t.main.handler.replies["rcpt"]["later@example.org"]
    status, body = await admin.call("POST", f"/api/v1/messages/{t.newsletter}/retry")
    assert status == 200
    assert body["id"] == t.newsletter
    assert body["status"] in WAITING

    await t.main.handler.wait_for(3)
    detail = await admin.wait_status(t.newsletter, FINAL)
    assert detail["status"] == "sent"
    assert [a["outcome"] for a in detail["attempts"]][-1] == "sent"
    assert detail["attempt_count"] == 3
    assert t.main.messages[-1].rcpt_tos == ["later@example.org"]

    audit = await admin.get("/api/v1/audit")
    retries = [e for e in audit["items"] if e["action"] == "retry"]
    assert len(retries) == 2
    assert retries[0]["target"] == t.newsletter
    assert retries[0]["token"] == "ops"


async def wait_attempts(admin: Admin, message_id: str, count: int) -> None:
    await poll(
        lambda: admin.get(f"/api/v1/messages/{message_id}"),
        lambda detail: detail["attempt_count"] >= count,
        f"{count} attempts of {message_id}",
    )


async def test_retry_of_a_final_or_unknown_message(traffic: Traffic) -> None:
    t, admin = traffic, traffic.admin
    for final in (t.order, t.invoice):
        status, body = await admin.call("POST", f"/api/v1/messages/{final}/retry")
        assert status == 409, body
        assert body["error"]["code"] == "conflict"

    status, body = await admin.call("POST", "/api/v1/messages/no-such-message/retry")
    assert status == 404
    assert body["error"]["code"] == "not_found"


# -- POST /api/v1/queue/flush


async def test_flush_sends_the_backlog_once_the_upstream_is_back(
    tmp_path: Path,
    make_sink: MakeSink,
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    cert_files: CertFiles,
    client_tls: ssl.SSLContext,
) -> None:
    down = await make_sink(replies={"mail": "421 4.3.2 down for maintenance"})
    config = with_admin(base_config(tmp_path, [smtp_upstream("main", down.port)]), cert_files)
    config["delivery"] = {"retry_first_seconds": 3600, "retry_max_seconds": 7200}
    config["health"] = {"failure_threshold": 1, "cooldown_seconds": 3600}
    relay = await start_relay(config, clock=FakeClock(START))
    admin = Admin(http, relay.app.admin_port)
    held_back = [
        await submit(relay, client_tls, SHOP_SENDER, [f"r{n}@example.org"], ORDER) for n in range(3)
    ]
    for message_id in held_back:
        await admin.wait_status(message_id, {"deferred"})
    upstreams = await admin.get("/api/v1/upstreams")
    assert upstreams["items"][0]["circuit"] == "open"

    del down.handler.replies["mail"]  # the upstream is back; nothing is due for an hour
    status, body = await admin.call("POST", "/api/v1/queue/flush")
    assert (status, body) == (200, {"messages": 3, "upstreams": ["main"]})
    assert (await admin.get("/api/v1/upstreams"))["items"][0]["circuit"] == "closed"

    await down.handler.wait_for(3)
    for message_id in held_back:
        assert (await admin.wait_status(message_id, FINAL))["status"] == "sent"
    assert (await admin.get("/api/v1/upstreams"))["items"][0]["circuit"] == "closed"
    status, body = await admin.call("POST", "/api/v1/queue/flush")
    assert (status, body) == (200, {"messages": 0, "upstreams": []})
    audit = await admin.get("/api/v1/audit")
    assert [e["target"] for e in audit["items"] if e["action"] == "flush"] == ["queue", "queue"]


# -- GET /api/v1/stats, GET /api/v1/upstreams/{name}/stats


async def test_stats_per_site_upstream_and_queue(traffic: Traffic) -> None:
    admin = traffic.admin
    stats = await admin.get("/api/v1/stats", since=iso(START))
    assert stats["since"] == "2027-01-15T08:00:00.000Z"
    assert stats["until"] == iso(LATER).replace("Z", ".000Z")  # now, on the fake clock

    sites = {s["site"]: s for s in stats["sites"]}
    assert set(sites) == {"shop", "blog"}
    shop = sites["shop"]
    counts = ("accepted", "sent", "failed", "partial", "deferred", "queued", "held")
    # The order, the invoice, the newsletter and the relay's bounce about the invoice.
    assert {k: shop[k] for k in counts} == {
        "accepted": 4,
        "sent": 2,
        "failed": 1,
        "partial": 0,
        "deferred": 1,
        "queued": 0,
        "held": 0,
    }
    assert shop["success_rate"] == 0.6667  # sent / (sent + failed + partial)
    # The site's own three and the relay's bounce count against its quota (DESIGN.md: DSNs
    # count against the site's limits, so a flood of bounces costs the flooder).
    assert shop["quota"] == {"day": {"used": 4, "limit": 50, "ratio": 0.08}}
    blog = sites["blog"]
    assert (blog["accepted"], blog["sent"], blog["success_rate"]) == (1, 1, 1.0)
    assert blog["quota"] == {}  # no limits

    upstreams = {u["upstream"]: u for u in stats["upstreams"]}
    assert set(upstreams) == {"main", "backup"}
    main = upstreams["main"]
    # Recipients per outcome: Alice, the Bcc and the bounce sent, bad@ failed, later@ deferred.
    assert (main["attempts"], main["sent"], main["failed"], main["deferred"]) == (4, 3, 1, 1)
    assert main["success_rate"] == 0.6  # sent / (sent + failed + deferred)
    # Durations are measured on the monotonic clock, whatever the wall clock does.
    assert 0 < main["average_seconds"] <= main["p95_seconds"] < 10
    # Recipients delivered through it today.
    assert main["quota"] == {"day": {"used": 3, "limit": 100, "ratio": 0.03}}
    backup = upstreams["backup"]
    assert (backup["attempts"], backup["sent"], backup["failed"]) == (1, 1, 0)
    assert backup["average_seconds"] is not None and backup["p95_seconds"] is not None
    assert backup["quota"] == {}

    # The queue: the deferred newsletter is waiting, created two minutes ago.
    assert stats["queue"] == {"depth": 1, "held": 0, "oldest_age_seconds": 120.0}


async def test_stats_window(traffic: Traffic) -> None:
    admin = traffic.admin
    # The default window is the last 24 hours: everything.
    whole = await admin.get("/api/v1/stats")
    assert {s["site"]: s["accepted"] for s in whole["sites"]} == {"shop": 4, "blog": 1}

    later = await admin.get("/api/v1/stats", since=str(START + 60))
    sites = {s["site"]: s for s in later["sites"]}
    assert (sites["shop"]["accepted"], sites["shop"]["success_rate"]) == (0, None)
    assert sites["blog"]["accepted"] == 1
    main = next(u for u in later["upstreams"] if u["upstream"] == "main")
    assert (main["attempts"], main["average_seconds"], main["p95_seconds"]) == (0, None, None)
    assert main["success_rate"] is None

    first = await admin.get("/api/v1/stats", since=str(START), until=iso(START + 60))
    assert {s["site"]: s["accepted"] for s in first["sites"]} == {"shop": 4, "blog": 0}
    assert first["until"] == "2027-01-15T08:01:00.000Z"

    status, body = await admin.call("GET", "/api/v1/stats", {"since": "last tuesday"})
    assert status == 400
    assert body["error"]["code"] == "bad_request"


async def test_one_upstreams_stats(traffic: Traffic) -> None:
    admin = traffic.admin
    main = await admin.get("/api/v1/upstreams/main/stats", since=iso(START))
    assert main["upstream"] == "main"
    assert main["since"] == "2027-01-15T08:00:00.000Z"
    assert main["until"] is not None
    assert (main["attempts"], main["sent"], main["failed"], main["deferred"]) == (4, 3, 1, 1)
    assert main["average_seconds"] is not None and main["p95_seconds"] is not None
    assert main["quota"]["day"]["limit"] == 100

    whole = await admin.get("/api/v1/stats", since=iso(START))
    [same] = [u for u in whole["upstreams"] if u["upstream"] == "main"]
    assert {k: v for k, v in main.items() if k not in {"since", "until"}} == same

    # The window is whole minutes: since=LATER+1 would still read LATER's minute.
    backup = await admin.get("/api/v1/upstreams/backup/stats", since=str(LATER + 60))
    assert (backup["attempts"], backup["sent"], backup["average_seconds"]) == (0, 0, None)

    status, body = await admin.call("GET", "/api/v1/upstreams/nowhere/stats")
    assert status == 404
    assert body["error"]["code"] == "not_found"


# -- POST /api/v1/upstreams/{name}/test


@pytest.fixture
def sink_with_cert(
    ca: trustme.CA, tmp_path: Path, make_sink: MakeSink
) -> Callable[[str], Awaitable[Sink]]:
    """A STARTTLS sink whose certificate, from the test CA, names only ``hostname``."""

    async def make(hostname: str) -> Sink:
        issued = ca.issue_cert(hostname)
        chain, key = tmp_path / f"{hostname}.pem", tmp_path / f"{hostname}.key"
        issued.private_key_and_cert_chain_pem.write_to_path(str(chain))
        issued.private_key_pem.write_to_path(str(key))
        sink: Sink = await make_sink(tls="starttls", cert=(chain, key))
        return sink

    return make


UPSTREAM_USER, UPSTREAM_PASSWORD = "relay", "upstream-secret"


@pytest.fixture
async def probe_relay(
    tmp_path: Path,
    make_sink: MakeSink,
    sink_with_cert: Callable[[str], Awaitable[Sink]],
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    cert_files: CertFiles,
    closed_port: int,
) -> tuple[Admin, Sink]:
    """A relay with one upstream per case, all on loopback; the good sink is returned too."""
    secure = await make_sink(tls="starttls", auth=(UPSTREAM_USER, UPSTREAM_PASSWORD))
    mismatch = await sink_with_cert("other.test")
    ca_file = str(cert_files[2])
    tls = {"tls": "starttls", "username": UPSTREAM_USER}
    upstreams = [
        smtp_upstream(
            "good", secure.port, host="localhost", ca_file=ca_file,
            password=UPSTREAM_PASSWORD, **tls,
        ),
        smtp_upstream(
            "wrong-password", secure.port, host="localhost", ca_file=ca_file,
            password="not-the-password", **tls,
        ),
        # The certificate names localhost and 127.0.0.1, but its CA is not trusted here.
        smtp_upstream("untrusted", secure.port, password=UPSTREAM_PASSWORD, **tls),
        # A trusted CA, but the certificate is for other.test: by name, and by address.
        smtp_upstream(
            "mismatch", mismatch.port, host="localhost", tls="starttls", ca_file=ca_file
        ),
        smtp_upstream("mismatch-ip", mismatch.port, tls="starttls", ca_file=ca_file),
        smtp_upstream("down", closed_port),
    ]  # fmt: skip
    relay = await start_relay(with_admin(base_config(tmp_path, upstreams), cert_files))
    return Admin(http, relay.app.admin_port), secure


def step_names(probe: dict[str, Any]) -> list[str]:
    for step in probe["steps"]:
        assert isinstance(step["ms"], int | float) and step["ms"] >= 0
    return [step["step"] for step in probe["steps"]]


async def test_probe_with_the_right_credentials(probe_relay: tuple[Admin, Sink]) -> None:
    admin, sink = probe_relay
    status, probe = await admin.call("POST", "/api/v1/upstreams/good/test")
    assert status == 200
    assert probe["ok"] is True
    assert (probe["stage"], probe["detail"]) == ("auth", "ok")
    assert step_names(probe) == ["connect", "ehlo", "starttls", "auth", "quit"]
    assert probe["message"] is None
    assert sink.messages == []  # no message without "to"


async def test_probe_with_a_wrong_password(probe_relay: tuple[Admin, Sink]) -> None:
    admin, _ = probe_relay
    status, probe = await admin.call("POST", "/api/v1/upstreams/wrong-password/test")
    assert status == 200
    assert probe["ok"] is False
    assert probe["stage"] == "auth"
    assert "535" in probe["detail"]
    assert probe["detail"].startswith("auth: 535")
    assert step_names(probe) == ["connect", "ehlo", "starttls"]


async def test_probe_with_an_untrusted_certificate(probe_relay: tuple[Admin, Sink]) -> None:
    admin, _ = probe_relay
    status, probe = await admin.call("POST", "/api/v1/upstreams/untrusted/test")
    assert status == 200
    assert (probe["ok"], probe["stage"]) == (False, "tls")
    assert "certificate verify failed" in probe["detail"]
    assert "unable to get local issuer certificate" in probe["detail"]
    assert step_names(probe) == ["connect", "ehlo"]


@pytest.mark.parametrize(
    ("upstream", "reason"),
    [
        ("mismatch", "Hostname mismatch, certificate is not valid for 'localhost'"),
        ("mismatch-ip", "IP address mismatch, certificate is not valid for '127.0.0.1'"),
    ],
)
async def test_probe_with_a_certificate_for_another_host(
    probe_relay: tuple[Admin, Sink], upstream: str, reason: str
) -> None:
    admin, _ = probe_relay
    status, probe = await admin.call("POST", f"/api/v1/upstreams/{upstream}/test")
    assert status == 200
    assert (probe["ok"], probe["stage"]) == (False, "tls")
    assert probe["detail"].startswith("tls: certificate verify failed: ")
    assert reason in probe["detail"]
    assert step_names(probe) == ["connect", "ehlo"]


async def test_probe_of_a_closed_port(probe_relay: tuple[Admin, Sink]) -> None:
    admin, _ = probe_relay
    status, probe = await admin.call("POST", "/api/v1/upstreams/down/test")
    assert status == 200
    assert (probe["ok"], probe["stage"]) == (False, "connect")
    assert "connection refused" in probe["detail"]
    assert step_names(probe) == []


async def test_probe_sends_a_test_message(probe_relay: tuple[Admin, Sink]) -> None:
    admin, sink = probe_relay
    status, probe = await admin.call(
        "POST", "/api/v1/upstreams/good/test", json={"to": "someone@example.org"}
    )
    assert status == 200, probe
    assert probe["ok"] is True
    message = probe["message"]
    assert message["accepted"] is True
    assert message["reply"].startswith("250")
    assert message["ms"] >= 0
    [received] = await sink.handler.wait_for(1)
    assert received.rcpt_tos == ["someone@example.org"]
    parsed = message_from_bytes(received.content)
    assert "relay test message" in parsed["Subject"]
    assert "good" in parsed["Subject"]
    assert message["id"] in parsed["Message-ID"]

    audit = await admin.get("/api/v1/audit")
    [entry] = [e for e in audit["items"] if e["action"] == "test"]
    assert (entry["token"], entry["kind"]) == ("ops", "upstream")
    assert entry["target"] == "good -> someone@example.org"


async def test_probe_message_is_not_sent_when_the_check_fails(
    probe_relay: tuple[Admin, Sink],
) -> None:
    admin, sink = probe_relay
    status, probe = await admin.call(
        "POST", "/api/v1/upstreams/wrong-password/test", json={"to": "someone@example.org"}
    )
    assert status == 200
    assert (probe["ok"], probe["stage"], probe["message"]) == (False, "auth", None)
    assert sink.messages == []


@pytest.mark.parametrize(
    "body", [{"to": "not an address"}, {"to": 42}, {"to": "a@example.org", "from": "x"}]
)
async def test_probe_with_a_bad_address_is_400(
    probe_relay: tuple[Admin, Sink], body: dict[str, Any]
) -> None:
    admin, sink = probe_relay
    status, answer = await admin.call("POST", "/api/v1/upstreams/good/test", json=body)
    assert status == 400
    assert answer["error"]["code"] == "bad_request"
    assert sink.messages == []


async def test_probe_of_an_unknown_upstream_is_404(probe_relay: tuple[Admin, Sink]) -> None:
    admin, _ = probe_relay
    status, answer = await admin.call("POST", "/api/v1/upstreams/nowhere/test")
    assert status == 404
    assert answer["error"]["code"] == "not_found"


async def test_every_probe_is_in_the_audit_log(probe_relay: tuple[Admin, Sink]) -> None:
    admin, _ = probe_relay
    for name in ("good", "down"):
        status, _ = await admin.call("POST", f"/api/v1/upstreams/{name}/test")
        assert status == 200
    audit = await admin.get("/api/v1/audit")
    tests = [(e["action"], e["kind"], e["target"]) for e in audit["items"]]
    # Newest first.
    assert tests[:2] == [("test", "upstream", "down"), ("test", "upstream", "good")]
    assert all(e["at"] for e in audit["items"])


@pytest.mark.parametrize(
    "path", ["/api/v1/stats", "/api/v1/upstreams/main/stats", "/api/v1/messages"]
)
@pytest.mark.parametrize(
    "params",
    [
        {"since": "1e100"},
        {"until": "Infinity"},
        {"since": "nan"},
        {"until": "1e12"},  # the year 33658
        {"since": "-1e20"},
        {"since": "0001-01-01T00:00:00+01:00"},  # 23:00 UTC on the day before year 1
    ],
    ids=lambda params: "=".join(*params.items()),
)
async def test_a_time_out_of_range_is_400(quiet: Admin, path: str, params: dict[str, str]) -> None:
    """Regression: these parsed as floats, and rendering them back as times was a 500."""
    status, body = await quiet.call("GET", path, params)
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"
    [name] = params
    assert body["error"]["message"].startswith(f"{name}: ")


@pytest.mark.parametrize("path", ["/api/v1/stats", "/api/v1/upstreams/main/stats"])
async def test_stats_since_the_epoch(quiet: Admin, path: str) -> None:
    """since=0 is the UNIX epoch, not "no since" (the last 24 hours)."""
    stats = await quiet.get(path, since="0")
    assert stats["since"] == "1970-01-01T00:00:00.000Z"
