"""A webhook receiver for the benchmark: answers every POST 204 and counts them.

Its own process (aiohttp, uvloop when there), so its CPU is not the relay's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
from typing import Any

from aiohttp import web

from bench.sink import CountingServer


def _serve(port: int, count: Any, ready: multiprocessing.synchronize.Event) -> None:
    async def take(request: web.Request) -> web.Response:
        await request.read()
        with count.get_lock():
            count.value += 1
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hooks", take)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class WebhookSink(CountingServer):
    """Counts the webhook requests it answered."""

    serve = staticmethod(_serve)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"
