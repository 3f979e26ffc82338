"""Retention over real traffic: final mail loses its content, then its rows, on time; waiting
mail is never touched; one process of the cluster works at a time, and another takes over.

Mail goes the real way (STARTTLS + AUTH -> the relay -> an aiosmtpd sink), on
SQLite and on PostgreSQL (skipped when there is none). A FakeClock drives the
relay's decisions, so "a few seconds" of retention are exact; housekeeping
runs are called by the test (the loop's own interval is an hour).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa
import yaml

from relay.app import RelayApp
from relay.config import RetentionConfig
from relay.core.model import MessageStatus
from relay.core.retention import RetentionPolicy
from relay.metrics import Metrics
from relay.retention_controller import Housekeeping
from relay.retention_database import content_frontier, store_size
from relay.store import GroupWriter, create_engine, migrate
from relay.tables import attempts, messages, provider_events, provider_refs, recipients
from tests.conftest import SITE_PASSWORD, FakeClock, RunningRelay, base_config, smtp_upstream
from tests.test_admin_messages_functional import Admin, mail, poll, submit, with_admin
from tests.two_nodes import start_node, store_url

__all__ = ["start_node", "store_url"]  # fixtures

SENDER = "orders@shop.example.com"
KINDS = (
    "content",
    "messages",
    "recipients",
    "attempts",
    "audit_log",
    "stats_minutes",
    "stats_rollups",
    "form_nonces",
    "idempotency_keys",
    "message_fingerprints",
    "auth_failures",
    "suppressions",
    "provider_replays",
    "webhook_outbox",
    "webhook_attempts",
)
BUSY = "451 4.2.1 mailbox busy, try later"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def deleted(app: RelayApp, kind: str) -> float:
    value = app.metrics.registry.get_sample_value("relay_retention_deleted_total", {"kind": kind})
    return value or 0.0


async def stored(app: RelayApp, message_id: str) -> tuple[bytes, float | None] | None:
    """(content, content_deleted_at) of a message as the store has it; None when it is gone."""
    async with app.engine.connect() as c:
        row = (
            await c.execute(
                sa.select(messages.c.content, messages.c.content_deleted_at).where(
                    messages.c.id == message_id
                )
            )
        ).first()
    return (bytes(row.content), row.content_deleted_at) if row is not None else None


async def children(app: RelayApp, message_id: str) -> int:
    async with app.engine.connect() as c:
        count = 0
        for table in (recipients, attempts, provider_refs, provider_events):
            found = await c.scalar(
                sa.select(sa.func.count())
                .select_from(table)
                .where(table.c.message_id == message_id)
            )
            count += int(found or 0)
    return count


async def test_final_mail_loses_content_then_rows_on_time_and_waiting_mail_stays(
    tmp_path: Path,
    store_url: str,  # before start_relay: the relay stops before its database goes
    make_sink: Any,
    start_relay: Any,
    http: aiohttp.ClientSession,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> None:
    sink = await make_sink(
        replies={
            "rcpt": {
                "bad@example.org": "550 5.1.1 no such user",
                "later@example.org": BUSY,
                "held@example.org": BUSY,
            }
        }
    )
    config = with_admin(base_config(tmp_path, [smtp_upstream("main", sink.port)]), cert_files)
    config["store"] = {"url": store_url}
    config["delivery"] = {"retry_first_seconds": 3600, "retry_max_seconds": 7200}
    config["retention"] = {
        "content_hours": 2 / 3600,  # 2 s
        "log_days": 4 / 86400,  # 4 s
        "interval_seconds": 3600,  # runs are the test's
    }
    clock = FakeClock()
    relay: RunningRelay = await start_relay(config, clock=clock)
    app = relay.app
    admin = Admin(http, app.admin_port)
    body = "\r\nthe body, which goes\r\n"
    sent = await submit(relay, client_tls, SENDER, ["alice@example.org"], mail("Sent", SENDER, "a"))
    failed = await submit(relay, client_tls, SENDER, ["bad@example.org"], mail("Bad", SENDER, "b"))
    deferred = await submit(
        relay, client_tls, SENDER, ["later@example.org"], mail("Later", SENDER, "c", body)
    )
    held = await submit(
        relay, client_tls, SENDER, ["held@example.org"], mail("Held", SENDER, "d", body)
    )
    for message_id, status in (
        (sent, "sent"),
        (failed, "failed"),
        (deferred, "deferred"),
        (held, "deferred"),
    ):
        await admin.wait_status(message_id, {status})
    assert await app.queue.hold(held) is not None
    await sink.handler.wait_for(2)  # the sent one and the DSN about the failed one
    [dsn] = await admin.ids(q="Undelivered")
    await admin.wait_status(dsn, {"sent"})
    final = (sent, failed, dsn)
    waiting = {deferred: await stored(app, deferred), held: await stored(app, held)}

    clock.advance(1.5)  # everything finished within the first half second: 1-1.5 s old
    done = await app.housekeeping.run_once()
    assert done is not None and done["content"] == 0
    clock.advance(1.5)  # 2.5-3 s: past content_hours, not log_days
    done = await app.housekeeping.run_once()
    assert done is not None and done["content"] == 3 and done["messages"] == 0
    for message_id in final:
        content, deleted_at = await stored(app, message_id) or (b"", None)
        assert deleted_at == clock.now and b"\r\n\r\n" not in content
        assert b"\r\nSubject: " in content and b"the body" not in content
        detail = await admin.get(f"/api/v1/messages/{message_id}")
        assert detail["content_deleted"] is True and detail["content_deleted_at"]
        assert "Subject:" in detail["headers"]["sent"] and detail["recipients"]
    detail = await admin.get(f"/api/v1/messages/{sent}")
    assert detail["attempts"] and detail["header_changes"]
    status, answer = await admin.call("POST", f"/api/v1/messages/{sent}/retry")
    assert status == 409, answer  # never sent again: its content is gone
    for message_id in (deferred, held):
        detail = await admin.get(f"/api/v1/messages/{message_id}")
        assert detail["content_deleted"] is False and detail["content_deleted_at"] is None
        assert await stored(app, message_id) == waiting[message_id]

    async with app.engine.begin() as c:  # what a provider said of the sent one
        await c.execute(
            provider_refs.insert().values(
                upstream="main", ref="0100018c", message_id=sent, created_at=clock.now
            )
        )
        await c.execute(
            provider_events.insert().values(
                message_id=sent, upstream="main", recipient="alice@example.org",
                kind="delivered", raw_type="Delivery", received_at=clock.now,
            )
        )  # fmt: skip
    assert await children(app, sent) == 4

    clock.advance(2)  # 4.5-5 s: past log_days
    done = await app.housekeeping.run_once()
    assert done is not None and done["messages"] == 3 and done["recipients"] == 3
    assert done["attempts"] == 3
    for message_id in final:
        status, _ = await admin.call("GET", f"/api/v1/messages/{message_id}")
        assert status == 404 and await stored(app, message_id) is None
        assert await children(app, message_id) == 0
    for message_id in (deferred, held):  # far older than both, never touched
        assert await stored(app, message_id) == waiting[message_id]
    assert deleted(app, "content") == 3 and deleted(app, "messages") == 3

    # ... and still delivered, whole, once the upstream takes them.
    sink.handler.replies = {}
    assert await app.queue.release(held) is not None
    relay.advance(clock, 7200)
    arrived = await sink.handler.wait_for(4)
    bodies = {r.rcpt_tos[0]: r.content for r in arrived[2:]}
    assert set(bodies) == {"later@example.org", "held@example.org"}
    assert all(b"\r\n\r\nthe body, which goes\r\n" in c for c in bodies.values())
    for message_id in (deferred, held):
        await admin.wait_status(message_id, {"sent"})


async def test_a_message_without_content_is_never_delivered(
    tmp_path: Path, make_sink: Any, start_relay: Any, client_tls: ssl.SSLContext, cert_files: Any
) -> None:
    """Only final messages lose content; should one waiting ever have none, it stays put."""
    sink = await make_sink(replies={"rcpt": {"later@example.org": BUSY}})
    config = base_config(tmp_path, [smtp_upstream("main", sink.port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    config["delivery"] = {"retry_first_seconds": 3600, "retry_max_seconds": 7200}
    clock = FakeClock()
    relay: RunningRelay = await start_relay(config, clock=clock)
    later = await submit(relay, client_tls, SENDER, ["later@example.org"], mail("L", SENDER, "x"))
    await wait_for_attempts(relay.app, later, 1)
    async with relay.app.engine.begin() as c:
        await c.execute(
            messages.update().where(messages.c.id == later).values(content_deleted_at=clock.now)
        )
    sink.handler.replies = {}
    relay.advance(clock, 7200)
    other = await submit(relay, client_tls, SENDER, ["bob@example.org"], mail("B", SENDER, "y"))
    await sink.handler.wait_for(1)
    assert [r.rcpt_tos for r in sink.messages] == [["bob@example.org"]]
    assert await attempt_count(relay.app, later) == 1 and other


async def attempt_count(app: RelayApp, message_id: str) -> int:
    async with app.engine.connect() as c:
        found = await c.scalar(
            sa.select(messages.c.attempt_count).where(messages.c.id == message_id)
        )
    return int(found or 0)


async def wait_for_attempts(app: RelayApp, message_id: str, count: int) -> None:
    await poll(lambda: attempt_count(app, message_id), lambda n: n >= count, "an attempt")


# -- One process at a time


async def send_many(port: int, tls: ssl.SSLContext, count: int, tag: str) -> None:
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=True, tls_context=tls, timeout=10
    ) as client:
        await client.login("shop", SITE_PASSWORD)
        for i in range(count):
            await client.sendmail(SENDER, ["alice@example.org"], mail(f"{tag} {i}", SENDER, "a"))


async def message_count(app: RelayApp) -> int:
    async with app.engine.connect() as c:
        return int(await c.scalar(sa.select(sa.func.count()).select_from(messages)) or 0)


async def test_two_nodes_never_work_at_once_and_do_nothing_twice(
    tmp_path: Path,
    make_sink: Any,
    start_node: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
    store_url: str,
) -> None:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("main", sink.port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    config["retention"] = {"content_hours": 0.5 / 3600, "log_days": 1 / 86400}
    config["retention"]["interval_seconds"] = 0.3  # the lease: 0.9 s
    a = await start_node("a", config)
    b = await start_node("b", config)
    await asyncio.gather(
        send_many(a.listeners.ports[0], client_tls, 20, "a"),
        send_many(b.listeners.ports[0], client_tls, 20, "b"),
    )
    await sink.handler.wait_for(40)
    nodes = (a, b)

    async def messages_deleted() -> float:
        return sum(deleted(n, "messages") for n in nodes)

    await poll(messages_deleted, lambda n: n >= 40, "every message deleted", 20)
    assert await message_count(a) == 0
    assert await messages_deleted() == 40  # each once, by one node or the other
    assert sum(deleted(n, "content") for n in nodes) == 40
    assert sum(deleted(n, "recipients") for n in nodes) == 40
    # The rows are gone, the statistics are not (hour counters outlive minute ones).
    [(site, _)] = (await a.reports.stats(time.time() - 3600)).sites
    assert (site.accepted, site.sent) == (40, 40)
    runs = sorted((start, end, node) for node in "ab" for start, end, _ in runs_of(nodes, node))
    assert runs and {node for _, _, node in runs} <= {"a", "b"}
    for (_, end, node), (start, _, other) in itertools.pairwise(runs):
        assert node == other or end <= start, runs  # the other node's run starts after


def runs_of(nodes: tuple[RelayApp, RelayApp], name: str) -> list[tuple[float, float, Any]]:
    return list(nodes[0 if name == "a" else 1].housekeeping.runs)


async def test_the_lease_passes_on_when_its_holder_dies_or_stops(store_url: str) -> None:
    engine = create_engine(store_url)
    await migrate(engine)
    writer = GroupWriter(engine)
    writer.start()
    clock = FakeClock()
    config = RetentionConfig(RetentionPolicy(), interval_seconds=10)  # the lease: 30 s

    def housekeeper(owner: str) -> Housekeeping:
        return Housekeeping(writer, lambda: config, 300, Metrics(), owner, clock)

    first, second = housekeeper("one:1:00000001"), housekeeper("two:2:00000002")
    try:
        assert await first.run_once() is not None and first.leading
        assert await second.run_once() is None and not second.leading
        clock.advance(29)
        assert await second.run_once() is None  # renewed at each run: still the first's
        assert await first.run_once() is not None
        clock.advance(31)  # the first is dead: it never renews again
        assert await second.run_once() is not None and second.leading
        assert await first.run_once() is None and not first.leading
        await second.stop()  # a clean stop: the lease is free at once
        assert await first.run_once() is not None
    finally:
        await writer.close()
        await engine.dispose()


async def test_a_new_sqlite_store_gives_freed_pages_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await migrate(engine)
    writer = GroupWriter(engine)
    writer.start()
    clock = FakeClock()
    config = RetentionConfig(RetentionPolicy(content_hours=1, log_days=1), interval_seconds=60)
    metrics = Metrics()
    housekeeping = Housekeeping(writer, lambda: config, 300, metrics, "one:1:00000001", clock)
    try:
        async with engine.begin() as c:
            assert (await c.exec_driver_sql("PRAGMA auto_vacuum")).scalar() == 2  # incremental
            await c.execute(messages.insert(), [old_message(i, clock.now) for i in range(1500)])
        full = await writer.read_apart(store_size)
        assert await housekeeping.run_once() == dict.fromkeys(KINDS, 0)  # nothing is old yet
        sample = metrics.registry.get_sample_value
        assert sample("relay_messages", {"status": "sent"}) == 1500
        assert sample("relay_messages", {"status": "held"}) == 0
        assert sample("relay_store_size_bytes") == full.size_bytes
        clock.advance(86_401)
        done = await housekeeping.run_once()
        assert done is not None and done["messages"] == 1500
        after = await writer.read_apart(store_size)
        assert after.size_bytes < full.size_bytes / 5  # 1500 pages and more went back
        assert after.free_bytes <= full.size_bytes / 10 + 4096  # a tenth stays free, at most
    finally:
        await writer.close()
        await engine.dispose()


def old_message(number: int, now: float) -> dict[str, Any]:
    return {
        "id": f"m{number:08d}",
        "site_id": "shop",
        "client_ip": "192.0.2.1",
        "original_sender": SENDER,
        "envelope_sender": SENDER,
        "size": 3000,
        "content": b"Subject: x\r\n\r\n" + b"x" * 3000,
        "original_headers": b"Subject: x\r\n",
        "status": "sent",
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
    }


async def test_a_new_holder_finds_where_content_deletion_stopped(store_url: str) -> None:
    """Bisection over (status, updated_at): a few lookups, not a walk over the done rows."""
    engine = create_engine(store_url)
    await migrate(engine)
    try:
        rows = [old_message(i, 1_000_000.0 + 10 * i) for i in range(1000)]
        for i, row in enumerate(rows):
            row["content_deleted_at"] = 2_000_000.0 if i < 600 else None
        async with engine.begin() as c:
            await c.execute(messages.insert(), rows)
        async with engine.connect() as c:
            found = await c.run_sync(
                lambda s: content_frontier(s, MessageStatus.SENT, before=3_000_000.0)
            )
            none = await c.run_sync(
                lambda s: content_frontier(s, MessageStatus.FAILED, before=3_000_000.0)
            )
        assert found is not None and 1_000_000.0 + 10 * 598 <= found <= 1_000_000.0 + 10 * 599
        assert none is None
    finally:
        await engine.dispose()


async def test_a_reload_changes_retention_at_once(tmp_path: Path, start_relay: Any) -> None:
    config = base_config(tmp_path, [smtp_upstream("main", 2525)])
    relay: RunningRelay = await start_relay(config)
    assert relay.app.config.retention.policy.content_hours == 168
    config["retention"] = {"content_hours": 24, "log_days": 7}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = relay.app.reload()
    assert not result.problems and "retention" not in result.restart_needed
    assert relay.app.config.retention.policy == RetentionPolicy(24, 7)
