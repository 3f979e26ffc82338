"""What the public HTTP application is built from: made by the caller (relay/app.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from relay.config_http import HttpConfig
from relay.form_controller import FormController
from relay.metrics import Metrics
from relay.provider_event_controller import ProviderEventController
from relay.send_controller import SendController
from relay.unsubscribe_controller import UnsubscribeController


@dataclass(frozen=True)
class PublicDeps:
    config: Callable[[], HttpConfig]  # the `http:` section in force
    metrics: Metrics
    forms: FormController | None = None  # landing-page forms (public_http/forms_view.py)
    send: SendController | None = None  # POST /api/v1/send, GET /api/v1/send/{id}
    provider_events: ProviderEventController | None = None  # POST /api/v1/provider-events/...
    unsubscribe: UnsubscribeController | None = None  # GET|POST /u/{token}


DEPS = web.AppKey("deps", PublicDeps)


def deps_of(request: web.Request) -> PublicDeps:
    return request.app[DEPS]
