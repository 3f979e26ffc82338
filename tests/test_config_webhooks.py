"""The ``events:`` and ``webhooks:`` sections of the YAML (relay/config_webhooks.py)."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import ConfigError, load_config
from relay.config_webhooks import EventsConfig, parse_webhook_spec
from tests.conftest import base_config, smtp_upstream

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


def load(tmp_path: Path, **sections: Any) -> Any:
    config = base_config(tmp_path, [smtp_upstream("main", 2525)], **sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def problems(tmp_path: Path, **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **sections)
    return caught.value.problems


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.events == EventsConfig(False, (), 24.0, 72.0, 10.0, 16)
    assert config.webhooks == ()


def test_a_full_section_and_an_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = load(
        tmp_path,
        events={
            "allow_private_targets": True,
            "allowed_networks": ["10.0.0.5/32"],
            "retry_hours": 48,
            "disable_after_hours": 0.5,
            "timeout_seconds": 3,
            "max_in_flight": 2,
        },
        webhooks=[
            {
                "name": "app",
                "url": "https://app.example.com/hooks",
                "events": ["message.delivered", "webhook.disabled"],
                "sites": ["shop"],
                "secret_env": "HOOK_SECRET",
                "max_in_flight": 8,
            },
            {"name": "b", "url": "http://b.example.com/", "secret_file": str(secret_file)},
            {"name": "c", "url": "http://c.example.com/", "secret": SECRET},
        ],
    )
    assert config.events.allowed_networks == (ipaddress.ip_network("10.0.0.5/32"),)
    assert (config.events.retry_hours, config.events.max_in_flight) == (48, 2)
    app, b, c = config.webhooks
    assert app.events == {"message.delivered", "webhook.disabled"}
    assert app.sites == {"shop"} and app.max_in_flight == 8
    assert app.secret.reveal() == b.secret.reveal() == c.secret.reveal() == SECRET
    assert "whsec" not in repr(app)  # the secret is masked
    assert b.events == frozenset() and b.managed_by_file


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ({"retry_hours": 12}, "events.retry_hours: must be at least 24"),
        ({"timeout_seconds": 0}, "events.timeout_seconds: must be a positive number"),
        ({"max_in_flight": 0}, "events.max_in_flight: must be at least 1"),
        ({"allowed_networks": ["nope"]}, "events.allowed_networks[0]: not a network"),
        ({"allow_private_targets": "yes"}, "events.allow_private_targets: must be true or false"),
        ({"retries": 3}, "events.retries: unknown key"),
    ],
)
def test_bad_events_settings(tmp_path: Path, events: dict[str, Any], problem: str) -> None:
    assert any(p.startswith(problem) for p in problems(tmp_path, events=events)), problem


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        ({"url": "ftp://x.example.com/"}, "webhooks[0].url: must be an http:// or https:// URL"),
        ({"url": "https://u:p@x.example.com/"}, "webhooks[0].url: must not carry credentials"),
        ({"url": "https:///path"}, "webhooks[0].url: must name a host"),
        ({"events": ["message.sent"]}, "webhooks[0].events[0]: not an event type: 'message.sent'"),
        ({"events": ["webhook.test"]}, "webhooks[0].events[0]: not an event type"),
        ({"secret": "abc"}, "webhooks[0].secret: must start with whsec_"),
        ({"secret": None}, "webhooks[0].secret: is required"),
        ({"max_in_flight": 0}, "webhooks[0].max_in_flight: must be at least 1"),
        ({"name": "a b"}, "webhooks[0].name: use letters"),
        ({"headers": {}}, "webhooks[0].headers: unknown key"),
    ],
)
def test_bad_endpoints_say_what_is_wrong(
    tmp_path: Path, hook: dict[str, Any], problem: str
) -> None:
    endpoint = {"name": "app", "url": "https://app.example.com/", "secret": SECRET, **hook}
    endpoint = {k: v for k, v in endpoint.items() if v is not None}
    found = problems(tmp_path, webhooks=[endpoint])
    assert any(p.startswith(problem) for p in found), found


def test_endpoint_names_are_unique(tmp_path: Path) -> None:
    hook = {"name": "app", "url": "https://app.example.com/", "secret": SECRET}
    assert "webhooks[1]: duplicate webhook name 'app'" in problems(tmp_path, webhooks=[hook, hook])


def test_the_api_spec_refuses_secrets_from_the_servers_environment_or_files() -> None:
    endpoint, found = parse_webhook_spec(
        {"name": "x", "url": "https://x.example.com/", "secret_env": "HOME"}, SECRET
    )
    assert endpoint is None
    assert found == ["webhook.secret_env: not accepted through the API (give secret)"]
    endpoint, found = parse_webhook_spec({"name": "x", "url": "https://x.example.com/"}, SECRET)
    assert endpoint is not None and not endpoint.managed_by_file and found == []
    assert endpoint.secret.reveal() == SECRET
