"""Changes reach every node within ``cluster.sync_seconds``: two nodes on one store.

Two in-process relays on one SQLite file, and on a throwaway PostgreSQL
database (skipped with the reason when there is none). Node A changes
things through its admin API or reloads; node B must use them. Waits are
bounded (5 s for a sync_seconds of 0.5).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import yaml

from relay.cluster_controller import CATALOG
from tests.conftest import (
    SITE_PASSWORD,
    SITE_PASSWORD_HASH,
    RunningRelay,
    base_config,
    smtp_upstream,
)
from tests.test_admin_api_functional import TOKEN, V1, Admin, api_site, send_mail
from tests.test_process_functional import relays
from tests.two_nodes import start_node, store_url

__all__ = ["relays", "start_node", "store_url"]  # fixtures
SYNC_SECONDS = 0.5
BOUND_SECONDS = 5.0


def node_config(tmp_path: Path, sink_port: int, cert_files: Any) -> dict[str, Any]:
    config = base_config(tmp_path, [smtp_upstream("sink", sink_port)])
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["health"] = {"check_interval_seconds": 0}
    config["cluster"] = {"sync_seconds": SYNC_SECONDS}
    return config


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def seconds_until(check: Callable[[], bool]) -> float:
    """How long until ``check()`` holds; fails the test beyond BOUND_SECONDS."""
    started = time.monotonic()
    async with asyncio.timeout(BOUND_SECONDS):
        while True:
            if check():
                break
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_site_and_credential_made_on_a_are_used_on_b_and_a_deletion_stops_them(
    tmp_path: Path, make_sink, cert_files, client_tls, start_node, store_url: str, http
) -> None:
    sink = await make_sink()
    config = node_config(tmp_path, sink.port, cert_files)
    a, b = await start_node("a", config), await start_node("b", config)
    api = Admin(http, a.admin_port)

    await api.ok("POST", f"{V1}/sites", api_site("blog", ["sink"]), status=201)
    credential = await api.ok("POST", f"{V1}/sites/blog/credentials", status=201)
    username, password = credential["username"], credential["password"]
    assert await a.sync.poll() == []  # A applied its own change as it made it
    waited = await seconds_until(lambda: b.directory().credential(username) is not None)
    print(f"B had the new credential after {waited:.2f} s (sync_seconds {SYNC_SECONDS})")

    await send_mail(RunningRelay(b), client_tls, username, password, "a@blog.example.com")
    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "news@blog.example.com"

    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=b.listeners.ports[0], tls_context=client_tls, start_tls=True
    ) as session:
        await session.login(username, password)
        await api.ok("DELETE", f"{V1}/sites/blog/credentials/{username}", status=204)
        await seconds_until(lambda: b.directory().credential(username) is None)
        refused = await session.execute_command(b"MAIL", b"FROM:<a@blog.example.com>")
        assert refused.code == 530, refused
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
        await send_mail(RunningRelay(b), client_tls, username, password, "a@blog.example.com")
    assert failed.value.code == 535


async def test_a_refused_change_bumps_nothing(
    tmp_path: Path, make_sink, cert_files, start_node, store_url: str, http
) -> None:
    sink = await make_sink()
    config = node_config(tmp_path, sink.port, cert_files)
    a = await start_node("a", config)
    api = Admin(http, a.admin_port)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["sink"]), status=201)
    before = await a.sync._read()
    assert before[CATALOG] >= 1
    again = await api.call("POST", f"{V1}/sites", api_site("blog", ["sink"]))
    again.error(409, "conflict")
    assert await a.sync._read() == before


async def test_a_reload_on_a_makes_b_reread_its_own_file(
    tmp_path: Path,
    make_sink,
    cert_files,
    client_tls,
    start_node,
    store_url: str,
    http,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay.app")
    sink = await make_sink()
    config = node_config(tmp_path, sink.port, cert_files)
    a, b = await start_node("a", config), await start_node("b", config)
    # B's file (only B's) gets a second site; A's file stays as it was.
    config_b = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    config_b["sites"].append(
        {
            "id": "news",
            "credentials": [{"username": "news", "password_hash": SITE_PASSWORD_HASH}],
            "senders": ["*@news.example.com"],
            "from": {"email": "news@example.com"},
            "upstreams": ["sink"],
        }
    )
    (tmp_path / "b" / "config.yaml").write_text(yaml.safe_dump(config_b))

    reply = await Admin(http, a.admin_port).ok("POST", f"{V1}/reload")
    assert reply["status"] == "reloaded"
    await seconds_until(lambda: b.directory().site("news") is not None)
    assert a.directory().site("news") is None  # A read its own file
    await asyncio.sleep(SYNC_SECONDS * 2)  # A polls meanwhile: its own reload is not news
    assert await a.sync.poll() == []
    rereads = [r.getMessage() for r in caplog.records if "another node reloaded" in r.getMessage()]
    assert rereads == [f"another node reloaded: re-reading {tmp_path / 'b' / 'config.yaml'}"]
    await send_mail(RunningRelay(b), client_tls, "news", SITE_PASSWORD, "x@news.example.com")
    await sink.handler.wait_for(1)


async def test_a_flush_on_a_closes_the_circuits_b_opened(
    tmp_path: Path, make_sink, cert_files, client_tls, start_node, store_url: str, http
) -> None:
    down = await make_sink(replies={"mail": "421 4.3.2 down for maintenance"})
    config = node_config(tmp_path, down.port, cert_files)
    config["health"] = {"check_interval_seconds": 0, "failure_threshold": 1}
    config["health"]["cooldown_seconds"] = 3600
    config["delivery"] = {"retry_first_seconds": 3600, "retry_max_seconds": 7200}
    a, b = await start_node("a", config), await start_node("b", config)
    for node in (a, b):  # each node learns the upstream is down from its own delivery
        await send_mail(RunningRelay(node), client_tls, "shop", SITE_PASSWORD, "x@shop.example.com")
        await seconds_until(lambda n=node: n.health.circuits.get("sink") is not None
                            and n.health.circuits["sink"].state.value == "open")  # fmt: skip

    del down.handler.replies["mail"]  # the upstream is back: the operator flushes on A
    flushed = await Admin(http, a.admin_port).ok("POST", f"{V1}/queue/flush")
    assert flushed == {"messages": 2, "upstreams": ["sink"]}
    waited = await seconds_until(lambda: b.health.circuits["sink"].state.value == "closed")
    print(f"B closed its circuit after {waited:.2f} s (sync_seconds {SYNC_SECONDS})")
    await down.handler.wait_for(2)  # both messages, each node delivering its own or either


# -- Two `relay serve` processes on one SQLite file: each its own event loop and connections.

ADMIN_PORT = re.compile(r"relay ready: .*, admin [\d.]+:(\d+)")


def smtp_code(port: int, username: str, password: str, source: str) -> int:
    """The reply code of AUTH PLAIN from ``source`` (plaintext on loopback, as the config says)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo()
        blob = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        return int(client.docmd("AUTH", f"PLAIN {blob}")[0])


async def test_two_relay_serve_processes_share_the_throttle_and_the_api_changes(
    tmp_path: Path, make_sink, relays, http
) -> None:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
    config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
    config["health"] = {"check_interval_seconds": 0}
    config["limits"] = {"auth_max_failures": 3}
    config["cluster"] = {"sync_seconds": SYNC_SECONDS}
    processes, ports = [], []
    for name in ("a", "b"):  # one after the other: the first makes the store and the key
        (tmp_path / name).mkdir()
        path = tmp_path / name / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        processes.append(relays(path))
        ports.append(await asyncio.to_thread(processes[-1].wait_ready))
    a, b = processes
    port_a, port_b = ports

    attacker = "127.0.0.5"
    for port in (port_a, port_a, port_b):
        assert await asyncio.to_thread(smtp_code, port, "shop", "guess", attacker) == 535
    for port in (port_a, port_b):
        assert await asyncio.to_thread(smtp_code, port, "shop", SITE_PASSWORD, attacker) == 454
    assert await asyncio.to_thread(smtp_code, port_b, "shop", SITE_PASSWORD, "127.0.0.6") == 235

    admin_port = int(next(m.group(1) for line in a.lines if (m := ADMIN_PORT.search(line))))
    api = Admin(http, admin_port)
    await api.ok("POST", f"{V1}/sites", api_site("blog", ["sink"]), status=201)
    credential = await api.ok("POST", f"{V1}/sites/blog/credentials", status=201)
    started = time.monotonic()
    code, tries = 535, 0
    while code != 235 and time.monotonic() - started < BOUND_SECONDS:
        tries += 1  # a fresh address each time: the tries before B knows it are failures
        source = f"127.0.1.{tries}"
        login = (credential["username"], credential["password"], source)
        code = await asyncio.to_thread(smtp_code, port_b, *login)
    print(f"B took the credential after {time.monotonic() - started:.2f} s ({tries} tries)")
    assert code == 235
    assert await asyncio.to_thread(b.stop) == 0
    assert await asyncio.to_thread(a.stop) == 0
