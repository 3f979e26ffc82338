"""SMTP retries answered once: a client that resends a message after losing our 250 gets the
first message's queue id, and the message is delivered once. On SQLite and PostgreSQL.

A relay in-process (SMTP with STARTTLS + AUTH) delivering to an aiosmtpd sink on loopback;
a FakeClock drives the duplicate window, housekeeping runs are called by the test. Two
nodes on one store receive the same retry at once in the last test.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiosmtplib
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from relay.tables import message_fingerprints, messages
from tests.conftest import SITE_PASSWORD, FakeClock, RunningRelay, Sink, base_config, smtp_upstream
from tests.test_admin_messages_functional import mail, with_admin
from tests.two_nodes import start_node, store_url

__all__ = ["start_node", "store_url"]  # fixtures

SENDER = "orders@shop.example.com"
MESSAGE_ID = "Message-ID: <order-17@shop.example.com>\r\n"


def relay_config(tmp_path: Path, sink: Sink, cert_files: Any, window: int | None) -> Any:
    config = with_admin(base_config(tmp_path, [smtp_upstream("main", sink.port)]), cert_files)
    if window is not None:
        config["limits"] = {"duplicate_window_seconds": window}
    config["retention"] = {"interval_seconds": 3600}  # runs are the test's
    config["health"] = {"check_interval_seconds": 0}
    return config


async def start(
    tmp_path: Path,
    store_url: str,
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    window: int | None = None,
) -> tuple[RunningRelay, Sink, FakeClock]:
    sink = await make_sink()
    config = relay_config(tmp_path, sink, cert_files, window)
    config["store"] = {"url": store_url}
    clock = FakeClock()
    return await start_relay(config, clock=clock), sink, clock


async def send(
    port: int, tls: ssl.SSLContext, recipients: list[str], content: bytes
) -> aiosmtplib.SMTPResponse:
    """One message on a connection of its own (a client's retry comes on a new one)."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=True, tls_context=tls, timeout=10
    )
    await client.connect()
    try:
        await client.login("shop", SITE_PASSWORD)
        await client.mail(SENDER)
        for address in recipients:
            await client.rcpt(address)
        return await client.data(content)
    finally:
        await client.quit()


def queue_id(reply: aiosmtplib.SMTPResponse) -> str:
    assert reply.code == 250, reply
    assert reply.message.startswith("2.0.0 queued as "), reply
    return reply.message.removeprefix("2.0.0 queued as ")


async def delivered(sink: Sink, expected: int) -> list[Any]:
    """The sink's messages once ``expected`` arrived, and a moment later (none more came):
    a marker message sent last is delivered after anything queued before it."""
    arrived = await sink.handler.wait_for(expected)
    await asyncio.sleep(0.3)
    return list(arrived)


async def stored_messages(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return int(await connection.scalar(sa.select(sa.func.count()).select_from(messages)))
    finally:
        await engine.dispose()


ORDER = mail("Order 17", SENDER, "alice@example.org", MESSAGE_ID)


async def test_a_retry_is_answered_with_the_first_id_and_delivered_once(
    tmp_path: Path,
    store_url: str,
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> None:
    relay, sink, _ = await start(tmp_path, store_url, make_sink, start_relay, cert_files)
    first = queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER))
    again = queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER))
    assert again == first
    [arrived] = await delivered(sink, 1)
    assert arrived.rcpt_tos == ["alice@example.org"]
    assert await stored_messages(store_url) == 1
    assert duplicates(relay.app) == 1


async def test_the_same_message_id_to_other_recipients_is_delivered(
    tmp_path: Path,
    store_url: str,
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> None:
    """A client that splits a message into transactions by recipient sends each once."""
    relay, sink, _ = await start(tmp_path, store_url, make_sink, start_relay, cert_files)
    first = queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER))
    other = queue_id(await send(relay.port, client_tls, ["bob@example.org"], ORDER))
    assert other != first
    arrived = await delivered(sink, 2)
    assert sorted(r for m in arrived for r in m.rcpt_tos) == [
        "alice@example.org",
        "bob@example.org",
    ]


async def test_after_the_window_a_resend_is_new_mail_and_housekeeping_sweeps_the_print(
    tmp_path: Path,
    store_url: str,
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> None:
    relay, sink, clock = await start(
        tmp_path, store_url, make_sink, start_relay, cert_files, window=600
    )
    first = queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER))
    clock.advance(599)
    assert queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER)) == first
    clock.advance(1)  # the window is over: the expired fingerprint is taken over
    second = queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER))
    assert second != first
    clock.advance(599)  # and the new one holds for a window of its own
    assert queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER)) == second
    assert len(await delivered(sink, 2)) == 2
    clock.advance(2)
    removed = await relay.app.housekeeping.run_once()
    assert removed is not None and removed["message_fingerprints"] == 1
    assert await count_prints(store_url) == 0


async def count_prints(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(message_fingerprints)
            return int(await connection.scalar(query))
    finally:
        await engine.dispose()


async def test_window_0_turns_it_off(
    tmp_path: Path,
    store_url: str,
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> None:
    relay, sink, _ = await start(tmp_path, store_url, make_sink, start_relay, cert_files, window=0)
    first = queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER))
    assert queue_id(await send(relay.port, client_tls, ["alice@example.org"], ORDER)) != first
    assert len(await delivered(sink, 2)) == 2
    assert await count_prints(store_url) == 0


async def test_a_message_without_message_id_is_never_a_retry(
    tmp_path: Path,
    store_url: str,
    make_sink: Any,
    start_relay: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> None:
    """The relay adds a Message-ID of its own: nothing tells such a message's retries."""
    relay, sink, _ = await start(tmp_path, store_url, make_sink, start_relay, cert_files)
    bare = mail("Order 18", SENDER, "alice@example.org")
    first = queue_id(await send(relay.port, client_tls, ["alice@example.org"], bare))
    assert queue_id(await send(relay.port, client_tls, ["alice@example.org"], bare)) != first
    assert len(await delivered(sink, 2)) == 2


async def test_two_nodes_receiving_the_same_retry_at_once_store_one_message(
    tmp_path: Path,
    store_url: str,
    start_node: Any,
    make_sink: Any,
    cert_files: Any,
    client_tls: ssl.SSLContext,
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, sink, cert_files, None)
    a = await start_node("a", config)
    b = await start_node("b", config)
    for round_ in range(5):  # several races, each with its own message
        order = mail(
            f"Order {round_}",
            SENDER,
            "alice@example.org",
            f"Message-ID: <race-{round_}@shop.example.com>\r\n",
        )
        replies = await asyncio.gather(
            *(
                send(node.listeners.ports[0], client_tls, ["alice@example.org"], order)
                for node in (a, b, a, b)
            )
        )
        assert len({queue_id(r) for r in replies}) == 1, replies
    assert len(await delivered(sink, 5)) == 5
    assert await stored_messages(store_url) == 5
    assert duplicates(a) + duplicates(b) == 15  # three retries a round


def duplicates(relay: Any) -> float:
    return float(relay.metrics.smtp_duplicates.labels("shop")._value.get())
