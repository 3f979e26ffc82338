"""POSTs to webhook endpoints with aiohttp's client, to allowed addresses only.

Where a request may connect is decided on the addresses it would connect to,
not on the URL: a name is resolved by `GuardedResolver`, which drops the
addresses the target rule refuses (relay/core/webhook_targets.py), so a name
that resolves, or later re-resolves (DNS rebinding), to loopback or cloud
metadata is never connected to; an IP address written in the URL (which
aiohttp does not resolve) is checked before the request. Redirects are not
followed. Of the answer only its status and first RESPONSE_HEAD_BYTES bytes
are read. Every failure of the library comes back as an error sentence,
never an exception.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from relay import __version__
from relay.core.network import IpAddress, parse_ip
from relay.core.webhook_targets import literal_refusal, refusal

RESPONSE_HEAD_BYTES = 512
USER_AGENT = f"relay/{__version__} (webhooks)"
Rule = Callable[[IpAddress], str | None]  # why an address is refused, or None


class RefusedTarget(OSError):
    """Every address of the host is one webhooks may not reach (says why)."""


class GuardedResolver(ThreadedResolver):
    """The event loop's getaddrinfo, minus the addresses ``rule`` refuses."""

    def __init__(self, rule: Rule) -> None:
        super().__init__()
        self._rule = rule

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        allowed, why = [], None
        for result in found:
            address = parse_ip(result["host"])  # a link-local one may carry its scope
            reason = self._rule(address) if address is not None else "an unknown address"
            if reason is None:
                allowed.append(result)
            else:
                why = why or reason
        if not allowed:
            raise RefusedTarget(f"{host} resolves to {why}" if why else f"{host} has no address")
        return allowed


@dataclass(frozen=True)
class Answer:
    status_code: int | None  # None: no answer (refused target, connection error, timeout)
    error: str | None  # why there was no answer, or None
    head: str | None  # the answer's first bytes, decoded leniently (for the log)
    duration: float


class WebhookClient:
    def __init__(self, rule: Callable[[], tuple[bool, tuple[Any, ...]]]) -> None:
        """``rule()``: (events.allow_private_targets, events.allowed_networks), read per try."""
        self._rule = rule
        self._session: aiohttp.ClientSession | None = None

    def _refusal(self, address: IpAddress) -> str | None:
        allow_private, networks = self._rule()
        return refusal(address, allow_private, networks)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._refusal), limit=0)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def post(
        self, url: str, headers: dict[str, str], body: str, timeout_seconds: float
    ) -> Answer:
        started = time.monotonic()

        def answer(code: int | None, error: str | None, head: str | None = None) -> Answer:
            return Answer(code, error, head, time.monotonic() - started)

        host = urlsplit(url).hostname or ""
        allow_private, networks = self._rule()
        if (why := literal_refusal(host, allow_private, networks)) is not None:
            return answer(None, f"refused target: {why}")
        sent = {
            **headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        try:
            async with asyncio.timeout(timeout_seconds):
                async with self._open().post(
                    url,
                    data=body.encode(),
                    headers=sent,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                ) as response:
                    head = await _head(response)
                    return answer(response.status, None, head)
        except aiohttp.ClientConnectorDNSError as error:
            if isinstance(error.os_error, RefusedTarget):
                return answer(None, f"refused target: {error.os_error}")
            return answer(None, f"{host} does not resolve ({error.os_error.strerror or error})")
        except aiohttp.ClientConnectorError as error:
            return answer(None, f"cannot connect to {host}:{error.port} ({error.strerror})")
        except TimeoutError:
            return answer(None, f"no answer within {timeout_seconds:g} s")
        except aiohttp.ClientError as error:
            return answer(None, f"{type(error).__name__}: {error}"[:500])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _head(response: aiohttp.ClientResponse) -> str:
    """Up to RESPONSE_HEAD_BYTES of the body; the rest is never read (the connection closes)."""
    data = b""
    while len(data) < RESPONSE_HEAD_BYTES:
        chunk = await response.content.read(RESPONSE_HEAD_BYTES - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) >= RESPONSE_HEAD_BYTES or not response.content.at_eof():
        response.close()
    return data.decode("utf-8", errors="replace")
