"""The admin HTTP API against a relay running in-process: auth, secrets, file vs store objects,
validation, pagination, reload, the audit log and the error envelope.

Every call is real HTTP on loopback (aiohttp client -> the relay's admin port); SMTP checks use
a real client over STARTTLS and an aiosmtpd sink as the upstream.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import re
import sqlite3
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from relay.core.tokens import hash_token
from tests.conftest import (
    SITE_PASSWORD,
    SITE_PASSWORD_HASH,
    FakeClock,
    RunningRelay,
    base_config,
    smtp_upstream,
    write_config,
)

TOKEN = "ops-token-0123456789abcdef"
CI_TOKEN = "ci-token-fedcba9876543210"
_DEFAULT: Any = object()
_NOTHING: Any = object()
V1 = "/api/v1"


# -- Helpers


@dataclass
class Reply:
    status: int
    headers: Any  # multidict of the response headers
    text: str

    @property
    def body(self) -> Any:
        return json.loads(self.text)

    def error(self, status: int, code: str) -> dict[str, Any]:
        """Assert the error envelope with this status and code; return the error object."""
        assert self.status == status, (self.status, self.text)
        assert self.headers["Content-Type"].startswith("application/json")
        error = self.body["error"]
        assert error["code"] == code, error
        assert isinstance(error["message"], str) and error["message"]
        return dict(error)


@dataclass
class Admin:
    """Authenticated calls to one relay's admin API."""

    session: aiohttp.ClientSession
    port: int
    token: str | None = TOKEN

    async def call(
        self,
        method: str,
        path: str,
        body: Any = _NOTHING,
        *,
        token: Any = _DEFAULT,
        headers: dict[str, str] | None = None,
        data: bytes | io.BytesIO | AsyncIterator[bytes] | None = None,
    ) -> Reply:
        token = self.token if token is _DEFAULT else token
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        kwargs: dict[str, Any] = {"headers": sent}
        if body is not _NOTHING:
            kwargs["json"] = body
        if data is not None:
            kwargs["data"] = data
        url = f"http://127.0.0.1:{self.port}{path}"
        async with self.session.request(method, url, **kwargs) as response:
            return Reply(response.status, response.headers, await response.text())

    async def ok(self, method: str, path: str, body: Any = _NOTHING, status: int = 200) -> Any:
        reply = await self.call(method, path, body)
        assert reply.status == status, (method, path, reply.status, reply.text)
        return reply.body if reply.text else None

    async def get(self, path: str) -> Any:
        return await self.ok("GET", path)


AdminFactory = Callable[..., Admin]


@pytest.fixture
async def admin() -> AsyncIterator[AdminFactory]:
    """admin(relay, token=TOKEN) -> Admin; one HTTP session per test."""
    async with aiohttp.ClientSession() as session:

        def connect(relay: RunningRelay, token: str | None = TOKEN) -> Admin:
            return Admin(session, relay.app.admin_port, token)

        yield connect


def relay_config(
    tmp_path: Path, upstream_port: int, upstreams: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    """base_config with one file upstream ("file-up"), the file site "shop" and the ops token."""
    config = base_config(tmp_path, upstreams or [smtp_upstream("file-up", upstream_port)], **extra)
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["health"] = {"check_interval_seconds": 0}
    return config


def with_tls_listener(config: dict[str, Any], cert_files: tuple[Path, Path, Path]) -> None:
    """The submission listener presents the test CA's certificate (for `client_tls`)."""
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))


# A password needs TLS; the API takes no ca_file, so the sink's test certificate goes unverified.
UNVERIFIED_TLS = {"tls": "starttls", "verify_tls": False}


def api_upstream(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "host": "127.0.0.1", "port": port, "tls": "none", **extra}


def api_site(site_id: str, upstreams: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "id": site_id,
        "from": {"email": f"news@{site_id}.example.com", "name": site_id.title()},
        "senders": [f"*@{site_id}.example.com"],
        "upstreams": upstreams,
        **extra,
    }


MESSAGE = b"From: <a@blog.example.com>\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


async def send_mail(
    relay: RunningRelay,
    client_tls: ssl.SSLContext,
    username: str,
    password: str,
    sender: str,
    recipient: str = "x@example.org",
) -> str:
    """STARTTLS, AUTH, one message; the queued message's id."""
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay.port, tls_context=client_tls, start_tls=True
    ) as client:
        await client.login(username, password)
        _, reply = await client.sendmail(sender, [recipient], MESSAGE)
    return reply.split()[-1]


async def wait_until(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    """Poll ``check`` (async) until it returns something truthy, within a deadline."""
    async with asyncio.timeout(seconds):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


def sqlite_path(config: dict[str, Any]) -> Path:
    url = config["store"]["url"]
    prefix = "sqlite+aiosqlite:///"
    assert url.startswith(prefix)
    return Path(url[len(prefix) :])


def query_db(config: dict[str, Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(sqlite_path(config))
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


async def restart(relay: RunningRelay, start_relay: Any, config: dict[str, Any]) -> RunningRelay:
    await relay.app.stop()
    return await start_relay(config)


# -- 1. Authentication


BAD_AUTHORIZATIONS = {
    "missing": None,
    "wrong-token": f"Bearer {TOKEN}x",
    "basic-scheme": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode(),
    "basic-with-token": f"Basic {TOKEN}",
    "empty-bearer": "Bearer ",
    "bearer-only": "Bearer",
}


@pytest.mark.parametrize("authorization", BAD_AUTHORIZATIONS.values(), ids=BAD_AUTHORIZATIONS)
async def test_api_refuses_requests_without_a_valid_bearer_token(
    tmp_path: Path, start_relay, admin, closed_port: int, authorization: str | None
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    headers = {"Authorization": authorization} if authorization is not None else {}
    calls = [
        ("GET", f"{V1}/upstreams"),
        ("GET", f"{V1}/openapi.json"),
        ("POST", f"{V1}/reload"),
        ("DELETE", f"{V1}/sites/shop"),
        ("GET", f"{V1}/no-such-thing"),
        ("GET", "/api/anything"),
    ]
    for method, path in calls:
        reply = await api.call(method, path, token=None, headers=headers)
        error = reply.error(401, "unauthorized")
        assert "bearer token" in error["message"]
        assert reply.headers["WWW-Authenticate"] == "Bearer"

    # Nothing happened, and the right token still works (6 failures are under the limit).
    assert (await api.get(f"{V1}/audit"))["items"] == []
    assert [s["id"] for s in (await api.get(f"{V1}/sites"))["items"]] == ["shop"]


async def test_health_readiness_and_metrics_need_no_token(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay, token=None)

    health = await api.call("GET", "/healthz")
    ready = await api.call("GET", "/readyz")
    metrics = await api.call("GET", "/metrics")

    assert (health.status, health.body) == (200, {"status": "ok"})
    assert (ready.status, ready.body) == (200, {"status": "ready"})
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE" in metrics.text
    # A wrong token on them is simply not looked at.
    assert (await api.call("GET", "/healthz", token="wrong")).status == 200


async def test_hashed_token_and_second_token_are_named_in_the_audit_log(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    config["admin"]["tokens"].append({"name": "ci", "token_hash": hash_token(CI_TOKEN)})
    relay = await start_relay(config)
    ops, ci = admin(relay), admin(relay, token=CI_TOKEN)

    await ops.ok("POST", f"{V1}/sites", api_site("one", ["file-up"]), status=201)
    await ci.ok("POST", f"{V1}/sites", api_site("two", ["file-up"]), status=201)

    audit = await ci.get(f"{V1}/audit")
    assert [(e["token"], e["target"]) for e in audit["items"]] == [("ci", "two"), ("ops", "one")]
    # The configured hash is not itself a token.
    assert (await ci.call("GET", f"{V1}/sites", token=hash_token(CI_TOKEN))).status == 401
    for entry in audit["items"]:
        assert TOKEN not in json.dumps(entry) and CI_TOKEN not in json.dumps(entry)


async def test_without_configured_tokens_the_api_says_so(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    config["admin"]["tokens"] = []
    relay = await start_relay(config)
    api = admin(relay)

    reply = await api.call("GET", f"{V1}/upstreams")

    error = reply.error(401, "unauthorized")
    assert "no admin tokens are configured" in error["message"]
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert (await api.call("GET", "/healthz")).status == 200


async def test_ten_failures_from_one_address_block_it_even_with_the_right_token(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    for attempt in range(10):
        reply = await api.call("GET", f"{V1}/sites", token=f"guess-{attempt:02d}-0123456789")
        reply.error(401, "unauthorized")
    blocked = await api.call("GET", f"{V1}/sites")

    blocked.error(429, "too_many_requests")
    assert int(blocked.headers["Retry-After"]) > 0
    assert (await api.call("GET", "/healthz")).status == 200  # outside /api/: not throttled


async def test_requests_without_a_token_never_block(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    for authorization in [None, "Bearer ", "Bearer", "Basic"] * 5:
        headers = {"Authorization": authorization} if authorization is not None else {}
        (await api.call("GET", f"{V1}/sites", token=None, headers=headers)).error(
            401, "unauthorized"
        )

    assert (await api.call("GET", f"{V1}/sites")).status == 200
    count = relay.app.metrics.registry.get_sample_value
    assert count("relay_admin_auth_failures_total", {"reason": "missing"}) == 20
    assert count("relay_admin_auth_failures_total", {"reason": "invalid"}) is None


async def test_nine_failures_do_not_block(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    for _ in range(9):
        (await api.call("GET", f"{V1}/sites", token="wrong-wrong-wrong-wrong")).error(
            401, "unauthorized"
        )

    assert (await api.call("GET", f"{V1}/sites")).status == 200


async def test_a_failed_authentication_is_logged_once_and_counted(
    tmp_path: Path, start_relay, admin, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    guess = "guess-0123456789-abcdef"

    with caplog.at_level("WARNING", logger="admin_http.middlewares"):
        (await api.call("GET", f"{V1}/sites", token=guess)).error(401, "unauthorized")
        assert (await api.call("GET", f"{V1}/sites")).status == 200  # the right token: no line

    [line] = [r for r in caplog.records if r.name == "admin_http.middlewares"]
    assert line.levelname == "WARNING"
    assert (
        line.getMessage() == "admin API: failed authentication from 127.0.0.1 (GET /api/v1/sites)"
    )
    assert guess not in caplog.text and TOKEN not in caplog.text
    for _ in range(9):
        await api.call("GET", f"{V1}/sites", token=guess)
    (await api.call("GET", f"{V1}/sites")).error(429, "too_many_requests")
    metrics = (await api.call("GET", "/metrics")).text
    assert 'relay_admin_auth_failures_total{reason="invalid"} 10.0' in metrics
    assert 'relay_admin_auth_failures_total{reason="blocked"} 1.0' in metrics
    assert "now blocked for a while" in caplog.records[-1].getMessage()


async def test_reload_applies_a_changed_token_list_at_once(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    config["admin"]["tokens"].append({"name": "ci", "token_hash": hash_token(CI_TOKEN)})
    relay = await start_relay(config)
    ops, ci = admin(relay), admin(relay, token=CI_TOKEN)
    assert (await ci.call("GET", f"{V1}/sites")).status == 200

    config["admin"]["tokens"] = [{"name": "ci", "token": CI_TOKEN}]  # ops removed, ci kept
    write_config(tmp_path, config)
    result = await ops.ok("POST", f"{V1}/reload")

    assert result["restart_needed"] == []
    (await ops.call("GET", f"{V1}/sites")).error(401, "unauthorized")
    assert (await ci.call("GET", f"{V1}/sites")).status == 200
    # The rest of the admin section still needs a restart, and says so.
    config["admin"]["port"] = 1
    write_config(tmp_path, config)
    assert (await ci.ok("POST", f"{V1}/reload"))["restart_needed"] == ["admin"]
    assert relay.app.config.admin.port == 0


async def test_the_admin_listener_speaks_https_with_a_certificate(
    tmp_path: Path,
    start_relay,
    closed_port: int,
    cert_files: tuple[Path, Path, Path],
    client_tls: ssl.SSLContext,
) -> None:
    config = relay_config(tmp_path, closed_port)
    config["admin"].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    relay = await start_relay(config)
    port = relay.app.admin_port

    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"https://localhost:{port}{V1}/upstreams",
            headers={"Authorization": f"Bearer {TOKEN}"},
            ssl=client_tls,
        ) as response:
            assert response.status == 200
            assert [u["name"] for u in (await response.json())["items"]] == ["file-up"]
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not answered as HTTP
            async with session.get(f"http://127.0.0.1:{port}/healthz") as plain:
                await plain.read()


# -- 2. Secrets are never returned


async def test_no_response_ever_contains_a_secret(
    tmp_path: Path,
    start_relay,
    admin,
    make_sink,
    closed_port: int,
    cert_files: tuple[Path, Path, Path],
    client_tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file_password, env_password, api_password = "file-pw-Aq7x91", "env-pw-Bz3k42", "api-pw-Cy5m63"
    monkeypatch.setenv("ADMIN_TEST_UPSTREAM_PASSWORD", env_password)
    sink = await make_sink(tls="starttls", auth=("apiuser", api_password))
    plain = {"allow_plaintext_auth": True}  # never connected to (closed port)
    upstreams = [
        smtp_upstream("file-up", closed_port, username="fileuser", password=file_password, **plain),
        smtp_upstream(
            "env-up",
            closed_port,
            username="envuser",
            password_env="ADMIN_TEST_UPSTREAM_PASSWORD",
            **plain,
        ),
    ]
    config = relay_config(tmp_path, closed_port, upstreams)
    with_tls_listener(config, cert_files)
    relay = await start_relay(config)
    api = admin(relay)

    created = await api.ok(
        "POST",
        f"{V1}/upstreams",
        api_upstream(
            "api-up", sink.port, username="apiuser", password=api_password, **UNVERIFIED_TLS
        ),
        status=201,
    )
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["api-up"]), status=201)
    reply = await api.call("POST", f"{V1}/sites/blog/credentials", {"username": "blogger"})
    assert reply.status == 201, reply.text
    assert reply.headers["Cache-Control"] == "no-store"
    credential = reply.body
    assert credential["site"] == "blog" and credential["username"] == "blogger"
    assert isinstance(credential["password"], str) and len(credential["password"]) >= 16
    generated = await api.ok("POST", f"{V1}/sites/blog/credentials", status=201)
    assert generated["username"].startswith("blog-") and generated["password"]
    domain = await api.ok("POST", f"{V1}/domains", {"name": "example.com"}, status=201)
    assert domain["signing"] is True

    # The credential works for SMTP AUTH, and the relay AUTHs upstream with the stored password.
    message_id = await send_mail(
        relay, client_tls, "blogger", credential["password"], "a@blog.example.com"
    )
    [received] = await sink.handler.wait_for(1)
    assert received.rcpt_tos == ["x@example.org"]

    key_file = Path(config["server"]["data_dir"], "secret.key")
    secret_key = (await asyncio.to_thread(key_file.read_text)).strip()
    assert secret_key
    secrets = {
        "file upstream password": file_password,
        "env upstream password": env_password,
        "api upstream password": api_password,
        "credential password": credential["password"],
        "generated credential password": generated["password"],
        "site password": SITE_PASSWORD,
        "site password hash": SITE_PASSWORD_HASH,
        "a password hash": "$scrypt$",
        "the secret key": secret_key,
        "a private key": "PRIVATE KEY",
        "the admin token": TOKEN,
    }
    paths = [
        f"{V1}/upstreams",
        f"{V1}/sites",
        f"{V1}/domains",
        f"{V1}/audit",
        f"{V1}/stats",
        f"{V1}/openapi.json",
        f"{V1}/messages",
        f"{V1}/messages/{message_id}",
        f"{V1}/domains/example.com/dns-records",
    ]
    for name in ("file-up", "env-up", "api-up"):
        paths += [f"{V1}/upstreams/{name}", f"{V1}/upstreams/{name}/stats"]
    paths += [f"{V1}/sites/shop", f"{V1}/sites/blog", f"{V1}/domains/example.com"]
    bodies = {path: json.dumps(await api.get(path)) for path in paths}
    bodies["POST upstreams"] = json.dumps(created)
    bodies["POST domains"] = json.dumps(domain)
    for path, text in bodies.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{path} shows {what}"

    upstreams_seen = {u["name"]: u for u in (await api.get(f"{V1}/upstreams"))["items"]}
    assert {n: (u["username"], u["has_password"]) for n, u in upstreams_seen.items()} == {
        "file-up": ("fileuser", True),
        "env-up": ("envuser", True),
        "api-up": ("apiuser", True),
    }
    assert "password" not in upstreams_seen["api-up"]
    blog = await api.get(f"{V1}/sites/blog")
    assert sorted(c["username"] for c in blog["credentials"]) == sorted(
        ["blogger", generated["username"]]
    )
    assert (await api.get(f"{V1}/sites/shop"))["credentials"] == [{"username": "shop"}]


# -- 3. Objects from the config file are read-only through the API


async def test_file_objects_are_listed_as_managed_by_file_and_refuse_changes(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port, domains=[{"name": "file.example"}])
    relay = await start_relay(config)
    api = admin(relay)
    config_path = str(tmp_path / "config.yaml")

    upstreams = (await api.get(f"{V1}/upstreams"))["items"]
    sites = (await api.get(f"{V1}/sites"))["items"]
    domains = (await api.get(f"{V1}/domains"))["items"]
    assert [(u["name"], u["managed_by"]) for u in upstreams] == [("file-up", "file")]
    assert [(s["id"], s["managed_by"]) for s in sites] == [("shop", "file")]
    assert [(d["name"], d["managed_by"]) for d in domains] == [("file.example", "file")]

    refused = [
        ("PATCH", f"{V1}/upstreams/file-up", {"priority": 5}),
        ("DELETE", f"{V1}/upstreams/file-up", _NOTHING),
        ("POST", f"{V1}/upstreams/file-up/activate", _NOTHING),
        ("POST", f"{V1}/upstreams/file-up/deactivate", _NOTHING),
        ("PATCH", f"{V1}/sites/shop", {"rate_per_minute": 5}),
        ("DELETE", f"{V1}/sites/shop", _NOTHING),
        ("POST", f"{V1}/sites/shop/credentials", {"username": "another"}),
        ("DELETE", f"{V1}/sites/shop/credentials/shop", _NOTHING),
        ("DELETE", f"{V1}/domains/file.example", _NOTHING),
        ("POST", f"{V1}/upstreams", api_upstream("file-up", closed_port)),
        ("POST", f"{V1}/sites", api_site("shop", ["file-up"])),
        ("POST", f"{V1}/domains", {"name": "file.example"}),
        ("POST", f"{V1}/domains", {"name": "FILE.Example"}),
    ]
    for method, path, body in refused:
        error = (await api.call(method, path, body)).error(409, "conflict")
        assert config_path in error["message"], (method, path, error)

    # Nothing changed, and nothing was audited.
    assert (await api.get(f"{V1}/upstreams"))["items"] == upstreams
    assert (await api.get(f"{V1}/sites"))["items"] == sites
    assert (await api.get(f"{V1}/domains"))["items"] == domains
    assert (await api.get(f"{V1}/audit"))["total"] == 0
    assert query_db(config, "SELECT count(*) FROM upstreams") == [(0,)]
    assert query_db(config, "SELECT count(*) FROM sites") == [(0,)]


# -- 4. Objects created through the API


async def test_create_read_and_merge_patch_store_objects(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    upstream = await api.ok(
        "POST", f"{V1}/upstreams", api_upstream("api-up", closed_port, rate_per_minute=30), 201
    )
    site = await api.ok(
        "POST", f"{V1}/sites", api_site("blog", ["api-up"], daily_limit=100), status=201
    )
    domain = await api.ok("POST", f"{V1}/domains", {"name": "Blog.Example.com"}, status=201)

    assert (upstream["managed_by"], upstream["rate_per_minute"], upstream["port"]) == (
        "api",
        30,
        closed_port,
    )
    assert (upstream["active"], upstream["has_password"], upstream["kind"]) == (True, False, "smtp")
    assert (site["managed_by"], site["daily_limit"], site["upstreams"]) == ("api", 100, ["api-up"])
    assert site["from"] == {"email": "news@blog.example.com", "name": "Blog"}
    assert (domain["name"], domain["managed_by"], domain["signing"]) == (
        "blog.example.com",
        "api",
        True,
    )
    assert [k["state"] for k in domain["keys"]] == ["active"]
    assert domain["records"], "the create answer lists what to publish"
    assert await api.get(f"{V1}/upstreams/api-up") == upstream
    assert await api.get(f"{V1}/sites/blog") == site
    assert (await api.get(f"{V1}/domains/blog.example.com"))["managed_by"] == "api"
    names = [u["name"] for u in (await api.get(f"{V1}/upstreams"))["items"]]
    assert names == ["file-up", "api-up"]

    # Merge patch: given keys change, others stay, null removes (back to the default).
    patched = await api.ok("PATCH", f"{V1}/upstreams/api-up", {"priority": 7, "weight": 3})
    assert (patched["priority"], patched["weight"], patched["rate_per_minute"]) == (7, 3, 30)
    patched = await api.ok("PATCH", f"{V1}/upstreams/api-up", {"rate_per_minute": None})
    assert (patched["priority"], patched["rate_per_minute"]) == (7, None)
    assert await api.get(f"{V1}/upstreams/api-up") == patched
    patched_site = await api.ok(
        "PATCH", f"{V1}/sites/blog", {"daily_limit": None, "rate_per_minute": 9}
    )
    assert (patched_site["daily_limit"], patched_site["rate_per_minute"]) == (None, 9)
    assert patched_site["from"] == site["from"]
    assert relay.app.directory().site("blog").rate_per_minute == 9  # live at once

    # Creating the same name again is a conflict; PATCH is the way.
    (await api.call("POST", f"{V1}/upstreams", api_upstream("api-up", 1))).error(409, "conflict")
    (await api.call("POST", f"{V1}/sites", api_site("blog", []))).error(409, "conflict")
    (await api.call("POST", f"{V1}/domains", {"name": "blog.example.com"})).error(409, "conflict")


async def test_patch_active_is_applied_and_kept(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    relay = await start_relay(config)
    api = admin(relay)
    await api.ok("POST", f"{V1}/upstreams", api_upstream("api-up", closed_port), status=201)

    off = await api.ok("PATCH", f"{V1}/upstreams/api-up", {"active": False})

    assert off["active"] is False, "PATCH accepted active=false but ignored it"
    assert (await api.get(f"{V1}/upstreams/api-up"))["active"] is False
    assert relay.app.directory().upstream("api-up").active is False
    error = (await api.call("PATCH", f"{V1}/upstreams/api-up", {"active": "no"})).error(
        422, "invalid"
    )
    assert error["problems"] == ["upstream.active: must be true or false"]
    relay = await restart(relay, start_relay, config)
    api = admin(relay)
    assert (await api.get(f"{V1}/upstreams/api-up"))["active"] is False
    on = await api.ok("PATCH", f"{V1}/upstreams/api-up", {"active": True})
    assert on["active"] is True
    assert relay.app.directory().upstream("api-up").active is True


UPSTREAM_PROBLEMS = [
    pytest.param({"port": 0}, "upstream.port: must be at least 1", id="port-zero"),
    pytest.param({"port": "25"}, "upstream.port: must be a whole number", id="port-text"),
    pytest.param({"colour": "red"}, "upstream.colour: unknown key", id="unknown-key"),
    pytest.param({"host": None}, "upstream.host: is required", id="missing-host"),
    pytest.param(
        {"password_env": "HOME", "username": "u"},
        "upstream.password_env: not accepted through the API",
        id="password-env",
    ),
    pytest.param(
        {"password_file": "/etc/passwd", "username": "u"},
        "upstream.password_file: not accepted through the API",
        id="password-file",
    ),
    pytest.param({"path": "outbox"}, "upstream.path: not accepted through the API", id="path"),
    pytest.param(
        {"ca_file": "/etc/hostname"}, "upstream.ca_file: not accepted through the API", id="ca-file"
    ),
    pytest.param(
        {"kind": "file", "host": None},
        "file upstreams are for local development",
        id="kind-file",
    ),
    pytest.param({"tls": "maybe"}, "upstream.tls: must be one of", id="bad-tls"),
    pytest.param({"password": "pw"}, "upstream.password: a password needs a username", id="pw"),
    pytest.param({"name": "bad name!"}, "upstream.name:", id="bad-name"),
]


@pytest.mark.parametrize(("change", "problem"), UPSTREAM_PROBLEMS)
async def test_invalid_upstream_is_refused_with_its_problems(
    tmp_path: Path, start_relay, admin, closed_port: int, change: dict[str, Any], problem: str
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    body = {k: v for k, v in {**api_upstream("api-up", 2525), **change}.items() if v is not None}

    error = (await api.call("POST", f"{V1}/upstreams", body)).error(422, "invalid")

    assert any(p.startswith(problem) or problem in p for p in error["problems"]), error
    assert all(p.startswith("upstream.") or p.startswith("upstream:") for p in error["problems"])
    # Refused as a PATCH of an existing one too, and nothing was written.
    await api.ok("POST", f"{V1}/upstreams", api_upstream("ok-up", 2525), status=201)
    if "name" not in change:
        patch = {k: v for k, v in change.items()}
        error = (await api.call("PATCH", f"{V1}/upstreams/ok-up", patch)).error(422, "invalid")
        assert any(problem in p for p in error["problems"]), error
        assert (await api.get(f"{V1}/upstreams/ok-up"))["port"] == 2525
    assert (await api.call("GET", f"{V1}/upstreams/api-up")).status == 404
    assert [e["target"] for e in (await api.get(f"{V1}/audit"))["items"]] == ["ok-up"]


async def test_invalid_site_is_refused_with_its_problems(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    bad = api_site("blog", ["no-such-upstream"], colour="red", credentials=[])
    bad["from"] = {"email": "not-an-address"}
    error = (await api.call("POST", f"{V1}/sites", bad)).error(422, "invalid")

    problems = error["problems"]
    assert "site.from.email: not an email address" in problems
    assert "site.colour: unknown key" in problems
    assert "site.credentials: not accepted through the API (use the config file)" in problems
    assert any(p.startswith("site.upstreams[0]: unknown upstream") for p in problems), problems
    missing = (await api.call("POST", f"{V1}/sites", {"id": "x"})).error(422, "invalid")
    assert "site.from: is required" in missing["problems"]
    assert (await api.call("GET", f"{V1}/sites/blog")).status == 404


@pytest.mark.parametrize(
    ("sender", "problem"),
    [
        pytest.param(
            {"name": "Blog\u0000"},
            "site.from.name: must not contain control characters (found U+0000)",
            id="nul-in-name",
        ),
        pytest.param(
            {"name": "Blog\r\nBcc: victim@example.org"},
            "site.from.name: must be a single line",
            id="crlf-in-name",
        ),
        pytest.param(
            {"name": "\u001b[8mBlog"},
            "site.from.name: must not contain control characters (found U+001B)",
            id="escape-in-name",
        ),
        pytest.param(
            {"name": "Blog\u0085"},
            "site.from.name: must not contain control characters (found U+0085)",
            id="c1-in-name",
        ),
        pytest.param(
            {"email": '"news\u0001"@blog.example.com'},
            "site.from.email: not an email address",
            id="control-in-quoted-local-part",
        ),
    ],
)
async def test_control_characters_in_the_from_of_a_site_are_refused(
    tmp_path: Path,
    start_relay,
    admin,
    closed_port: int,
    sender: dict[str, str],
    problem: str,
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    await api.ok("POST", f"{V1}/upstreams", api_upstream("api-up", closed_port), status=201)
    bad = api_site("blog", ["api-up"])
    bad["from"] = {**bad["from"], **sender}

    created = (await api.call("POST", f"{V1}/sites", bad)).error(422, "invalid")

    assert created["problems"] == [problem]
    assert (await api.call("GET", f"{V1}/sites/blog")).status == 404
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["api-up"]), status=201)
    patch = {"from": bad["from"]}
    patched = (await api.call("PATCH", f"{V1}/sites/blog", patch)).error(422, "invalid")
    assert patched["problems"] == [problem]
    site = await api.get(f"{V1}/sites/blog")
    assert site["from"] == {"email": "news@blog.example.com", "name": "Blog"}


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"],
    ids=["broken", "array", "string", "empty", "not-utf8"],
)
async def test_body_that_is_not_a_json_object_is_a_bad_request(
    tmp_path: Path, start_relay, admin, closed_port: int, body: bytes
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    headers = {"Content-Type": "application/json"}

    for method, path in [
        ("POST", f"{V1}/upstreams"),
        ("POST", f"{V1}/sites"),
        ("POST", f"{V1}/domains"),
        ("PATCH", f"{V1}/sites/shop"),  # a file site: the body is read (and refused) first
    ]:
        reply = await api.call(method, path, headers=headers, data=body)
        if method == "PATCH" and reply.status == 409:
            continue  # refusing the file object before reading the body is fine too
        reply.error(400, "bad_request")


async def test_patch_cannot_rename(tmp_path: Path, start_relay, admin, closed_port: int) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    await api.ok("POST", f"{V1}/upstreams", api_upstream("api-up", closed_port), status=201)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["api-up"]), status=201)

    up = (await api.call("PATCH", f"{V1}/upstreams/api-up", {"name": "x"})).error(422, "invalid")
    site = (await api.call("PATCH", f"{V1}/sites/blog", {"id": "x"})).error(422, "invalid")

    assert up["problems"] == ["upstream.name: an upstream cannot be renamed; create a new one"]
    assert site["problems"] == ["site.id: a site cannot be renamed; create a new one"]
    # The same name in the body is not a rename.
    assert (await api.ok("PATCH", f"{V1}/upstreams/api-up", {"name": "api-up"}))["name"] == "api-up"
    assert (await api.call("GET", f"{V1}/upstreams/x")).status == 404
    assert (await api.call("GET", f"{V1}/sites/x")).status == 404


async def test_store_objects_survive_a_restart_with_the_upstream_password(
    tmp_path: Path,
    start_relay,
    admin,
    make_sink,
    closed_port: int,
    cert_files: tuple[Path, Path, Path],
    client_tls: ssl.SSLContext,
) -> None:
    sink = await make_sink(tls="starttls", auth=("user", "pw"))
    config = relay_config(tmp_path, closed_port)
    with_tls_listener(config, cert_files)
    relay = await start_relay(config)
    api = admin(relay)
    body = api_upstream(
        "api-up", sink.port, username="user", password="pw", priority=3, **UNVERIFIED_TLS
    )
    await api.ok("POST", f"{V1}/upstreams", body, status=201)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["api-up"]), status=201)
    await api.ok("POST", f"{V1}/domains", {"name": "blog.example.com"}, status=201)
    credential = await api.ok("POST", f"{V1}/sites/blog/credentials", status=201)
    await api.ok("POST", f"{V1}/upstreams/api-up/deactivate")
    await api.ok("POST", f"{V1}/upstreams/api-up/activate")
    before = {
        path: await api.get(path)
        for path in (f"{V1}/upstreams", f"{V1}/sites", f"{V1}/domains", f"{V1}/audit")
    }

    relay = await restart(relay, start_relay, config)
    api = admin(relay)

    for path, seen in before.items():
        assert await api.get(path) == seen, path
    upstream = await api.get(f"{V1}/upstreams/api-up")
    assert (upstream["has_password"], upstream["priority"], upstream["managed_by"]) == (
        True,
        3,
        "api",
    )
    await send_mail(
        relay, client_tls, credential["username"], credential["password"], "a@blog.example.com"
    )
    [received] = await sink.handler.wait_for(1)  # the sink requires AUTH user/pw
    assert received.mail_from == "news@blog.example.com"


async def test_upstream_password_is_encrypted_at_rest(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    password = "plain-Secret-Zq81"
    config = relay_config(tmp_path, closed_port)
    relay = await start_relay(config)
    api = admin(relay)
    body = api_upstream("api-up", closed_port, username="user", password=password, **UNVERIFIED_TLS)
    await api.ok("POST", f"{V1}/upstreams", body, status=201)
    await api.ok("PATCH", f"{V1}/upstreams/api-up", {"priority": 4})
    await relay.app.stop()  # everything written and the database closed

    [(spec_text, sealed)] = query_db(
        config, "SELECT spec, password_encrypted FROM upstreams WHERE name = ?", "api-up"
    )
    spec = json.loads(spec_text)
    assert "password" not in spec
    assert (spec["username"], spec["priority"]) == ("user", 4)
    assert sealed is not None and password.encode() not in sealed
    store = sqlite_path(config)
    for path in [store, *store.parent.glob(store.name + "-*")]:  # the database, WAL, journal
        assert password.encode() not in path.read_bytes(), path
    audit_details = query_db(config, "SELECT detail FROM audit_log")
    assert all(password not in detail for (detail,) in audit_details)


async def test_deleting_an_api_upstream_is_soft_and_refused_while_a_site_uses_it(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    relay = await start_relay(config)
    api = admin(relay)
    body = api_upstream("api-up", closed_port, username="u", password="old-pw-123", tls="starttls")
    await api.ok("POST", f"{V1}/upstreams", body, status=201)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["api-up"]), status=201)

    in_use = (await api.call("DELETE", f"{V1}/upstreams/api-up")).error(409, "conflict")
    assert "blog" in in_use["message"]
    await api.ok("PATCH", f"{V1}/sites/blog", {"upstreams": ["file-up"]})
    assert await api.ok("DELETE", f"{V1}/upstreams/api-up", status=204) is None

    (await api.call("GET", f"{V1}/upstreams/api-up")).error(404, "not_found")
    (await api.call("DELETE", f"{V1}/upstreams/api-up")).error(404, "not_found")
    (await api.call("PATCH", f"{V1}/upstreams/api-up", {"priority": 1})).error(404, "not_found")
    assert [u["name"] for u in (await api.get(f"{V1}/upstreams"))["items"]] == ["file-up"]
    assert relay.app.directory().upstream("api-up") is None
    [(deleted_at, active)] = query_db(
        config, "SELECT deleted_at, active FROM upstreams WHERE name = 'api-up'"
    )
    assert deleted_at is not None and not active
    # A site cannot route to it any more.
    error = (await api.call("POST", f"{V1}/sites", api_site("news", ["api-up"]))).error(
        422, "invalid"
    )
    assert any("unknown upstream 'api-up'" in p for p in error["problems"])

    again = await api.ok(
        "POST", f"{V1}/upstreams", api_upstream("api-up", closed_port, priority=2), status=201
    )
    assert (again["name"], again["priority"], again["active"]) == ("api-up", 2, True)
    assert (again["username"], again["has_password"]) == (None, False)  # nothing revived
    assert (await api.get(f"{V1}/upstreams/api-up"))["managed_by"] == "api"
    [(deleted_at,)] = query_db(config, "SELECT deleted_at FROM upstreams WHERE name = 'api-up'")
    assert deleted_at is None


async def test_deleting_an_api_site_and_domain(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    relay = await start_relay(config)
    api = admin(relay)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["file-up"]), status=201)
    credential = await api.ok("POST", f"{V1}/sites/blog/credentials", status=201)
    await api.ok("POST", f"{V1}/domains", {"name": "blog.example.com"}, status=201)

    await api.ok("DELETE", f"{V1}/sites/blog", status=204)
    await api.ok("DELETE", f"{V1}/domains/blog.example.com", status=204)

    (await api.call("GET", f"{V1}/sites/blog")).error(404, "not_found")
    (await api.call("GET", f"{V1}/domains/blog.example.com")).error(404, "not_found")
    assert relay.app.directory().credential(credential["username"]) is None
    assert query_db(config, "SELECT count(*) FROM site_credentials") == [(0,)]
    (await api.call("DELETE", f"{V1}/sites/blog")).error(404, "not_found")
    (await api.call("DELETE", f"{V1}/domains/blog.example.com")).error(404, "not_found")


async def test_activate_and_deactivate_toggle_active(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    await api.ok("POST", f"{V1}/upstreams", api_upstream("api-up", closed_port), status=201)

    off = await api.ok("POST", f"{V1}/upstreams/api-up/deactivate")
    assert off["active"] is False
    assert (await api.get(f"{V1}/upstreams/api-up"))["active"] is False
    assert relay.app.directory().upstream("api-up").active is False
    still_off = await api.ok("PATCH", f"{V1}/upstreams/api-up", {"priority": 9})
    assert (still_off["active"], still_off["priority"]) == (False, 9)
    on = await api.ok("POST", f"{V1}/upstreams/api-up/activate")
    assert on["active"] is True
    assert (await api.get(f"{V1}/upstreams/api-up"))["active"] is True
    (await api.call("POST", f"{V1}/upstreams/nope/activate")).error(404, "not_found")


async def test_deleted_credential_no_longer_authenticates(
    tmp_path: Path,
    start_relay,
    admin,
    make_sink,
    cert_files: tuple[Path, Path, Path],
    client_tls: ssl.SSLContext,
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, sink.port)
    with_tls_listener(config, cert_files)
    relay = await start_relay(config)
    api = admin(relay)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["file-up"]), status=201)
    credential = await api.ok("POST", f"{V1}/sites/blog/credentials", {"username": "bl"}, 201)
    await send_mail(relay, client_tls, "bl", credential["password"], "a@blog.example.com")
    await sink.handler.wait_for(1)

    await api.ok("DELETE", f"{V1}/sites/blog/credentials/bl", status=204)

    assert (await api.get(f"{V1}/sites/blog"))["credentials"] == []
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        await send_mail(relay, client_tls, "bl", credential["password"], "a@blog.example.com")
    assert refused.value.code == 535
    (await api.call("DELETE", f"{V1}/sites/blog/credentials/bl")).error(404, "not_found")
    # The username is free again.
    again = await api.ok("POST", f"{V1}/sites/blog/credentials", {"username": "bl"}, 201)
    assert again["password"] != credential["password"]


async def test_credential_username_rules(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["file-up"]), status=201)

    taken = await api.call("POST", f"{V1}/sites/blog/credentials", {"username": "shop"})
    spaced = await api.call("POST", f"{V1}/sites/blog/credentials", {"username": "a b"})
    missing = await api.call("POST", f"{V1}/sites/nope/credentials", {"username": "x"})

    taken.error(409, "conflict")  # the file site's username
    spaced.error(400, "bad_request")
    missing.error(404, "not_found")
    assert (await api.get(f"{V1}/sites/blog"))["credentials"] == []


# -- 5. Pagination


async def test_lists_are_paginated(tmp_path: Path, start_relay, admin, closed_port: int) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    for n in range(5):
        await api.ok("POST", f"{V1}/sites", api_site(f"site{n}", ["file-up"]), status=201)

    everything = await api.get(f"{V1}/sites")
    pages = [await api.get(f"{V1}/sites?page={p}&page_size=2") for p in (1, 2, 3, 4)]

    assert (everything["total"], everything["page"], everything["page_size"]) == (6, 1, 50)
    all_ids = [s["id"] for s in everything["items"]]
    assert sorted(all_ids) == ["shop", "site0", "site1", "site2", "site3", "site4"]
    for number, page in enumerate(pages, start=1):
        assert (page["total"], page["page"], page["page_size"]) == (6, number, 2)
    assert [len(p["items"]) for p in pages] == [2, 2, 2, 0]
    assert [s["id"] for p in pages for s in p["items"]] == all_ids
    audit = await api.get(f"{V1}/audit?page=2&page_size=3")
    assert (audit["total"], len(audit["items"]), audit["page"]) == (5, 2, 2)
    assert [e["target"] for e in audit["items"]] == ["site1", "site0"]
    big = await api.get(f"{V1}/upstreams?page_size=500")
    assert big["page_size"] == 500


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "page_size=0",
        "page_size=501",
        "page=abc",
        "page=-1",
        "page_size=1.5",
        "page=",
        "page=%C2%B2",  # "²": str.isdigit() says yes, int() says no
        "page_size=%D9%A3",  # an Arabic-Indic 3: int() would take it
        "page=+1",
        "page=1234567890",
    ],
)
async def test_bad_paging_is_a_bad_request(
    tmp_path: Path, start_relay, admin, closed_port: int, query: str
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    for path in ("sites", "upstreams", "domains", "audit", "messages"):
        error = (await api.call("GET", f"{V1}/{path}?{query}")).error(400, "bad_request")
        assert query.split("=")[0] in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="100000-nested-lists"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="50000-nested-objects"),
        pytest.param(b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}", id="40-levels"),
    ],
)
async def test_deeply_nested_json_is_a_bad_request(
    tmp_path: Path, start_relay, admin, closed_port: int, body: bytes
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    reply = await api.call(
        "POST", f"{V1}/sites", data=body, headers={"Content-Type": "application/json"}
    )

    error = reply.error(400, "bad_request")
    assert "nests deeper than 32 levels" in error["message"]


async def test_a_chunked_body_over_the_limit_is_413(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the server must count
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    reply = await api.call(
        "POST", f"{V1}/sites", data=chunks(), headers={"Content-Type": "application/json"}
    )

    reply.error(413, "too_large")


# -- 6. Reload


async def test_reload_applies_a_new_file_site_and_keeps_api_sites(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    relay = await start_relay(config)
    api = admin(relay)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["file-up"]), status=201)
    config["sites"].append(
        {"id": "news", "from": {"email": "n@example.com"}, "upstreams": ["file-up"]}
    )
    write_config(tmp_path, config)

    result = await api.ok("POST", f"{V1}/reload")

    assert result == {"status": "reloaded", "restart_needed": [], "warnings": []}
    sites = {s["id"]: s["managed_by"] for s in (await api.get(f"{V1}/sites"))["items"]}
    assert sites == {"shop": "file", "news": "file", "blog": "api"}
    assert (await api.get(f"{V1}/sites/news"))["from"]["email"] == "n@example.com"
    # The new file site is read-only like the others.
    (await api.call("DELETE", f"{V1}/sites/news")).error(409, "conflict")


async def test_reload_warns_when_an_api_site_loses_a_file_upstream(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    upstreams = [smtp_upstream("file-up", closed_port), smtp_upstream("old", closed_port)]
    config = relay_config(tmp_path, closed_port, upstreams)
    relay = await start_relay(config)
    api = admin(relay)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["old"]), status=201)
    config["upstreams"] = [smtp_upstream("file-up", closed_port)]
    config["sites"][0]["upstreams"] = ["file-up"]
    write_config(tmp_path, config)

    result = await api.ok("POST", f"{V1}/reload")

    assert result["warnings"] == [
        "site blog lists upstream 'old', which no longer exists: its mail skips it"
    ]
    assert (await api.get(f"{V1}/sites/blog"))["upstreams"] == ["old"]


async def test_reload_reports_sections_that_need_a_restart(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    config = relay_config(tmp_path, closed_port)
    relay = await start_relay(config)
    api = admin(relay)
    config["limits"] = {"max_recipients": 7}
    write_config(tmp_path, config)

    result = await api.ok("POST", f"{V1}/reload")

    assert result == {"status": "reloaded", "restart_needed": ["limits"], "warnings": []}
    # Applied at the next restart only.
    assert relay.app.config.limits.max_recipients != 7


@pytest.mark.parametrize("broken", ["yaml", "email"])
async def test_reload_refuses_a_broken_file_and_keeps_serving(
    tmp_path: Path, start_relay, admin, closed_port: int, broken: str
) -> None:
    config = relay_config(tmp_path, closed_port)
    relay = await start_relay(config)
    api = admin(relay)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["file-up"]), status=201)
    before = {p: await api.get(p) for p in (f"{V1}/sites", f"{V1}/upstreams")}
    if broken == "yaml":
        (tmp_path / "config.yaml").write_text("sites: [unclosed\n  - {id: : }\n")
    else:
        config["sites"].append(
            {"id": "bad", "from": {"email": "not-an-address"}, "upstreams": ["file-up"]}
        )
        write_config(tmp_path, config)

    reply = await api.call("POST", f"{V1}/reload")

    error = reply.error(422, "invalid_config")
    assert str(tmp_path / "config.yaml") in error["message"]
    assert error["problems"]
    if broken == "yaml":
        assert any("not valid YAML" in p for p in error["problems"]), error
    else:
        assert "sites[1].from.email: not an email address" in error["problems"]
    for path, seen in before.items():
        assert await api.get(path) == seen
    assert (await api.get(f"{V1}/audit"))["items"][0]["action"] == "create"  # no reload entry


# -- 7. Audit log


async def test_every_change_is_audited_newest_first(
    tmp_path: Path,
    start_relay,
    admin,
    make_sink,
    cert_files: tuple[Path, Path, Path],
    client_tls: ssl.SSLContext,
) -> None:
    failing = await make_sink(replies={"rcpt": {"x@example.org": "451 4.3.0 try later"}})
    probe_sink = await make_sink(tls="starttls")
    clock = FakeClock()
    config = relay_config(tmp_path, failing.port)
    with_tls_listener(config, cert_files)
    relay = await start_relay(config, clock)
    api = admin(relay)
    message_id = await send_mail(relay, client_tls, "shop", SITE_PASSWORD, "a@shop.example.com")

    async def deferred() -> bool:
        return bool((await api.get(f"{V1}/messages/{message_id}"))["status"] == "deferred")

    await wait_until(deferred)

    secret = "audited-Secret-77"
    body = api_upstream("api-up", probe_sink.port, username="u", password=secret, **UNVERIFIED_TLS)
    steps: list[tuple[str, str, str]] = []

    async def do(method: str, path: str, entry: tuple[str, str, str], *args: Any) -> None:
        reply = await api.call(method, path, *args)
        assert reply.status < 300, (method, path, reply.text)
        clock.advance(1)
        steps.append(entry)

    await do("POST", f"{V1}/upstreams", ("create", "upstream", "api-up"), body)
    await do("PATCH", f"{V1}/upstreams/api-up", ("update", "upstream", "api-up"), {"priority": 2})
    new_secret = {"password": secret + "-new"}
    await do("PATCH", f"{V1}/upstreams/api-up", ("update", "upstream", "api-up"), new_secret)
    await do("POST", f"{V1}/upstreams/api-up/deactivate", ("deactivate", "upstream", "api-up"))
    await do("POST", f"{V1}/upstreams/api-up/activate", ("activate", "upstream", "api-up"))
    await do("POST", f"{V1}/upstreams/api-up/test", ("test", "upstream", "api-up"))
    await do("POST", f"{V1}/sites", ("create", "site", "blog"), api_site("blog", ["api-up"]))
    await do("PATCH", f"{V1}/sites/blog", ("update", "site", "blog"), {"rate_per_minute": 3})
    await do(
        "POST",
        f"{V1}/sites/blog/credentials",
        ("create", "credential", "blog/bl"),
        {"username": "bl"},
    )
    await do("DELETE", f"{V1}/sites/blog/credentials/bl", ("delete", "credential", "blog/bl"))
    await do(
        "POST",
        f"{V1}/domains",
        ("create", "domain", "blog.example.com"),
        {"name": "blog.example.com"},
    )
    await do("DELETE", f"{V1}/domains/blog.example.com", ("delete", "domain", "blog.example.com"))
    await do("POST", f"{V1}/reload", ("reload", "config", str(tmp_path / "config.yaml")))
    await do("POST", f"{V1}/messages/{message_id}/retry", ("retry", "message", message_id))
    await do("DELETE", f"{V1}/sites/blog", ("delete", "site", "blog"))
    await do("DELETE", f"{V1}/upstreams/api-up", ("delete", "upstream", "api-up"))
    # Reads and refused changes leave no trace.
    await api.get(f"{V1}/upstreams")
    (await api.call("PATCH", f"{V1}/upstreams/file-up", {"priority": 1})).error(409, "conflict")

    audit = await api.get(f"{V1}/audit")

    assert audit["total"] == len(steps)
    items = audit["items"]
    assert [(e["action"], e["kind"], e["target"]) for e in items] == steps[::-1]
    assert {e["token"] for e in items} == {"ops"}
    times = [dt.datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in items]
    assert all(e["at"].endswith("Z") for e in items)
    assert times == sorted(times, reverse=True) and len(set(times)) == len(times)
    assert times[-1].timestamp() == pytest.approx(FakeClock().now)
    created = items[-1]
    assert created["detail"]["password"] == "********"
    assert created["detail"]["username"] == "u"
    assert created["detail"]["port"] == probe_sink.port
    assert items[-2]["detail"] == {"priority": 2}
    assert items[-3]["detail"] == {"password": "********"}
    assert secret not in json.dumps(audit)  # nor the new one, which starts with it


# -- 8. Errors


async def test_unknown_paths_wrong_methods_and_missing_objects(
    tmp_path: Path, start_relay, admin, closed_port: int
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)

    (await api.call("GET", f"{V1}/nope")).error(404, "not_found")
    (await api.call("GET", f"{V1}/upstreams/file-up/nope")).error(404, "not_found")
    (await api.call("GET", "/api/nope")).error(404, "not_found")
    # Outside /api/ is the dashboard's: HTML, and its login page without a session
    # (tests/test_dashboard_functional.py).
    wrong = await api.call("PUT", f"{V1}/upstreams")
    wrong.error(405, "method_not_allowed")
    assert {"GET", "POST"} <= {m.strip() for m in wrong.headers["Allow"].split(",")}
    (await api.call("DELETE", f"{V1}/openapi.json")).error(405, "method_not_allowed")
    (await api.call("PATCH", f"{V1}/domains/x.example")).error(405, "method_not_allowed")
    missing = (await api.call("GET", f"{V1}/upstreams/nope")).error(404, "not_found")
    assert "nope" in missing["message"]
    (await api.call("GET", f"{V1}/sites/nope")).error(404, "not_found")
    (await api.call("GET", f"{V1}/domains/nope.example")).error(404, "not_found")
    (await api.call("GET", f"{V1}/messages/nope")).error(404, "not_found")
    (await api.call("POST", f"{V1}/messages/nope/retry")).error(404, "not_found")
    (await api.call("PATCH", f"{V1}/sites/nope", {"rate_per_minute": 1})).error(404, "not_found")
    (await api.call("DELETE", f"{V1}/upstreams/nope")).error(404, "not_found")
    big = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    too_big = await api.call(
        "POST", f"{V1}/sites", data=io.BytesIO(big), headers={"Content-Type": "application/json"}
    )
    too_big.error(413, "too_large")
    (await api.call("POST", f"{V1}/domains", {"name": "not a domain"})).error(422, "invalid")
    bad_selector = {"name": "ok.example", "selector": "bad selector"}
    (await api.call("POST", f"{V1}/domains", bad_selector)).error(422, "invalid")
    assert (await api.get(f"{V1}/audit"))["total"] == 0


# -- DKIM rotation of an API domain


def publish(zone: Any, records: list[dict[str, Any]], check: str) -> None:
    """Put the record the relay asks for under ``check`` into the loopback DNS zone."""
    [line] = [r["publish"] for r in records if r["name"] == check]
    name = line.split()[0].rstrip(".")
    zone.txt(name, "".join(re.findall(r'"([^"]*)"', line)))


async def test_an_api_domain_rotates_its_key_once_dns_has_the_next_one(
    tmp_path: Path, start_relay, admin, closed_port: int, dns_zone: Any
) -> None:
    dns = {"nameservers": [dns_zone.nameserver], "verify_interval_seconds": 0}
    relay = await start_relay(relay_config(tmp_path, closed_port, dns=dns))
    api = admin(relay)
    made = await api.ok("POST", f"{V1}/domains", {"name": "example.com"}, status=201)
    publish(dns_zone, made["records"], "dkim relay1 (active)")

    added = await api.ok(
        "POST", f"{V1}/domains/example.com/keys", {"selector": "relay2"}, status=201
    )
    assert [(k["selector"], k["state"]) for k in added["keys"]] == [
        ("relay1", "active"),
        ("relay2", "next"),
    ]
    assert relay.app.directory().domain("example.com").signing_key.selector == "relay1"

    # Not in DNS yet: refused, unless forced.
    refused = (await api.call("POST", f"{V1}/domains/example.com/keys/relay2/activate")).error(
        409, "conflict"
    )
    assert "not confirmed published" in refused["message"]
    publish(dns_zone, added["records"], "dkim relay2 (next)")
    await api.ok("POST", f"{V1}/domains/example.com/verify")
    done = await api.ok(
        "POST",
        f"{V1}/domains/example.com/keys/relay2/activate",
        {"retire_until": "2099-01-31"},
    )

    assert [(k["selector"], k["state"]) for k in done["keys"]] == [
        ("relay1", "retired"),
        ("relay2", "active"),
    ]
    assert relay.app.directory().domain("example.com").signing_key.selector == "relay2"
    actions = [(e["action"], e["target"]) for e in (await api.get(f"{V1}/audit"))["items"]]
    assert ("add_key", "example.com") in actions and ("activate_key", "example.com") in actions


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("nope.example/keys", {"selector": "s2"}, 404, "no domain"),
        ("example.com/keys", {"selector": "bad selector!"}, 422, "key.selector"),
        ("example.com/keys", {"selector": "relay1"}, 409, "exists"),
        ("example.com/keys/relay1/activate", {"force": True}, 409, "already active"),
        ("example.com/keys/none/activate", {"force": True}, 409, "no selector"),
        ("example.com/keys/none/activate", {"retire_until": "2001-01-01"}, 422, "retire_until"),
        ("example.com/keys/none/activate", {"force": "yes"}, 422, "key.force"),
    ],
)
async def test_rotation_mistakes_are_refused_with_the_reason(
    tmp_path: Path,
    start_relay,
    admin,
    closed_port: int,
    path: str,
    body: Any,
    status: int,
    says: str,
) -> None:
    relay = await start_relay(relay_config(tmp_path, closed_port))
    api = admin(relay)
    await api.ok("POST", f"{V1}/domains", {"name": "example.com"}, status=201)

    reply = await api.call("POST", f"{V1}/domains/{path}", body)

    assert reply.status == status
    assert says in json.dumps(reply.body)
