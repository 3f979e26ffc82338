"""relay/sns_client.py against a real HTTPS server on loopback: verified TLS only, no redirect
followed, a size cap, and a cache bounded in entries and time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay import sns_client, tls
from relay.sns_client import SnsClient

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
async def server(cert_files: tuple[Path, Path, Path]) -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(request.path)
        name = request.match_info.get("name", "")
        if name == "moved.pem":
            raise web.HTTPFound("/ok.pem")
        if name == "huge.pem":
            return web.Response(body=b"x" * (sns_client.MAX_CERT_BYTES + 1))
        if name == "missing.pem":
            raise web.HTTPNotFound()
        return web.Response(body=PEM)

    app = web.Application()
    app.router.add_get("/{name}", answer)
    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(
        runner, "127.0.0.1", 0, ssl_context=tls.server_context(*cert_files[:2])
    ).start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_fetches_only_what_it_should(server: tuple[str, list[str]], cert_files: Any) -> None:
    base, seen = server
    client = SnsClient(cert_files[2])
    try:
        assert await client.certificate(f"{base}/ok.pem") == PEM
        assert await client.certificate(f"{base}/moved.pem") is None  # the 302 not followed
        assert await client.certificate(f"{base}/huge.pem") is None
        assert await client.certificate(f"{base}/missing.pem") is None
        assert seen == ["/ok.pem", "/moved.pem", "/huge.pem", "/missing.pem"]
        assert await client.confirm(f"{base}/?Action=ConfirmSubscription")
        assert not await client.confirm(f"{base}/missing.pem")
    finally:
        await client.close()

    untrusting = SnsClient()  # the system's CAs only: the test CA's certificate fails
    try:
        assert await untrusting.certificate(f"{base}/ok.pem") is None
    finally:
        await untrusting.close()


async def test_the_cache_is_bounded_in_entries_and_time(
    server: tuple[str, list[str]], cert_files: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, seen = server
    now = [0.0]
    monkeypatch.setattr(sns_client, "CACHE_ENTRIES", 2)
    client = SnsClient(cert_files[2], monotonic=lambda: now[0])
    try:
        for name in ("a.pem", "b.pem", "a.pem", "c.pem", "a.pem", "b.pem"):
            assert await client.certificate(f"{base}/{name}") == PEM
        # a (cached), b, a (hit), c evicts b (a used later), a (hit), b fetched again.
        assert seen == ["/a.pem", "/b.pem", "/c.pem", "/b.pem"]
        now[0] = sns_client.CACHE_SECONDS + 1
        await client.certificate(f"{base}/b.pem")
        assert seen[-1] == "/b.pem" and len(seen) == 5  # too old: fetched again
    finally:
        await client.close()


async def test_made_up_certificate_urls_cost_a_bounded_number_of_fetches(
    cert_files: tuple[Path, Path, Path],
) -> None:
    """Fetched before any signature can be checked: a flood of URLs that hang waits for at
    most MAX_FETCHING fetches; the rest are refused at once (the caller answers 503)."""
    release = asyncio.Event()
    seen: list[str] = []

    async def hang(request: web.Request) -> web.Response:
        seen.append(request.path)
        await release.wait()
        return web.Response(body=PEM)

    app = web.Application()
    app.router.add_get("/{name}", hang)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(
        runner, "127.0.0.1", 0, ssl_context=tls.server_context(*cert_files[:2])
    ).start()
    base = f"https://127.0.0.1:{runner.addresses[0][1]}"
    client = SnsClient(cert_files[2])
    try:
        flood = [
            asyncio.create_task(client.certificate(f"{base}/{n}.pem"))
            for n in range(sns_client.MAX_FETCHING + 20)
        ]
        await asyncio.sleep(0.5)
        refused = [t for t in flood if t.done()]
        assert len(refused) == 20 and all(t.result() is None for t in refused)
        release.set()
        answered = await asyncio.gather(*flood)
        assert answered.count(PEM) == sns_client.MAX_FETCHING
        assert len(seen) == sns_client.MAX_FETCHING
    finally:
        release.set()
        await client.close()
        await runner.cleanup()
