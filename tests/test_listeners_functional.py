"""Listener kinds over real sessions: implicit TLS, trusted networks, `auth: none`, plaintext AUTH.

Every listener here is the only one of its relay, so ``relay.port`` is its port.
"""

from __future__ import annotations

from base64 import b64encode
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.conftest import SITE_PASSWORD, base_config, smtp_upstream

MESSAGE = (
    b"From: Writer <x@shop.example.com>\r\n"
    b"To: reader@example.org\r\n"
    b"Subject: listener test\r\n"
    b"\r\n"
    b"listener body\r\n"
)
BLOG_SITE = {
    "id": "blog",
    "name": "Blog",
    "senders": ["*@blog.example.com"],
    "from": {"email": "news@example.net", "name": "Blog News"},
    "reply_to": "original",
}


def config_with_listener(tmp_path: Path, sink: Any, **listener: Any) -> dict[str, Any]:
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"] = [{"name": "test", "host": "127.0.0.1", "port": 0, **listener}]
    return config


def trusted_listener(**extra: Any) -> dict[str, Any]:
    """A plaintext listener where loopback may send without AUTH.

    `auth: optional` on `tls: none` must also allow plaintext AUTH, or the config is refused.
    """
    return {
        "tls": "none",
        "auth": "optional",
        "allow_plaintext_auth": True,
        "trusted_networks": ["127.0.0.0/8"],
        **extra,
    }


@asynccontextmanager
async def plain_session(port: int, source: str = "127.0.0.1") -> AsyncIterator[aiosmtplib.SMTP]:
    """A session without TLS that has said EHLO."""
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=False, source_address=(source, 0), timeout=3
    )
    async with smtp:
        await smtp.ehlo()
        yield smtp


async def test_implicit_tls_auth_and_send(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(
        config_with_listener(
            tmp_path,
            sink,
            tls="implicit",
            auth="required",
            cert_file=str(cert_files[0]),
            key_file=str(cert_files[1]),
        )
    )

    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, use_tls=True, tls_context=client_tls, timeout=3
    ) as smtp:
        await smtp.ehlo()
        assert smtp.get_transport_info("sslcontext") is not None
        assert not smtp.supports_extension("starttls")
        assert {"PLAIN", "LOGIN"} <= {m.upper() for m in smtp.supported_auth_methods}
        await smtp.login("shop", SITE_PASSWORD)
        _, reply = await smtp.sendmail("x@shop.example.com", ["reader@example.org"], MESSAGE)
        assert reply.startswith("2.0.0 queued as ")

    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "sales@example.com"
    assert received.rcpt_tos == ["reader@example.org"]
    assert "with ESMTPSA id" in message_from_bytes(received.content)["Received"]


async def test_implicit_tls_without_auth_gets_530(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(
        config_with_listener(
            tmp_path,
            sink,
            tls="implicit",
            cert_file=str(cert_files[0]),
            key_file=str(cert_files[1]),
        )
    )
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, use_tls=True, tls_context=client_tls, timeout=3
    ) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("x@shop.example.com")
        assert refused.value.code == 530


async def test_trusted_network_sends_without_auth(tmp_path: Path, make_sink, start_relay) -> None:
    sink = await make_sink()
    relay = await start_relay(config_with_listener(tmp_path, sink, **trusted_listener()))

    async with plain_session(relay.port) as smtp:
        assert smtp.get_transport_info("sslcontext") is None
        _, reply = await smtp.sendmail("x@shop.example.com", ["reader@example.org"], MESSAGE)
        assert reply.startswith("2.0.0 queued as ")

        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("x@nowhere.example.org")
        assert refused.value.code == 550
        assert refused.value.message == (
            "5.7.1 Sender <x@nowhere.example.org> belongs to no site on this relay"
        )

    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "sales@example.com"
    assert received.rcpt_tos == ["reader@example.org"]
    parsed = message_from_bytes(received.content)
    assert parsed["From"] == "Sales Team <sales@example.com>"
    assert parsed["Reply-To"] == "Writer <x@shop.example.com>"
    assert "with ESMTP id" in parsed["Received"]


async def test_untrusted_address_on_trusted_listener_gets_530(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink()
    listener = trusted_listener(trusted_networks=["127.0.0.2/32"])
    relay = await start_relay(config_with_listener(tmp_path, sink, **listener))

    async with plain_session(relay.port, source="127.0.0.1") as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("x@shop.example.com")
        assert refused.value.code == 530
    async with plain_session(relay.port, source="127.0.0.2") as smtp:
        _, reply = await smtp.sendmail("x@shop.example.com", ["reader@example.org"], MESSAGE)
        assert reply.startswith("2.0.0 queued as ")

    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "sales@example.com"


async def test_auth_none_listener_offers_and_accepts_no_auth(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink()
    relay = await start_relay(
        config_with_listener(
            tmp_path, sink, tls="none", auth="none", trusted_networks=["127.0.0.0/8"]
        )
    )
    blob = b64encode(f"\0shop\0{SITE_PASSWORD}".encode())

    async with plain_session(relay.port) as smtp:
        assert not smtp.supports_extension("auth")
        assert "AUTH" not in smtp.last_ehlo_response.message.upper()
        for command in ((b"AUTH", b"PLAIN", blob), (b"AUTH", b"LOGIN", b64encode(b"shop"))):
            response = await smtp.execute_command(*command)
            assert response.code // 100 == 5, response
        # Still a working trusted session, unauthenticated.
        _, reply = await smtp.sendmail("x@shop.example.com", ["reader@example.org"], MESSAGE)
        assert reply.startswith("2.0.0 queued as ")

    [received] = await sink.handler.wait_for(1)
    assert "with ESMTP id" in message_from_bytes(received.content)["Received"]


async def test_plaintext_auth_when_allowed(tmp_path: Path, make_sink, start_relay) -> None:
    sink = await make_sink()
    relay = await start_relay(
        config_with_listener(tmp_path, sink, tls="none", auth="required", allow_plaintext_auth=True)
    )

    async with plain_session(relay.port) as smtp:
        assert not smtp.supports_extension("starttls")
        assert {"PLAIN", "LOGIN"} <= {m.upper() for m in smtp.supported_auth_methods}
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("x@shop.example.com")
        assert refused.value.code == 530
        response = await smtp.auth_login("shop", SITE_PASSWORD)
        assert response.code == 235
        _, reply = await smtp.sendmail("x@shop.example.com", ["reader@example.org"], MESSAGE)
        assert reply.startswith("2.0.0 queued as ")

    async with plain_session(relay.port) as smtp:
        response = await smtp.auth_plain("shop", SITE_PASSWORD)
        assert response.code == 235

    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "sales@example.com"
    assert "with ESMTPA id" in message_from_bytes(received.content)["Received"]


async def test_trusted_listener_picks_site_by_envelope_sender(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink()
    config = config_with_listener(tmp_path, sink, **trusted_listener())
    config["sites"].append({**BLOG_SITE, "upstreams": ["sink"]})
    relay = await start_relay(config)

    blog_message = MESSAGE.replace(b"x@shop.example.com", b"editor@blog.example.com")
    async with plain_session(relay.port) as smtp:
        await smtp.sendmail("editor@blog.example.com", ["reader@example.org"], blog_message)
        await smtp.sendmail("x@shop.example.com", ["buyer@example.org"], MESSAGE)

    received = await sink.handler.wait_for(2)
    by_recipient = {r.rcpt_tos[0]: r for r in received}
    assert set(by_recipient) == {"reader@example.org", "buyer@example.org"}

    blog = by_recipient["reader@example.org"]
    assert blog.mail_from == "news@example.net"
    parsed = message_from_bytes(blog.content)
    assert parsed["From"] == "Blog News <news@example.net>"
    assert parsed["Reply-To"] == "Writer <editor@blog.example.com>"

    shop = by_recipient["buyer@example.org"]
    assert shop.mail_from == "sales@example.com"
    assert message_from_bytes(shop.content)["From"] == "Sales Team <sales@example.com>"

    counts = {
        site: relay.app.metrics.registry.get_sample_value(
            "relay_messages_accepted_total", {"site": site}
        )
        for site in ("shop", "blog")
    }
    assert counts == {"shop": 1.0, "blog": 1.0}


async def test_authenticated_site_ignores_other_sites_senders(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    """With AUTH, the credential's site decides: another site's sender is refused, not rerouted."""
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    config["sites"].append({**BLOG_SITE, "upstreams": ["sink"]})
    relay = await start_relay(config)

    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, start_tls=True, tls_context=client_tls, timeout=3
    ) as smtp:
        await smtp.login("shop", SITE_PASSWORD)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("editor@blog.example.com")
        assert refused.value.code == 550
        assert refused.value.message.endswith("not allowed for site shop")
