"""Floods cost the flooder: AUTH guesses, connections, slow clients, and our own errors.

Real sessions on loopback against the in-process relay (one test runs `relay
serve` as a process under a small descriptor limit). Tests that need another
client address connect from 127.0.0.2 and up.
"""

from __future__ import annotations

import asyncio
import re
import resource
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relay import smtp_server
from relay.app import RESERVED_DESCRIPTORS
from relay.config import DeliveryConfig
from relay.core.passwords import hash_password
from tests.conftest import (
    SITE_PASSWORD,
    SITE_PASSWORD_HASH,
    base_config,
    smtp_upstream,
    write_config,
)
from tests.test_smtp_security_functional import (
    GOOD_MESSAGE,
    auth_code,
    client,
    plain_blob,
    tls_config,
)

# -- AUTH under concurrency.


async def test_parallel_wrong_guesses_from_one_address_get_at_most_the_limit_of_535(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files, auth_max_failures=5))
    attacker = "127.0.0.9"
    sessions = [client(relay.port, client_tls, source=attacker) for _ in range(20)]
    smtps = [await session.__aenter__() for session in sessions]
    try:
        replies = await asyncio.gather(
            *(
                smtp.execute_command(b"AUTH", b"PLAIN", plain_blob("shop", f"guess {i}"))
                for i, smtp in enumerate(smtps)
            )
        )
    finally:
        for session in sessions:
            await session.__aexit__(None, None, None)
    codes = [reply.code for reply in replies]
    assert codes.count(535) <= 5, codes
    assert set(codes) <= {535, 454}, codes
    # Guessing on, one at a time, the address runs out of tries.
    for i in range(6):
        await auth_code(relay.port, client_tls, "shop", f"more {i}", attacker)
    assert await auth_code(relay.port, client_tls, "shop", SITE_PASSWORD, attacker) == 454
    # Its owner still gets in from its own address.
    assert await auth_code(relay.port, client_tls, "shop", SITE_PASSWORD, "127.0.0.10") == 235


async def test_a_login_gets_in_during_a_burst_of_guesses_from_many_addresses(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    sink = await make_sink()
    config = tls_config(tmp_path, sink, cert_files)
    # Plaintext on loopback: the burst measures password checks, not 300 TLS handshakes
    # made by the test and the relay on one event loop.
    config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
    relay = await start_relay(config)

    async def code(username: str, password: str, source: str) -> int:
        async with client(relay.port, client_tls, start_tls=False, source=source) as smtp:
            reply = await smtp.execute_command(b"AUTH", b"PLAIN", plain_blob(username, password))
            return reply.code

    burst = [
        asyncio.create_task(code(f"user{i}", "guess", f"127.0.{1 + i // 200}.{10 + i % 200}"))
        for i in range(150)
    ]
    await asyncio.sleep(0.2)  # the guesses are in
    started = time.monotonic()
    login = 454
    while login == 454 and time.monotonic() - started < 10:  # a busy relay says 454: retry
        login = await code("shop", SITE_PASSWORD, "127.0.0.2")
    waited = time.monotonic() - started
    codes = await asyncio.gather(*burst)
    print(f"login during a burst of 150 guesses: {waited:.2f} s; {codes.count(454)} got 454")
    assert login == 235
    assert waited < 5
    assert set(codes) <= {535, 454}


async def test_many_sites_behind_one_address_log_in_at_once(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls
) -> None:
    """A web server hosting ten sites: their logins from one address wait their turn."""
    sink = await make_sink()
    config = tls_config(tmp_path, sink, cert_files)
    config["sites"][0]["credentials"] = [
        {"username": f"site{i}", "password_hash": SITE_PASSWORD_HASH} for i in range(10)
    ]
    relay = await start_relay(config)
    codes = await asyncio.gather(
        *(
            auth_code(relay.port, client_tls, f"site{i}", SITE_PASSWORD, "127.0.0.1")
            for i in range(10)
        )
    )
    assert codes == [235] * 10


# -- Connection limits.


async def greeting(port: int, source: str) -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return await asyncio.wait_for(reader.readline(), 5), writer


async def test_connection_over_the_per_address_limit_gets_421_but_trusted_ones_do_not(
    tmp_path: Path, make_sink, start_relay, cert_files
) -> None:
    sink = await make_sink()
    config = tls_config(tmp_path, sink, cert_files, max_connections_per_ip=50)
    config["listeners"][0].update(auth="optional", trusted_networks=["127.0.0.5/32"])
    relay = await start_relay(config)
    writers = []
    try:
        for _ in range(50):
            line, writer = await greeting(relay.port, "127.0.0.1")
            writers.append(writer)
            assert line.startswith(b"220 "), line
        line, writer = await greeting(relay.port, "127.0.0.1")
        writers.append(writer)
        assert line == b"421 4.7.0 Too many connections from your address; try again later\r\n"
        # Another address is not affected, nor is a trusted one past 50.
        line, writer = await greeting(relay.port, "127.0.0.2")
        writers.append(writer)
        assert line.startswith(b"220 ")
        for _ in range(60):
            line, writer = await greeting(relay.port, "127.0.0.5")
            writers.append(writer)
            assert line.startswith(b"220 "), line
        refused = relay.app.metrics.registry.get_sample_value(
            "relay_smtp_connections_refused_total", {"reason": "per_ip"}
        )
        assert refused == 1
    finally:
        for writer in writers:
            writer.close()
    # Closed sessions give their places back.
    for writer in writers:
        await writer.wait_closed()
    for _ in range(100):
        if not relay.app.listeners.sessions:
            break
        await asyncio.sleep(0.05)
    line, writer = await greeting(relay.port, "127.0.0.1")
    writer.close()
    assert line.startswith(b"220 ")


async def test_connection_over_the_total_limit_gets_421(
    tmp_path: Path, make_sink, start_relay, cert_files
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files, max_connections=3))
    writers = []
    try:
        for i in range(3):
            line, writer = await greeting(relay.port, f"127.0.0.{20 + i}")
            writers.append(writer)
            assert line.startswith(b"220 ")
        line, writer = await greeting(relay.port, "127.0.0.30")
        writers.append(writer)
        assert line == b"421 4.7.0 Too many connections; try again later\r\n"
    finally:
        for writer in writers:
            writer.close()


async def test_idle_connection_is_closed_sooner_before_its_first_mail(
    tmp_path: Path, make_sink, start_relay, cert_files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_server, "PRE_MAIL_TIMEOUT_SECONDS", 0.5)
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    assert (await reader.readline()).startswith(b"220 ")
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the relay
    assert time.monotonic() - started < 3
    writer.close()


def test_idle_connections_cannot_take_the_admin_port_down(tmp_path: Path) -> None:
    """300 idle connections under a 256-descriptor limit: SMTP says 421, /healthz answers."""
    # Nothing is delivered here: the upstream is the discard port. The certificate is the
    # development one (a loopback listener may go without).
    config = base_config(
        tmp_path, [smtp_upstream("sink", 9)], limits={"max_connections_per_ip": 1000}
    )
    path = write_config(tmp_path, config)

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    log = tmp_path / "relay.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(path)],
            cwd=tmp_path,
            stderr=stderr,
            preexec_fn=small_limit,
        )
    try:
        deadline = time.monotonic() + 30
        while not (ready := READY.search(log.read_text())) and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        assert ready, log.read_text()
        smtp_port, admin_port = int(ready.group(1)), int(ready.group(2))
        greetings, health = asyncio.run(_flood_then_health(smtp_port, admin_port))
        sessions = 256 - RESERVED_DESCRIPTORS - DeliveryConfig().concurrency
        assert greetings.count("220") == sessions, greetings
        assert greetings.count("421") == 300 - sessions
        assert health == 200
        assert "at most 64 SMTP sessions (raise LimitNOFILE" in log.read_text()
    finally:
        process.terminate()
        process.wait(30)


READY = re.compile(r"relay ready: SMTP \[(\d+)\], admin [\d.]+:(\d+)")


async def _flood_then_health(smtp_port: int, admin_port: int) -> tuple[list[str], int]:
    writers, greetings = [], []
    try:
        for _ in range(300):
            line, writer = await greeting(smtp_port, "127.0.0.1")
            writers.append(writer)
            greetings.append(line[:3].decode())
        reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
        writers.append(writer)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
        return greetings, int(status.split()[1])
    finally:
        for writer in writers:
            writer.close()


# -- Slow DATA, our own errors, and credentials that go away.


async def data_session(port: int, tls: ssl.SSLContext) -> tuple[Any, Any]:
    """A raw session after STARTTLS, AUTH, MAIL and RCPT: (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"220")

    async def command(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        await writer.drain()
        while True:
            reply = await reader.readline()
            if reply[3:4] != b"-":
                return reply

    await command(b"EHLO client.test")
    assert (await command(b"STARTTLS")).startswith(b"220")
    await writer.start_tls(tls, server_hostname="localhost")
    await command(b"EHLO client.test")
    assert (await command(b"AUTH PLAIN " + plain_blob("shop", SITE_PASSWORD))).startswith(b"235")
    assert (await command(b"MAIL FROM:<orders@shop.example.com>")).startswith(b"250")
    assert (await command(b"RCPT TO:<buyer@example.org>")).startswith(b"250")
    assert (await command(b"DATA")).startswith(b"354")
    return reader, writer


@pytest.fixture
async def in_data(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    """A session in DATA, the session timeout 2 s and the minimum rate 100 bytes/s."""
    monkeypatch.setattr(smtp_server, "SESSION_TIMEOUT_SECONDS", 2)
    monkeypatch.setattr(smtp_server, "MIN_DATA_RATE", 100)
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))
    return await data_session(relay.port, client_tls)


async def test_data_arriving_steadily_outlives_the_session_timeout(
    in_data: tuple[Any, Any],
) -> None:
    reader, writer = in_data
    writer.write(GOOD_MESSAGE)
    for _ in range(14):  # 4.2 s at ~1,000 bytes a second
        writer.write(b"x" * 298 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)
    writer.write(b".\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"250 2.0.0 queued as")
    writer.close()


async def test_data_slower_than_the_minimum_rate_is_cut(in_data: tuple[Any, Any]) -> None:
    reader, writer = in_data
    started = time.monotonic()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)):
        while time.monotonic() - started < 10:
            writer.write(b"x" * 8 + b"\r\n")  # 20 bytes a second
            await writer.drain()
            if await _closed_within(reader, 0.5):
                raise ConnectionResetError("closed by the relay")
    assert time.monotonic() - started < 6
    writer.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False


async def test_our_error_ends_the_transaction_and_the_next_mail_is_accepted(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))
    accept = relay.app.ingress.accept

    async def broken_once(submission: Any) -> Any:
        monkeypatch.setattr(relay.app.ingress, "accept", accept)
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(relay.app.ingress, "accept", broken_once)
    async with client(relay.port, client_tls) as smtp:
        await smtp.login("shop", SITE_PASSWORD)
        await smtp.mail("orders@shop.example.com")
        await smtp.rcpt("buyer@example.org")
        with pytest.raises(aiosmtplib.SMTPDataError) as failed:
            await smtp.data(GOOD_MESSAGE)
        assert failed.value.code == 451
        assert "a bug" not in failed.value.message
        await smtp.sendmail("orders@shop.example.com", ["buyer@example.org"], GOOD_MESSAGE)
    await sink.handler.wait_for(1)


@pytest.mark.parametrize("change", ["removed", "new password"])
async def test_open_session_stops_sending_when_its_credential_changes(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls, change: str
) -> None:
    sink = await make_sink()
    config = tls_config(tmp_path, sink, cert_files)
    relay = await start_relay(config)
    async with client(relay.port, client_tls) as smtp:
        await smtp.login("shop", SITE_PASSWORD)
        await smtp.sendmail("orders@shop.example.com", ["buyer@example.org"], GOOD_MESSAGE)
        credentials = config["sites"][0]["credentials"]
        if change == "removed":
            credentials.clear()
        else:
            credentials[0]["password_hash"] = hash_password("new", salt=b"sixteen bytes...")
        write_config(tmp_path, config)
        assert relay.app.reload().problems == []
        refused = await smtp.execute_command(b"MAIL", b"FROM:<orders@shop.example.com>")
        assert refused.code == 530
        assert refused.message == (
            "5.7.0 Credential shop was removed or changed; authenticate again"
        )
        # The session may log in again (and fails with the old password).
        again = await smtp.execute_command(b"AUTH", b"PLAIN", plain_blob("shop", SITE_PASSWORD))
        assert again.code == 535
    assert len(sink.handler.messages) <= 1


async def test_auth_answer_over_the_line_limit_gets_500_5_5_6(
    tmp_path: Path, make_sink, start_relay, cert_files, client_tls, caplog: pytest.LogCaptureFixture
) -> None:
    sink = await make_sink()
    relay = await start_relay(tls_config(tmp_path, sink, cert_files))
    async with client(relay.port, client_tls) as smtp:
        challenge = await smtp.execute_command(b"AUTH", b"LOGIN")
        assert challenge.code == 334
        too_long = await smtp.execute_command(b"A" * 3000)
        assert (too_long.code, too_long.message) == (
            500,
            "5.5.6 Authentication Exchange line is too long",
        )
        assert (await smtp.noop()).code == 250  # the session goes on
    assert "Traceback" not in caplog.text
    assert [r.levelname for r in caplog.records if "line limit" in r.getMessage()] == ["WARNING"]
    counted = relay.app.metrics.registry.get_sample_value(
        "relay_auth_failures_total", {"reason": "too_long"}
    )
    assert counted == 1
