"""SMTP ingress security, over real sessions on loopback against the in-process relay.

Never an open relay, AUTH only after TLS, AUTH throttling per IP and per username,
sender policy, size and recipient limits, and no SMTP smuggling (bare CR / bare LF).
Failed AUTH is throttled per client IP, so tests that need a fresh IP connect from
another loopback address (127.0.0.2 and up) with ``source_address``.
"""

from __future__ import annotations

import asyncio
import ssl
from base64 import b64encode
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.conftest import SITE_PASSWORD, SITE_PASSWORD_HASH, base_config, smtp_upstream

GOOD_MESSAGE = (
    b"From: Customer <orders@shop.example.com>\r\n"
    b"To: buyer@example.org\r\n"
    b"Subject: known good\r\n"
    b"\r\n"
    b"known-good body\r\n"
)


def tls_config(
    tmp_path: Path, sink: Any, cert_files: tuple[Path, Path, Path], **limits: Any
) -> dict[str, Any]:
    """The base config with a STARTTLS listener on the test certificate, and ``limits``."""
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    if limits:
        config["limits"] = limits
    return config


@asynccontextmanager
async def client(
    port: int, tls: ssl.SSLContext, *, start_tls: bool = True, source: str = "127.0.0.1"
) -> AsyncIterator[aiosmtplib.SMTP]:
    """A connected session (after STARTTLS unless ``start_tls=False``) that has said EHLO."""
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        start_tls=start_tls,
        tls_context=tls,
        source_address=(source, 0),
        timeout=3,
    )
    async with smtp:
        await smtp.ehlo()
        yield smtp


def plain_blob(username: str, password: str) -> bytes:
    return b64encode(f"\0{username}\0{password}".encode())


async def auth_code(
    port: int, tls: ssl.SSLContext, username: str, password: str, source: str
) -> int:
    """The reply code of one AUTH PLAIN, in a fresh session from ``source``."""
    async with client(port, tls, source=source) as smtp:
        response = await smtp.execute_command(b"AUTH", b"PLAIN", plain_blob(username, password))
        return response.code


def accepted_count(relay: Any, site: str = "shop") -> float:
    value = relay.app.metrics.registry.get_sample_value(
        "relay_messages_accepted_total", {"site": site}
    )
    return value or 0.0


async def send_good(port: int, tls: ssl.SSLContext) -> None:
    async with client(port, tls) as smtp:
        await smtp.login("shop", SITE_PASSWORD)
        await smtp.sendmail("orders@shop.example.com", ["buyer@example.org"], GOOD_MESSAGE)


# -- Never an open relay.

OPEN_RELAY_FORMS = [
    pytest.param("external@example.org", id="plain-external"),
    pytest.param("@a.example:b@c.example", id="source-route"),
    pytest.param("user%other.example@relay.test", id="percent-hack"),
    pytest.param('"user@other"@example.org', id="quoted-local-part"),
    pytest.param("other!user", id="bang-path"),
    pytest.param("", id="null-sender"),
    pytest.param("user@[127.0.0.1]", id="address-literal"),
]


@pytest.mark.parametrize("starttls", [True, False], ids=["starttls", "no-tls"])
@pytest.mark.parametrize("form", OPEN_RELAY_FORMS)
async def test_unauthenticated_mail_gets_530(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls, form: str, starttls: bool
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))

    async with client(relay.port, client_tls, start_tls=starttls) as smtp:
        assert smtp.is_ehlo_or_helo_needed is False
        as_sender = await smtp.execute_command(b"MAIL", f"FROM:<{form}>".encode())
        assert as_sender.code == 530, as_sender
        assert "Authentication required" in as_sender.message

        # The same form as a recipient never gets past a refused MAIL either.
        mail = await smtp.execute_command(b"MAIL", b"FROM:<external@example.org>")
        assert mail.code == 530, mail
        as_recipient = await smtp.execute_command(b"RCPT", f"TO:<{form}>".encode())
        assert as_recipient.code // 100 == 5, as_recipient
        data = await smtp.execute_command(b"DATA")
        assert data.code // 100 == 5, data

    await send_good(relay.port, client_tls)
    [received] = await sink.handler.wait_for(1)
    assert received.rcpt_tos == ["buyer@example.org"]
    assert accepted_count(relay) == 1


# -- AUTH only after TLS.


async def test_auth_not_offered_before_starttls(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))

    async with client(relay.port, client_tls, start_tls=False) as smtp:
        assert smtp.supports_extension("starttls")
        assert not smtp.supports_extension("auth")
        assert "AUTH" not in smtp.last_ehlo_response.message.upper()
        for command in (
            (b"AUTH", b"PLAIN", plain_blob("shop", SITE_PASSWORD)),
            (b"AUTH", b"LOGIN", b64encode(b"shop")),
        ):
            response = await smtp.execute_command(*command)
            assert response.code == 538, response

        await smtp.starttls()
        await smtp.ehlo()
        assert smtp.supports_extension("auth")
        assert {"PLAIN", "LOGIN"} <= {m.upper() for m in smtp.supported_auth_methods}


@pytest.mark.parametrize("mechanism", ["plain", "login"])
async def test_auth_after_starttls(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls, mechanism: str
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))

    async with client(relay.port, client_tls) as smtp:
        assert smtp.get_transport_info("sslcontext") is not None
        method = smtp.auth_plain if mechanism == "plain" else smtp.auth_login
        response = await method("shop", SITE_PASSWORD)
        assert response.code == 235
        assert response.message.startswith("2.7.0")
        _, reply = await smtp.sendmail(
            "orders@shop.example.com", ["buyer@example.org"], GOOD_MESSAGE
        )
        assert reply.startswith("2.0.0 queued as ")

    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "sales@example.com"


# -- AUTH throttling.


def throttle_config(tmp_path: Path, sink: Any, cert_files: tuple[Path, Path, Path]) -> dict:
    config = tls_config(tmp_path, sink, cert_files, auth_max_failures=3)
    config["sites"][0]["credentials"].append(
        {"username": "ops", "password_hash": SITE_PASSWORD_HASH}
    )
    return config


async def test_wrong_password_535_then_throttled_but_never_locked_out(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(throttle_config(tmp_path, sink, cert_files))

    async with client(relay.port, client_tls) as smtp:
        for _ in range(3):
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
                await smtp.auth_plain("shop", "wrong password")
            assert failed.value.code == 535
        # The address is blocked now, even with the right password.
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as throttled:
            await smtp.auth_plain("shop", SITE_PASSWORD)
        assert throttled.value.code == 454
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as throttled:
            await smtp.auth_login("shop", SITE_PASSWORD)
        assert throttled.value.code == 454

    # The username is blocked for guesses from other addresses...
    assert await auth_code(relay.port, client_tls, "shop", "another guess", "127.0.0.2") == 454
    # ...but its owner, with the right password from an address not blocked, gets in,
    assert await auth_code(relay.port, client_tls, "shop", SITE_PASSWORD, "127.0.0.4") == 235
    # as does another user from an address with one failure;
    assert await auth_code(relay.port, client_tls, "ops", SITE_PASSWORD, "127.0.0.2") == 235
    # the address that failed is blocked for every username.
    assert await auth_code(relay.port, client_tls, "ops", SITE_PASSWORD, "127.0.0.1") == 454


async def test_auth_throttled_per_ip_across_usernames(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(throttle_config(tmp_path, sink, cert_files))
    attacker = "127.0.0.3"

    # One failure each for three names: no username reaches the limit, the address does.
    for name in ("alice", "bob", "ops"):
        assert await auth_code(relay.port, client_tls, name, "guess", attacker) == 535
    assert await auth_code(relay.port, client_tls, "shop", SITE_PASSWORD, attacker) == 454
    assert await auth_code(relay.port, client_tls, "shop", SITE_PASSWORD, "127.0.0.4") == 235
    assert await auth_code(relay.port, client_tls, "ops", SITE_PASSWORD, "127.0.0.4") == 235


# -- Sender policy.


async def test_sender_not_allowed_for_site(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))

    async with client(relay.port, client_tls) as smtp:
        await smtp.login("shop", SITE_PASSWORD)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("x@other.example.org")
        assert refused.value.code == 550
        assert refused.value.message == (
            "5.7.1 Sender <x@other.example.org> not allowed for site shop"
        )


# -- Limits.


async def test_oversize_gets_552_and_nothing_is_delivered(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files, max_message_bytes=2048))
    big = GOOD_MESSAGE.replace(b"known good", b"too big") + b"x" * 76 + b"\r\n"
    big += (b"y" * 76 + b"\r\n") * 40  # well over 2048 bytes

    async with client(relay.port, client_tls) as smtp:
        assert smtp.esmtp_extensions.get("size") == "2048"
        await smtp.login("shop", SITE_PASSWORD)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.mail("orders@shop.example.com", options=["SIZE=4096"])
        assert refused.value.code == 552

        # Without a SIZE declaration the DATA itself is refused.
        await smtp.mail("orders@shop.example.com")
        await smtp.rcpt("buyer@example.org")
        with pytest.raises(aiosmtplib.SMTPDataError) as too_big:
            await smtp.data(big)
        assert too_big.value.code == 552

        # The session goes on; a small message still passes.
        await smtp.mail("orders@shop.example.com", options=["SIZE=200"])
        await smtp.rcpt("buyer@example.org")
        response = await smtp.data(GOOD_MESSAGE)
        assert response.code == 250

    [received] = await sink.handler.wait_for(1)
    assert b"known-good body" in received.content
    assert b"yyyy" not in received.content
    assert accepted_count(relay) == 1


async def test_third_recipient_gets_452_and_two_are_delivered(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files, max_recipients=2))

    async with client(relay.port, client_tls) as smtp:
        await smtp.login("shop", SITE_PASSWORD)
        await smtp.mail("orders@shop.example.com")
        await smtp.rcpt("a@example.org")
        await smtp.rcpt("b@example.org")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await smtp.rcpt("c@example.org")
        assert refused.value.code == 452
        response = await smtp.data(GOOD_MESSAGE)
        assert response.code == 250
        assert response.message.startswith("2.0.0 queued as ")

    [received] = await sink.handler.wait_for(1)
    assert sorted(received.rcpt_tos) == ["a@example.org", "b@example.org"]


# -- SMTP smuggling: a raw line client, so every byte is ours.


class LineClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> LineClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: its code and the text of its last line."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 5)
            assert line.endswith(b"\r\n"), line
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode().rstrip()

    async def command(self, line: bytes) -> tuple[int, str]:
        self.writer.write(line + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send_raw(self, data: bytes) -> tuple[int, str]:
        self.writer.write(data)
        await self.writer.drain()
        return await self.reply()

    async def rest(self) -> bytes:
        """Everything the server still says until it hangs up."""
        return await asyncio.wait_for(self.reader.read(), 5)

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def authenticated_raw_session(port: int, tls: ssl.SSLContext) -> LineClient:
    c = await LineClient.connect(port)
    assert (await c.reply())[0] == 220
    assert (await c.command(b"EHLO client.test"))[0] == 250
    assert (await c.command(b"STARTTLS"))[0] == 220
    await c.writer.start_tls(tls, server_hostname="127.0.0.1")
    assert (await c.command(b"EHLO client.test"))[0] == 250
    assert (await c.command(b"AUTH PLAIN " + plain_blob("shop", SITE_PASSWORD)))[0] == 235
    return c


SMUGGLED = (
    b"MAIL FROM:<x@shop.example.com>\r\n"
    b"RCPT TO:<victim@example.org>\r\n"
    b"DATA\r\n"
    b"From: <x@shop.example.com>\r\n"
    b"To: <victim@example.org>\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"smuggled body\r\n"
)


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(b"\n.\n", id="LF.LF"),
        pytest.param(b"\r.\r", id="CR.CR"),
        pytest.param(b"\n.\r\n", id="LF.CRLF"),
        pytest.param(b"\r\n.\n", id="CRLF.LF"),
        pytest.param(b"\r\n.\r", id="CRLF.CR"),
        pytest.param(b"\r.\r\n", id="CR.CRLF"),
        pytest.param(b"\n.\r", id="LF.CR"),
    ],
)
async def test_no_smtp_smuggling(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls, end: bytes
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))
    c = await authenticated_raw_session(relay.port, client_tls)
    try:
        assert (await c.command(b"MAIL FROM:<orders@shop.example.com>"))[0] == 250
        assert (await c.command(b"RCPT TO:<buyer@example.org>"))[0] == 250
        assert (await c.command(b"DATA"))[0] == 354
        payload = (
            b"From: <orders@shop.example.com>\r\n"
            b"To: <buyer@example.org>\r\n"
            b"Subject: carrier\r\n"
            b"\r\n"
            b"carrier body" + end + SMUGGLED + b".\r\n"
        )
        code, text = await c.send_raw(payload)
        assert code in (550, 554), (code, text)

        # The session is still in step: the next reply answers the next command,
        # so nothing in the payload was taken as a command.
        assert await c.command(b"NOOP") == (250, "OK")
        assert (await c.command(b"MAIL FROM:<orders@shop.example.com>"))[0] == 250
        assert (await c.command(b"RCPT TO:<buyer@example.org>"))[0] == 250
        assert (await c.command(b"DATA"))[0] == 354
        code, text = await c.send_raw(GOOD_MESSAGE + b".\r\n")
        assert code == 250, text
        assert text.startswith("2.0.0 queued as ")
        assert (await c.command(b"QUIT"))[0] == 221
        assert await c.rest() == b""
    finally:
        await c.close()

    [received] = await sink.handler.wait_for(1)
    assert b"known-good body" in received.content
    assert received.rcpt_tos == ["buyer@example.org"]
    # Everything the relay stored is the one good message, and that is all the sink got.
    assert accepted_count(relay) == 1
    assert len(sink.messages) == 1
    for message in sink.messages:
        assert b"victim" not in message.content
        assert b"smuggled" not in message.content
        assert b"carrier" not in message.content
        assert "victim@example.org" not in message.rcpt_tos


async def test_clean_crlf_message_passes_raw_client(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    """The positive control for the smuggling tests: the raw client sends a good message."""
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))
    c = await authenticated_raw_session(relay.port, client_tls)
    try:
        assert (await c.command(b"MAIL FROM:<orders@shop.example.com>"))[0] == 250
        assert (await c.command(b"RCPT TO:<buyer@example.org>"))[0] == 250
        assert (await c.command(b"DATA"))[0] == 354
        body = b"line one\r\n..leading dot\r\nlast\r\n"
        code, _ = await c.send_raw(GOOD_MESSAGE.replace(b"known-good body\r\n", body) + b".\r\n")
        assert code == 250
        assert (await c.command(b"QUIT"))[0] == 221
    finally:
        await c.close()

    [received] = await sink.handler.wait_for(1)
    assert received.content.endswith(b"\r\n\r\nline one\r\n.leading dot\r\nlast\r\n")
