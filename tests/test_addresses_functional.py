"""Control characters in SMTP addresses, over a real session: refused with 553, never queued.

A raw line client sends every byte as written (aiosmtplib would quote the address).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningRelay
from tests.test_smtp_security_functional import (
    GOOD_MESSAGE,
    accepted_count,
    authenticated_raw_session,
    tls_config,
)

# Quoted local parts with C0 (SOH, NUL, TAB, ESC) and DEL, escaped or not. aiosmtpd's parser
# drops quotes it does not need, so '"a\x01b"' reaches the relay unquoted; one with a space
# stays quoted, as the client wrote it. C1 controls are not ASCII: without SMTPUTF8 aiosmtpd
# refuses any such line with 500 before the relay sees it.
HOSTILE = [
    pytest.param(b'"a\x01b"@example.com', id="SOH"),
    pytest.param(b'"a\x01 b"@example.com', id="SOH-kept-quoted"),
    pytest.param(b'"a\x00 b"@example.com', id="NUL-kept-quoted"),
    pytest.param(b'"a\tb"@example.com', id="TAB"),
    pytest.param(b'"a \x1b[2Jb"@example.com', id="ESC-kept-quoted"),
    pytest.param(b'"a \x7fb"@example.com', id="DEL-kept-quoted"),
    pytest.param(b'"a \\\x01b"@example.com', id="quoted-pair-SOH-kept-quoted"),
]


async def start(tmp_path: Path, make_sink: Any, start_relay: Any, cert_files: Any) -> RunningRelay:
    sink = await make_sink()
    relay: RunningRelay = await start_relay(tls_config(tmp_path, sink, cert_files))
    return relay


@pytest.mark.parametrize("address", HOSTILE)
async def test_rcpt_with_a_control_character_is_refused(
    tmp_path: Path,
    make_sink: Any,
    start_relay: Any,
    cert_files: tuple[Path, Path, Path],
    client_tls: ssl.SSLContext,
    address: bytes,
) -> None:
    relay = await start(tmp_path, make_sink, start_relay, cert_files)
    c = await authenticated_raw_session(relay.port, client_tls)
    try:
        assert (await c.command(b"MAIL FROM:<orders@shop.example.com>"))[0] == 250

        code, text = await c.command(b"RCPT TO:<" + address + b">")

        assert code == 553, text
        assert text.startswith("5.1.3 "), text
        assert "not a valid address" in text
        assert text.isascii() and text.isprintable(), text  # no control echoed back
        # The session goes on: a good recipient is taken, and DATA has only it.
        assert (await c.command(b"RCPT TO:<buyer@example.org>"))[0] == 250
        assert (await c.command(b"DATA"))[0] == 354
        assert (await c.send_raw(GOOD_MESSAGE + b".\r\n"))[0] == 250
    finally:
        await c.close()
    assert accepted_count(relay) == 1


@pytest.mark.parametrize("address", HOSTILE)
async def test_mail_from_with_a_control_character_is_refused(
    tmp_path: Path,
    make_sink: Any,
    start_relay: Any,
    cert_files: tuple[Path, Path, Path],
    client_tls: ssl.SSLContext,
    address: bytes,
) -> None:
    relay = await start(tmp_path, make_sink, start_relay, cert_files)
    # In the site's domain, so `senders: [*@shop.example.com]` matches and syntax decides.
    sender = address.replace(b"@example.com", b"@shop.example.com")
    c = await authenticated_raw_session(relay.port, client_tls)
    try:
        code, text = await c.command(b"MAIL FROM:<" + sender + b">")
        assert (code, text[:6]) == (553, "5.1.7 "), text
        assert "not a valid address" in text
        assert text.isascii() and text.isprintable(), text
        assert (await c.command(b"MAIL FROM:<orders@shop.example.com>"))[0] == 250
    finally:
        await c.close()
