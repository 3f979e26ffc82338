"""Transactional first: a bulk backlog never delays transactional mail.

The claim order on SQLite and PostgreSQL (skipped with the reason when there
is none), then a real relay delivering to aiosmtpd sinks on loopback that are
slow for bulk mail only (its Subject starts with "bulk"): transactional mail
overtakes the backlog, keeps slots and upstream connections of its own, and
keeps the top of an upstream's rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.model import MessageClass, MessageStatus, NewMessage
from relay.queue_database import claim_due, insert_messages
from relay.store import create_engine, migrate
from relay.tables import messages as table
from tests.conftest import SITE_PASSWORD, FakeClock, RunningRelay, Sink, base_config, smtp_upstream
from tests.postgres import throwaway_database
from tests.test_delivery_engine_functional import metric, next_attempt_at
from tests.test_delivery_functional import (
    FINAL,
    SENDER,
    delivery_pass,
    plaintext_listener,
)

MakeSink = Callable[..., Awaitable[Sink]]
StartRelay = Callable[..., Awaitable[RunningRelay]]
NOW = 1_800_000_000.0  # FakeClock's default: the start of a minute


# -- The claim, on both stores.


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
        await migrate(engine)
        yield engine
        await engine.dispose()
        return
    async with throwaway_database() as url:
        engine = create_engine(url)
        try:
            await migrate(engine)
            yield engine
        finally:
            await engine.dispose()


def queued(message_id: str, kind: MessageClass, at: float) -> NewMessage:
    return NewMessage(
        id=message_id,
        site_id="shop",
        username="shop",
        client_ip="127.0.0.1",
        original_sender=SENDER,
        envelope_sender=SENDER,
        recipients=("a@example.org",),
        content=b"Subject: hi\r\n\r\nhello\r\n",
        original_headers=b"Subject: hi\r\n",
        subject="hi",
        created_at=at,
        message_class=kind,
    )


async def claim(engine: AsyncEngine, limit: int, bulk_limit: int | None = None) -> list[str]:
    async with engine.begin() as c:
        batch = await c.run_sync(
            lambda s: claim_due(
                s, owner="n", now=NOW + 60, lease_seconds=60, limit=limit, bulk_limit=bulk_limit
            )
        )
    return [m.id for m in batch]


async def test_due_transactional_mail_is_claimed_before_older_bulk_mail(
    store: AsyncEngine,
) -> None:
    bulk = [queued(f"b{i}", MessageClass.BULK, NOW + i) for i in range(4)]
    later = [queued(f"t{i}", MessageClass.TRANSACTIONAL, NOW + 10 + i) for i in range(2)]
    async with store.begin() as c:
        await c.run_sync(insert_messages, [*bulk, *later])

    assert await claim(store, limit=3) == ["t0", "t1", "b0"]  # the rest of the limit: bulk
    assert await claim(store, limit=3, bulk_limit=1) == ["b1"]  # bulk's own cap
    assert await claim(store, limit=3, bulk_limit=0) == []
    assert await claim(store, limit=3) == ["b2", "b3"]


# -- A real relay.


def slow_for_bulk(sink: Sink, seconds: float) -> None:
    """The sink answers DATA after ``seconds`` for bulk mail, at once for the rest."""
    plain = sink.handler.handle_DATA

    async def handle_data(server: Any, session: Session, envelope: Envelope) -> str:
        if b"Subject: bulk" in (envelope.original_content or b""):
            await asyncio.sleep(seconds)
        return await plain(server, session, envelope)

    sink.handler.handle_DATA = handle_data  # type: ignore[method-assign]


def mail(subject: str, bulk: bool) -> bytes:
    kind = "X-Relay-Class: bulk\r\n" if bulk else ""
    return (
        f"From: <{SENDER}>\r\nTo: a@example.org\r\nSubject: {subject}\r\n{kind}\r\nhello\r\n"
    ).encode()


async def submit(relay: RunningRelay, subjects: list[str], bulk: bool) -> list[float]:
    """Send one message per subject in one session; each one's accept time (DATA to 250)."""
    took = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        await client.login("shop", SITE_PASSWORD)
        for subject in subjects:
            started = time.monotonic()
            await client.sendmail(SENDER, ["a@example.org"], mail(subject, bulk))
            took.append(time.monotonic() - started)
    return took


def subjects(sink: Sink) -> list[str]:
    """The sink's messages' subjects, in the order they arrived."""
    found = []
    for received in sink.messages:
        line = next(x for x in received.content.split(b"\r\n") if x.startswith(b"Subject: "))
        found.append(line.removeprefix(b"Subject: ").decode())
    return found


async def most_bulk_in_flight(relay: RunningRelay, stop: asyncio.Event) -> float:
    """The highest relay_delivery_in_flight{class="bulk"} seen until ``stop``."""
    most = 0.0
    while not stop.is_set():
        most = max(most, metric(relay, "relay_delivery_in_flight", **{"class": "bulk"}) or 0.0)
        await asyncio.sleep(0.01)
    return most


def relay_config(
    tmp_path: Path, upstreams: list[dict[str, Any]], **delivery: Any
) -> dict[str, Any]:
    config = plaintext_listener(base_config(tmp_path, upstreams))
    config["delivery"].update(delivery)
    return config


async def test_transactional_mail_overtakes_a_bulk_backlog(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    slow_for_bulk(sink, 0.3)
    # 4 slots, bulk mail at most 3 of them (the default share, 0.75).
    relay = await start_relay(
        relay_config(tmp_path, [smtp_upstream("a", sink.port)], concurrency=4)
    )
    stop = asyncio.Event()
    watch = asyncio.create_task(most_bulk_in_flight(relay, stop))

    bulk_accepts = await submit(relay, [f"bulk {i}" for i in range(15)], bulk=True)
    started = time.monotonic()
    accepts = await submit(relay, [f"receipt {i}" for i in range(3)], bulk=False)
    while sum(s.startswith("receipt") for s in subjects(sink)) < 3:
        assert time.monotonic() - started < 3.0, subjects(sink)
        await sink.handler.wait_for(len(sink.messages) + 1, seconds=2)
    waited = time.monotonic() - started
    await sink.handler.wait_for(18, seconds=10)
    stop.set()

    order = subjects(sink)
    # 15 bulk at 3 x 0.3 s take 1.5 s: the receipts came well before the backlog's end.
    assert all(order.index(f"receipt {i}") < 9 for i in range(3)), order
    assert waited < 1.2
    assert max(accepts) < 0.5 and max(bulk_accepts) < 0.5  # accepting never waits for delivery
    assert await watch == 3  # bulk mail filled its share, never more
    assert metric(relay, "relay_delivery_in_flight", **{"class": "transactional"}) == 0


async def test_a_slow_bulk_burst_leaves_a_slot_for_transactional_mail(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    slow_for_bulk(sink, 1.5)
    config = relay_config(tmp_path, [smtp_upstream("a", sink.port)], concurrency=2, bulk_share=0.5)
    relay = await start_relay(config)

    await submit(relay, ["bulk 0", "bulk 1", "bulk 2"], bulk=True)
    started = time.monotonic()
    await submit(relay, ["receipt"], bulk=False)
    await sink.handler.wait_for(1, seconds=1.2)  # before the first bulk send (1.5 s) ends

    assert subjects(sink) == ["receipt"]
    assert time.monotonic() - started < 1.2
    assert metric(relay, "relay_delivery_in_flight", **{"class": "bulk"}) == 1


async def test_transactional_mail_waits_for_no_bulk_send_at_the_connection_limit(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    slow_for_bulk(sink, 0.3)
    # One connection to the upstream: 6 bulk deliveries queue for it, 1 sending.
    upstream = smtp_upstream("a", sink.port, max_connections=1)
    relay = await start_relay(relay_config(tmp_path, [upstream], concurrency=8))

    await submit(relay, [f"bulk {i}" for i in range(6)], bulk=True)
    await submit(relay, ["receipt"], bulk=False)
    await sink.handler.wait_for(7, seconds=10)

    # Behind the send under way (and at most one more that got the connection meanwhile),
    # never behind the five bulk sends waiting before it.
    assert subjects(sink).index("receipt") <= 2, subjects(sink)


async def test_bulk_mail_leaves_the_top_of_an_upstream_rate_to_transactional_mail(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    first, second = await make_sink(), await make_sink()
    upstreams = [
        smtp_upstream("a", first.port, rate_per_minute=10),  # bulk may use 8 (reserve 0.2)
        smtp_upstream("b", second.port, rate_per_minute=1),  # bulk may use 1: at least one
    ]
    clock = FakeClock(NOW)
    relay = await start_relay(relay_config(tmp_path, upstreams), clock)

    await submit(relay, [f"bulk {i}" for i in range(10)], bulk=True)
    bulk = [m.id for m in await messages(relay)]
    details = [await delivery_pass(relay, i, {*FINAL, MessageStatus.DEFERRED}) for i in bulk]
    by = {u: [d for d in details if d.recipients[0].upstream == u] for u in ("a", "b")}
    assert (len(by["a"]), len(by["b"])) == (8, 1)
    kept = "over minute limit (8/8 recipients per minute) for bulk mail, the rest is kept for "
    assert kept + "transactional mail" in by["b"][0].attempts[0].route
    [waiting] = [d for d in details if d.status is MessageStatus.DEFERRED]
    assert waiting.attempt_count == 0  # waiting for the window is no failed attempt
    assert "kept for transactional mail" in (waiting.last_error or "")
    assert await next_attempt_at(relay, waiting.id) == NOW + 60

    await submit(relay, ["receipt 0", "receipt 1"], bulk=False)
    receipts = [m.id for m in await messages(relay) if m.id not in bulk]
    for message_id in receipts:
        detail = await delivery_pass(relay, message_id, FINAL)
        assert [(t.upstream, t.outcome) for t in detail.attempts] == [("a", "sent")]
    assert len(first.messages) == 10 and len(second.messages) == 1

    relay.advance(clock, 60)  # the next minute: the waiting bulk message goes
    assert (await delivery_pass(relay, waiting.id, FINAL)).status is MessageStatus.SENT


async def messages(relay: RunningRelay) -> list[Any]:
    async with relay.app.engine.connect() as connection:
        return list(await connection.execute(sa.select(table.c.id)))
