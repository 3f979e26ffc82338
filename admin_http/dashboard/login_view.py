"""Logging in (an admin token, or the one-time link of a relay with none) and out.

A wrong token counts toward the same per-address lockout as the API's
(admin_http/middlewares.py: 10 in 5 minutes, then 429 for a while); an
empty one is not a guess and never counts.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp_session import get_session

from admin_http.dashboard.pages import local_path, page, see_other
from admin_http.dashboard.session import ADMIN, dashboard_of, log_in
from admin_http.deps import DEPS
from admin_http.middlewares import FAILURE_WINDOW_SECONDS, THROTTLE
from relay.core.throttle import client_network
from relay.core.tokens import match_token
from relay.login_link_controller import LOCAL_ADMIN

log = logging.getLogger(__name__)


async def login_form(request: web.Request) -> web.Response:
    if request.get(ADMIN) is not None:
        return see_other(local_path(request.query.get("next")))
    return await _form(request, "", 200)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    wanted = local_path(str(form.get("next", "")))
    presented = str(form.get("token", "")).strip()
    throttle, client = request.app[THROTTLE], f"ip:{client_network(request.remote or '')}"
    metrics = request.app[DEPS].metrics
    if throttle.is_blocked(client, time.monotonic()):
        metrics.admin_auth_failures.labels("blocked").inc()
        minutes = int(FAILURE_WINDOW_SECONDS // 60)
        return await _form(
            request, f"Too many wrong tokens from this address: wait {minutes} minutes.", 429
        )
    if not presented:  # not a guess: never counted
        return await _form(request, "Enter an admin token.", 400, wanted)
    in_force = request.app[DEPS].tokens()
    name = match_token(presented, in_force)
    if name is None:
        throttle.record_failure(client, time.monotonic())
        metrics.admin_auth_failures.labels("invalid").inc()
        log.warning("dashboard: failed login from %s", request.remote)
        problem = (
            "That token is not valid."
            if in_force
            else "No admin tokens are configured: add admin.tokens to the config file, "
            "or use the login link the relay printed."
        )
        return await _form(request, problem, 401, wanted)
    await log_in(request, name, dict(in_force)[name])
    log.info("dashboard: %s logged in from %s", name, request.remote)
    return see_other(wanted)


async def login_link(request: web.Request) -> web.Response:
    """The one-time link `relay serve` printed: a session as ``local``, once."""
    links = dashboard_of(request).login_links
    if links is None or request.app[DEPS].tokens():
        return await _form(
            request, "Login links work only while no admin tokens are configured.", 403
        )
    if not await links.redeem(request.query.get("t", "")):
        return await _form(
            request,
            "This login link was used already or has expired. "
            "Restart the relay for a new one, or configure an admin token.",
            403,
        )
    await log_in(request, LOCAL_ADMIN, None)
    log.info("dashboard: logged in with the one-time link from %s", request.remote)
    return see_other("/")


async def logout(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.invalidate()
    return see_other("/login")


async def _form(request: web.Request, problem: str, status: int, wanted: str = "") -> web.Response:
    return await page(
        request,
        "login.html",
        {"problem": problem, "next": wanted or local_path(request.query.get("next"))},
        title="Log in",
        status=status,
    )
