"""Shared fixtures: a recording SMTP sink with scripted replies, trustme TLS, a relay in-process.

Everything runs on 127.0.0.1 with ephemeral ports. The sink is aiosmtpd on
the test's own event loop (the model is aiosmtplib's RecordingHandler).
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from relay.app import RelayApp
from relay.config import load_config
from relay.core.passwords import hash_password
from tests.dns_zone import Zone, serve_zone

SITE_PASSWORD = "site-password-1"
# Hashing with scrypt costs ~0.1 s: do it once for the whole run.
SITE_PASSWORD_HASH = hash_password(SITE_PASSWORD)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(cert chain, key, CA bundle) for localhost / 127.0.0.1."""
    directory = tmp_path_factory.mktemp("certs")
    server = ca.issue_cert("localhost", "127.0.0.1", "relay.test")
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


@pytest.fixture
def client_tls(cert_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    """A client context that trusts the test CA (and verifies hostnames)."""
    return ssl.create_default_context(cafile=str(cert_files[2]))


# -- The sink: an upstream that records what it receives and plays scripted replies.


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    # Scripted replies: "mail", "data" -> reply line; "rcpt" -> {address: reply line};
    # "delay" -> seconds to wait before the DATA reply.
    replies: dict[str, Any] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    ehlo_count: int = 0  # one per connection on a plaintext sink: counts connections

    async def handle_EHLO(
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self.ehlo_count += 1
        return responses

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if "mail" in self.replies:
            return str(self.replies["mail"])
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.replies.get("rcpt", {}).get(address)
        if reply is not None:
            return str(reply)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if "delay" in self.replies:  # seconds before answering DATA: a slow upstream
            await asyncio.sleep(float(self.replies["delay"]))
        if "data" in self.replies:
            return str(self.replies["data"])
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        self.arrived.set()
        return "250 2.0.0 OK accepted"

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Received]:
        async with asyncio.timeout(seconds):
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages


@dataclass
class Sink:
    handler: SinkHandler
    server: asyncio.Server
    port: int

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


SinkFactory = Callable[..., Any]


@pytest.fixture
async def make_sink(cert_files: tuple[Path, Path, Path]) -> AsyncIterator[SinkFactory]:
    """make_sink(tls=none|starttls|implicit, auth=None|(user, password), replies={...}, port=0,
    cert=(chain, key) instead of the localhost certificate)."""
    servers: list[asyncio.Server] = []

    async def make(
        tls: str = "none",
        auth: tuple[str, str] | None = None,
        replies: dict[str, Any] | None = None,
        port: int = 0,
        cert: tuple[Path, Path] | None = None,
    ) -> Sink:
        handler = SinkHandler(replies=replies or {})
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*(cert or cert_files[:2]))

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and auth is not None
                and (data.login.decode(), data.password.decode()) == auth
            )
            # handled=False: aiosmtpd answers 235 or 535 itself (True would send nothing).
            return AuthResult(success=ok, handled=False)

        def factory() -> SMTP:
            with warnings.catch_warnings():
                # A plaintext sink with AUTH is deliberate here (loopback, test credentials).
                warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
                return SMTP(
                    handler,
                    hostname="sink.test",
                    tls_context=context if tls == "starttls" else None,
                    authenticator=authenticator if auth else None,
                    auth_required=bool(auth),
                    auth_require_tls=tls == "starttls",
                )

        server = await asyncio.get_running_loop().create_server(
            factory, "127.0.0.1", port, ssl=context if tls == "implicit" else None
        )
        servers.append(server)
        return Sink(handler, server, server.sockets[0].getsockname()[1])

    yield make
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def greeting_421() -> AsyncIterator[int]:
    """A port whose server answers every connection with 421 and hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 sink.test busy, try later\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- The relay under test, in-process.


def base_config(
    tmp_path: Path, upstreams: list[dict[str, Any]], **overrides: Any
) -> dict[str, Any]:
    """A complete relay config dict; tests change what they need."""
    config: dict[str, Any] = {
        "server": {"hostname": "relay.test", "data_dir": str(tmp_path / "data")},
        "store": {"url": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'relay.db'}"},
        "listeners": [
            {
                "name": "submission",
                "host": "127.0.0.1",
                "port": 0,
                "tls": "starttls",
                "auth": "required",
            }
        ],
        # Tests point API upstreams at loopback sinks; the refusal has its own tests.
        "admin": {"host": "127.0.0.1", "port": 0, "allow_private_upstreams": True},
        "delivery": {"retry_first_seconds": 1, "retry_max_seconds": 2},
        "dns": {"verify_interval_seconds": 0},  # no DNS traffic unless a test points it at a zone
        "upstreams": upstreams,
        "sites": [
            {
                "id": "shop",
                "name": "Shop",
                "credentials": [{"username": "shop", "password_hash": SITE_PASSWORD_HASH}],
                "senders": ["*@shop.example.com"],
                "from": {"email": "sales@example.com", "name": "Sales Team"},
                "reply_to": "original",
                "upstreams": [u["name"] for u in upstreams],
            }
        ],
    }
    config.update(overrides)
    return config


def smtp_upstream(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "smtp", "host": "127.0.0.1", "port": port, "tls": "none", **extra}


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class FakeClock:
    """A controllable wall clock for backoff, quota windows and circuit cooldowns.

    Only the relay's decisions read it; sockets and timeouts keep real time.
    """

    def __init__(self, now: float = 1_800_000_000.0) -> None:  # 2027-01-15 08:00 UTC
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RunningRelay:
    app: RelayApp

    @property
    def port(self) -> int:
        return self.app.listeners.ports[0]

    @property
    def ports(self) -> list[int]:
        return self.app.listeners.ports

    def advance(self, clock: FakeClock, seconds: float) -> None:
        """Move the fake clock on and let delivery look for what became due."""
        clock.advance(seconds)
        self.app.delivery.wake()


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """start_relay(config_dict, clock=None) -> RunningRelay, stopped at the end of the test.

    Starting again with the same config (after ``await relay.app.stop()``) is a restart
    on the same store.
    """
    apps: list[RelayApp] = []

    async def start(config: dict[str, Any], clock: FakeClock | None = None) -> RunningRelay:
        path = write_config(tmp_path, config)
        app = RelayApp(load_config(path), clock=clock) if clock else RelayApp(load_config(path))
        await app.start()
        apps.append(app)
        return RunningRelay(app)

    yield start
    for app in apps:
        await app.stop()


@pytest.fixture
def dns_zone() -> Iterator[Zone]:
    """A loopback DNS server; point `dns.nameservers` at `dns_zone.nameserver`."""
    with serve_zone() as zone:
        yield zone
