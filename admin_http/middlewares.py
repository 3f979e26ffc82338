"""Bearer-token authentication and the error envelope, for every request.

Tokens are compared as SHA-256 digests in constant time against the list in
force now (a reload that removes a token locks it out at once); a client IP
that fails too often (IPv6: a /64) is refused for a while (429) before any
comparison. Each failure is logged (one WARNING line with the client's
address, never what it presented) and counted in
``relay_admin_auth_failures_total``. The matched token's name is kept on the
request for the audit log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from admin_http.errors import ApiError, error_response
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.core.throttle import FailureThrottle, client_network
from relay.core.tokens import match_token
from relay.domain_database import DomainConflict
from relay.metrics import Metrics
from relay.queue_database import QueueConflict

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACTOR = web.RequestKey("actor", str)  # the name of the token that authenticated the request
MAX_FAILURES, FAILURE_WINDOW_SECONDS = 10, 300.0

_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def error_middleware(name: str = "admin API") -> Middleware:
    """The error envelope for every failure; ``name`` says which listener in the log."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.code, e.message, e.problems)
        except NotFound as e:
            return error_response(404, "not_found", str(e))
        except (Conflict, DomainConflict, QueueConflict) as e:
            return error_response(409, "conflict", str(e))
        except Invalid as e:
            return error_response(422, "invalid", "the request has problems", e.problems)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            code = _REASONS.get(e.status, "http_error")
            headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
            return error_response(e.status, code, e.reason, headers=headers)
        except Exception:
            log.exception("%s: %s %s failed", name, request.method, request.path)
            return error_response(500, "internal", "internal error; the relay's log has details")

    return errors


def auth_middleware(
    tokens: Callable[[], Sequence[tuple[str, str]]],
    metrics: Metrics,
    clock: Callable[[], float] = time.monotonic,
) -> Middleware:
    """``tokens()``: (name, token hash) in force now. Everything under /api/ needs one of them."""
    throttle = FailureThrottle(MAX_FAILURES, FAILURE_WINDOW_SECONDS)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        client = f"ip:{client_network(request.remote or '')}"  # IPv6: its /64
        if throttle.is_blocked(client, clock()):
            metrics.admin_auth_failures.labels("blocked").inc()  # counted, not logged: a flood
            return error_response(
                429,
                "too_many_requests",
                "too many failed authentications from this address; try again later",
                headers={"Retry-After": str(int(FAILURE_WINDOW_SECONDS))},
            )
        in_force = tokens()
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        name = match_token(presented.strip(), in_force) if scheme.lower() == "bearer" else None
        if name is None and not presented.strip():
            # Nothing presented (a browser, a probe at the wrong path): not a guess, so it
            # never counts toward the lockout, or nine of them would lock the operator out.
            metrics.admin_auth_failures.labels("missing").inc()
            return _unauthorized(in_force)
        if name is None:
            throttle.record_failure(client, clock())
            metrics.admin_auth_failures.labels("invalid").inc()
            log.warning(
                "admin API: failed authentication from %s (%s %s)%s",
                request.remote,
                request.method,
                request.rel_url.raw_path,  # as sent: percent-escapes keep it on one line
                "; now blocked for a while" if throttle.is_blocked(client, clock()) else "",
            )
            return _unauthorized(in_force)
        request[ACTOR] = name
        return await handler(request)

    return auth


def _unauthorized(in_force: Sequence[tuple[str, str]]) -> web.Response:
    message = (
        "a valid bearer token is required (Authorization: Bearer <token>)"
        if in_force
        else "no admin tokens are configured: add admin.tokens to the config file"
    )
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
