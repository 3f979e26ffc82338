"""End to end: a client with STARTTLS + AUTH -> the relay -> a recording sink."""

from __future__ import annotations

import ssl
from email import message_from_bytes
from pathlib import Path

import aiosmtplib

from tests.conftest import SITE_PASSWORD, base_config, smtp_upstream

MESSAGE = (
    b"From: Customer <orders@shop.example.com>\r\n"
    b"To: buyer@example.org\r\n"
    b"Bcc: secret@example.org\r\n"
    b"Subject: Your order\r\n"
    b"\r\n"
    b"Caf\xc3\xa9 cr\xc3\xa8me, 8-bit body.\r\n"
    b".leading dot\r\n"
    b"last line\r\n"
)


async def send(
    port: int, tls: ssl.SSLContext, sender: str, recipients: list[str], content: bytes
) -> str:
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=True, tls_context=tls
    ) as client:
        await client.login("shop", SITE_PASSWORD)
        _, reply = await client.sendmail(sender, recipients, content)
        return reply


async def test_rewritten_and_delivered(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)

    reply = await send(
        relay.port,
        client_tls,
        "orders@shop.example.com",
        ["buyer@example.org", "secret@example.org"],
        MESSAGE,
    )

    assert reply.startswith("2.0.0 queued as ")
    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "sales@example.com"
    assert sorted(received.rcpt_tos) == ["buyer@example.org", "secret@example.org"]
    head, _, body = received.content.partition(b"\r\n\r\n")
    assert body == MESSAGE.partition(b"\r\n\r\n")[2]
    parsed = message_from_bytes(received.content)
    assert parsed["From"] == "Sales Team <sales@example.com>"
    assert parsed["Reply-To"] == "Customer <orders@shop.example.com>"
    assert parsed["Bcc"] is None
    assert parsed["Message-ID"].endswith("@relay.test>")
    assert parsed["Date"]
    assert head.startswith(b"Received: from ")
    message_id = reply.split()[-1]
    assert message_id in parsed["Received"]
