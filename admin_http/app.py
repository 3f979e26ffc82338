"""create_app(): the admin HTTP application, built from controllers the caller made.

Only /healthz, /readyz and /metrics for now; the /api/v1 surface and its
bearer-token middleware join this route table later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from relay.metrics import CONTENT_TYPE, Metrics


@dataclass(frozen=True)
class AdminDeps:
    metrics: Metrics
    readiness: Callable[[], Awaitable[list[str]]]  # names of what is not ready; empty = ready


DEPS = web.AppKey("deps", AdminDeps)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[DEPS].readiness()
    if problems:
        return web.json_response(
            {"error": {"code": "not_ready", "message": "; ".join(problems)}}, status=503
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[DEPS].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def create_app(deps: AdminDeps) -> web.Application:
    app = web.Application()
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
