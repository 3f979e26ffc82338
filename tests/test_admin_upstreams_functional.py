"""Upstreams made through the admin API as an attacker with a token would use them.

A stored password never follows a change of destination (PATCH host, then
test), never crosses the network without TLS, and an API upstream cannot
reach loopback, private or link-local hosts (at save time, and again at
connect time), nor read a non-SMTP peer's banner back through ``/test``.

Real HTTP to a relay in-process, a capture server on loopback that records
every byte it receives, aiosmtpd sinks as the legitimate upstreams.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.core.classify import Stage
from relay.core.model import Secret, TlsMode, Upstream, UpstreamKind
from relay.upstream_client import (
    NOT_SMTP,
    PLAINTEXT_AUTH_REFUSED,
    Address,
    SmtpUpstreamClient,
)
from tests.conftest import RunningRelay, Sink, base_config, smtp_upstream

TOKEN = "ops-token-0123456789abcdef"
V1 = "/api/v1"
USER, PASSWORD = "relay-user", "stored-Secret-9Qx"
UNVERIFIED_TLS = {"tls": "starttls", "verify_tls": False}  # the API takes no ca_file
StartRelay = Callable[..., Awaitable[RunningRelay]]
MakeSink = Callable[..., Awaitable[Sink]]


@dataclass
class Capture:
    """An SMTP look-alike that offers AUTH without TLS, accepts anything, records every byte."""

    port: int = 0
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0

    def saw_password(self) -> bool:
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        login = base64.b64encode(PASSWORD.encode())
        data = bytes(self.received)
        return PASSWORD.encode() in data or plain in data or login in data

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 capture.test ESMTP\r\n")
        try:
            while line := await reader.readline():
                self.received += line
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-capture.test\r\n250 AUTH PLAIN LOGIN\r\n")
                elif verb == b"AUTH":
                    writer.write(b"235 2.7.0 ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def capture() -> AsyncIterator[Capture]:
    found = Capture()
    server = await asyncio.start_server(found.session, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    yield found
    server.close()
    await server.wait_closed()


@pytest.fixture
async def banner() -> AsyncIterator[int]:
    """A port that answers like an SSH server."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n")
        await writer.drain()
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@dataclass
class Admin:
    session: aiohttp.ClientSession
    port: int

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(
            method,
            f"http://127.0.0.1:{self.port}{path}",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def problems(self, method: str, path: str, body: Any) -> list[str]:
        status, answer = await self.call(method, path, body)
        assert status == 422, (status, answer)
        assert answer["error"]["code"] == "invalid"
        return list(answer["error"]["problems"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def config(tmp_path: Path, port: int, allow_private: bool = True) -> dict[str, Any]:
    data = base_config(tmp_path, [smtp_upstream("file-up", port)])
    data["admin"].update(tokens=[{"name": "ops", "token": TOKEN}])
    data["admin"]["allow_private_upstreams"] = allow_private
    data["health"] = {"check_interval_seconds": 0}
    return data


async def relay_admin(
    start_relay: StartRelay, http: aiohttp.ClientSession, data: dict[str, Any]
) -> tuple[RunningRelay, Admin]:
    relay = await start_relay(data)
    return relay, Admin(http, relay.app.admin_port)


# -- Finding 2: the stored password never follows a change of destination


async def test_patch_then_test_never_sends_the_stored_password_elsewhere(
    tmp_path: Path,
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    make_sink: MakeSink,
    capture: Capture,
    closed_port: int,
) -> None:
    good = await make_sink(tls="starttls", auth=(USER, PASSWORD))
    _, api = await relay_admin(start_relay, http, config(tmp_path, closed_port))
    body = {"name": "api-up", "host": "127.0.0.1", "port": good.port, "username": USER}
    status, _ = await api.call(
        "POST", f"{V1}/upstreams", {**body, "password": PASSWORD, **UNVERIFIED_TLS}
    )
    assert status == 201
    path = f"{V1}/upstreams/api-up"

    # The attack as reported: point it at our server without TLS, then test.
    attack = {"port": capture.port, "tls": "none"}
    problems = await api.problems("PATCH", path, attack)
    assert any("needs the password again" in p for p in problems), problems
    # One field at a time is refused the same way, naming the field.
    for change in ({"port": capture.port}, {"username": "other"}, {"verify_tls": True}):
        [problem] = await api.problems("PATCH", path, change)
        assert problem.startswith(f"upstream.password: changing {next(iter(change))} needs"), (
            problem
        )
    # Giving a password with tls: none is refused too, and the API never takes the escape hatch.
    problems = await api.problems("PATCH", path, {**attack, "password": "new-one"})
    assert any("tls: none" in p for p in problems), problems
    problems = await api.problems("PATCH", path, {**attack, "allow_plaintext_auth": True})
    assert (
        "upstream.allow_plaintext_auth: not accepted through the API (use the config file)"
        in problems
    )

    status, probe = await api.call("POST", f"{path}/test")
    assert (status, probe["ok"], probe["stage"]) == (200, True, "auth")  # still the good sink

    # Dropping the password explicitly is allowed; the username alone never AUTHs in clear.
    status, moved = await api.call("PATCH", path, {**attack, "password": None})
    assert (status, moved["has_password"], moved["port"]) == (200, False, capture.port)
    status, probe = await api.call("POST", f"{path}/test")
    assert (status, probe["ok"], probe["stage"]) == (200, False, "auth")
    assert PLAINTEXT_AUTH_REFUSED in probe["detail"]
    assert capture.connections == 1
    assert b"AUTH" not in bytes(capture.received)
    assert not capture.saw_password()
    # A PATCH that moves nothing keeps the password without asking for it.
    status, _ = await api.call(
        "PATCH", path, {"password": PASSWORD, **UNVERIFIED_TLS, "port": good.port}
    )
    assert status == 200
    status, kept = await api.call(
        "PATCH", path, {"priority": 3, "port": good.port, "tls": "starttls"}
    )
    assert (status, kept["has_password"], kept["priority"]) == (200, True, 3)


@pytest.mark.parametrize("allowed", [False, True])
async def test_the_client_refuses_auth_without_tls_unless_the_file_allows_it(
    capture: Capture, allowed: bool
) -> None:
    upstream = Upstream(
        "plain",
        UpstreamKind.SMTP,
        "127.0.0.1",
        capture.port,
        TlsMode.NONE,
        username=USER,
        password=Secret(PASSWORD),
        allow_plaintext_auth=allowed,
    )
    client = SmtpUpstreamClient(upstream, "relay.test")

    result = await client.check()

    assert result.ok is allowed
    assert capture.saw_password() is allowed
    if not allowed:
        assert (result.stage, result.detail) == (Stage.AUTH, f"auth: {PLAINTEXT_AUTH_REFUSED}")


# -- Finding 6: API upstreams stay out of the relay's own network


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("localhost", "loopback"),
    ],
)
async def test_api_upstreams_to_private_hosts_are_refused(
    tmp_path: Path,
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    closed_port: int,
    host: str,
    kind: str,
) -> None:
    _, api = await relay_admin(start_relay, http, config(tmp_path, closed_port, False))

    [problem] = await api.problems(
        "POST", f"{V1}/upstreams", {"name": "x", "host": host, "port": 25}
    )

    assert problem.startswith("upstream.host: "), problem
    assert f"a {kind} address" in problem and "admin.allow_private_upstreams" in problem
    if host == "localhost":
        assert "localhost resolves to" in problem
    status, _ = await api.call("GET", f"{V1}/upstreams/x")
    assert status == 404


async def test_patching_an_api_upstream_to_a_private_host_is_refused(
    tmp_path: Path, start_relay: StartRelay, http: aiohttp.ClientSession, closed_port: int
) -> None:
    relay, api = await relay_admin(start_relay, http, config(tmp_path, closed_port, False))
    body = {"name": "pub", "host": "192.0.0.9", "port": 25}  # RFC 7723: globally reachable
    status, answer = await api.call("POST", f"{V1}/upstreams", body)
    assert status == 201, answer

    [problem] = await api.problems("PATCH", f"{V1}/upstreams/pub", {"host": "169.254.169.254"})

    assert "link-local" in problem
    assert relay.app.directory().upstream("pub").host == "192.0.0.9"


async def test_connect_time_check_refuses_a_stored_upstream_that_now_points_inside(
    tmp_path: Path,
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    make_sink: MakeSink,
    closed_port: int,
) -> None:
    """What DNS rebinding would do: the saved host leads to loopback when the relay connects."""
    sink = await make_sink()
    data = config(tmp_path, closed_port, allow_private=True)
    relay, api = await relay_admin(start_relay, http, data)
    status, _ = await api.call(
        "POST",
        f"{V1}/upstreams",
        {"name": "api-up", "host": "localhost", "port": sink.port, "tls": "none"},
    )
    assert status == 201
    status, probe = await api.call("POST", f"{V1}/upstreams/api-up/test")
    assert probe["ok"] is True and sink.handler.ehlo_count == 1
    await relay.app.stop()

    data["admin"]["allow_private_upstreams"] = False
    relay, api = await relay_admin(start_relay, http, data)
    status, probe = await api.call(
        "POST", f"{V1}/upstreams/api-up/test", {"to": "someone@example.org"}
    )

    assert (status, probe["ok"], probe["stage"]) == (200, False, "connect")
    assert "localhost resolves to" in probe["detail"]
    assert "admin.allow_private_upstreams" in probe["detail"]
    assert sink.handler.ehlo_count == 1  # never connected again


async def loopback_only(host: str, port: int | None, within: float) -> list[Address]:
    """A resolver that sends every name to 127.0.0.1, as a rebinding DNS server would."""
    return [(socket.AF_INET, ("127.0.0.1", port or 25))]


MISMATCH = "Hostname mismatch, certificate is not valid for 'other.test'"


@pytest.mark.parametrize(
    ("tls", "host", "detail"),
    [
        (TlsMode.STARTTLS, "localhost", "ok"),
        (TlsMode.STARTTLS, "other.test", MISMATCH),
        (TlsMode.IMPLICIT, "localhost", "ok"),
        (TlsMode.IMPLICIT, "other.test", MISMATCH),
    ],
)
async def test_a_bound_connection_still_verifies_tls_against_the_name(
    make_sink: MakeSink,
    cert_files: tuple[Path, Path, Path],
    tls: TlsMode,
    host: str,
    detail: str,
) -> None:
    """Connecting to the checked address keeps the name for SNI and the certificate check."""
    sink = await make_sink(tls=tls.value)  # a certificate for localhost and 127.0.0.1
    upstream = Upstream(
        "bound", UpstreamKind.SMTP, host, sink.port, tls, ca_file=str(cert_files[2])
    )
    client = SmtpUpstreamClient(upstream, "relay.test", resolve=loopback_only)

    result = await client.check()

    assert detail in result.detail
    assert result.ok is (detail == "ok")


async def test_a_non_smtp_peer_is_described_not_quoted(
    tmp_path: Path,
    start_relay: StartRelay,
    http: aiohttp.ClientSession,
    banner: int,
    closed_port: int,
) -> None:
    _, api = await relay_admin(start_relay, http, config(tmp_path, closed_port))
    body = {"name": "ssh", "host": "127.0.0.1", "port": banner, "tls": "none"}
    assert (await api.call("POST", f"{V1}/upstreams", body))[0] == 201

    status, probe = await api.call("POST", f"{V1}/upstreams/ssh/test")

    assert (status, probe["ok"], probe["stage"]) == (200, False, "connect")
    assert probe["detail"] == f"connect: {NOT_SMTP}"
    assert "SSH" not in json.dumps(probe) and "OpenSSH" not in json.dumps(probe)


async def test_a_delivery_attempt_to_a_non_smtp_peer_records_no_banner(banner: int) -> None:
    upstream = Upstream("ssh", UpstreamKind.SMTP, "127.0.0.1", banner, TlsMode.NONE)
    client = SmtpUpstreamClient(upstream, "relay.test")
    try:
        result = await client.send(
            "a@example.com", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n", "m1"
        )
    finally:
        await client.close()

    assert (result.stage, result.reply, result.transport_error) == (Stage.CONNECT, None, NOT_SMTP)
    assert "SSH" not in result.summary


async def test_a_short_timeout_is_refused_through_the_api(
    tmp_path: Path, start_relay: StartRelay, http: aiohttp.ClientSession, closed_port: int
) -> None:
    _, api = await relay_admin(start_relay, http, config(tmp_path, closed_port))
    body = {"name": "fast", "host": "127.0.0.1", "timeout_seconds": 0.5}

    [problem] = await api.problems("POST", f"{V1}/upstreams", body)

    assert problem == (
        "upstream.timeout_seconds: must be at least 10 for an upstream made through the API"
    )
    assert (await api.call("POST", f"{V1}/upstreams", {**body, "timeout_seconds": 10}))[0] == 201
    [again] = await api.problems("PATCH", f"{V1}/upstreams/fast", {"timeout_seconds": 9.9})
    assert again == problem


async def test_the_audit_entry_of_a_test_names_to_and_from(
    tmp_path: Path, start_relay: StartRelay, http: aiohttp.ClientSession, make_sink: MakeSink
) -> None:
    sink = await make_sink()
    _, api = await relay_admin(start_relay, http, config(tmp_path, sink.port))
    body = {"to": "someone@example.org", "from": "probe@shop.example.com"}

    status, probe = await api.call("POST", f"{V1}/upstreams/file-up/test", body)
    assert (status, probe["message"]["accepted"]) == (200, True)
    status, _ = await api.call("POST", f"{V1}/upstreams/file-up/test", {"to": "b@example.org"})

    status, audit = await api.call("GET", f"{V1}/audit")
    details = [e["detail"] for e in audit["items"] if e["action"] == "test"]
    assert details == [
        {"to": "b@example.org", "from": "postmaster@relay.test"},
        {"to": "someone@example.org", "from": "probe@shop.example.com"},
    ]
