"""Fill a relay store with N realistic messages, fast, for the store-scale benchmark.

The store is made the way `relay serve` makes it (``relay.store.create_engine``
and ``migrate`` to the newest revision), then filled through the store's
tables (SQLAlchemy Core, ``executemany`` in batches of ``BATCH`` messages,
one transaction each). While it fills, the file has no journal and no fsync:
a fill that dies leaves only a temporary file, which is discarded.

What goes in, deterministic for a seed: sites and upstreams of the bench's
config (``SITES``, ``UPSTREAMS``); ``created_at`` spread over the 30 days
before the fill's reference time, in order (ids are time-sortable, as the
relay's), plus ``RECENT_SHARE`` of them in the last hour; about 2 KB of
content each (a header block like the relay's, a body from a pool); statuses
mostly sent, some failed, partial, deferred, queued and held; 1 to 3
recipients; 1 or 2 attempts per tried message with durations and replies.
Waiting mail is not due before the reference time plus 30 days, so a relay
started on the store reads it, not delivers it. Memory stays bounded: one
batch of rows at a time, and SQLite's page cache (``CACHE_KIB``).

With a cache directory the filled store is kept as
``store-<N>-r<schema revision>-f<FILL_VERSION>.db`` beside a ``.json`` of
what the benchmark needs to know about it (reference time, a message id, an
address that occurs, ...), and used again while both match.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

import relay.store
from relay.core.ids import new_message_id
from relay.store import create_engine, migrate, restrict_sqlite_files
from relay.tables import attempts, messages, recipients

FILL_VERSION = 1  # bump when what the filler writes changes: cached stores are filled again
BATCH = 10_000  # messages per transaction
CACHE_KIB = 200_000  # SQLite page cache while filling (indexes stay in memory)
DAYS = 30
RECENT_SHARE = 0.01  # of the messages, created in the last hour (a busy hour)
WAITING_DELAY = DAYS * 86_400.0  # waiting mail is due this long after the reference time

# The bench relay's config names these (see store_scale.py): site "bench" is the load's.
SITES = ("bench", "shop", "newsletter", "accounts", "billing", "forum")
SITE_WEIGHTS = (5, 35, 25, 15, 12, 8)
UPSTREAMS = ("sink", "ses-eu", "mailgun", "backup-mx")
UPSTREAM_WEIGHTS = (55, 25, 15, 5)
MATCH_WORD = "invoice"  # in a few per cent of subjects
NO_MATCH = "zqxj-no-such-text"  # in none


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_DOMAINS = ("example.org", "example.net", "mail.example.com", "example.edu", "example.co.uk")
_FIRST = _words(
    "ada alan grace linus ken barbara edsger donald margaret john radia frances tim "
    "vint sophie hedy katherine dennis bjarne guido anita shafi leslie niklaus"
)
_LAST = _words(
    "lovelace turing hopper torvalds thompson liskov dijkstra knuth hamilton backus "
    "perlman allen berners-lee cerf wilson lamarr johnson ritchie stroustrup rossum "
    "borg goldwasser"
)
_SUBJECTS = (
    "Your order {n} has shipped",
    "Invoice INV-{n} for your {noun}",
    "Password reset for your {noun} account",
    "Welcome to {site}, {first}!",
    "Weekly digest: {n2} new {noun}s",
    "{first}, your {noun} is ready",
    "Reminder: {noun} renewal on {day}",
    "Receipt {n} - thank you",
    "New reply to \u201c{noun} {adjective}\u201d",
    "Confirm your email address",
    "{adjective} deals on {noun}s this week",
    "Your {noun} was {adjective}ly updated",
)
_NOUNS = _words("subscription ticket parcel report booking profile plan badge lesson album")
_ADJECTIVES = _words("quick final special secure monthly annual private urgent")
_DATE = "%a, %d %b %Y %H:%M:%S +0000"
_DAYS_OF_WEEK = _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
_WORDS = _words(
    "the relay keeps every message until an upstream takes it and records what each "
    "one said about it so that an operator can answer why a customer did not get an "
    "email order shipped invoice account team thanks please click link below support "
    "hours weekend delivery tracking number parcel warehouse return policy days "
    "receipt"
)

# status: share of messages older than a day, of those of the last day, of the last hour
_STATUSES = ("sent", "failed", "partial", "deferred", "queued", "held")
_OLD = (96.5, 2.5, 0.8, 0.0, 0.0, 0.2)
_DAY = (93.0, 2.5, 0.8, 3.0, 0.0, 0.7)
_HOUR = (86.0, 1.5, 0.5, 5.0, 6.0, 1.0)


@dataclass(frozen=True)
class Filled:
    """A filled store and what the benchmark reads about it."""

    path: Path
    messages: int
    revision: str
    reference_time: float  # the fill's "now": created_at are before it
    fill_seconds: float  # 0 when the store was reused
    recipients: int
    attempts: int
    sample_id: str  # a sent message with two attempts, for GET /api/v1/messages/{id}
    recipient: str  # an address some messages went to
    rollups: bool  # relay.rollup_database.rebuild_rollups ran on it
    reused: bool = False


def schema_revision() -> str:
    """The newest migration's revision: a store cached under an older one is not used."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(relay.store.__file__).parent / "migrations"))
    return str(ScriptDirectory.from_config(config).get_current_head())


def cached_name(count: int) -> str:
    return f"store-{count}-r{schema_revision()}-f{FILL_VERSION}.db"


def filled_store(
    count: int, path: Path | None, cache: Path | None, say: Any = print, seed: int = 1
) -> Filled:
    """A store of ``count`` messages: the cached one when it matches, else a new fill.

    With ``cache``, the store is there and ``path`` is ignored; without it, it is filled at
    ``path`` (which must not exist).
    """
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / cached_name(count)
        facts = _read_facts(path)
        if facts is not None:
            say(f"store: reusing {path} ({count:,} messages, filled before)")
            return _with_rollups(facts, say)
        for stale in cache.glob(f"store-{count}-r*-f*"):  # an older schema's or filler's
            if not stale.name.startswith(path.stem):
                stale.unlink()
    assert path is not None
    partial = path.with_name(path.name + ".filling")
    for leftover in _files(partial):
        leftover.unlink(missing_ok=True)
    facts = fill(partial, count, seed, say)
    for leftover in _files(partial)[1:]:
        leftover.unlink(missing_ok=True)
    partial.rename(path)
    facts = Filled(**{**asdict(facts), "path": path})
    if cache is not None:
        _write_facts(facts)
    return facts


def _files(path: Path) -> list[Path]:
    return [Path(str(path) + suffix) for suffix in ("", "-wal", "-shm", ".migrate.lock")]


def fill(path: Path, count: int, seed: int = 1, say: Any = print) -> Filled:
    """Make a store at ``path`` the relay's way and put ``count`` messages in it."""
    started = time.monotonic()
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(_migrate(url))
    engine = sa.create_engine(f"sqlite+pysqlite:///{path}")
    reference = time.time()
    generator = _Generator(random.Random(seed), reference, count)  # noqa: S311 - test data, repeatable
    try:
        with engine.connect() as connection:
            for pragma in (
                "journal_mode=OFF",
                "synchronous=OFF",
                f"cache_size=-{CACHE_KIB}",
                "temp_store=MEMORY",
            ):
                connection.exec_driver_sql(f"PRAGMA {pragma}")
            connection.commit()
            totals = _insert(connection, generator, say)
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")  # as the relay keeps it
            connection.commit()
    finally:
        engine.dispose()
    restrict_sqlite_files(url)
    facts = Filled(
        path=path,
        messages=count,
        revision=schema_revision(),
        reference_time=reference,
        fill_seconds=0.0,
        recipients=totals[0],
        attempts=totals[1],
        sample_id=generator.sample_id,
        recipient=generator.sample_recipient,
        rollups=False,
    )
    facts = _with_rollups(facts, say)
    seconds = time.monotonic() - started
    say(f"store: {count:,} messages in {seconds:.0f} s, {path.stat().st_size / 2**20:,.0f} MiB")
    return Filled(**{**asdict(facts), "fill_seconds": seconds})


def _insert(connection: sa.Connection, generator: _Generator, say: Any) -> tuple[int, int]:
    """Every batch in a transaction of its own; how many recipients and attempts."""
    started = time.monotonic()
    done = recipient_rows = attempt_rows = 0
    for rows, rcpts, tries in generator.batches(BATCH):
        with connection.begin():
            connection.execute(messages.insert(), rows)
            connection.execute(recipients.insert(), rcpts)
            if tries:
                connection.execute(attempts.insert(), tries)
        done += len(rows)
        recipient_rows += len(rcpts)
        attempt_rows += len(tries)
        if done % (BATCH * 20) == 0 or done == generator.count:
            rate = done / max(time.monotonic() - started, 1e-9)
            say(f"store: {done:,} of {generator.count:,} messages ({rate:,.0f}/s)")
    return recipient_rows, attempt_rows


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def _with_rollups(facts: Filled, say: Any) -> Filled:
    """Rebuild the per-minute rollups when this relay has them and the store has none yet."""
    try:
        from relay import rollup_database  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        say("store: rollups absent (no relay.rollup_database.rebuild_rollups in this tree)")
        return facts
    if facts.rollups:
        return facts
    rebuild = rollup_database.rebuild_rollups
    started = time.monotonic()
    if inspect.iscoroutinefunction(rebuild):
        asyncio.run(_rebuild_async(facts.path, rebuild))
    else:
        engine = sa.create_engine(f"sqlite+pysqlite:///{facts.path}")
        try:
            with engine.begin() as connection:
                rebuild(connection)
        finally:
            engine.dispose()
    say(f"store: rollups rebuilt in {time.monotonic() - started:.1f} s")
    facts = Filled(**{**asdict(facts), "rollups": True})
    if facts.path.with_suffix(".json").exists():
        _write_facts(facts)
    return facts


async def _rebuild_async(path: Path, rebuild: Any) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as connection:
            await rebuild(connection)
    finally:
        await engine.dispose()


def _write_facts(facts: Filled) -> None:
    data = {**asdict(facts), "path": str(facts.path), "fill_version": FILL_VERSION}
    facts.path.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")


def _read_facts(path: Path) -> Filled | None:
    try:
        data = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if not path.exists() or data.pop("fill_version", None) != FILL_VERSION:
        return None
    data.update(path=path, fill_seconds=0.0, reused=True)
    return Filled(**data)


Batch = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


class _Generator:
    """Rows for ``count`` messages in created_at order, a batch at a time."""

    def __init__(self, rng: random.Random, reference: float, count: int) -> None:
        self.rng = rng
        self.reference = reference
        self.count = count
        self.recent = max(1, round(count * RECENT_SHARE)) if count > 1 else 0
        self.sample_id = ""
        self.sample_recipient = ""
        self.people = [
            f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{n}@{rng.choice(_DOMAINS)}"
            for n in range(max(50, count // 20))
        ]
        self.bodies = [self._body(n) for n in range(64)]

    def _body(self, n: int) -> bytes:
        words = [self.rng.choice(_WORDS) for _ in range(330)]
        lines, line = [], f"Hello, this is message body {n}."
        for word in words:
            if len(line) + len(word) + 1 > 76:
                lines.append(line)
                line = word
            else:
                line += " " + word
        lines.append(line)
        return ("\r\n".join(lines) + "\r\n").encode()

    def times(self) -> Iterator[float]:
        """created_at in order: the old ones over 30 days, then the last hour's."""
        old = self.count - self.recent
        start, span = self.reference - DAYS * 86_400, DAYS * 86_400 - 3_600
        for i in range(old):
            yield start + (i + self.rng.random()) * span / old
        for i in range(self.recent):
            yield self.reference - 3_600 + (i + self.rng.random()) * 3_600 / self.recent

    def batches(self, size: int) -> Iterator[Batch]:
        batch: Batch = ([], [], [])
        for index, created in enumerate(self.times()):
            self._message(index, created, batch)
            if len(batch[0]) >= size:
                yield batch
                batch = ([], [], [])
        if batch[0]:
            yield batch

    def _message(self, index: int, created: float, batch: Batch) -> None:
        rng = self.rng
        age = self.reference - created
        shares = _HOUR if age < 3_600 else _DAY if age < 86_400 else _OLD
        status = rng.choices(_STATUSES, shares)[0]
        site = rng.choices(SITES, SITE_WEIGHTS)[0]
        upstream = rng.choices(UPSTREAMS, UPSTREAM_WEIGHTS)[0]
        message_id = new_message_id(created, rng.randbytes(10))
        count = rng.choices((1, 2, 3), (70, 20, 10))[0]
        if status == "partial":
            count = max(count, 2)  # some recipients sent, some failed
        to = [rng.choice(self.people) for _ in range(count)]
        subject = self._subject(site)
        sender = f"noreply@{site}.example.com"
        headers, content = self._content(index, message_id, site, to, subject, created)
        tries, rcpt_rows, last_error, finished = self._delivery(
            message_id, status, upstream, to, created
        )
        waiting = status in ("deferred", "queued", "held")
        batch[0].append(
            {
                "id": message_id,
                "site_id": site,
                "username": site if index % 3 else None,
                "client_ip": f"10.0.{index % 7}.5",
                "original_sender": sender,
                "envelope_sender": f"bounces@{site}.example.com",
                "subject": subject,
                "size": len(content),
                "content": content,
                "original_headers": headers,
                "status": status,
                "created_at": created,
                "updated_at": finished,
                "next_attempt_at": self.reference + WAITING_DELAY if waiting else finished,
                "attempt_count": len(tries),
                "message_class": "bulk" if site == "newsletter" else "transactional",
                "last_error": last_error,
            }
        )
        batch[1].extend(rcpt_rows)
        batch[2].extend(tries)
        if not self.sample_id and index >= self.count // 2 and status == "sent" and len(tries) == 2:
            self.sample_id = message_id
        if not self.sample_recipient and index >= self.count // 2:
            self.sample_recipient = to[0]
        if not self.sample_id and index == self.count - 1:
            self.sample_id = message_id  # a tiny store may have no such message

    def _content(
        self, index: int, message_id: str, site: str, to: list[str], subject: str, created: float
    ) -> tuple[bytes, bytes]:
        """The header block as the site sent it, and the message as it goes out."""
        headers = (
            f"From: {site.title()} <noreply@{site}.example.com>\r\nTo: {', '.join(to)}\r\n"
            f"Subject: {subject}\r\nDate: {time.strftime(_DATE, time.gmtime(created))}\r\n"
            f"Message-ID: <{message_id}@{site}.example.com>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
        ).encode()
        received = (
            f"Received: from app{index % 7}.{site}.example.com ([10.0.{index % 7}.5]) "
            f"by relay.bench with ESMTP id {message_id}; {created:.0f}\r\n"
        ).encode()
        return headers, received + headers + b"\r\n" + self.bodies[index % len(self.bodies)]

    def _subject(self, site: str) -> str:
        rng = self.rng
        template = rng.choice(_SUBJECTS)
        return template.format(
            n=rng.randrange(10_000, 999_999),
            n2=rng.randrange(2, 40),
            noun=rng.choice(_NOUNS),
            adjective=rng.choice(_ADJECTIVES),
            first=rng.choice(_FIRST).title(),
            day=rng.choice(_DAYS_OF_WEEK),
            site=site.title(),
        )

    def _delivery(
        self, message_id: str, status: str, upstream: str, to: list[str], created: float
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None, float]:
        """Attempts, recipient rows, last error and when it was last updated."""
        rng = self.rng
        if status in ("queued", "held"):
            rows = [_recipient(message_id, a, "pending", None, None, None, created) for a in to]
            return [], rows, None, created
        tries: list[dict[str, Any]] = []
        at = created + rng.uniform(0.05, 2.0)
        route = f"priority: try {upstream}, backup-mx"
        if rng.random() < 0.12 or status == "deferred":  # a first try that did not make it
            code, text = rng.choice(_TEMPORARY)
            outcome = "retry" if upstream != "backup-mx" else "defer"
            duration = _duration(rng)
            tries.append(_attempt(message_id, upstream, at, duration, code, text, outcome, to))
            tries[-1]["route"] = route
            at += duration + (0.01 if outcome == "retry" else rng.uniform(60, 900))
            upstream = "backup-mx" if outcome == "retry" else upstream
        if status == "deferred":
            rows = [_recipient(message_id, a, "pending", None, None, None, at) for a in to]
            return tries, rows, f"{code} {text}", at
        sent = {
            "sent": to,
            "failed": [],
            "partial": to[:-1] if len(to) > 1 else [],
        }.get(status, to)
        failed = [a for a in to if a not in sent]
        duration = _duration(rng)
        if sent:
            reply = f"2.0.0 Ok: queued as {rng.getrandbits(40):010X}"
            tries.append(_attempt(message_id, upstream, at, duration, 250, reply, "sent", sent))
        if failed:
            code, text = rng.choice(_PERMANENT)
            tries.append(_attempt(message_id, upstream, at, duration, code, text, "failed", failed))
        for t in tries:
            t["route"] = route
        finished = at + duration
        rows = [
            _recipient(message_id, a, "sent", upstream, 250, "2.0.0 Ok", finished)
            if a in sent
            else _recipient(message_id, a, "failed", upstream, code, text, finished)
            for a in to
        ]
        return tries, rows, (f"{code} {text}" if failed else None), finished


_TEMPORARY = (
    (421, "4.7.0 Try again later, closing connection"),
    (451, "4.3.0 Temporary local problem"),
    (450, "4.2.1 Mailbox busy, try again later"),
)
_PERMANENT = (
    (550, "5.1.1 The email account that you tried to reach does not exist"),
    (552, "5.2.2 Mailbox full"),
    (554, "5.7.1 Message rejected as spam"),
)


def _duration(rng: random.Random) -> float:
    """Seconds: a log-normal around 0.15 s, as a remote upstream answers."""
    return round(min(rng.lognormvariate(math.log(0.15), 0.6), 30.0), 4)


def _attempt(
    message_id: str,
    upstream: str,
    at: float,
    duration: float,
    code: int,
    text: str,
    outcome: str,
    to: list[str],
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "upstream": upstream,
        "started_at": at,
        "duration": duration,
        "reply_code": code,
        "reply_text": text,
        "outcome": outcome,
        "recipients": list(to),
        "detail": "",
        "route": None,
    }


def _recipient(
    message_id: str,
    address: str,
    status: str,
    upstream: str | None,
    code: int | None,
    text: str | None,
    at: float,
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "address": address,
        "status": status,
        "upstream": upstream,
        "reply_code": code,
        "reply_text": text,
        "updated_at": at,
    }
