"""Delivery through real upstreams on loopback: failover, refusals, TLS, backoff, big messages."""

from __future__ import annotations

import asyncio
import email.policy
import os
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay.core.model import MessageStatus, RecipientStatus
from relay.queue_database import DeliveryRecord, MessageDetail, load_message
from tests.conftest import SITE_PASSWORD, RunningRelay, base_config, smtp_upstream

SENDER = "orders@shop.example.com"
FINAL = {MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.PARTIAL}


async def submit(relay: RunningRelay, recipients: list[str], content: bytes) -> str:
    """Send over plaintext AUTH (the test listener allows it); return the queued message id."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        await client.login("shop", SITE_PASSWORD)
        _, reply = await client.sendmail(SENDER, recipients, content)
    return reply.split()[-1]


def plaintext_listener(config: dict[str, Any]) -> dict[str, Any]:
    config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
    return config


async def delivery_pass(
    relay: RunningRelay, message_id: str, until: set[MessageStatus]
) -> MessageDetail:
    """Wait for the delivery pass that leaves the message in one of ``until``."""
    done = asyncio.Event()

    def on_recorded(record: object) -> None:
        if isinstance(record, DeliveryRecord) and record.message_id == message_id:
            done.set()

    relay.app.events.subscribe(on_recorded)
    try:
        for _ in range(20):
            done.clear()  # before reading: a pass that ends meanwhile still wakes us
            detail = await message_detail(relay, message_id)
            if detail.status in until:
                return detail
            await asyncio.wait_for(done.wait(), timeout=10)
        raise AssertionError(f"message {message_id} never reached {until}")
    finally:
        relay.app.events.unsubscribe(on_recorded)


async def message_detail(relay: RunningRelay, message_id: str) -> MessageDetail:
    async with relay.app.engine.connect() as connection:
        detail = await load_message(connection, message_id)
    assert detail is not None
    return detail


MESSAGE = b"From: <orders@shop.example.com>\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


async def test_refused_connection_fails_over_to_next_upstream(
    tmp_path: Path, make_sink, start_relay, closed_port: int
) -> None:
    sink = await make_sink()
    upstreams = [smtp_upstream("down", closed_port), smtp_upstream("backup", sink.port)]
    relay = await start_relay(plaintext_listener(base_config(tmp_path, upstreams)))

    message_id = await submit(relay, ["a@example.org"], MESSAGE)

    await sink.handler.wait_for(1)
    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.SENT
    assert [(a.upstream, a.outcome) for a in detail.attempts] == [
        ("down", "retry"),
        ("backup", "sent"),
    ]
    assert "connection refused" in detail.attempts[0].detail
    assert detail.recipients[0].upstream == "backup"


async def test_421_greeting_fails_over(
    tmp_path: Path, make_sink, start_relay, greeting_421: int
) -> None:
    sink = await make_sink()
    upstreams = [smtp_upstream("busy", greeting_421), smtp_upstream("backup", sink.port)]
    relay = await start_relay(plaintext_listener(base_config(tmp_path, upstreams)))

    message_id = await submit(relay, ["a@example.org"], MESSAGE)

    await sink.handler.wait_for(1)
    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.attempts[0].reply is not None and detail.attempts[0].reply.code == 421
    assert detail.attempts[1].outcome == "sent"


async def test_550_fails_that_recipient_without_retrying(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink(replies={"rcpt": {"gone@example.org": "550 5.1.1 No such user"}})
    relay = await start_relay(
        plaintext_listener(base_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    )

    message_id = await submit(relay, ["a@example.org", "gone@example.org"], MESSAGE)

    [received] = await sink.handler.wait_for(1)
    assert received.rcpt_tos == ["a@example.org"]
    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.PARTIAL
    states = {r.address: (r.status, r.reply_code) for r in detail.recipients}
    assert states == {
        "a@example.org": (RecipientStatus.SENT, 250),
        "gone@example.org": (RecipientStatus.FAILED, 550),
    }
    assert detail.attempt_count == 1


async def test_all_refused_at_data_fails_the_message(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink(replies={"data": "554 5.7.1 Rejected as spam"})
    relay = await start_relay(
        plaintext_listener(base_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    )

    message_id = await submit(relay, ["a@example.org"], MESSAGE)

    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.FAILED
    assert detail.recipients[0].reply_text == "5.7.1 Rejected as spam"


async def test_deferred_while_every_upstream_is_down_then_delivered(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink(replies={"mail": "451 4.3.0 try later"})
    relay = await start_relay(
        plaintext_listener(base_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    )

    message_id = await submit(relay, ["a@example.org"], MESSAGE)

    detail = await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
    assert detail.last_error == "mail: 451 4.3.0 try later"
    sink.handler.replies.clear()
    await sink.handler.wait_for(1)  # retried after the (1 s) backoff
    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.SENT
    assert detail.attempt_count == 2


async def test_starttls_and_auth_upstream_with_verified_certificate(
    tmp_path: Path, make_sink, start_relay, cert_files
) -> None:
    sink = await make_sink(tls="starttls", auth=("relay", "upstream-secret"))
    os.environ["TEST_UPSTREAM_PASSWORD"] = "upstream-secret"
    upstream = smtp_upstream(
        "secure", sink.port, tls="starttls", host="localhost", ca_file=str(cert_files[2]),
        username="relay", password_env="TEST_UPSTREAM_PASSWORD",
    )  # fmt: skip
    relay = await start_relay(plaintext_listener(base_config(tmp_path, [upstream])))

    await submit(relay, ["a@example.org"], MESSAGE)

    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "sales@example.com"


@pytest.mark.parametrize("verify_tls", [True, False])
async def test_untrusted_upstream_certificate(
    tmp_path: Path, make_sink, start_relay, verify_tls: bool
) -> None:
    sink = await make_sink(tls="starttls")
    upstream = smtp_upstream("selfsigned", sink.port, tls="starttls", verify_tls=verify_tls)
    relay = await start_relay(plaintext_listener(base_config(tmp_path, [upstream])))

    message_id = await submit(relay, ["a@example.org"], MESSAGE)

    if verify_tls:
        detail = await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
        assert detail.last_error is not None
        assert detail.last_error.startswith("tls: certificate verify failed")
        assert sink.messages == []
    else:
        await sink.handler.wait_for(1)


async def test_five_megabyte_attachment_passes_byte_for_byte(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink()
    relay = await start_relay(
        plaintext_listener(base_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    )
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = "a@example.org"
    message["Subject"] = "Invoice"
    message.set_content("Attached.\n")
    message.add_attachment(os.urandom(5 * 1024 * 1024), maintype="application", subtype="pdf")
    content = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))

    await submit(relay, ["a@example.org"], content)

    [received] = await sink.handler.wait_for(1)
    assert received.content.partition(b"\r\n\r\n")[2] == content.partition(b"\r\n\r\n")[2]
    parsed = message_from_bytes(received.content, policy=email.policy.default)
    attachment = next(parsed.iter_attachments())
    assert attachment.get_payload(decode=True) == next(message.iter_attachments()).get_content()


async def test_connections_to_an_upstream_are_reused(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port, max_connections=1)])
    relay = await start_relay(plaintext_listener(config))

    for _ in range(5):
        await submit(relay, ["a@example.org"], MESSAGE)

    await sink.handler.wait_for(5)
    assert sink.handler.ehlo_count == 1
