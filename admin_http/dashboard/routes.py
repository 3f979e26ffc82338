"""The dashboard's route table, its template engine and its middlewares, on the admin app.

Templates live in ``templates/`` beside this module and static files in
``static/`` (shipped as package data, so ``pip install .`` is the whole
install). Jinja2 autoescapes every template: a value a message or a user
supplied can never become markup.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp_session import session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage

from admin_http.dashboard import (
    audit_view,
    campaigns_view,
    contacts_view,
    domains_view,
    login_view,
    messages_view,
    overview_view,
    queue_view,
    sites_view,
    suppressions_view,
    templates_view,
    upstreams_view,
    webhooks_view,
)
from admin_http.dashboard.filters import FILTERS
from admin_http.dashboard.guard import Handler, guard_middleware, is_dashboard
from admin_http.dashboard.session import SESSION_SECONDS
from admin_http.deps import DashboardDeps

HERE = Path(__file__).parent
COOKIE = "relay_session"
# aiohttp-session 2.12 keys the request's storage with strings, which aiohttp 3.10+ warns
# about (it prefers web.RequestKey): harmless, and said once per process otherwise.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")


def dashboard_middlewares(dashboard: DashboardDeps) -> list[Middleware]:
    storage = EncryptedCookieStorage(
        dashboard.session_key,
        cookie_name=COOKIE,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Strict",
        secure=dashboard.secure_cookies,
        path="/",
    )
    sessions = session_middleware(storage)

    @web.middleware
    async def dashboard_sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Sessions for the dashboard's pages only: the API and the probes never read one."""
        if not is_dashboard(request.path):
            return await handler(request)
        return await sessions(request, handler)

    return [dashboard_sessions, guard_middleware()]


def add_dashboard(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        default_helpers=False,
    )
    env.filters.update(FILTERS)
    r = app.router
    r.add_static("/static/", HERE / "static", name="static")
    r.add_get("/login", login_view.login_form)
    r.add_post("/login", login_view.login)
    r.add_get("/login/link", login_view.login_link)
    r.add_post("/logout", login_view.logout)
    r.add_get("/", overview_view.overview)
    r.add_get("/messages", messages_view.message_list)
    r.add_get("/messages/{id}", messages_view.message_page)
    r.add_get("/messages/{id}/preview", messages_view.preview)
    r.add_get("/messages/{id}/eml", messages_view.eml)
    r.add_post("/messages/{id}/retry", messages_view.retry)
    r.add_get("/upstreams", upstreams_view.upstream_list)
    r.add_get("/upstreams/new", upstreams_view.new_upstream)
    r.add_post("/upstreams", upstreams_view.create_upstream)
    r.add_get("/upstreams/{name}/edit", upstreams_view.edit_upstream)
    r.add_post("/upstreams/{name}/edit", upstreams_view.save_upstream)
    r.add_post("/upstreams/{name}/delete", upstreams_view.delete_upstream)
    r.add_post("/upstreams/{name}/test", upstreams_view.test_connection)
    r.add_post("/upstreams/{name}/{action:activate|deactivate}", upstreams_view.set_active)
    r.add_get("/sites", sites_view.site_list)
    r.add_get("/sites/new", sites_view.new_site)
    r.add_post("/sites", sites_view.create_site)
    r.add_get("/sites/{id}", sites_view.site_page)
    r.add_get("/sites/{id}/contacts", contacts_view.contact_list)
    r.add_get("/sites/{id}/edit", sites_view.edit_site)
    r.add_post("/sites/{id}/edit", sites_view.save_site)
    r.add_post("/sites/{id}/delete", sites_view.delete_site)
    r.add_post("/sites/{id}/upstreams/{name}/{direction:up|down}", sites_view.move_upstream)
    r.add_post("/sites/{id}/credentials", sites_view.create_credential)
    r.add_post("/sites/{id}/credentials/{username}/delete", sites_view.delete_credential)
    r.add_post("/sites/{id}/api-keys", sites_view.create_key)
    r.add_post("/sites/{id}/api-keys/{name}/delete", sites_view.delete_key)
    r.add_get("/domains", domains_view.domain_list)
    r.add_post("/domains", domains_view.create_domain)
    r.add_get("/domains/{name}", domains_view.domain_page)
    r.add_post("/domains/{name}/verify", domains_view.verify)
    r.add_post("/domains/{name}/keys", domains_view.add_key)
    r.add_post("/domains/{name}/keys/{selector}/activate", domains_view.activate_key)
    r.add_post("/domains/{name}/delete", domains_view.delete_domain)
    r.add_get("/templates", templates_view.template_list)
    r.add_get("/templates/new", templates_view.new_template)
    r.add_post("/templates", templates_view.create_template)
    # Before /templates/{name}: a template's name never starts with "_".
    r.add_post("/templates/_preview", templates_view.live_preview)
    r.add_post("/templates/_preview.html", templates_view.live_preview_html)
    r.add_get("/templates/{name}", templates_view.template_page)
    r.add_post("/templates/{name}", templates_view.save_template)
    r.add_post("/templates/{name}/delete", templates_view.delete_template)
    r.add_post("/templates/{name}/preview", templates_view.preview)
    r.add_get("/templates/{name}/preview.html", templates_view.preview_html)
    r.add_get("/queue", queue_view.queue)
    r.add_post("/queue/flush", queue_view.flush)
    r.add_get("/queue/{id}/delete", queue_view.confirm_delete)
    r.add_post("/queue/{id}/delete", queue_view.delete)
    r.add_post("/queue/{id}/{action:retry|hold|release}", queue_view.act)
    r.add_get("/suppressions", suppressions_view.suppression_list)
    r.add_post("/suppressions", suppressions_view.add_suppression)
    r.add_post("/suppressions/remove", suppressions_view.remove_suppression)
    r.add_get("/webhooks", webhooks_view.webhook_list)
    r.add_get("/webhooks/new", webhooks_view.new_webhook)
    r.add_post("/webhooks", webhooks_view.create_webhook)
    r.add_get("/webhooks/{name}", webhooks_view.webhook_page)
    r.add_get("/webhooks/{name}/edit", webhooks_view.edit_webhook)
    r.add_post("/webhooks/{name}/edit", webhooks_view.save_webhook)
    r.add_post("/webhooks/{name}/{action:enable|disable}", webhooks_view.set_enabled)
    r.add_post("/webhooks/{name}/test", webhooks_view.send_test)
    r.add_post("/webhooks/{name}/replay", webhooks_view.replay)
    r.add_post("/webhooks/{name}/rotate-secret", webhooks_view.rotate_secret)
    r.add_get("/webhooks/{name}/delete", webhooks_view.confirm_delete)
    r.add_post("/webhooks/{name}/delete", webhooks_view.delete_webhook)
    r.add_get("/campaigns", campaigns_view.campaign_list)
    r.add_get("/campaigns/new", campaigns_view.new_campaign)
    r.add_post("/campaigns", campaigns_view.create_campaign)
    r.add_get("/campaigns/{id}", campaigns_view.campaign_page)
    r.add_get("/campaigns/{id}/progress.json", campaigns_view.progress_json)
    r.add_get("/campaigns/{id}/cancel", campaigns_view.confirm_cancel)
    r.add_post("/campaigns/{id}/{action:start|pause|resume|cancel}", campaigns_view.act)
    r.add_get("/audit", audit_view.audit)
