"""A webhook receiver on loopback that records what it gets and answers as a test scripts it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Delivered:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Receiver:
    port: int = 0
    status: int = 200  # the answer to every request, unless ``script`` gives one
    script: Callable[[Delivered], int] | None = None
    gate: asyncio.Event | None = None  # when given, requests wait for it before answering
    got: list[Delivered] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def accepted(self) -> list[Delivered]:
        return [d for d in self.got if 200 <= d.status < 300]

    def accepted_ids(self) -> list[str]:
        return [d.headers["webhook-id"] for d in self.accepted]

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            body = await request.read()
            if self.gate is not None:
                await self.gate.wait()
            probe = Delivered({k.lower(): v for k, v in request.headers.items()}, body, 0, 0)
            status = self.script(probe) if self.script else self.status
            async with self._changed:
                self.got.append(Delivered(probe.headers, body, status, time.monotonic()))
                self._changed.notify_all()
            return web.Response(status=status, text="thanks " * 200)  # longer than the log keeps
        finally:
            self.in_flight -= 1

    async def wait_accepted(self, count: int, seconds: float = 30) -> list[Delivered]:
        async with asyncio.timeout(seconds):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.accepted) >= count)
        return self.accepted

    async def wait_got(self, count: int, seconds: float = 30) -> list[Delivered]:
        async with asyncio.timeout(seconds):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.got) >= count)
        return self.got


@asynccontextmanager
async def receiving(port: int = 0, **options: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(**options)
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    receiver.port = runner.addresses[0][1]
    try:
        yield receiver
    finally:
        if receiver.gate is not None:
            receiver.gate.set()
        await runner.cleanup()
