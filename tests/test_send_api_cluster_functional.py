"""The send API on two nodes sharing one store (SQLite file, and PostgreSQL when there is one).

A key made through node A's admin API works on node B within
``cluster.sync_seconds`` and stops working there once deleted; duplicate
requests with one Idempotency-Key, split over both nodes at once, queue
exactly one message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.core.tokens import hash_token
from tests.test_send_api_functional import ADMIN_TOKEN, BODY, KEY, send_config
from tests.two_nodes import start_node, store_url

__all__ = ["start_node", "store_url"]  # fixtures
SYNC_SECONDS = 0.5
BOUND_SECONDS = 5.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def cluster_config(tmp_path: Path, sink: Any) -> dict[str, Any]:
    config = send_config(tmp_path, sink.port)
    config["cluster"] = {"sync_seconds": SYNC_SECONDS}
    config["health"] = {"check_interval_seconds": 0}
    config.pop("store")
    return config


async def post(http: aiohttp.ClientSession, port: int, key: str, **headers: str) -> tuple[int, Any]:
    headers = {
        "Authorization": f"Bearer {key}",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    async with http.post(f"http://127.0.0.1:{port}/api/v1/send", json=BODY, headers=headers) as r:
        return r.status, await r.json()


async def seconds_until(check: Callable[[], Any]) -> float:
    started = time.monotonic()
    async with asyncio.timeout(BOUND_SECONDS):
        while True:
            if await check():
                break
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_key_made_on_a_works_on_b_until_deleted(
    tmp_path: Path, make_sink: Any, start_node: Any, http: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = cluster_config(tmp_path, sink)
    a, b = await start_node("a", config), await start_node("b", config)
    admin = f"http://127.0.0.1:{a.admin_port}/api/v1/sites/shop/api-keys"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(admin, json={"name": "crm"}, headers=auth) as reply:
        assert reply.status == 201
        key = (await reply.json())["key"]

    async def works_on_b() -> bool:
        return b.directory().api_key(hash_token(key)) is not None

    waited = await seconds_until(works_on_b)
    print(f"B knew the new key after {waited:.2f} s (sync_seconds {SYNC_SECONDS})")
    assert (await post(http, b.http_port, key))[0] == 202

    async with http.delete(f"{admin}/crm", headers=auth) as reply:
        assert reply.status == 204

    async def gone_on_b() -> bool:
        return b.directory().api_key(hash_token(key)) is None

    await seconds_until(gone_on_b)
    assert (await post(http, b.http_port, key))[0] == 401
    await sink.handler.wait_for(1)


async def test_duplicates_split_over_two_nodes_queue_one_message(
    tmp_path: Path, make_sink: Any, start_node: Any, http: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = cluster_config(tmp_path, sink)
    a, b = await start_node("a", config), await start_node("b", config)
    replies = await asyncio.gather(
        *(post(http, (a, b)[i % 2].http_port, KEY, Idempotency_Key="split-1") for i in range(20))
    )
    assert {status for status, _ in replies} <= {202, 409}, replies
    ids = {answer["id"] for status, answer in replies if status == 202}
    assert len(ids) == 1
    for node in (a, b):  # settled: the one answer again, from either node
        assert await post(http, node.http_port, KEY, Idempotency_Key="split-1") == (
            202,
            {"id": next(iter(ids)), "status": "queued"},
        )
    await sink.handler.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(sink.messages) == 1
