"""The public HTTP listener: off without `http:`, on its own port with it, the error envelope,
the client address behind trusted proxies only."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import aiohttp

from public_http.client import client_ip
from tests.conftest import base_config, smtp_upstream


async def test_the_listener_is_off_without_http_and_answers_with_it(
    tmp_path: Path, make_sink, start_relay
) -> None:
    sink = await make_sink()
    config = base_config(tmp_path, [smtp_upstream("main", sink.port)])
    relay = await start_relay(config)
    assert relay.app.http_port is None

    config["http"] = {"host": "127.0.0.1", "port": 0}
    other = await start_relay(config)
    port = other.app.http_port
    assert port is not None and port != other.app.admin_port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as reply:
            assert (reply.status, await reply.json()) == (200, {"status": "ok"})
        async with http.get(f"http://127.0.0.1:{port}/api/v1/sites") as reply:  # admin's, not here
            assert reply.status == 404
            assert (await reply.json())["error"]["code"] == "not_found"


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    assert client_ip("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"  # not a proxy
    assert client_ip("10.1.1.1", "198.51.100.1", PROXIES) == "198.51.100.1"
    # The client wrote the left-most entry itself: only the proxies' own additions count.
    assert client_ip("10.1.1.1", "1.2.3.4, 198.51.100.1, 10.2.2.2", PROXIES) == "198.51.100.1"
    assert client_ip("10.1.1.1", "10.3.3.3, 10.2.2.2", PROXIES) == "10.1.1.1"  # all proxies
    assert client_ip("10.1.1.1", "not-an-address", PROXIES) == "10.1.1.1"
    assert client_ip("10.1.1.1", ",".join(["198.51.100.1"] * 100), PROXIES) == "10.1.1.1"
    assert client_ip("10.1.1.1", None, PROXIES) == "10.1.1.1"
    assert client_ip("10.1.1.1", "198.51.100.1", ()) == "10.1.1.1"  # no proxies trusted
