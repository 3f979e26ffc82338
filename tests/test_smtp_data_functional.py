"""The DATA reader: the end of data wherever TCP splits it, dots, limits, pipelining.

The relay reads DATA in chunks (to each ".\\r\\n"), not line by line; these
cases pin the byte-level rules it must keep: only <CRLF>.<CRLF> ends data,
a "." at the start of a line is unstuffed once, 552 and 500 come after the
whole message, and a command pipelined after the final dot is answered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import base_config, smtp_upstream
from tests.test_smtp_security_functional import LineClient

HEADERS = b"From: <a@shop.example.com>\r\nTo: <b@example.org>\r\nSubject: data\r\n\r\n"


async def trusted_relay(tmp_path: Path, make_sink: Any, start_relay: Any, **limits: Any) -> Any:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"][0].update(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
    config["limits"] = limits
    relay = await start_relay(config)
    return relay, sink


async def open_data(port: int) -> LineClient:
    c = await LineClient.connect(port)
    assert (await c.reply())[0] == 220
    assert (await c.command(b"EHLO client.test"))[0] == 250
    assert (await c.command(b"MAIL FROM:<a@shop.example.com>"))[0] == 250
    assert (await c.command(b"RCPT TO:<b@example.org>"))[0] == 250
    assert (await c.command(b"DATA"))[0] == 354
    return c


async def send_in_pieces(c: LineClient, pieces: list[bytes]) -> tuple[int, str]:
    for piece in pieces:
        c.writer.write(piece)
        await c.writer.drain()
        await asyncio.sleep(0.02)  # separate reads on the server
    return await c.reply()


def body_of(content: bytes) -> bytes:
    return content.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    "pieces",
    [
        [HEADERS + b"one\r\n.\r\n"],
        [HEADERS + b"one\r\n", b".\r\n"],
        [HEADERS + b"one\r", b"\n.\r\n"],
        [HEADERS + b"one\r\n.", b"\r\n"],
        [HEADERS + b"one\r\n.\r", b"\n"],
        [HEADERS, b"o", b"ne\r\n", b".", b"\r", b"\n"],
    ],
    ids=["whole", "dot-apart", "cr|lf", "dot|crlf", "dot-cr|lf", "bytewise"],
)
async def test_the_end_of_data_wherever_it_is_split(
    tmp_path: Path, make_sink: Any, start_relay: Any, pieces: list[bytes]
) -> None:
    relay, sink = await trusted_relay(tmp_path, make_sink, start_relay)
    c = await open_data(relay.port)
    try:
        code, text = await send_in_pieces(c, pieces)
        assert code == 250, text
    finally:
        await c.close()
    [received] = await sink.handler.wait_for(1)
    assert body_of(received.content) == b"one\r\n"


async def test_dots_are_unstuffed_once_and_lines_ending_in_a_dot_stay(
    tmp_path: Path, make_sink: Any, start_relay: Any
) -> None:
    relay, sink = await trusted_relay(tmp_path, make_sink, start_relay)
    c = await open_data(relay.port)
    body = b"..\r\n...three\r\nend of sentence.\r\n. \r\n.x.\r\nlast.\r\n"
    try:
        assert (await c.send_raw(HEADERS + body + b".\r\n"))[0] == 250
    finally:
        await c.close()
    [received] = await sink.handler.wait_for(1)
    assert body_of(received.content) == b".\r\n..three\r\nend of sentence.\r\n \r\nx.\r\nlast.\r\n"


async def test_a_message_of_headers_only_and_pipelined_quit(
    tmp_path: Path, make_sink: Any, start_relay: Any
) -> None:
    relay, sink = await trusted_relay(tmp_path, make_sink, start_relay)
    c = await open_data(relay.port)
    try:
        c.writer.write(HEADERS + b".\r\nQUIT\r\n")  # the next command in the same write
        await c.writer.drain()
        assert (await c.reply())[0] == 250
        assert (await c.reply())[0] == 221
    finally:
        await c.close()
    [received] = await sink.handler.wait_for(1)
    assert body_of(received.content) == b""


async def test_over_the_size_limit_is_552_after_the_end_and_the_session_goes_on(
    tmp_path: Path, make_sink: Any, start_relay: Any
) -> None:
    relay, sink = await trusted_relay(tmp_path, make_sink, start_relay, max_message_bytes=2048)
    c = await open_data(relay.port)
    try:
        big = HEADERS + (b"x" * 70 + b"\r\n") * 100  # 7 KB, in one write
        assert (await c.send_raw(big + b".\r\n"))[0] == 552
        assert await c.command(b"NOOP") == (250, "OK")
        assert (await c.command(b"MAIL FROM:<a@shop.example.com>"))[0] == 250
        assert (await c.command(b"RCPT TO:<b@example.org>"))[0] == 250
        assert (await c.command(b"DATA"))[0] == 354
        assert (await c.send_raw(HEADERS + b"small\r\n.\r\n"))[0] == 250
    finally:
        await c.close()
    [received] = await sink.handler.wait_for(1)
    assert body_of(received.content) == b"small\r\n"


@pytest.mark.parametrize(("length", "code"), [(998, 250), (999, 250), (1000, 500)])
async def test_line_length_limit(
    tmp_path: Path, make_sink: Any, start_relay: Any, length: int, code: int
) -> None:
    """RFC 5321 4.5.3.1.6: 1000 octets with the CRLF; aiosmtpd allows 1001."""
    relay, _ = await trusted_relay(tmp_path, make_sink, start_relay)
    c = await open_data(relay.port)
    try:
        answer = await c.send_raw(HEADERS + b"y" * length + b"\r\n.\r\n")
        assert answer[0] == code, answer
        assert await c.command(b"NOOP") == (250, "OK")
    finally:
        await c.close()
