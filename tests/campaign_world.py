"""A relay with campaigns to test: a DKIM-signing site, contacts written straight to the store,
the admin API over HTTP, a sink as upstream, and the helpers that read what the sink got."""

from __future__ import annotations

import base64
import email
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import Message
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import dkim as dkimpy
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.core import dkim
from relay.core.dkim import Algorithm
from relay.tables import contact_tags, contacts
from tests.conftest import Received, Sink, base_config, smtp_upstream

TOKEN = "campaign-test-token-0123456789"
DOMAIN, SELECTOR = "example.com", "relay1"
ATTACHMENT = os.urandom(6000)  # random: base64 of it never repeats by chance
FINAL = {"completed", "cancelled", "failed"}


@cache
def private_key() -> dkim.PrivateKey:
    return dkim.generate(Algorithm.RSA)


def dkim_verifies(message: bytes) -> bool:
    record = dkim.txt_record(private_key()).encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name.decode().rstrip(".") == f"{SELECTOR}._domainkey.{DOMAIN}" else None

    return bool(dkimpy.verify(message, dnsfunc=dnsfunc))


def campaign_config(tmp_path: Path, sink: Sink, **extra: Any) -> dict[str, Any]:
    key = tmp_path / "dkim.pem"
    key.write_bytes(dkim.private_pem(private_key()))
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["domains"] = [
        {"name": DOMAIN, "dkim": {"selector": SELECTOR, "private_key_file": str(key)}}
    ]
    config["http"] = {"host": "127.0.0.1", "port": 0}
    config.update(extra)
    return config


@dataclass
class Admin:
    session: aiohttp.ClientSession
    port: int

    async def call(
        self, method: str, path: str, json: Any = None, **params: str
    ) -> tuple[int, Any]:
        async with self.session.request(
            method,
            f"http://127.0.0.1:{self.port}{path}",
            json=json,
            params=params or None,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response:
            body = await response.json() if response.status != 204 else None
            return response.status, body

    async def ok(self, method: str, path: str, json: Any = None, status: int = 200) -> Any:
        got, body = await self.call(method, path, json)
        assert got == status, (method, path, got, body)
        return body

    async def campaign(self, campaign_id: str) -> Any:
        return await self.ok("GET", f"/api/v1/campaigns/{campaign_id}")


async def add_contacts(
    engine: AsyncEngine,
    site: str,
    count: int,
    tags_of: Callable[[int], list[str]] = lambda i: [],
    unsubscribed: Callable[[int], bool] = lambda i: False,
) -> list[int]:
    """``count`` contacts person<i>@example.org, First<i> Last<i>, with attribute city; ids."""
    now = time.time()
    rows = [
        {
            "site_id": site,
            "email": f"person{i}@example.org",
            "first_name": f"First{i}",
            "last_name": f"Last{i}",
            "company": f"Company{i}",
            "attributes": {"city": f"City{i}"},
            "tags": tags_of(i),
            "unsubscribed": unsubscribed(i),
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    async with engine.begin() as connection:
        await connection.execute(contacts.insert(), rows)
        found = await connection.execute(
            sa.select(contacts.c.id, contacts.c.tags).where(contacts.c.site_id == site)
        )
        pairs = [(r.id, t) for r in found for t in r.tags]
        if pairs:
            await connection.execute(
                contact_tags.insert(),
                [{"contact_id": i, "tag": t, "site_id": site} for i, t in pairs],
            )
        ids = await connection.scalars(
            sa.select(contacts.c.id).where(contacts.c.site_id == site).order_by(contacts.c.id)
        )
        return list(ids)


def campaign_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "site": "shop",
        "name": "December news",
        "subject": "Hello {{ first_name }}",
        "text": "Dear {{ first_name }} {{ last_name }} of {{ company }} in {{ city }}.\n"
        "Unsubscribe: {{ unsubscribe_url }}\n",
        "html": "<p>Dear {{ first_name }} {{ last_name }}</p>",
        "audience": {"tags": ["news"]},
    }
    body.update(extra)
    return body


def attachment_body() -> list[dict[str, str]]:
    return [
        {
            "filename": "catalog.pdf",
            "content_type": "application/pdf",
            "content": base64.b64encode(ATTACHMENT).decode(),
        }
    ]


def parsed(received: Received) -> Message:
    return email.message_from_bytes(received.content)


def text_of(message: Message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no text part")


def attachment_of(message: Message) -> bytes | None:
    for part in message.walk():
        if part.get_filename() == "catalog.pdf":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    return None


async def wait_until(
    fetch: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], what: str, seconds: float
) -> Any:
    import asyncio

    value: Any = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await fetch()
        if done(value):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s; last {value!r}")
