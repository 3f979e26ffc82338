"""create_app(): the public HTTP application, built from what the caller made.

It faces the internet. Every error uses the admin API's envelope
(``{"error": {"code", "message", "problems"?}}``) and says what is wrong;
bodies are capped before they are read (aiohttp's ``client_max_size``, and
each view's own smaller cap); nothing of a request reaches a header of a
message unchecked (relay/core/send_request.py, relay/core/compose.py). The
route table below is the whole URL surface.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from admin_http.errors import ApiError, error_response
from public_http import forms_view, send_view
from public_http.deps import DEPS, PublicDeps

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = 40 * 1024 * 1024  # the send API's attachments (base64) under the message cap

_REASONS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def create_app(deps: PublicDeps) -> web.Application:
    app = web.Application(middlewares=[error_middleware()], client_max_size=MAX_BODY_BYTES)
    app[DEPS] = deps
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/form-token", forms_view.form_token)
    app.router.add_route("OPTIONS", "/api/form-token", forms_view.preflight_token)
    app.router.add_post("/api/send-inquiry", forms_view.send_inquiry)
    app.router.add_route("OPTIONS", "/api/send-inquiry", forms_view.preflight_inquiry)
    app.router.add_post("/api/v1/send", send_view.send)
    app.router.add_get("/api/v1/send/{id}", send_view.status)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def error_middleware() -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.code, e.message, e.problems)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            code = _REASONS.get(e.status, "http_error")
            headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
            return error_response(e.status, code, e.reason, headers=headers)
        except Exception:
            log.exception("public HTTP: %s %s failed", request.method, request.path)
            return error_response(500, "internal", "internal error; the relay's log has details")

    return errors
