"""The SMTP client's own MAIL, RCPT and DATA: the sink must get the envelope and content exactly.

The client quotes plain addresses itself and dot-stuffs with bytes.replace
when every line ends in CRLF, leaving anything else to aiosmtplib; an
aiosmtpd sink on loopback un-stuffs and records what it got.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from relay.core.classify import Stage
from relay.core.model import TlsMode, Upstream, UpstreamKind
from relay.upstream_client import SmtpUpstreamClient
from tests.conftest import Sink

MakeSink = Callable[..., Awaitable[Sink]]
HEADER = b"Subject: dots\r\n\r\n"


async def send(port: int, sender: str, recipients: list[str], content: bytes) -> Any:
    """One transaction through a fresh client (plain SMTP to the loopback sink)."""
    upstream = Upstream("sink", UpstreamKind.SMTP, "127.0.0.1", port, TlsMode.NONE)
    client = SmtpUpstreamClient(upstream, "relay.test")
    try:
        return await client.send(sender, recipients, content, "m1")
    finally:
        await client.close()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b".\r\n", id="a lone dot"),
        pytest.param(b"..\r\n.x\r\n", id="dots at line starts"),
        pytest.param(b"a.\r\n.\r\n.\r\nend.\r\n", id="dots at line ends and alone"),
        pytest.param(b"line\r\n. \r\n\r\n.", id="no final CRLF"),
        pytest.param(b"", id="empty body"),
        pytest.param(b"bare\nLF\r\n.dot\r\n", id="bare LF: the library's way"),
    ],
)
async def test_content_arrives_as_sent(make_sink: MakeSink, body: bytes) -> None:
    sink = await make_sink()
    result = await send(sink.port, "a@example.com", ["b@example.org"], HEADER + body)
    assert (result.stage, result.reply and result.reply.code) == (Stage.DATA, 250)
    [received] = await sink.handler.wait_for(1)
    expected = HEADER + body
    if b"\n" in body.replace(b"\r\n", b""):  # aiosmtplib turns a bare LF into CRLF
        expected = expected.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert received.content == expected


async def test_a_refusal_after_data_is_the_upstreams_reply(make_sink: MakeSink) -> None:
    sink = await make_sink(replies={"data": "554 5.7.1 content rejected"})
    result = await send(sink.port, "a@example.com", ["b@example.org"], HEADER + b"x\r\n")
    assert result.stage is Stage.DATA
    assert (result.reply.code, result.reply.text) == (554, "5.7.1 content rejected")
    assert result.transport_error is None


@pytest.mark.parametrize(
    ("sender", "recipient"),
    [
        pytest.param("bounce+x=y@example.com", "o'brien@example.ie", id="plain"),
        pytest.param("", "b@example.org", id="null sender"),
        pytest.param("a@example.com", "b@[127.0.0.1]", id="address literal"),
    ],
)
async def test_the_envelope_arrives_as_given(
    make_sink: MakeSink, sender: str, recipient: str
) -> None:
    sink = await make_sink()
    result = await send(sink.port, sender, [recipient], HEADER + b"x\r\n")
    assert result.reply is not None and result.reply.code == 250
    [received] = await sink.handler.wait_for(1)
    assert (received.mail_from, received.rcpt_tos) == (sender or "<>", [recipient])


async def test_refusals_at_mail_and_rcpt_are_the_upstreams_replies(make_sink: MakeSink) -> None:
    refusing = await make_sink(replies={"rcpt": {"gone@example.org": "550 5.1.1 no such user"}})
    result = await send(
        refusing.port, "a@example.com", ["gone@example.org", "ok@example.org"], HEADER
    )
    assert result.recipient_replies["gone@example.org"].code == 550
    assert result.recipient_replies["ok@example.org"].code == 250
    assert (result.stage, result.reply and result.reply.code) == (Stage.DATA, 250)

    closed = await make_sink(replies={"mail": "553 5.7.1 sender not allowed"})
    result = await send(closed.port, "a@example.com", ["b@example.org"], HEADER)
    assert result.stage is Stage.MAIL
    assert result.reply is not None and (result.reply.code, result.reply.text) == (
        553,
        "5.7.1 sender not allowed",
    )
