"""Webhooks against a relay running in-process: real HTTP receivers on loopback, the admin API.

Events are written to the outbox the way the relay's writers do it (the
subscriptions' fan-out, `add_to_outbox` in a store transaction) or queued
with the API's test event. Backoff is driven by the relay's injected clock
(FakeClock), never by a test-only setting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.core.outbound_events import Event, EventType, event, message_event
from relay.outbox_database import add_to_outbox
from tests.conftest import FakeClock, RunningRelay, base_config, smtp_upstream, write_config
from tests.test_admin_api_functional import TOKEN, Admin
from tests.test_webhook_signing import Refused, spec_verify
from tests.webhook_receiver import receiving

SECRET = "whsec_" + base64.b64encode(b"relay-webhook-test-secret-32byte").decode()
V1 = "/api/v1"


def hook(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "secret": SECRET, **extra}


def config(
    tmp_path: Path, webhooks: list[dict[str, Any]], private: bool = True, **events: Any
) -> dict[str, Any]:
    c = base_config(tmp_path, [smtp_upstream("sink", 2525)])
    c["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    c["events"] = {"allow_private_targets": private, **events}
    c["webhooks"] = webhooks
    return c


@pytest.fixture
async def admin_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def write_events(relay: RunningRelay, events: list[Event]) -> None:
    """As the relay's writers do: fan out to who wants them, in a store transaction."""
    entries = relay.app.webhooks.subscriptions().fan_out(events)
    await relay.app.writer.write_sync(lambda c: add_to_outbox(c, entries))
    relay.app.webhook_dispatcher.wake()


def message_events(now: float, messages: int, types: list[EventType]) -> list[Event]:
    return [
        message_event(t, now, os.urandom(10), message_id=f"m{m}", site="shop", recipient="b@x.org")
        for t in types
        for m in range(messages)
    ]


def counted(relay: RunningRelay, webhook: str, outcome: str) -> float:
    value: float = relay.app.metrics.webhook_deliveries.labels(webhook, outcome)._value.get()
    return value


async def until(condition: Any, seconds: float = 30, step: Any = None) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            if step is not None:
                step()
            await asyncio.sleep(0.05)


async def test_a_test_event_arrives_signed_as_standard_webhooks_says(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession
) -> None:
    async with receiving() as receiver:
        relay = await start_relay(config(tmp_path, [hook("app", receiver.url)]))
        admin = Admin(admin_session, relay.app.admin_port)
        answer = await admin.ok("POST", f"{V1}/webhooks/app/test", status=202)
        (got,) = await receiver.wait_accepted(1)
        assert got.headers["webhook-id"] == answer["event_id"]
        spec_verify(SECRET, got.headers, got.body, time.time())
        with pytest.raises(Refused):
            spec_verify(SECRET, got.headers, got.body.replace(b"app", b"apq"), time.time())
        assert got.headers["content-type"] == "application/json"
        assert got.headers["user-agent"].startswith("relay/")
        assert got.event["type"] == "webhook.test"
        assert got.event["data"] == {"webhook": "app"}
        await until(lambda: counted(relay, "app", "delivered") >= 1)
        log = await admin.get(f"{V1}/webhooks/app/deliveries")
        (entry,) = log["items"]
        assert entry["event_id"] == answer["event_id"] and entry["status_code"] == 200
        assert entry["error"] is None and len(entry["response"]) == 512  # its first bytes only
        assert log["next_cursor"] is None


async def test_a_receiver_down_for_a_while_gets_every_event_in_order_per_message(
    tmp_path: Path, start_relay: Any, closed_port: int
) -> None:
    clock = FakeClock()
    url = f"http://127.0.0.1:{closed_port}/hooks"
    relay = await start_relay(config(tmp_path, [hook("app", url)]), clock)
    types = [EventType.ACCEPTED, EventType.DEFERRED, EventType.DELIVERED]
    events = message_events(clock.now, 4, types)
    await write_events(relay, events)
    await until(
        lambda: counted(relay, "app", "retry") >= 4
    )  # the first event of each message: refused
    answers = iter([503] * 5)

    def step() -> None:
        relay.advance(clock, 0)
        clock.advance(700)  # past any wait of the schedule's first steps
        relay.app.webhook_dispatcher.wake()

    async with receiving(closed_port, script=lambda _: next(answers, 200)) as receiver:
        await until(lambda: len(receiver.accepted) >= len(events), step=step)
        await asyncio.sleep(0.3)  # nothing more comes
    ids = receiver.accepted_ids()
    assert sorted(ids) == sorted(e.id for e in events)  # none lost, none twice
    for m in range(4):
        order = [
            d.event["type"] for d in receiver.accepted if d.event["data"]["message_id"] == f"m{m}"
        ]
        assert order == [t.value for t in types]


async def test_max_in_flight_holds(tmp_path: Path, start_relay: Any) -> None:
    gate = asyncio.Event()
    async with receiving(gate=gate) as receiver:
        relay = await start_relay(config(tmp_path, [hook("app", receiver.url, max_in_flight=2)]))
        now = time.time()
        events = [
            event(EventType.CIRCUIT_CHANGED, now, os.urandom(10), upstream="u") for _ in range(8)
        ]
        await write_events(relay, events)
        await until(lambda: receiver.in_flight == 2)
        await asyncio.sleep(1.2)  # a poll of the dispatcher: it does not take a third
        assert receiver.most_in_flight == 2
        gate.set()
        await receiver.wait_accepted(8)
        assert receiver.most_in_flight == 2


async def test_an_endpoint_failing_too_long_is_disabled_and_the_others_are_told(
    tmp_path: Path,
    start_relay: Any,
    closed_port: int,
    admin_session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    down = f"http://127.0.0.1:{closed_port}/hooks"
    async with receiving() as watcher:
        hooks = [hook("down", down), hook("watcher", watcher.url, events=["webhook.disabled"])]
        relay = await start_relay(config(tmp_path, hooks, disable_after_hours=1), clock)
        admin = Admin(admin_session, relay.app.admin_port)
        await admin.ok("POST", f"{V1}/webhooks/down/test", status=202)
        await until(lambda: counted(relay, "down", "retry") >= 1)
        state = await admin.get(f"{V1}/webhooks/down")
        assert state["enabled"] and state["failing_since"] is not None
        with caplog.at_level(logging.WARNING, "relay.webhook_controller"):
            relay.advance(clock, 3601)
            relay.app.webhook_dispatcher.wake()
            (told,) = await watcher.wait_accepted(1)
        assert told.event["type"] == "webhook.disabled"
        assert told.event["data"]["webhook"] == "down"
        assert any("webhook down disabled" in r.getMessage() for r in caplog.records)
        state = await admin.get(f"{V1}/webhooks/down")
        assert not state["enabled"] and "failing for 1.0 h" in state["disabled_reason"]
        assert not relay.app.webhooks.subscriptions().wants_any(EventType.ACCEPTED) or all(
            s.name != "down" or not s.enabled for s in relay.app.webhooks.subscriptions().endpoints
        )
        refused = await admin.call("POST", f"{V1}/webhooks/down/test")
        assert "is disabled" in refused.error(409, "conflict")["message"]
        state = await admin.ok("PATCH", f"{V1}/webhooks/down", {"enabled": True})
        assert state["enabled"] and state["failing_since"] is None


async def test_replay_sends_again_with_the_same_ids(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession
) -> None:
    async with receiving() as receiver:
        relay = await start_relay(config(tmp_path, [hook("app", receiver.url)]))
        admin = Admin(admin_session, relay.app.admin_port)
        since = time.time() - 1
        ids = [
            (await admin.ok("POST", f"{V1}/webhooks/app/test", status=202))["event_id"]
            for _ in range(3)
        ]
        await receiver.wait_accepted(3)
        answer = await admin.ok("POST", f"{V1}/webhooks/app/replay", {"since": since})
        assert answer == {"name": "app", "queued": 3}
        await receiver.wait_accepted(6)
        assert sorted(receiver.accepted_ids()) == sorted(ids * 2)
        first, again = receiver.accepted[:3], receiver.accepted[3:]
        assert sorted(d.body for d in first) == sorted(d.body for d in again)  # same bodies
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since + 3600))
        assert await admin.ok("POST", f"{V1}/webhooks/app/replay", {"since": iso}) == {
            "name": "app",
            "queued": 0,
        }
        bad = await admin.call("POST", f"{V1}/webhooks/app/replay", {"since": "yesterday"})
        assert "since: not a time" in bad.error(400, "bad_request")["message"]
        bad = await admin.call("POST", f"{V1}/webhooks/app/replay", {})
        assert "since: required" in bad.error(400, "bad_request")["message"]


async def test_the_delivery_log_pages_newest_first(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession
) -> None:
    async with receiving(status=500) as receiver:
        relay = await start_relay(config(tmp_path, [hook("app", receiver.url)]))
        admin = Admin(admin_session, relay.app.admin_port)
        for _ in range(5):
            await admin.ok("POST", f"{V1}/webhooks/app/test", status=202)
        await receiver.wait_got(5)
        await until(lambda: counted(relay, "app", "retry") >= 5)
        seen: list[dict[str, Any]] = []
        path = f"{V1}/webhooks/app/deliveries?page_size=2"
        while True:
            page = await admin.get(path)
            assert len(page["items"]) <= 2
            seen += page["items"]
            if page["next_cursor"] is None:
                break
            path = f"{V1}/webhooks/app/deliveries?page_size=2&cursor={page['next_cursor']}"
        assert len(seen) == 5 and len({s["event_id"] for s in seen}) == 5
        assert [s["at"] for s in seen] == sorted((s["at"] for s in seen), reverse=True)
        assert all(s["status_code"] == 500 for s in seen)
        bad = await admin.call("GET", f"{V1}/webhooks/app/deliveries?cursor=xyz")
        assert "cursor" in bad.error(400, "bad_request")["message"]
        bad = await admin.call("GET", f"{V1}/webhooks/app/deliveries?page_size=0")
        assert "page_size" in bad.error(400, "bad_request")["message"]
        missing = await admin.call("GET", f"{V1}/webhooks/nope/deliveries")
        missing.error(404, "not_found")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "169.254.169.254", "[::ffff:127.0.0.1]"]
)
async def test_loopback_and_metadata_targets_are_refused_by_default(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession, host: str
) -> None:
    async with receiving() as receiver:
        url = receiver.url.replace("127.0.0.1", host)
        if host == "169.254.169.254":
            url = "http://169.254.169.254/latest/meta-data/"
        relay = await start_relay(config(tmp_path, [hook("app", url)], private=False))
        admin = Admin(admin_session, relay.app.admin_port)
        await admin.ok("POST", f"{V1}/webhooks/app/test", status=202)
        await until(lambda: counted(relay, "app", "retry") >= 1)
        (entry,) = (await admin.get(f"{V1}/webhooks/app/deliveries"))["items"]
        assert entry["status_code"] is None
        assert entry["error"].startswith("refused target: ")
        assert "address" in entry["error"] and "events.allow_private_targets" in entry["error"]
        assert receiver.got == []


async def test_the_api_refuses_a_url_at_a_refused_address_at_once(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession
) -> None:
    relay = await start_relay(config(tmp_path, [], private=False))
    admin = Admin(admin_session, relay.app.admin_port)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8025/api/v1/"):
        reply = await admin.call("POST", f"{V1}/webhooks", {"name": "x", "url": url})
        (problem,) = reply.error(422, "invalid")["problems"]
        assert problem.startswith("webhook.url: ") and "address" in problem
    await admin.ok("POST", f"{V1}/webhooks", {"name": "x", "url": "https://8.8.8.8/"}, status=201)
    reply = await admin.call("PATCH", f"{V1}/webhooks/x", {"url": "http://[::1]/"})
    assert "loopback address" in reply.error(422, "invalid")["problems"][0]


async def test_the_api_makes_endpoints_and_shows_a_secret_once(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession
) -> None:
    async with receiving() as receiver:
        relay = await start_relay(config(tmp_path, [hook("file", receiver.url)]))
        admin = Admin(admin_session, relay.app.admin_port)
        made = await admin.ok(
            "POST",
            f"{V1}/webhooks",
            {"name": "api", "url": receiver.url, "events": ["message.bounced"]},
            status=201,
        )
        secret = made["secret"]
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
        assert made["managed_by"] == "api" and made["enabled"] and made["secret_set"]
        shown = await admin.get(f"{V1}/webhooks/api")
        listed = await admin.get(f"{V1}/webhooks")
        assert "secret" not in shown and secret not in str(listed)
        assert [w["name"] for w in listed["items"]] == ["api", "file"]
        assert [w["managed_by"] for w in listed["items"]] == ["api", "file"]
        # Sealed at rest: not in the store in clear.
        data = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("relay.db*"))
        assert secret.encode() not in data and secret[6:].encode() not in data
        with sqlite3.connect(tmp_path / "data" / "relay.db") as db:
            (sealed,) = db.execute("SELECT secret_sealed FROM webhooks").fetchone()
        assert secret.encode() not in sealed

        # The test event is signed with the secret shown once.
        event_id = (await admin.ok("POST", f"{V1}/webhooks/api/test", status=202))["event_id"]
        (got,) = await receiver.wait_accepted(1)
        assert got.headers["webhook-id"] == event_id
        spec_verify(secret, got.headers, got.body, time.time())
        rotated = await admin.ok("POST", f"{V1}/webhooks/api/rotate-secret")
        assert rotated["secret"] != secret
        await admin.ok("POST", f"{V1}/webhooks/api/test", status=202)
        got = (await receiver.wait_accepted(2))[1]
        spec_verify(rotated["secret"], got.headers, got.body, time.time())
        with pytest.raises(Refused):
            spec_verify(secret, got.headers, got.body, time.time())

        changed = await admin.ok(
            "PATCH", f"{V1}/webhooks/api", {"sites": ["shop"], "max_in_flight": 1}
        )
        assert changed["sites"] == ["shop"] and changed["max_in_flight"] == 1
        assert changed["events"] == ["message.bounced"]
        assert (
            relay.app.webhooks.subscriptions()
            .fan_out(
                [
                    message_event(
                        EventType.BOUNCED, 1.0, os.urandom(10), message_id="m", site="other"
                    )
                ]
            )[0]
            .webhook
            == "file"
        )  # "api" takes only shop's
        await admin.ok("DELETE", f"{V1}/webhooks/api", status=204)
        (await admin.call("GET", f"{V1}/webhooks/api")).error(404, "not_found")


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        (
            {"name": "x", "url": "ftp://a.example.com/"},
            422,
            "invalid",
            "webhook.url: must be an http",
        ),
        (
            {"name": "x", "url": "https://a.example.com/", "events": ["nope"]},
            422,
            "invalid",
            "webhook.events[0]: not an event type: 'nope'",
        ),
        (
            {"name": "x", "url": "https://a.example.com/", "secret": "plain"},
            422,
            "invalid",
            "webhook.secret: must start with whsec_",
        ),
        (
            {"name": "x", "url": "https://a.example.com/", "secret_env": "HOME"},
            422,
            "invalid",
            "webhook.secret_env: not accepted through the API",
        ),
        ({"url": "https://a.example.com/"}, 422, "invalid", "webhook.name: is required"),
        (
            {"name": "x", "url": "https://a.example.com/", "max_in_flight": 0},
            422,
            "invalid",
            "webhook.max_in_flight: must be at least 1",
        ),
        ({"name": "file", "url": "https://a.example.com/"}, 409, "conflict", "managed by"),
    ],
)
async def test_bad_input_gets_a_clear_4xx(
    tmp_path: Path,
    start_relay: Any,
    admin_session: aiohttp.ClientSession,
    body: dict[str, Any],
    status: int,
    code: str,
    says: str,
) -> None:
    relay = await start_relay(config(tmp_path, [hook("file", "https://app.example.com/")]))
    admin = Admin(admin_session, relay.app.admin_port)
    error = (await admin.call("POST", f"{V1}/webhooks", body)).error(status, code)
    assert says in error["message"] + " ".join(error.get("problems", []))


async def test_the_files_endpoints_are_read_only_but_can_be_enabled(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession
) -> None:
    relay = await start_relay(config(tmp_path, [hook("file", "https://app.example.com/")]))
    admin = Admin(admin_session, relay.app.admin_port)
    for method, body in (("PATCH", {"url": "https://b.example.com/"}), ("DELETE", None)):
        reply = await admin.call(method, f"{V1}/webhooks/file", *([body] if body else []))
        assert "managed by" in reply.error(409, "conflict")["message"]
    (await admin.call("POST", f"{V1}/webhooks/file/rotate-secret")).error(409, "conflict")
    off = await admin.ok("PATCH", f"{V1}/webhooks/file", {"enabled": False})
    assert not off["enabled"] and off["disabled_reason"] == "disabled by ops"
    assert not relay.app.webhooks.subscriptions().wants_any(EventType.ACCEPTED)
    on = await admin.ok("PATCH", f"{V1}/webhooks/file", {"enabled": True})
    assert on["enabled"] and relay.app.webhooks.subscriptions().wants_any(EventType.ACCEPTED)
    bad = await admin.call("PATCH", f"{V1}/webhooks/file", {"enabled": "yes"})
    assert "enabled: must be true or false" in " ".join(bad.error(422, "invalid")["problems"])


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_snippet(language: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Verifying the signature\n", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)
    return str(code)


async def test_readmes_verifiers_accept_the_relays_requests_and_refuse_tampered_ones(
    tmp_path: Path, start_relay: Any, admin_session: aiohttp.ClientSession
) -> None:
    async with receiving() as receiver:
        relay = await start_relay(config(tmp_path, [hook("app", receiver.url)]))
        await Admin(admin_session, relay.app.admin_port).ok(
            "POST", f"{V1}/webhooks/app/test", status=202
        )
        (got,) = await receiver.wait_accepted(1)
    tampered = got.body.replace(b"webhook.test", b"webhook.tesT")
    python: dict[str, Any] = {}
    exec(readme_snippet("python"), python)  # noqa: S102  (README's own example)
    assert python["verify"](SECRET, got.headers, got.body) is True
    assert python["verify"](SECRET, got.headers, tampered) is False
    old = {**got.headers, "webhook-timestamp": str(int(time.time()) - 600)}
    assert python["verify"](SECRET, old, got.body) is False

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: README's Node.js example not run")
    script = tmp_path / "verify.js"
    script.write_text(
        readme_snippet("js")
        + "\nconst [secret, headers, body] = process.argv.slice(2);\n"
        + 'console.log(verify(secret, JSON.parse(headers), Buffer.from(body, "base64")));\n'
    )
    for body, expected in ((got.body, "true"), (tampered, "false")):
        result = await asyncio.to_thread(
            subprocess.run,
            [node, str(script), SECRET, json.dumps(got.headers), base64.b64encode(body).decode()],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout.strip() == expected, result.stderr


async def test_a_reload_applies_the_files_endpoints(tmp_path: Path, start_relay: Any) -> None:
    relay = await start_relay(config(tmp_path, []))
    assert not relay.app.webhooks.subscriptions().wants_any(EventType.DELIVERED)
    changed = config(
        tmp_path, [hook("app", "https://app.example.com/", events=["message.delivered"])]
    )
    write_config(tmp_path, changed)
    result = relay.app.reload()
    assert result.problems == [] and "events" not in result.restart_needed
    assert relay.app.webhooks.subscriptions().wants_any(EventType.DELIVERED)
    assert not relay.app.webhooks.subscriptions().wants_any(EventType.BOUNCED)
