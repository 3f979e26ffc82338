"""What the admin HTTP application is built from: controllers and accessors made by the caller."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from relay.api_key_controller import ApiKeyController
from relay.campaign_controller import CampaignController
from relay.catalog_controller import CatalogController
from relay.config import Config, ReloadResult
from relay.contact_controller import ContactController
from relay.core.directory import Directory
from relay.domain_monitor import DomainMonitor
from relay.health_controller import HealthController
from relay.login_link_controller import LoginLinkController
from relay.metrics import Metrics
from relay.performance_controller import PerformanceController
from relay.probe_controller import ProbeController
from relay.queue_controller import QueueController
from relay.reports_controller import ReportsController
from relay.suppression_controller import SuppressionController
from relay.template_controller import TemplateController
from relay.webhook_controller import WebhookController


@dataclass(frozen=True)
class Api:
    """The /api/v1 surface's controllers."""

    catalog: CatalogController
    reports: ReportsController
    queue: QueueController
    probes: ProbeController
    health: HealthController
    domains: DomainMonitor
    directory: Callable[[], Directory]
    config: Callable[[], Config]
    reload: Callable[[], ReloadResult]
    clock: Callable[[], float] = time.time
    templates: TemplateController | None = None  # the relay always gives it
    api_keys: ApiKeyController | None = None  # /api/v1/sites/{id}/api-keys
    suppressions: SuppressionController | None = None  # /api/v1/suppressions
    webhooks: WebhookController | None = None  # /api/v1/webhooks
    performance: PerformanceController | None = None  # the upstreams' measured figures
    contacts: ContactController | None = None  # /api/v1/sites/{id}/contacts
    campaigns: CampaignController | None = None  # /api/v1/campaigns


@dataclass(frozen=True)
class DashboardDeps:
    """What the web UI at ``/`` needs beyond the API's controllers."""

    session_key: bytes  # 32 bytes for the encrypted session cookie (derived from the secret)
    secure_cookies: bool  # the admin listener speaks HTTPS: cookies only go back over it
    # One-time login links (relay serve prints one): given only on a loopback admin
    # listener, and taken only while no admin tokens are configured.
    login_links: LoginLinkController | None = None


@dataclass(frozen=True)
class AdminDeps:
    metrics: Metrics
    readiness: Callable[[], Awaitable[list[str]]]  # names of what is not ready; empty = ready
    # (name, token hash) of the tokens in force now: a reload may change them.
    tokens: Callable[[], Sequence[tuple[str, str]]] = tuple
    api: Api | None = None  # None: only /healthz, /readyz, /metrics
    dashboard: DashboardDeps | None = None  # None (or no api): no web UI at /


DEPS = web.AppKey("deps", AdminDeps)


def api_of(request: web.Request) -> Api:
    api = request.app[DEPS].api
    assert api is not None
    return api
