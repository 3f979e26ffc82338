"""Disk per message, and whether a SQLite store stops growing under retention.

    python -m bench.retention_disk [--messages 3000] [--days 6] [--body 2048] [--url URL]

Fills a new SQLite store through the store layer (each message as delivery
leaves it: one recipient, one attempt, status sent), then runs housekeeping
with a FakeClock: ``--messages`` a "day", content kept one day, rows three.
Prints the bytes per message with content and after its content went, and
the file after each day: it should stop growing from the fourth day on.
``--url`` names an empty PostgreSQL database instead (sizes: pg_database_size).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import shutil
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.config import RetentionConfig
from relay.core.model import Attempt, NewMessage, RecipientStatus, SmtpReply
from relay.core.retention import DAY, RetentionPolicy
from relay.metrics import Metrics
from relay.queue_database import (
    DeliveryRecord,
    RecipientState,
    insert_messages,
    record_deliveries,
)
from relay.retention_controller import Housekeeping
from relay.retention_database import store_size
from relay.store import GroupWriter, create_engine, migrate

START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def message(number: int, body: int, now: float) -> NewMessage:
    headers = (
        f"Received: from shop.example.com (shop.example.com [192.0.2.10])\r\n"
        f"\tby relay.example.com with ESMTPSA id m{number:026d};\r\n"
        f"\tFri, 15 Jan 2027 08:00:00 +0000\r\n"
        f"From: Sales Team <sales@example.com>\r\n"
        f"Reply-To: customer{number}@shop.example.com\r\n"
        f"To: customer{number}@example.org\r\n"
        f"Subject: Your order {number} has shipped\r\n"
        f"Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n"
        f"Message-ID: <{number}.order@shop.example.com>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    ).encode()
    # Base64 of random bytes, in lines: nothing for PostgreSQL's TOAST to compress (a
    # repeated sentence shrank to almost nothing), so its figures are an upper bound.
    noise = random.Random(number).randbytes(body)  # noqa: S311 -- filler, not a secret
    noise = base64.encodebytes(noise).replace(b"\n", b"\r\n")
    text = noise[:body]
    return NewMessage(
        id=f"m{number:026d}",
        site_id="shop",
        username="shop",
        client_ip="192.0.2.10",
        original_sender="orders@shop.example.com",
        envelope_sender="sales@example.com",
        recipients=(f"customer{number}@example.org",),
        content=headers + b"\r\n" + text,
        original_headers=headers,
        subject=f"Your order {number} has shipped",
        created_at=now,
    )


def delivered(m: NewMessage, now: float) -> DeliveryRecord:
    reply = SmtpReply(250, "2.0.0 OK queued as 4ABC123DEF")
    address = m.recipients[0]
    return DeliveryRecord(
        message_id=m.id,
        attempts=(Attempt("main", now, 0.05, reply, "sent", (address,), "", "main (priority 1)"),),
        recipients=(RecipientState(address, RecipientStatus.SENT, "main", 250, reply.text),),
        retry_at=None,
        last_error=None,
        now=now,
    )


async def fill(writer: GroupWriter, first: int, count: int, body: int, now: float) -> None:
    for start in range(first, first + count, 250):
        batch = [message(n, body, now) for n in range(start, min(start + 250, first + count))]
        await writer.write_sync(lambda c, b=batch: insert_messages(c, b))  # type: ignore[misc]
        records = [delivered(m, now) for m in batch]
        await writer.write_sync(lambda c, r=records: record_deliveries(c, r))  # type: ignore[misc]


async def used(writer: GroupWriter) -> tuple[int, int]:
    size = await writer.read_apart(store_size)
    return size.size_bytes, size.free_bytes


async def autovacuum(engine: AsyncEngine) -> None:
    """PostgreSQL: what autovacuum does many times in a real day, done once here."""
    async with engine.connect() as c:
        await c.execution_options(isolation_level="AUTOCOMMIT")
        await c.exec_driver_sql("VACUUM")


async def run(messages: int, days: int, body: int, url: str | None) -> None:
    directory = Path(tempfile.mkdtemp(prefix="relay-disk-"))
    path = directory / "relay.db"
    engine = create_engine(url or f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    writer = GroupWriter(engine)
    writer.start()
    clock = Clock()
    config = RetentionConfig(RetentionPolicy(content_hours=24, log_days=3), interval_seconds=60)
    housekeeping = Housekeeping(writer, lambda: config, 300, Metrics(), "bench:1:00000001", clock)
    await housekeeping.run_once()
    empty, _ = await used(writer)
    await fill(writer, 0, messages, body, clock.now)
    size, free = await used(writer)
    with_content = (size - free - empty) / messages
    clock.now += DAY + 1
    await housekeeping.run_once()
    if url is not None:
        await autovacuum(engine)
    size, free = await used(writer)
    without = (size - free - empty) / messages
    print(
        f"{messages} messages of {body} B body: {with_content:.0f} B each with content, "
        f"{without:.0f} B after content deletion (file {size / 1e6:.1f} MB, "
        f"{free / 1e6:.1f} MB free)"
    )
    for day in range(1, days + 1):
        await fill(writer, day * messages, messages, body, clock.now)
        clock.now += DAY
        done = await housekeeping.run_once() or {}
        if url is not None:
            await autovacuum(engine)
        size, free = await used(writer)
        on_disk = await asyncio.to_thread(os.path.getsize, path) if url is None else size
        print(
            f"day {day + 1}: file {on_disk / 1e6:.1f} MB (pages {size / 1e6:.1f} MB, "
            f"free {free / 1e6:.1f} MB); content {done.get('content', 0)}, "
            f"messages {done.get('messages', 0)} deleted"
        )
    async with engine.connect() as c:
        left = await c.scalar(sa.text("SELECT count(*) FROM messages"))
    print(f"messages left: {left}")
    await writer.close()
    await engine.dispose()
    await asyncio.to_thread(shutil.rmtree, directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages a day")
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--body", type=int, default=2048, help="bytes of each body")
    parser.add_argument("--url", help="an empty PostgreSQL database (default: a new SQLite file)")
    arguments = parser.parse_args()
    asyncio.run(run(arguments.messages, arguments.days, arguments.body, arguments.url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
