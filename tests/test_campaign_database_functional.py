"""The campaign store's guarantees on a real SQLite file: one generator at a time, and a batch
written only at the cursor it started from by the lease's holder (else nothing of it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from relay import campaign_database as db
from relay.core.campaigns import Audience, Campaign, CampaignStatus, RecipientState
from relay.store import create_engine, migrate
from relay.tables import campaign_recipients
from tests.campaign_world import add_contacts


def campaign() -> Campaign:
    return Campaign(
        "cmp_1", "shop", "n", CampaignStatus.IN_PROGRESS, None, "s", "t", None, Audience(),
        None, None, 0, False, 0, 0, 0, 0, 0, None, None, None, 0.0, 0.0, 0.0, None,
    )  # fmt: skip


def batch(owner: str, cursor: int, ids: list[int], now: float, exhausted: bool = False) -> db.Batch:
    items = tuple(db.Item(i, f"c{i}@x.org", RecipientState.SKIPPED, "test") for i in ids)
    return db.Batch("cmp_1", owner, cursor, items, exhausted, now, 30.0)


async def test_a_batch_after_its_lease_was_taken_over_writes_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await migrate(engine)
    try:
        ids = await add_contacts(engine, "shop", 10)
        async with engine.begin() as c:
            await c.run_sync(lambda s: db.insert_campaign(s, campaign(), ()))

        async def run(job):  # type: ignore[no-untyped-def]
            async with engine.begin() as c:
                return await c.run_sync(job)

        assert (await run(lambda c: db.lease_next(c, "A", 0.0, 30.0))) is not None
        assert (await run(lambda c: db.lease_next(c, "B", 10.0, 30.0))) is None  # A holds it
        assert (await run(lambda c: db.lease_next(c, "B", 31.0, 30.0))) is not None  # lapsed
        await run(lambda c: db.commit_batch(c, batch("B", 0, ids[:5], 31.0)))
        with pytest.raises(db.LostLease):  # A comes back with the batch it read at cursor 0
            await run(lambda c: db.commit_batch(c, batch("A", 0, ids[:5], 32.0)))
        with pytest.raises(db.LostLease):  # even at the right cursor: not A's lease
            await run(lambda c: db.commit_batch(c, batch("A", ids[4], ids[5:], 32.0)))
        done = await run(lambda c: db.commit_batch(c, batch("B", ids[4], ids[5:], 33.0, True)))
        assert done.generated
        with pytest.raises(sa.exc.IntegrityError):  # the key is the last guard
            await run(
                lambda c: c.execute(
                    campaign_recipients.insert().values(
                        campaign_id="cmp_1",
                        contact_id=ids[0],
                        email="x",
                        status="queued",
                        updated_at=0.0,
                    )
                )
            )
        stored = await run(lambda c: db.load_campaign(c, "cmp_1"))
        assert (stored.cursor, stored.skipped_count, stored.total_contacts) == (ids[-1], 10, 10)
        assert stored.lease_owner is None
        rows, total = await run(lambda c: db.list_recipients(c, "cmp_1", None, 0, 100))
        assert total == 10 and [r.contact_id for r in rows] == ids
    finally:
        await engine.dispose()
