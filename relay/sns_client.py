"""Amazon SNS over HTTPS: the signing certificates of its messages, and the visit that
confirms a subscription. aiohttp's client, nothing else.

The caller has checked each URL with core.providers.sns (an SNS host, or the test-only
loopback host); here every request is HTTPS with the certificate checked (the system's CAs,
plus the test CA when configured), has a timeout, follows no redirect, and reads at most
``MAX_CERT_BYTES``. Certificates are cached per process, at most ``CACHE_ENTRIES`` of them
for ``CACHE_SECONDS`` each, least recently used first out; a failure is not cached, and
requests that want one URL at the same time share one fetch (a burst of notifications
after a start fetches the certificate once), and at most ``MAX_FETCHING`` URLs are fetched
at a time. Errors become None / False: the caller
answers the provider so that it tries again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import aiohttp

log = logging.getLogger(__name__)
MAX_CERT_BYTES = 64 * 1024  # an SNS certificate is about 2 KB
MAX_CONFIRM_BYTES = 64 * 1024  # the confirmation's XML answer, read and dropped
TIMEOUT_SECONDS = 10.0
CACHE_ENTRIES = 64  # AWS uses one certificate per region at a time
CACHE_SECONDS = 24 * 3600.0
# Certificates are fetched before a message's signature can be checked: posts naming made-up
# certificate URLs (on an SNS host) cost at most this many fetches at a time; more wait 503.
MAX_FETCHING = 8


class TooLarge(Exception):
    pass


class SnsClient:
    def __init__(
        self,
        ca_file: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._context = ssl.create_default_context()
        if ca_file is not None:
            self._context.load_verify_locations(cafile=str(ca_file))
        self._monotonic = monotonic
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._fetching: dict[str, asyncio.Task[bytes | None]] = {}  # as many as requests
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0  # certificates fetched, for tests

    async def certificate(self, url: str) -> bytes | None:
        """The PEM at ``url`` (an allowed SigningCertURL), from the cache or fetched."""
        now = self._monotonic()
        cached = self._cache.get(url)
        if cached is not None and now - cached[1] < CACHE_SECONDS:
            self._cache.move_to_end(url)
            return cached[0]
        self._cache.pop(url, None)
        task = self._fetching.get(url)
        if task is None:
            if len(self._fetching) >= MAX_FETCHING:  # a flood of made-up URLs: fetched before
                log.info("SNS certificate not fetched: %d fetches under way", MAX_FETCHING)
                return None  # any signature is checked; the caller answers 503
            task = self._fetching[url] = asyncio.create_task(self._fetch(url, now))
            task.add_done_callback(lambda _: self._fetching.pop(url, None))
        return await asyncio.shield(task)  # one caller's cancellation leaves the others'

    async def _fetch(self, url: str, now: float) -> bytes | None:
        body = await self._get(url, MAX_CERT_BYTES, "the SNS signing certificate")
        if body is None:
            return None
        self.fetches += 1
        self._cache[url] = (body, now)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return body

    async def confirm(self, url: str) -> bool:
        """GET an allowed SubscribeURL: SNS confirms the subscription on a 200."""
        return await self._get(url, MAX_CONFIRM_BYTES, "the SNS SubscribeURL") is not None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, url: str, limit: int, what: str) -> bytes | None:
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                async with self._client().get(url, allow_redirects=False) as response:
                    if response.status != 200:
                        log.info("%s answered HTTP %d", what, response.status)
                        return None
                    return await _read(response, limit)
        except (aiohttp.ClientError, TimeoutError, TooLarge, ssl.SSLError) as error:
            log.info("cannot fetch %s: %s", what, type(error).__name__)
            return None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context, limit=8),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
            )
        return self._session


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)
