"""The dashboard's middleware: who may see a page, CSRF on every POST, headers, HTML errors.

Runs for every path outside the API and the probes (``/api/``, ``/healthz``,
``/readyz``, ``/metrics`` keep their JSON and text answers). A request that
is not logged in is sent to the login page (GETs keep where they were going;
a page's ``.json``, which its script polls, is a JSON 401 instead); a POST
whose form lacks this session's CSRF token is refused with 403 before its
handler runs. Failures become HTML pages, never JSON or a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_session import get_session

from admin_http.dashboard.pages import SECURITY_HEADERS, page, see_other
from admin_http.dashboard.session import ADMIN, admin_in_force, csrf_ok
from admin_http.errors import ApiError
from admin_http.middlewares import ACTOR
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.queue_database import QueueConflict

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOT_DASHBOARD = ("/api/", "/healthz", "/readyz", "/metrics")


def is_dashboard(path: str) -> bool:
    return not path.startswith(NOT_DASHBOARD)


def guard_middleware() -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_dashboard(request.path):
            return await handler(request)
        try:
            response = await _guarded(request, handler)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            response = await _error_page(request, e.status, e.reason)
        except (ApiError, NotFound, Conflict, QueueConflict, Invalid) as e:
            status = {NotFound: 404, Invalid: 422}.get(type(e), 409)
            status = e.status if isinstance(e, ApiError) else status
            detail = "; ".join(e.problems) if isinstance(e, Invalid) else str(e)
            response = await _error_page(request, status, detail)
        except Exception:
            log.exception("dashboard: %s %s failed", request.method, request.path)
            response = await _error_page(
                request, 500, "Something went wrong on our side; the relay's log has details."
            )
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)  # a message preview sets its own policy
        return response

    return guard


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    session = await get_session(request)
    admin = admin_in_force(session, request)
    if admin is not None:
        request[ADMIN] = admin
        request[ACTOR] = admin  # the audit log's name for changes made here
    public = request.path == "/login" or request.path.startswith(("/login/link", "/static/"))
    if request.method == "POST" and not await csrf_ok(request):
        return await _error_page(
            request,
            403,
            "This form has expired or did not come from this dashboard. "
            "Reload the page and try again.",
        )
    if admin is None and not public:
        if session.get("admin") is not None:
            session.invalidate()  # its token was removed or replaced
        if request.path.endswith(".json"):  # a page's script polls it: no login page for it
            return web.json_response({"error": "not logged in"}, status=401)
        if request.method == "GET":
            return see_other("/login?next=" + quote(request.path_qs, safe="/?=&"))
        return see_other("/login")
    return await handler(request)


async def _error_page(request: web.Request, status: int, detail: str) -> web.Response:
    titles = {403: "Not allowed", 404: "Not found", 409: "Not possible", 429: "Slow down"}
    return await page(
        request,
        "error.html",
        {"status": status, "detail": detail},
        title=titles.get(status, "Error"),
        status=status,
    )
