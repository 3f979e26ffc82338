"""create_app(): the admin HTTP application, built from controllers the caller made.

The route table below is the whole URL surface; ``openapi.py`` documents it
and a test checks that the two agree.
"""

from __future__ import annotations

from aiohttp import web

from admin_http import (
    api_keys_view,
    campaigns_view,
    contacts_view,
    domains_view,
    messages_view,
    sites_view,
    stats_view,
    suppressions_view,
    system_view,
    templates_view,
    upstreams_view,
    webhooks_view,
)
from admin_http.dashboard.routes import add_dashboard, dashboard_middlewares
from admin_http.deps import DEPS, AdminDeps
from admin_http.middlewares import THROTTLE, auth_middleware, error_middleware, login_throttle
from admin_http.schemas import MAX_BODY_BYTES

V1 = "/api/v1"


def create_app(deps: AdminDeps) -> web.Application:
    throttle = login_throttle()
    middlewares = [
        error_middleware(),
        auth_middleware(deps.tokens, deps.metrics, throttle=throttle),
    ]
    if deps.api is not None and deps.dashboard is not None:
        middlewares += dashboard_middlewares(deps.dashboard)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[DEPS] = deps
    app[THROTTLE] = throttle
    r = app.router
    r.add_get("/healthz", system_view.healthz)
    r.add_get("/readyz", system_view.readyz)
    r.add_get("/metrics", system_view.metrics)
    if deps.api is None:
        return app
    if deps.dashboard is not None:
        add_dashboard(app)
    r.add_get(f"{V1}/openapi.json", system_view.openapi)
    r.add_post(f"{V1}/reload", system_view.reload)
    r.add_get(f"{V1}/audit", system_view.audit)
    r.add_get(f"{V1}/stats", stats_view.stats)

    r.add_get(f"{V1}/upstreams", upstreams_view.list_upstreams)
    r.add_post(f"{V1}/upstreams", upstreams_view.create_upstream)
    r.add_get(f"{V1}/upstreams/{{name}}", upstreams_view.get_upstream)
    r.add_patch(f"{V1}/upstreams/{{name}}", upstreams_view.patch_upstream)
    r.add_delete(f"{V1}/upstreams/{{name}}", upstreams_view.delete_upstream)
    r.add_post(f"{V1}/upstreams/{{name}}/test", upstreams_view.probe_upstream)
    r.add_post(f"{V1}/upstreams/{{name}}/activate", upstreams_view.activate)
    r.add_post(f"{V1}/upstreams/{{name}}/deactivate", upstreams_view.deactivate)
    r.add_get(f"{V1}/upstreams/{{name}}/stats", upstreams_view.upstream_stats)

    r.add_get(f"{V1}/sites", sites_view.list_sites)
    r.add_post(f"{V1}/sites", sites_view.create_site)
    r.add_get(f"{V1}/sites/{{id}}", sites_view.get_site)
    r.add_patch(f"{V1}/sites/{{id}}", sites_view.patch_site)
    r.add_delete(f"{V1}/sites/{{id}}", sites_view.delete_site)
    r.add_post(f"{V1}/sites/{{id}}/credentials", sites_view.create_credential)
    r.add_delete(f"{V1}/sites/{{id}}/credentials/{{username}}", sites_view.delete_credential)
    r.add_get(f"{V1}/sites/{{id}}/api-keys", api_keys_view.list_keys)
    r.add_post(f"{V1}/sites/{{id}}/api-keys", api_keys_view.create_key)
    r.add_delete(f"{V1}/sites/{{id}}/api-keys/{{name}}", api_keys_view.delete_key)
    r.add_get(f"{V1}/sites/{{id}}/contacts", contacts_view.list_contacts)
    r.add_post(f"{V1}/sites/{{id}}/contacts", contacts_view.add_contacts)
    r.add_get(f"{V1}/sites/{{id}}/contacts/{{email}}", contacts_view.get_contact)
    r.add_patch(f"{V1}/sites/{{id}}/contacts/{{email}}", contacts_view.patch_contact)
    r.add_delete(f"{V1}/sites/{{id}}/contacts/{{email}}", contacts_view.delete_contact)

    r.add_get(f"{V1}/domains", domains_view.list_domains)
    r.add_post(f"{V1}/domains", domains_view.create_domain)
    r.add_get(f"{V1}/domains/{{name}}", domains_view.get_domain)
    r.add_delete(f"{V1}/domains/{{name}}", domains_view.delete_domain)
    r.add_get(f"{V1}/domains/{{name}}/dns-records", domains_view.dns_records)
    r.add_post(f"{V1}/domains/{{name}}/verify", domains_view.verify_domain)
    r.add_post(f"{V1}/domains/{{name}}/keys", domains_view.add_key)
    r.add_post(f"{V1}/domains/{{name}}/keys/{{selector}}/activate", domains_view.activate_key)

    r.add_get(f"{V1}/templates", templates_view.list_templates)
    r.add_post(f"{V1}/templates", templates_view.create_template)
    r.add_get(f"{V1}/templates/{{name}}", templates_view.get_template)
    r.add_put(f"{V1}/templates/{{name}}", templates_view.put_template)
    r.add_patch(f"{V1}/templates/{{name}}", templates_view.patch_template)
    r.add_delete(f"{V1}/templates/{{name}}", templates_view.delete_template)
    r.add_post(f"{V1}/templates/{{name}}/preview", templates_view.preview_template)

    r.add_get(f"{V1}/suppressions", suppressions_view.list_suppressions)
    r.add_post(f"{V1}/suppressions", suppressions_view.add_suppression)
    r.add_delete(f"{V1}/suppressions/{{site}}/{{address}}", suppressions_view.delete_suppression)

    r.add_get(f"{V1}/webhooks", webhooks_view.list_webhooks)
    r.add_post(f"{V1}/webhooks", webhooks_view.create_webhook)
    r.add_get(f"{V1}/webhooks/{{name}}", webhooks_view.get_webhook)
    r.add_patch(f"{V1}/webhooks/{{name}}", webhooks_view.patch_webhook)
    r.add_delete(f"{V1}/webhooks/{{name}}", webhooks_view.delete_webhook)
    r.add_post(f"{V1}/webhooks/{{name}}/rotate-secret", webhooks_view.rotate_secret)
    r.add_get(f"{V1}/webhooks/{{name}}/deliveries", webhooks_view.deliveries)
    r.add_post(f"{V1}/webhooks/{{name}}/replay", webhooks_view.replay)
    r.add_post(f"{V1}/webhooks/{{name}}/test", webhooks_view.test)

    r.add_get(f"{V1}/campaigns", campaigns_view.list_campaigns)
    r.add_post(f"{V1}/campaigns", campaigns_view.create_campaign)
    r.add_get(f"{V1}/campaigns/{{id}}", campaigns_view.get_campaign)
    r.add_delete(f"{V1}/campaigns/{{id}}", campaigns_view.delete_campaign)
    r.add_post(f"{V1}/campaigns/{{id}}/start", campaigns_view.start_campaign)
    r.add_post(f"{V1}/campaigns/{{id}}/pause", campaigns_view.pause_campaign)
    r.add_post(f"{V1}/campaigns/{{id}}/resume", campaigns_view.resume_campaign)
    r.add_post(f"{V1}/campaigns/{{id}}/cancel", campaigns_view.cancel_campaign)
    r.add_get(f"{V1}/campaigns/{{id}}/recipients", campaigns_view.recipients)

    r.add_get(f"{V1}/messages", messages_view.search)
    r.add_get(f"{V1}/messages/{{id}}", messages_view.get_message)
    r.add_post(f"{V1}/messages/{{id}}/retry", messages_view.retry)
    r.add_post(f"{V1}/queue/flush", messages_view.flush)
    return app
