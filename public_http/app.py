"""create_app(): the public HTTP application, built from what the caller made.

It faces the internet. Every error uses the admin API's envelope and its
middleware (``{"error": {"code", "message", "problems"?}}``) and says what is wrong;
bodies are capped before they are read (aiohttp's ``client_max_size``, and
each view's own smaller cap); nothing of a request reaches a header of a
message unchecked (relay/core/send_request.py, relay/core/compose.py). The
route table below is the whole URL surface; ``openapi.py`` documents it (served
at /api/openapi.json) and a test holds the two together.
"""

from __future__ import annotations

from aiohttp import web

from admin_http.middlewares import error_middleware
from public_http import forms_view, provider_events_view, send_view, unsubscribe_view
from public_http.deps import DEPS, PublicDeps
from public_http.openapi import document

MAX_BODY_BYTES = 40 * 1024 * 1024  # the send API's attachments (base64) under the message cap


def create_app(deps: PublicDeps) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware("public HTTP")], client_max_size=MAX_BODY_BYTES
    )
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/form-token", forms_view.form_token)
    app.router.add_route("OPTIONS", "/api/form-token", forms_view.preflight_token)
    app.router.add_post("/api/send-inquiry", forms_view.send_inquiry)
    app.router.add_route("OPTIONS", "/api/send-inquiry", forms_view.preflight_inquiry)
    app.router.add_post("/api/v1/send", send_view.send)
    app.router.add_get("/api/v1/send/{id}", send_view.status)
    app.router.add_post("/api/v1/provider-events/{upstream}", provider_events_view.receive)
    app.router.add_get("/u/{token}", unsubscribe_view.confirm)  # and HEAD: both only show
    app.router.add_post("/u/{token}", unsubscribe_view.unsubscribe)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())
