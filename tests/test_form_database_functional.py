"""A form post's gate passes in the transaction that stores its message.

The client's count, the token's nonce, the site's count and the message commit
together, decided per post: a post over its client's limit writes nothing, a
used token's post is counted and stores nothing, a post its site's limit
refuses leaves its nonce unspent, and none of them fails the batch's others.
On a real SQLite file and on PostgreSQL (a throwaway database at
127.0.0.1:5432, skipped with the reason when there is none).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core.quota import Claim, Granted, OverLimit, Scope, Window
from relay.form_database import FormGate, UsedNonce
from relay.queue_database import Admission, Admitted, admit_messages
from relay.store import create_engine, migrate
from relay.tables import form_nonces, messages, usage_counters
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


def gate(client: str, nonce: str, limit: int = 2) -> FormGate:
    claim = Claim(Scope.FORM_IP, client, {Window.MINUTE: limit}, 1, NOW, UTC)
    return FormGate(claim, UsedNonce(nonce * 32, "shop", NOW + 3600))


def post(message_id: str, form: FormGate | None, site: Claim | None = None) -> Admission:
    return Admission(new_message(message_id, NOW), site, gate=form)


async def admit(store: AsyncEngine, batch: list[Admission]) -> list[Admitted]:
    async with store.begin() as c:
        return list(await c.run_sync(admit_messages, batch))


async def rows(store: AsyncEngine) -> tuple[set[str], set[str], dict[str, int]]:
    """The stored messages, the spent nonces' first letters, the clients' counts."""
    async with store.connect() as c:
        stored = set((await c.execute(sa.select(messages.c.id))).scalars())
        nonces = {n[0] for n in (await c.execute(sa.select(form_nonces.c.nonce))).scalars()}
        counts = await c.execute(
            sa.select(usage_counters.c.name, usage_counters.c.count).where(
                usage_counters.c.scope == Scope.FORM_IP.value
            )
        )
        return stored, nonces, {name: count for name, count in counts}


async def test_each_post_is_decided_alone_in_one_batch(store: AsyncEngine) -> None:
    site = Claim(Scope.SITE, "shop", {Window.DAY: 1}, 1, NOW, UTC)
    admitted = await admit(
        store,
        [
            post("m1", gate("x", "a"), site),  # a person's: stored
            post("m2", gate("x", "a"), site),  # the same token again: counted, not stored
            post("m3", gate("x", "b"), site),  # the client's third this minute (limit 2)
            post("m4", gate("y", "c"), site),  # the site's second today (limit 1)
            post("m5", None),  # an SMTP message in the same batch
        ],
    )

    first, again, flood, over_site, smtp = admitted
    assert first.gate is True and isinstance(first.verdict, Granted) and first.stored
    assert again.gate is False and again.verdict is None and not again.stored
    assert isinstance(flood.gate, OverLimit) and flood.gate.limit == 2 and not flood.stored
    assert over_site.gate is True and isinstance(over_site.verdict, OverLimit)
    assert not over_site.stored
    assert smtp.gate is None and smtp.stored
    assert await rows(store) == ({"m1", "m5"}, {"a"}, {"x": 2, "y": 1})

    # Tokens "b" and "c" were not spent: their posts may come again.
    admitted = await admit(store, [post("m6", gate("z", "b")), post("m7", gate("z", "c"))])
    assert [a.gate for a in admitted] == [True, True]
    stored, spent, counts = await rows(store)
    assert (stored, spent) == ({"m1", "m5", "m6", "m7"}, {"a", "b", "c"})
    assert counts == {"x": 2, "y": 1, "z": 2}


async def test_a_transaction_that_fails_spends_nothing(store: AsyncEngine) -> None:
    with pytest.raises(RuntimeError):
        async with store.begin() as c:
            await c.run_sync(admit_messages, [post("m1", gate("x", "a"))])
            raise RuntimeError("the process died before the commit")

    assert await rows(store) == (set(), set(), {})
    assert [a.gate for a in await admit(store, [post("m1", gate("x", "a"))])] == [True]
