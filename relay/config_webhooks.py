"""The events' part of the YAML: ``events:`` (how webhooks are sent) and ``webhooks:``.

The same rules as the rest of the file (relay/config.py): every problem with
its path, unknown keys refused. An endpoint made through the admin API is
read by the same rules (`parse_webhook_spec`), without the keys that would
read the server's environment or files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relay.config_section import IpNetwork, Section, check_unique, read_name, read_networks
from relay.core.model import Secret
from relay.core.outbound_events import SUBSCRIBABLE
from relay.core.webhook_delivery import Endpoint
from relay.core.webhook_signing import BadSecret, parse_secret

MIN_RETRY_HOURS = 24.0  # the contract: backoff for at least 24 h
MAX_URL_LENGTH = 2048
_API_FORBIDDEN = ("secret_env", "secret_file")


@dataclass(frozen=True)
class EventsConfig:
    allow_private_targets: bool = False  # webhooks may reach loopback/private/link-local
    allowed_networks: tuple[IpNetwork, ...] = ()  # reachable although private (an app at 10.x)
    retry_hours: float = 24.0  # an event is tried again this long after it was written
    disable_after_hours: float = 72.0  # an endpoint failing this long without a success
    timeout_seconds: float = 10.0  # one try, connection to the end of the answer's first bytes
    max_in_flight: int = 16  # tries at once to one endpoint, across the cluster (its default)

    @property
    def retry_seconds(self) -> float:
        return self.retry_hours * 3600

    @property
    def disable_after_seconds(self) -> float:
        return self.disable_after_hours * 3600


def parse_events(s: Section) -> EventsConfig:
    d = EventsConfig()
    retry_hours = s.number("retry_hours", d.retry_hours)
    if retry_hours < MIN_RETRY_HOURS or not math.isfinite(retry_hours):
        s.problem(f"must be at least {MIN_RETRY_HOURS:g} (and finite)", "retry_hours")
        retry_hours = d.retry_hours
    disable_after = s.number("disable_after_hours", d.disable_after_hours)
    timeout = s.number("timeout_seconds", d.timeout_seconds)
    if timeout > 300:
        s.problem("must be at most 300", "timeout_seconds")
        timeout = d.timeout_seconds
    config = EventsConfig(
        allow_private_targets=s.boolean("allow_private_targets", d.allow_private_targets),
        allowed_networks=read_networks(s, "allowed_networks"),
        retry_hours=retry_hours,
        disable_after_hours=disable_after
        if math.isfinite(disable_after)
        else d.disable_after_hours,
        timeout_seconds=timeout,
        max_in_flight=s.integer("max_in_flight", d.max_in_flight, minimum=1) or d.max_in_flight,
    )
    s.finish()
    return config


def parse_webhooks(root: Section) -> tuple[Endpoint, ...]:
    endpoints, names = [], set[str]()
    for i, data in root.items("webhooks"):
        s = Section(data, root.child("webhooks") + f"[{i}]", root.problems)
        endpoint = _parse_endpoint(s)
        s.finish()
        if endpoint is not None:
            check_unique(root, "webhooks", i, endpoint.name, names, "webhook name")
            endpoints.append(endpoint)
    return tuple(endpoints)


def parse_webhook_spec(data: object, generated_secret: str) -> tuple[Endpoint | None, list[str]]:
    """An endpoint given as JSON through the admin API; ``generated_secret`` when it gives none."""
    problems: list[str] = []
    if isinstance(data, dict):
        for key in _API_FORBIDDEN:
            if key in data:
                problems.append(f"webhook.{key}: not accepted through the API (give secret)")
        data = {k: v for k, v in data.items() if k not in _API_FORBIDDEN}
        data.setdefault("secret", generated_secret)
    s = Section(data, "webhook", problems)
    endpoint = _parse_endpoint(s)
    s.finish()
    if endpoint is None or problems:
        return None, problems
    return Endpoint(
        endpoint.name,
        endpoint.url,
        endpoint.secret,
        endpoint.events,
        endpoint.sites,
        endpoint.max_in_flight,
        managed_by_file=False,
    ), problems


def _parse_endpoint(s: Section) -> Endpoint | None:
    name = read_name(s, "name")
    url = s.text("url")
    if url is not None and (problem := url_problem(url)) is not None:
        s.problem(problem, "url")
        url = None
    events = _names(s, "events", SUBSCRIBABLE, "an event type")
    sites = _names(s, "sites", None, "a site id")
    secret = s.secret("secret", required=True)
    if secret is not None:
        try:
            parse_secret(secret.reveal())
        except BadSecret as error:
            s.problem(str(error), "secret")
            secret = None
    max_in_flight = s.integer("max_in_flight", None, minimum=1)
    if name is None or url is None or secret is None:
        return None
    return Endpoint(name, url, Secret(secret.reveal()), events, sites, max_in_flight)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook's, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"at most {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number in range)
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials; receivers check the signature instead"
    if parts.fragment or any(c in url for c in " \t\\"):
        return "must not hold a fragment, spaces or backslashes"
    return None


def _names(s: Section, key: str, allowed: frozenset[Any] | None, what: str) -> frozenset[str]:
    names = set()
    for j, value in s.items(key):
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            hint = f" ({', '.join(sorted(allowed))})" if allowed is not None else ""
            s.problem(f"not {what}: {value!r}{hint}", f"{key}[{j}]")
        else:
            names.add(value)
    return frozenset(names)
