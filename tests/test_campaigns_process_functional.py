"""A campaign survives `kill -9` of `relay serve`: the restarted relay resumes at the committed
cursor; no contact is skipped and none gets the campaign twice beyond at-least-once delivery
of the messages in flight at the kill."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from relay.store import create_engine
from tests.campaign_world import (
    FINAL,
    Admin,
    add_contacts,
    campaign_body,
    campaign_config,
    parsed,
    wait_until,
)
from tests.conftest import write_config
from tests.test_process_functional import RelayProcess, relays  # noqa: F401 -- a fixture

ADMIN = re.compile(r"admin 127\.0\.0\.1:(\d+)")
CONTACTS = 300


def admin_port(relay: RelayProcess) -> int:
    for line in relay.lines:
        if match := ADMIN.search(line):
            return int(match.group(1))
    raise AssertionError("".join(relay.lines))


async def test_sigkill_mid_campaign_resumes_without_twice_or_skipped(
    tmp_path: Path,
    make_sink: Any,
    relays: Any,  # noqa: F811
) -> None:
    sink = await make_sink()
    config = campaign_config(tmp_path, sink)
    config_path = write_config(tmp_path, config)
    first = relays(config_path)
    await asyncio.to_thread(first.wait_ready)
    engine = create_engine(config["store"]["url"])
    try:
        await add_contacts(engine, "shop", CONTACTS, lambda i: ["news"])
    finally:
        await engine.dispose()
    async with aiohttp.ClientSession() as http:
        admin = Admin(http, admin_port(first))
        body = campaign_body(rate_per_minute=1800)  # 30 a second: about 10 s in all
        campaign_id = (await admin.ok("POST", "/api/v1/campaigns", body, 201))["id"]
        await admin.ok("POST", f"/api/v1/campaigns/{campaign_id}/start")
        await sink.handler.wait_for(60, 30)
        first.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.process.wait, 10)
        killed_at = len(sink.messages)
        assert killed_at < CONTACTS

        second = relays(config_path)
        await asyncio.to_thread(second.wait_ready)
        admin = Admin(http, admin_port(second))
        done = await wait_until(
            lambda: admin.campaign(campaign_id),
            lambda c: c["status"] in FINAL,
            "the campaign completes after the restart",
            90,
        )
        assert await asyncio.to_thread(second.stop) == 0
    assert done["status"] == "completed", done
    assert done["sent_count"] == CONTACTS and done["failed_count"] == 0
    got = Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert sorted(got) == sorted(f"person{i}@example.org" for i in range(CONTACTS))
    twice = [address for address, n in got.items() if n > 1]
    assert max(got.values()) <= 2
    # Only messages in flight at the kill can come twice: few, each the same message again
    # (one Message-ID per contact), never a second one generated.
    assert len(twice) <= 64, twice
    ids: dict[str, set[str]] = {}
    for m in sink.messages:
        ids.setdefault(m.rcpt_tos[0], set()).add(str(parsed(m)["Message-ID"]))
    assert all(len(found) == 1 for found in ids.values())
