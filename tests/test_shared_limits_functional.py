"""Limits and quotas shared by relays on one store: two real `relay serve` processes.

Each relay has its own config, data directory, ports and host name, and both
use one store (a SQLite file, or a throwaway PostgreSQL database at
127.0.0.1:5432, skipped with the reason when there is none). Concurrent
senders split over both relays get exactly the site's limit accepted; an
upstream's quota shared by both delivers exactly that many recipients.
"""

from __future__ import annotations

import asyncio
import signal
import smtplib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from relay.tables import messages, recipients, usage_counters
from tests.conftest import SITE_PASSWORD, Sink, base_config, smtp_upstream, write_config
from tests.postgres import throwaway_database
from tests.test_process_functional import RelayProcess

SENDERS = 4  # two per relay
PER_SENDER = 40
SITE_LIMIT = 100
UPSTREAM_LIMIT = 25
BODY = b"From: <a@shop.example.com>\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
StartRelay = Callable[[str, dict[str, Any]], RelayProcess]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """One store for both relays: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'shared' / 'relay.db'}"
        return
    async with throwaway_database() as url:
        yield url


@pytest.fixture
def start_relay(tmp_path: Path, store_url: str) -> Iterator[StartRelay]:
    """start_relay(name, config) -> a ready `relay serve` on the shared store."""
    started: list[RelayProcess] = []

    def start(name: str, config: dict[str, Any]) -> RelayProcess:
        directory = tmp_path / name
        directory.mkdir()
        config["server"] = {"hostname": f"{name}.test", "data_dir": str(directory / "data")}
        config["store"] = {"url": store_url}
        config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
        relay = RelayProcess(write_config(directory, config))
        started.append(relay)
        relay.wait_ready()  # one after the other: the first one migrates the store
        return relay

    yield start
    for relay in started:
        relay.stop(signal.SIGKILL)


def send_all(port: int, count: int) -> tuple[int, list[str]]:
    """Send ``count`` messages in one session: how many were accepted, and each refusal."""
    accepted, refused = 0, []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login("shop", SITE_PASSWORD)
        for _ in range(count):
            try:
                client.sendmail("a@shop.example.com", ["b@example.org"], BODY)
                accepted += 1
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
                refused.append(f"{error.smtp_code} {error.smtp_error.decode()}")
    return accepted, refused


async def send_concurrently(ports: list[int]) -> tuple[int, list[str]]:
    results = await asyncio.gather(
        *(asyncio.to_thread(send_all, ports[i % len(ports)], PER_SENDER) for i in range(SENDERS))
    )
    return sum(a for a, _ in results), [r for _, refused in results for r in refused]


async def counted(store_url: str, scope: str, window: str) -> dict[str, int]:
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.select(usage_counters.c.name, usage_counters.c.count).where(
                    usage_counters.c.scope == scope, usage_counters.c.window == window
                )
            )
            return {row.name: row.count for row in rows}
    finally:
        await engine.dispose()


async def states(store_url: str, table: sa.Table) -> dict[str, int]:
    """How many messages (or recipients) are in each status."""
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
            )
            return {status: int(n) for status, n in rows}
    finally:
        await engine.dispose()


async def last_errors(store_url: str) -> set[str | None]:
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.select(messages.c.last_error).where(messages.c.status != "sent")
            )
            return {row.last_error for row in rows}
    finally:
        await engine.dispose()


async def test_a_site_limit_holds_across_two_relays(
    make_sink: Callable[..., Any], start_relay: StartRelay, store_url: str
) -> None:
    sink: Sink = await make_sink()
    ports = []
    for name in ("a", "b"):
        config = base_config(Path("."), [smtp_upstream("sink", sink.port)])
        config["sites"][0]["daily_limit"] = SITE_LIMIT
        ports.append(start_relay(name, config).port or 0)

    accepted, refused = await send_concurrently(ports)

    assert accepted == SITE_LIMIT
    assert len(refused) == SENDERS * PER_SENDER - SITE_LIMIT
    reason = f"over day limit ({SITE_LIMIT}/{SITE_LIMIT} messages per day)"
    assert all(r.startswith("451 4.7.1 Site shop is ") and reason in r for r in refused), refused[
        :3
    ]
    assert (await counted(store_url, "site", "day")) == {"shop": SITE_LIMIT}
    await sink.handler.wait_for(SITE_LIMIT, seconds=60)
    assert len(sink.messages) == SITE_LIMIT


async def test_an_upstream_quota_holds_across_two_relays(
    make_sink: Callable[..., Any], start_relay: StartRelay, store_url: str
) -> None:
    sink: Sink = await make_sink()
    ports = []
    for name in ("a", "b"):
        upstream = smtp_upstream("sink", sink.port, daily_limit=UPSTREAM_LIMIT)
        ports.append(start_relay(name, base_config(Path("."), [upstream])).port or 0)
    total = SENDERS * PER_SENDER

    accepted, refused = await send_concurrently(ports)
    assert (accepted, refused) == (total, [])

    await sink.handler.wait_for(UPSTREAM_LIMIT, seconds=60)
    expected = {"sent": UPSTREAM_LIMIT, "deferred": total - UPSTREAM_LIMIT}
    # Every message had its pass: sent, or waiting for tomorrow. Polled: the passes run in
    # the other processes, and the store is all that we share with them.
    for _ in range(300):
        if await states(store_url, messages) == expected:
            break
        await asyncio.sleep(0.2)
    assert await states(store_url, messages) == expected
    assert await states(store_url, recipients) == {
        "sent": UPSTREAM_LIMIT,
        "pending": total - UPSTREAM_LIMIT,
    }
    assert len(sink.messages) == UPSTREAM_LIMIT
    assert (await counted(store_url, "upstream", "day")) == {"sink": UPSTREAM_LIMIT}
    reason = f"no upstream available (sink: over day limit ({UPSTREAM_LIMIT}/{UPSTREAM_LIMIT} "
    errors = await last_errors(store_url)
    assert all(e is not None and e.startswith(reason) for e in errors), errors
