"""SMTP messages' fingerprints are recorded in the transaction that stores the message.

Decided per admission in one batch: the first of a fingerprint is stored, a retry (in the
batch or after it) is neither stored nor counted and names the first message, an expired
fingerprint is taken over, and one whose message its site's limit refused is forgotten (the
retry is new mail). On SQLite and PostgreSQL (skipped with the reason when there is none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.quota import Claim, Granted, OverLimit, Scope, Window
from relay.fingerprint_database import Fingerprint
from relay.queue_database import Admission, Admitted, admit_messages
from relay.store import create_engine, migrate
from relay.tables import message_fingerprints, messages
from tests.test_shared_limits_functional import store_url  # noqa: F401 (a fixture)
from tests.test_store_postgres_functional import new_message

NOW = 1_800_000_000.0
UTC = ZoneInfo("UTC")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[AsyncEngine]:  # noqa: F811 (the fixture)
    engine = create_engine(store_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def smtp(message_id: str, print_: str, now: float = NOW, site: Claim | None = None) -> Admission:
    fingerprint = Fingerprint("shop", print_ * 64, message_id, now, now + 600)
    return Admission(new_message(message_id, now), site, fingerprint=fingerprint)


async def admit(store: AsyncEngine, batch: list[Admission]) -> list[Admitted]:
    async with store.begin() as c:
        return list(await c.run_sync(admit_messages, batch))


async def rows(store: AsyncEngine) -> tuple[set[str], dict[str, str]]:
    """The stored messages, and each fingerprint's (first letter's) message."""
    async with store.connect() as c:
        stored = set((await c.execute(sa.select(messages.c.id))).scalars())
        prints = await c.execute(
            sa.select(message_fingerprints.c.fingerprint, message_fingerprints.c.message_id)
        )
        return stored, {f[0]: m for f, m in prints}


async def test_each_admission_is_decided_alone_in_one_batch(store: AsyncEngine) -> None:
    site = Claim(Scope.SITE, "shop", {Window.DAY: 2}, 1, NOW, UTC)
    first, retry, other, over, plain = await admit(
        store,
        [
            smtp("m1", "a", site=site),
            smtp("m2", "a", site=site),  # the same fingerprint in the same batch
            smtp("m3", "b", site=site),
            smtp("m4", "c", site=site),  # the site's third today (limit 2)
            Admission(new_message("m5", NOW)),  # no Message-ID, or the API's
        ],
    )
    assert first.stored and first.duplicate_of is None and isinstance(first.verdict, Granted)
    assert not retry.stored and retry.duplicate_of == "m1" and retry.verdict is None
    assert other.stored
    assert isinstance(over.verdict, OverLimit) and not over.stored and over.duplicate_of is None
    assert plain.stored
    # The refused message's fingerprint went with it: its retry is new mail.
    assert await rows(store) == ({"m1", "m3", "m5"}, {"a": "m1", "b": "m3"})

    again, refused_again = await admit(store, [smtp("m6", "a"), smtp("m7", "c")])
    assert again.duplicate_of == "m1" and not again.stored
    assert refused_again.stored and refused_again.duplicate_of is None
    assert await rows(store) == ({"m1", "m3", "m5", "m7"}, {"a": "m1", "b": "m3", "c": "m7"})


async def test_an_expired_fingerprint_is_taken_over(store: AsyncEngine) -> None:
    await admit(store, [smtp("m1", "a")])
    [within] = await admit(store, [smtp("m2", "a", NOW + 599)])
    assert within.duplicate_of == "m1"
    [after] = await admit(store, [smtp("m3", "a", NOW + 600)])
    assert after.stored and after.duplicate_of is None
    assert await rows(store) == ({"m1", "m3"}, {"a": "m3"})


async def test_a_transaction_that_fails_records_nothing(store: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with store.begin() as c:
            await c.run_sync(admit_messages, [smtp("m1", "a")])
            raise RuntimeError("the process died before the commit")
    assert await rows(store) == (set(), {})
    [stored] = await admit(store, [smtp("m2", "a")])
    assert stored.stored
