"""A campaign's List-Unsubscribe link, end to end: the link in a delivered message, posted
one-click as a mailbox provider does, and the next campaign skips that contact; a forged or
altered link changes nothing. A real relay, its public listener, a sink, SQLite."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.tables import contacts
from tests.campaign_world import (
    FINAL,
    Admin,
    add_contacts,
    campaign_body,
    campaign_config,
    dkim_verifies,
    parsed,
    wait_until,
)

LINK = re.compile(r"<(http://[^>]+/u/[A-Za-z0-9_-]+)>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_campaign(admin: Admin, name: str) -> dict[str, Any]:
    created = await admin.ok("POST", "/api/v1/campaigns", campaign_body(name=name), 201)
    await admin.ok("POST", f"/api/v1/campaigns/{created['id']}/start")
    done: dict[str, Any] = await wait_until(
        lambda: admin.campaign(created["id"]),
        lambda c: c["status"] in FINAL,
        f"campaign {name} finishes",
        60,
    )
    assert done["status"] == "completed", done
    return done


async def unsubscribed_flags(engine: AsyncEngine) -> dict[str, bool]:
    async with engine.connect() as connection:
        rows = await connection.execute(sa.select(contacts.c.email, contacts.c.unsubscribed))
        return {row.email: row.unsubscribed for row in rows}


async def post(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(
        url,
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as answer:
        return answer.status


async def test_a_one_click_post_from_a_delivered_message_skips_the_contact_next_time(
    tmp_path: Path, make_sink: Any, start_relay: Any
) -> None:
    sink = await make_sink()
    config = campaign_config(tmp_path, sink)
    # The links name the port the configuration gives (recipients reach the listener there,
    # or at http.public_url): a real one here, not the tests' usual 0.
    config["http"].update(port=free_port(), unsubscribe_mailto="unsubscribe@example.com")
    relay = await start_relay(config)
    await add_contacts(relay.app.engine, "shop", 3, lambda i: ["news"])
    async with aiohttp.ClientSession() as http:
        admin = Admin(http, relay.app.admin_port)
        first = await run_campaign(admin, "first")
        assert (first["sent_count"], first["skipped_count"]) == (3, 0)
        by_address = {m.rcpt_tos[0]: parsed(m) for m in sink.messages}
        message = by_address["person1@example.org"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        header = message["List-Unsubscribe"]
        assert "<mailto:unsubscribe@example.com?subject=unsubscribe%20" in header
        signed = re.search(rb"\bh=([^;]+)", sink.messages[0].content)
        assert signed is not None
        names = signed.group(1).replace(b" ", b"").replace(b"\r\n", b"").lower().split(b":")
        assert {b"list-unsubscribe", b"list-unsubscribe-post"} <= set(names)
        assert all(dkim_verifies(m.content) for m in sink.messages)

        match = LINK.search(header)
        assert match is not None, header
        url = match.group(1)
        assert url.startswith(f"http://127.0.0.1:{relay.app.http_port}/u/")
        token = url.rsplit("/", 1)[1]
        altered = url[:-1] + ("A" if token[-1] != "A" else "B")
        other = LINK.search(by_address["person0@example.org"]["List-Unsubscribe"])
        assert other is not None and other.group(1) != url  # each contact its own link
        assert await post(http, altered) == 404
        flags = await unsubscribed_flags(relay.app.engine)
        assert not any(flags.values())  # the altered link did nothing

        assert await post(http, url) == 200
        flags = await unsubscribed_flags(relay.app.engine)
        assert flags == {
            "person0@example.org": False,
            "person1@example.org": True,
            "person2@example.org": False,
        }

        sink.messages.clear()
        second = await run_campaign(admin, "second")
        assert (second["sent_count"], second["skipped_count"]) == (2, 1)
        assert sorted(m.rcpt_tos[0] for m in sink.messages) == [
            "person0@example.org",
            "person2@example.org",
        ]
        skipped = await admin.ok(
            "GET", f"/api/v1/campaigns/{second['id']}/recipients?status=skipped"
        )
        assert [(r["email"], r["reason"]) for r in skipped["items"]] == [
            ("person1@example.org", "unsubscribed")
        ]
        contact = await admin.ok("GET", "/api/v1/sites/shop/contacts/person0@example.org")
        assert contact["email_count"] == 2 and contact["last_email_sent"] is not None
