"""The message log on a real store: search filters, paging, headers, site and upstream stats.

Every test runs on a temporary SQLite file and, when one answers at
127.0.0.1:5432, on a throwaway PostgreSQL database (skipped with the reason
otherwise), as in test_store_postgres_functional.py; the PostgreSQL database
is created and migrated once for the module and emptied before each test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from relay import message_log_database as message_log
from relay.core.model import (
    Attempt,
    MessageClass,
    MessageStatus,
    NewMessage,
    RecipientStatus,
    SmtpReply,
)
from relay.core.rollups import duration_bucket
from relay.message_log_database import (
    MessageHeaders,
    MessageQuery,
    MessageSummary,
    SearchPage,
    SiteStats,
    UpstreamStats,
    message_headers,
    search_messages,
)
from relay.queue_database import DeliveryRecord, RecipientState, hold, insert_messages
from relay.queue_database import record_delivery as write_record
from relay.rollup_database import rollup_stats
from relay.store import create_engine, migrate
from relay.tables import metadata
from tests.stats_from_rows import site_stats_from_rows, upstream_stats_from_rows

POSTGRES_URL = os.environ.get(
    "RELAY_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
T = 1_800_000_000.0  # 2027-01-15 08:00 UTC
OK = SmtpReply(250, "2.0.0 OK")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this module, migrated once (skips when none answers)."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_postgres(f'CREATE DATABASE "{name}"', migrate_name=name))
    except (OSError, sa.exc.SQLAlchemyError) as error:
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {type(error).__name__}")
    yield _database_url(name)
    asyncio.run(_postgres(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _database_url(name: str) -> str:
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


async def _postgres(statement: str, migrate_name: str | None = None) -> None:
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(sa.text(statement))
    finally:
        await admin.dispose()
    if migrate_name is not None:
        engine = create_engine(_database_url(migrate_name))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/relay.db"
    return str(request.getfixturevalue("postgres_url"))  # outside any event loop: it runs one


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(store_url)
    await migrate(engine)  # a new SQLite file; a no-op on the module's PostgreSQL database
    async with engine.begin() as c:  # that database is shared: start empty
        for table in reversed(metadata.sorted_tables):
            await c.execute(table.delete())
    yield engine
    await engine.dispose()


def new_message(
    message_id: str,
    created_at: float = T,
    *,
    site: str = "shop",
    subject: str = "Your order",
    sender: str = "orders@shop.example.com",
    recipients: tuple[str, ...] = ("a@example.org",),
    message_class: MessageClass = MessageClass.TRANSACTIONAL,
) -> NewMessage:
    return NewMessage(
        id=message_id,
        site_id=site,
        username=site,
        client_ip="127.0.0.1",
        original_sender=sender,
        envelope_sender="bounces@example.com",
        recipients=recipients,
        content=b"From: Sales <sales@example.com>\r\nSubject: "
        + subject.encode()
        + b"\r\n\r\nhi\r\n",
        original_headers=b"From: <" + sender.encode() + b">\r\nSubject: " + subject.encode(),
        subject=subject,
        created_at=created_at,
        message_class=message_class,
    )


async def insert(engine: AsyncEngine, *batch: NewMessage) -> None:
    async with engine.begin() as c:
        await c.run_sync(insert_messages, batch)


async def record(
    engine: AsyncEngine,
    message_id: str,
    *,
    now: float = T + 10,
    states: Sequence[tuple[str, RecipientStatus, str | None]] = (),
    attempts: Sequence[Attempt] = (),
    retry_at: float | None = None,
    last_error: str | None = None,
) -> None:
    """One delivery pass: recipient (address, status, upstream) updates and attempt rows."""
    updates = tuple(
        RecipientState(address, status, upstream, None, None)
        for address, status, upstream in states
    )
    async with engine.begin() as c:
        await c.run_sync(
            write_record,
            DeliveryRecord(message_id, tuple(attempts), updates, retry_at, last_error, now),
        )


def attempt(
    upstream: str,
    outcome: str,
    recipients: tuple[str, ...],
    started_at: float = T + 5,
    duration: float = 0.5,
) -> Attempt:
    return Attempt(upstream, started_at, duration, OK, outcome, recipients)


async def search(engine: AsyncEngine, **filters: object) -> tuple[list[str], int]:
    """Ids of the page, and the total."""
    async with engine.connect() as c:
        found = await search_messages(c, MessageQuery(**filters))  # type: ignore[arg-type]
    assert found.total_exact and found.complete  # a few messages: nothing is cut short
    items, total = found.items, found.total
    return [item.id for item in items], total


async def one_of_each_status(engine: AsyncEngine, step: float = 1.0) -> None:
    """m-queued .. m-partial, one per status, created ``step`` seconds apart (queued oldest)."""
    await insert(
        engine,
        new_message("m-queued", T),
        new_message("m-held", T + step),
        new_message("m-deferred", T + 2 * step),
        new_message("m-sent", T + 3 * step),
        new_message("m-failed", T + 4 * step),
        new_message("m-partial", T + 5 * step, recipients=("a@example.org", "b@example.org")),
    )
    async with engine.begin() as c:
        await hold(c, "m-held", T + 10)
    await record(engine, "m-deferred", retry_at=T + 600, last_error="421 busy")
    await record(engine, "m-sent", states=[("a@example.org", RecipientStatus.SENT, "ses")])
    await record(engine, "m-failed", states=[("a@example.org", RecipientStatus.FAILED, "ses")])
    await record(
        engine,
        "m-partial",
        states=[
            ("a@example.org", RecipientStatus.SENT, "ses"),
            ("b@example.org", RecipientStatus.FAILED, "ses"),
        ],
    )


# -- search_messages


async def test_summary_carries_every_field(engine: AsyncEngine) -> None:
    await insert(
        engine,
        new_message(
            "m1",
            recipients=("z@example.org", "a@example.org", "m@example.org"),
            message_class=MessageClass.BULK,
        ),
    )
    await record(
        engine,
        "m1",
        states=[("z@example.org", RecipientStatus.SENT, "ses")],
        attempts=[attempt("ses", "sent", ("z@example.org",)), attempt("mg", "retry", ("a@x",))],
        retry_at=T + 300,
        last_error="421 4.7.0 later",
    )
    async with engine.connect() as c:
        found = await search_messages(c, MessageQuery())
    items, total = found.items, found.total
    content_size = len(new_message("m1").content)
    assert total == 1
    assert items == [
        MessageSummary(
            id="m1",
            site_id="shop",
            status=MessageStatus.DEFERRED,
            message_class=MessageClass.BULK,
            original_sender="orders@shop.example.com",
            envelope_sender="bounces@example.com",
            subject="Your order",
            size=content_size,
            recipients=("z@example.org", "a@example.org", "m@example.org"),  # as given, not sorted
            created_at=T,
            updated_at=T + 10,
            next_attempt_at=T + 300,
            attempt_count=1,
            last_error="421 4.7.0 later",
        )
    ]


async def test_next_attempt_is_none_only_when_final(engine: AsyncEngine) -> None:
    await one_of_each_status(engine)
    async with engine.connect() as c:
        items = (await search_messages(c, MessageQuery())).items
    due = {item.id: item.next_attempt_at for item in items}
    assert due == {
        "m-queued": T,
        "m-held": T + 1,  # held keeps its schedule for when it is released
        "m-deferred": T + 600,
        "m-sent": None,
        "m-failed": None,
        "m-partial": None,
    }


async def test_newest_first_then_id_descending(engine: AsyncEngine) -> None:
    await insert(
        engine,
        new_message("b", T),
        new_message("a", T),
        new_message("c", T),
        new_message("z", T - 1),
    )
    assert await search(engine) == (["c", "b", "a", "z"], 4)


async def test_empty_store(engine: AsyncEngine) -> None:
    assert await search(engine) == ([], 0)
    assert await search(engine, page=3) == ([], 0)


@pytest.mark.parametrize("status", list(MessageStatus))
async def test_status_filter(engine: AsyncEngine, status: MessageStatus) -> None:
    await one_of_each_status(engine)
    assert await search(engine, status=status) == ([f"m-{status.value}"], 1)


async def test_site_filter(engine: AsyncEngine) -> None:
    await insert(
        engine,
        new_message("s1", T, site="shop"),
        new_message("b1", T + 1, site="blog"),
        new_message("s2", T + 2, site="shop"),
    )
    assert await search(engine, site="shop") == (["s2", "s1"], 2)
    assert await search(engine, site="blog") == (["b1"], 1)
    assert await search(engine, site="Shop") == ([], 0)  # site ids are exact
    assert await search(engine, site="nope") == ([], 0)


async def test_upstream_filter_by_attempt_or_recipient(engine: AsyncEngine) -> None:
    await insert(
        engine,
        new_message("tried", T),
        new_message("delivered", T + 1),
        new_message("both", T + 2),
        new_message("untouched", T + 3),
    )
    # Only an attempt: ses refused for now, nothing recorded on the recipient.
    await record(
        engine, "tried", attempts=[attempt("ses", "retry", ("a@example.org",))], retry_at=T + 60
    )
    # Only the recipient: no attempt row (e.g. written by a pass that records no attempts).
    await record(engine, "delivered", states=[("a@example.org", RecipientStatus.SENT, "mg")])
    await record(
        engine,
        "both",
        states=[("a@example.org", RecipientStatus.SENT, "mg")],
        attempts=[
            attempt("ses", "retry", ("a@example.org",)),
            attempt("mg", "sent", ("a@example.org",)),
        ],
    )
    assert await search(engine, upstream="ses") == (["both", "tried"], 2)
    assert await search(engine, upstream="mg") == (["both", "delivered"], 2)
    assert await search(engine, upstream="other") == ([], 0)
    assert await search(engine, upstream="se") == ([], 0)  # exact name, not a substring


async def test_recipient_filter_is_exact_and_case_insensitive(engine: AsyncEngine) -> None:
    await insert(
        engine,
        new_message("m1", T, recipients=("Alice@Example.org", "bob@example.org")),
        new_message("m2", T + 1, recipients=("alice@example.org.evil",)),
        new_message("m3", T + 2, recipients=("a_b@example.org",)),
        new_message("m4", T + 3, recipients=("axb@example.org",)),
    )
    assert await search(engine, recipient="alice@example.org") == (["m1"], 1)
    assert await search(engine, recipient="ALICE@EXAMPLE.ORG") == (["m1"], 1)
    assert await search(engine, recipient="BOB@example.org") == (["m1"], 1)
    assert await search(engine, recipient="alice") == ([], 0)
    assert await search(engine, recipient="a_b@example.org") == (["m3"], 1)
    assert await search(engine, recipient="a%@example.org") == ([], 0)


async def test_a_message_with_many_matching_recipients_counts_once(engine: AsyncEngine) -> None:
    await insert(engine, new_message("m1", recipients=("x@example.org", "X@example.org")))
    await record(
        engine,
        "m1",
        states=[
            ("x@example.org", RecipientStatus.SENT, "ses"),
            ("X@example.org", RecipientStatus.SENT, "ses"),
        ],
        attempts=[attempt("ses", "sent", ("x@example.org",))] * 2,
    )
    assert await search(engine, recipient="x@example.org") == (["m1"], 1)
    assert await search(engine, upstream="ses") == (["m1"], 1)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("order", ["by-subject"]),
        ("INVOICE", ["by-sender"]),
        ("msg-77", ["msg-77"]),
        ("77", ["msg-77"]),
        ("", ["msg-77", "by-sender", "by-subject"]),  # empty: no filter
        ("nothing", []),
    ],
)
async def test_q_matches_subject_sender_or_id(
    engine: AsyncEngine, q: str, expected: list[str]
) -> None:
    await insert(
        engine,
        new_message("by-subject", T, subject="Your ORDER shipped", sender="x@shop.example.com"),
        new_message("by-sender", T + 1, subject="Hello", sender="Invoices@shop.example.com"),
        new_message("msg-77", T + 2, subject="Hello", sender="x@shop.example.com"),
    )
    assert await search(engine, q=q) == (expected, len(expected))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("100%", ["percent"]),
        ("%", ["percent"]),
        ("a_b", ["underscore"]),
        ("_", ["underscore"]),
        ("\\", ["backslash"]),
        ("/", ["slash"]),
    ],
)
async def test_q_wildcards_are_literal(engine: AsyncEngine, q: str, expected: list[str]) -> None:
    await insert(
        engine,
        new_message("percent", T, subject="100% cotton"),
        new_message("underscore", T + 1, subject="a_b"),
        new_message("plain", T + 2, subject="axb 1000 cotton"),
        new_message("backslash", T + 3, subject="C:\\temp"),
        new_message("slash", T + 4, subject="and/or"),
    )
    assert await search(engine, q=q) == (expected, len(expected))


async def test_since_and_until_bounds(engine: AsyncEngine) -> None:
    await insert(
        engine,
        new_message("before", T - 0.001),
        new_message("at-since", T),
        new_message("middle", T + 30.5),
        new_message("just-before-until", T + 59.999),
        new_message("at-until", T + 60),
    )
    inside = ["just-before-until", "middle", "at-since"]
    assert await search(engine, since=T, until=T + 60) == (inside, 3)
    assert await search(engine, since=T) == (["at-until", *inside], 4)
    assert await search(engine, until=T) == (["before"], 1)
    assert await search(engine, since=T + 60) == (["at-until"], 1)
    assert await search(engine, since=T, until=T) == ([], 0)
    assert await search(engine, since=T + 61) == ([], 0)


async def test_filters_combine(engine: AsyncEngine) -> None:
    # "hit" passes every filter; each other message fails exactly the one it is named after.
    def shop(message_id: str, created_at: float = T + 5, **fields: object) -> NewMessage:
        fields.setdefault("subject", "Order 1")
        return new_message(message_id, created_at, **fields)  # type: ignore[arg-type]

    await insert(
        engine,
        shop("hit"),
        shop("site", site="blog"),
        shop("q", subject="Newsletter"),
        shop("since", T - 5),
        shop("until", T + 10),
        shop("recipient", recipients=("b@example.org",)),
        shop("upstream"),
        shop("status"),
    )
    for message_id in ("hit", "site", "q", "since", "until", "recipient", "upstream"):
        address = "b@example.org" if message_id == "recipient" else "a@example.org"
        upstream = "mg" if message_id == "upstream" else "ses"
        await record(
            engine,
            message_id,
            states=[(address, RecipientStatus.SENT, upstream)],
            attempts=[attempt(upstream, "sent", (address,))],
        )
    await record(
        engine, "status", attempts=[attempt("ses", "retry", ("a@example.org",))], retry_at=T + 60
    )
    query: dict[str, object] = {
        "status": MessageStatus.SENT,
        "site": "shop",
        "upstream": "ses",
        "recipient": "A@example.org",
        "q": "ORDER 1",
        "since": T,
        "until": T + 10,
    }
    assert await search(engine, **query) == (["hit"], 1)
    for name in query:
        others = {k: v for k, v in query.items() if k != name}
        assert sorted((await search(engine, **others))[0]) == sorted(["hit", name]), name
    assert await search(engine) == (await search(engine, page_size=100))
    assert (await search(engine))[1] == 8


async def test_pages(engine: AsyncEngine) -> None:
    await insert(engine, *(new_message(f"m{i}", T + i) for i in range(5)))
    assert await search(engine, page_size=2) == (["m4", "m3"], 5)
    assert await search(engine, page_size=2, page=2) == (["m2", "m1"], 5)
    assert await search(engine, page_size=2, page=3) == (["m0"], 5)
    assert await search(engine, page_size=2, page=4) == ([], 5)
    assert await search(engine, page_size=2, page=1000) == ([], 5)
    assert await search(engine, page_size=5) == (["m4", "m3", "m2", "m1", "m0"], 5)
    assert await search(engine, page_size=6, page=2) == ([], 5)
    pages = [await search(engine, page_size=1, page=p) for p in range(1, 7)]
    assert pages == [([f"m{i}"], 5) for i in (4, 3, 2, 1, 0)] + [([], 5)]


async def test_pages_of_a_filtered_search(engine: AsyncEngine) -> None:
    await insert(
        engine, *(new_message(f"m{i}", T + i, site="shop" if i % 2 else "blog") for i in range(7))
    )
    assert await search(engine, site="shop", page_size=2, page=2) == (["m1"], 3)
    assert await search(engine, site="shop", page_size=2, page=3) == ([], 3)


async def test_page_recipients_belong_to_their_message(engine: AsyncEngine) -> None:
    await insert(
        engine,
        new_message("m1", T, recipients=("one@example.org",)),
        new_message("m2", T + 1, recipients=("two@example.org", "three@example.org")),
    )
    async with engine.connect() as c:
        items = (await search_messages(c, MessageQuery(page_size=1, page=2))).items
    assert [(i.id, i.recipients) for i in items] == [("m1", ("one@example.org",))]


@pytest.mark.parametrize("paging", [{"page": 0}, {"page": -1}, {"page_size": 0}])
def test_query_refuses_pages_below_one(paging: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="start at 1"):
        MessageQuery(**paging)  # type: ignore[arg-type]


# -- message_headers


async def test_message_headers(engine: AsyncEngine) -> None:
    await insert(engine, new_message("m1", message_class=MessageClass.BULK), new_message("m2"))
    await record(engine, "m2", states=[("a@example.org", RecipientStatus.SENT, "ses")])
    async with engine.connect() as c:
        waiting = await message_headers(c, "m1")
        sent = await message_headers(c, "m2")
        missing = await message_headers(c, "nope")
    assert waiting == MessageHeaders(
        original=b"From: <orders@shop.example.com>\r\nSubject: Your order",
        sent=b"From: Sales <sales@example.com>\r\nSubject: Your order",
        created_at=T,
        original_sender="orders@shop.example.com",
        size=len(new_message("m1").content),
        message_class=MessageClass.BULK,
        next_attempt_at=T,
    )
    assert sent is not None and sent.next_attempt_at is None
    assert missing is None


# -- statistics: from the counters (rollup_stats), each answer checked against the rows

FAR = T + 30 * 86_400


async def site_stats(c: AsyncConnection, since: float, until: float = FAR) -> list[SiteStats]:
    """The counters' answer, which must be what the rows say over the same whole minutes."""
    start, end, sites, _ = await rollup_stats(c, since, until)
    assert sites == await site_stats_from_rows(c, start, end)
    return sites


async def upstream_stats(
    c: AsyncConnection, since: float, until: float = FAR
) -> list[UpstreamStats]:
    """Like site_stats; the p95 is the bound of the bucket that holds the rows' exact p95."""
    start, end, _, upstreams = await rollup_stats(c, since, until)
    exact = await upstream_stats_from_rows(c, start, end)
    assert [replace(u, p95_seconds=None) for u in upstreams] == [
        replace(u, p95_seconds=None) for u in exact
    ]
    for counted, row in zip(upstreams, exact, strict=True):
        assert row.p95_seconds is not None and counted.p95_seconds is not None
        assert counted.p95_seconds == float(duration_bucket(row.p95_seconds)[3:]) / 1000
    return upstreams


async def test_site_stats(engine: AsyncEngine) -> None:
    await one_of_each_status(engine)  # all site "shop", created T .. T+5
    await insert(
        engine,
        new_message("blog-1", T, site="blog"),
        new_message("blog-2", T, site="blog"),
        new_message("archive", T - 3600, site="archive"),  # before the window
    )
    await record(engine, "blog-1", states=[("a@example.org", RecipientStatus.SENT, "ses")])
    async with engine.connect() as c:
        stats = await site_stats(c, since=T)
    assert stats == [
        SiteStats("blog", accepted=2, sent=1, failed=0, partial=0, deferred=0, queued=1, held=0,
                  success_rate=1.0),
        SiteStats("shop", accepted=6, sent=1, failed=1, partial=1, deferred=1, queued=1, held=1,
                  success_rate=0.3333),
    ]  # fmt: skip


async def test_site_stats_window_bounds(engine: AsyncEngine) -> None:
    """The window is whole minutes: from since's minute to the one holding until."""
    await one_of_each_status(engine, step=60.0)
    async with engine.connect() as c:
        # [T+60, T+240): held, deferred, sent. T+240 (failed) is excluded.
        [inner] = await site_stats(c, since=T + 61, until=T + 181)
        [last] = await site_stats(c, since=T + 241)
        empty_after = await site_stats(c, since=T + 360)
        empty_before = await site_stats(c, since=T - 600, until=T)
        nothing = await site_stats(c, since=T, until=T)
    assert (inner.accepted, inner.held, inner.deferred, inner.sent, inner.failed) == (3, 1, 1, 1, 0)
    assert inner.success_rate == 1.0
    assert (last.accepted, last.failed, last.partial, last.success_rate) == (2, 1, 1, 0.0)
    assert empty_after == empty_before == nothing == []


async def test_site_stats_rate_is_none_without_final_messages(engine: AsyncEngine) -> None:
    await insert(engine, new_message("m1"))
    async with engine.connect() as c:
        [stats] = await site_stats(c, since=T)
    assert (stats.accepted, stats.queued, stats.success_rate) == (1, 1, None)


# -- upstream_stats


async def test_upstream_stats(engine: AsyncEngine) -> None:
    rcpts = ("a@example.org", "b@example.org", "c@example.org")
    await insert(engine, new_message("m1", recipients=rcpts), new_message("m2"))
    durations = [i / 10 for i in range(1, 21)]  # 0.1 .. 2.0 s; p95 is the 19th: 1.9
    await record(
        engine,
        "m1",
        attempts=[
            attempt("ses", "sent", rcpts[:2], duration=durations[0]),
            attempt("ses", "failed", rcpts[2:], duration=durations[1]),
            attempt("mg", "retry", rcpts, duration=1.0),
            attempt("mg", "defer", rcpts[:1], duration=2.0),
            attempt("mg", "sent", rcpts[:2], duration=3.0),
        ],
        retry_at=T + 60,
    )
    await record(
        engine,
        "m2",
        attempts=[attempt("ses", "sent", ("a@example.org",), duration=d) for d in durations[2:]],
        retry_at=T + 60,
    )
    async with engine.connect() as c:
        stats = await upstream_stats(c, since=T)
    assert stats == [
        UpstreamStats("mg", attempts=3, sent=2, failed=0, deferred=4, success_rate=0.3333,
                      average_seconds=2.0, p95_seconds=3.0),
        # The exact p95 is 1.9 s: its bucket is (1.5 s, 2 s].
        UpstreamStats("ses", attempts=20, sent=20, failed=1, deferred=0, success_rate=0.9524,
                      average_seconds=1.05, p95_seconds=2.0),
    ]  # fmt: skip


async def test_upstream_stats_window_bounds(engine: AsyncEngine) -> None:
    await insert(engine, new_message("m1"))
    await record(
        engine,
        "m1",
        attempts=[
            attempt("ses", "retry", ("a@example.org",), started_at=T - 1, duration=9.0),
            attempt("ses", "sent", ("a@example.org",), started_at=T, duration=0.25),
            attempt("ses", "sent", ("a@example.org",), started_at=T + 59.5, duration=0.75),
            attempt("ses", "failed", ("a@example.org",), started_at=T + 60, duration=5.0),
        ],
        retry_at=T + 60,
    )
    async with engine.connect() as c:
        [inside] = await upstream_stats(c, since=T, until=T + 60)
        [everything] = await upstream_stats(c, since=0)
        empty = await upstream_stats(c, since=T + 120)  # T+61 would read T+60's minute
        nothing = await upstream_stats(c, since=T, until=T)
    assert inside == UpstreamStats("ses", 2, 2, 0, 0, 1.0, 0.5, 1.0)  # 0.75 s: (0.7, 1]
    assert (everything.attempts, everything.sent, everything.failed, everything.deferred) == (
        4,
        2,
        1,
        1,
    )
    assert everything.success_rate == 0.5
    assert empty == nothing == []


async def test_upstream_stats_counts_attempts_without_recipients(engine: AsyncEngine) -> None:
    """A connection that failed before RCPT concerns no recipient, but it is an attempt."""
    await insert(engine, new_message("m1"))
    await record(
        engine, "m1", attempts=[attempt("ses", "retry", (), duration=0.12345)], retry_at=T + 60
    )
    async with engine.connect() as c:
        [stats] = await upstream_stats(c, since=T)
    assert stats == UpstreamStats("ses", 1, 0, 0, 0, None, 0.1235, 0.15)  # bucket (0.1, 0.15]


# -- keyset pages (cursor) and bounded work


async def walk(engine: AsyncEngine, **filters: object) -> tuple[list[str], list[SearchPage]]:
    """Every page from the first on by next_cursor; the ids in order and the pages."""
    ids: list[str] = []
    pages: list[SearchPage] = []
    cursor = None
    for _ in range(200):  # bounded
        async with engine.connect() as c:
            found = await search_messages(c, MessageQuery(cursor=cursor, **filters))  # type: ignore[arg-type]
        pages.append(found)
        ids += [item.id for item in found.items]
        if found.next_cursor is None:
            return ids, pages
        cursor = found.next_cursor
    raise AssertionError("the cursor never ended")


async def test_cursor_pages_give_every_message_once_while_mail_arrives(
    engine: AsyncEngine,
) -> None:
    # Ties on created_at fall on page edges: the id orders them.
    await insert(engine, *(new_message(f"m{i:02d}", T + i // 3) for i in range(25)))
    seen: list[str] = []
    cursor = None
    for arriving in range(100):
        async with engine.connect() as c:
            found = await search_messages(c, MessageQuery(page_size=4, cursor=cursor))
        seen += [item.id for item in found.items]
        # New mail between pages: newer than everything, and some at the very same second.
        await insert(
            engine,
            new_message(f"new-{arriving}", T + 100 + arriving),
            new_message(f"tie-{arriving}", T + 8),
        )
        if found.next_cursor is None:
            break
        cursor = found.next_cursor
        assert found.complete and found.total_exact
    originals = sorted(f"m{i:02d}" for i in range(25))
    assert sorted(m for m in seen if m.startswith("m")) == originals
    assert len([m for m in seen if m.startswith("m")]) == 25  # each once
    assert not [m for m in seen if m.startswith("new")]  # newer than the first page: not met


async def test_a_cursor_and_filters(engine: AsyncEngine) -> None:
    await insert(
        engine,
        *(new_message(f"m{i:02d}", T + i, site=("shop", "blog")[i % 2]) for i in range(30)),
    )
    ids, pages = await walk(engine, site="blog", page_size=4)
    assert ids == [f"m{i:02d}" for i in range(29, 0, -2)]
    assert [len(p.items) for p in pages] == [4, 4, 4, 3]
    assert all(p.total == 15 and p.total_exact for p in pages)


async def test_unindexed_filters_examine_a_bounded_window(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """q, upstream and a second filter look at SCAN_ROWS messages per request, at most."""
    monkeypatch.setattr(message_log, "SCAN_ROWS", 5)
    monkeypatch.setattr(message_log, "COUNT_LIMIT", 3)
    await insert(
        engine,
        *(
            new_message(f"m{i:02d}", T + i, subject="Invoice" if i % 7 == 0 else "Hello")
            for i in range(30)
        ),
    )
    ids, pages = await walk(engine, q="invoice", page_size=2)
    assert ids == ["m28", "m21", "m14", "m07", "m00"]  # every match once, newest first
    first = pages[0]
    # The first 5 messages examined (m29..m25) hold one match: its count, not exact.
    assert ([i.id for i in first.items], first.total, first.total_exact) == (["m28"], 1, False)
    assert not first.complete and first.next_cursor == (T + 25, "m25")
    assert pages[-1].complete and pages[-1].next_cursor is None
    # No match at all: six requests of five messages each, each says where it stopped.
    nothing, pages = await walk(engine, q="no such thing")
    assert nothing == [] and len(pages) == 6
    assert [p.complete for p in pages] == [False] * 5 + [True]
    # Without unindexed filters, a total beyond COUNT_LIMIT is not counted exactly.
    async with engine.connect() as c:
        plain = await search_messages(c, MessageQuery(page_size=2))
    assert (plain.total, plain.total_exact, plain.complete) == (3, False, True)
    assert plain.next_cursor == (T + 28, "m28")


@pytest.mark.parametrize(
    "same_test",
    [
        test_recipient_filter_is_exact_and_case_insensitive,
        test_a_message_with_many_matching_recipients_counts_once,
    ],
)
async def test_a_recipient_in_many_messages_is_checked_on_the_walk(
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    same_test: Callable[[AsyncEngine], Awaitable[None]],
) -> None:
    monkeypatch.setattr(message_log, "HOT_RECIPIENT", 0)  # every address counts as hot
    await same_test(engine)
