"""The admin API's OpenAPI document: valid 3.1, in step with the route table, true of the server.

The relay runs in a thread with its own event loop for the whole module, so
schemathesis (synchronous, over ``requests``) can call it like any client.
Everything stays on loopback: its only upstream is a closed port, its DNS
server is a loopback zone, and the upstream test operation, which would
connect wherever a generated upstream points, is not fuzzed.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import openapi_spec_validator
import pytest
import schemathesis
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from admin_http.app import create_app
from admin_http.deps import AdminDeps, Api
from admin_http.openapi import document
from relay.app import RelayApp
from relay.config import load_config
from tests.conftest import SITE_PASSWORD, base_config, smtp_upstream, write_config
from tests.dns_zone import serve_zone

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@dataclass
class LiveRelay:
    app: RelayApp
    url: str
    message_id: str  # a message that exists: deferred, its upstream being a closed port

    def known(self, path: str) -> dict[str, str]:
        """Path parameters naming objects that exist, for the collection ``path`` is under."""
        collection = path.split("/")[3] if path.startswith("/api/v1/") else ""
        return {
            "upstreams": {"name": "main"},
            "sites": {"id": "shop", "username": "shop"},
            "domains": {"name": "shop.example.com"},
            "templates": {"name": "welcome"},
            "messages": {"id": self.message_id},
        }.get(collection, {})

    def get(self, path: str, headers: dict[str, str] = AUTH) -> Any:
        """GET over plain HTTP on loopback (the URL is ours, never a file: or other scheme)."""
        request = urllib.request.Request(self.url + path, headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert response.status == 200
            assert response.headers.get_content_type() == "application/json"
            return json.load(response)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    """A relay with an admin token and one deferred message, in its own thread, per module."""
    tmp_path = tmp_path_factory.mktemp("openapi")
    with serve_zone() as zone:
        config = base_config(tmp_path, [smtp_upstream("main", closed_port())])
        config["admin"]["tokens"] = [{"name": "ops", "token": TOKEN}]
        config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
        config["delivery"] = {"retry_first_seconds": 600, "retry_max_seconds": 1200}
        config["dns"] = {
            "nameservers": [zone.nameserver],
            "timeout_seconds": 1,
            "verify_interval_seconds": 0,
        }
        config["domains"] = [{"name": "shop.example.com"}]
        config["templates"] = [{"name": "welcome", "text": "Hello {{ name }}"}]
        path = write_config(tmp_path, config)

        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="relay", daemon=True)
        thread.start()

        async def start() -> RelayApp:
            app = RelayApp(load_config(path))
            await app.start()
            return app

        try:
            app = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
            try:
                live = LiveRelay(app, f"http://127.0.0.1:{app.admin_port}", "")
                live.message_id = deferred_message(live)
                yield live
            finally:
                asyncio.run_coroutine_threadsafe(app.stop(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def deferred_message(live: LiveRelay) -> str:
    """Send one message and wait (bounded) until its first attempt has deferred it."""
    with smtplib.SMTP("127.0.0.1", live.app.listeners.ports[0], timeout=10) as client:
        client.login("shop", SITE_PASSWORD)
        client.sendmail(
            "orders@shop.example.com",
            ["someone@example.org", "hidden@example.org"],
            b"From: Shop <orders@shop.example.com>\r\nTo: someone@example.org\r\n"
            b"Bcc: hidden@example.org\r\nSubject: fuzz me\r\n\r\nhello\r\n",
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        items = live.get("/api/v1/messages?status=deferred")["items"]
        if items:
            return str(items[0]["id"])
        time.sleep(0.05)
    raise AssertionError("the message was never deferred")


def fetch_document(live: LiveRelay) -> dict[str, Any]:
    return dict(live.get("/api/v1/openapi.json"))


# -- The document itself


def test_document_is_valid_openapi_3_1(live: LiveRelay) -> None:
    served = fetch_document(live)
    assert served["openapi"].startswith("3.1.")
    openapi_spec_validator.validate(served, cls=openapi_spec_validator.OpenAPIV31SpecValidator)
    assert served == json.loads(json.dumps(document()))  # what the module builds, as JSON

    # The validator does judge: a response without its (required) description is refused.
    broken = json.loads(json.dumps(served))
    del broken["paths"]["/api/v1/stats"]["get"]["responses"]["200"]["description"]
    with pytest.raises(OpenAPIValidationError):
        openapi_spec_validator.validate(broken, cls=openapi_spec_validator.OpenAPIV31SpecValidator)


def test_document_needs_the_token(live: LiveRelay) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        live.get("/api/v1/openapi.json", headers={})
    assert raised.value.code == 401
    assert json.load(raised.value)["error"]["code"] == "unauthorized"
    raised.value.close()


# -- The document against the route table


def routes_of(live: LiveRelay) -> set[tuple[str, str]]:
    """(METHOD, path) of every route ``create_app`` makes when the API is on; HEAD aside."""
    relay = live.app
    api = Api(
        relay.catalog,
        relay.reports,
        relay.queue,
        relay.probes,
        relay.health,
        relay.domains,
        relay.directory,
        lambda: relay.config,
        relay.reload,
    )
    app = create_app(AdminDeps(relay.metrics, relay.readiness, tuple, api))
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"a route without a path: {route}"
        found.add((route.method, path))
    return found


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def test_every_route_is_documented_and_every_operation_routed(live: LiveRelay) -> None:
    routes = routes_of(live)
    documented = documented_operations(fetch_document(live))
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the server does not route"
    assert len(routes) >= 30


def test_path_parameters_are_documented(live: LiveRelay) -> None:
    """Each {placeholder} of a path is a required path parameter of each of its operations."""
    doc = fetch_document(live)
    for path, item in doc["paths"].items():
        placeholders = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, operation in item.items():
            declared = {
                p["name"]
                for p in operation.get("parameters", [])
                if p["in"] == "path" and p.get("required")
            }
            assert declared == placeholders, (method, path)


# -- schemathesis against the live server

EXCLUDED = {
    # Connects to whatever host a generated upstream names: only loopback may be a target.
    # test_upstream_test_keeps_to_the_document calls it with fixed cases instead.
    ("POST", "/api/v1/upstreams/{name}/test"),
}
# (METHOD, path) -> "BUG: ..." for an operation whose fuzzing fails on a known server bug.
KNOWN_BUGS: dict[tuple[str, str], str] = {}
# Cases fuzzing found (500s: out-of-range times reached datetime.fromtimestamp), replayed
# first on every run (Hypothesis' explicit phase).
SEEDS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("GET", "/api/v1/stats"): [{"query": {"until": "Infinity"}}, {"query": {"since": "1e100"}}],
    ("GET", "/api/v1/upstreams/{name}/stats"): [
        {"path_parameters": {"name": "main"}, "query": {"since": "1e100"}}
    ],
}
FUZZED = [
    pytest.param(
        method,
        path,
        id=f"{method} {path}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[method, path])]
        if (method, path) in KNOWN_BUGS
        else [],
    )
    for method, path in sorted(documented_operations(document()))
    if (method, path) not in EXCLUDED
]
CHECKS = [
    not_a_server_error,  # no 5xx
    status_code_conformance,  # the status is documented for the operation
    content_type_conformance,  # the Content-Type is one documented for that status
    response_schema_conformance,  # the body matches the documented schema
]
EXAMPLES_PER_MODE = 25


def can_be_negated(method: str, path: str) -> bool:
    """Negative cases need something typed to break: a body or a query parameter."""
    operation = document()["paths"][path][method.lower()]
    return "requestBody" in operation or any(
        p["in"] == "query" for p in operation.get("parameters", [])
    )


@pytest.fixture(scope="module")
def api_schema(live: LiveRelay) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "headers": AUTH,
            # The token is given; generated Authorization headers would only get 401s,
            # and then the failure throttle's 429s for every later call.
            "generation": {"with-security-parameters": False},
        }
    )
    return schemathesis.openapi.from_url(
        f"{live.url}/api/v1/openapi.json", config=config, headers=AUTH, timeout=10
    )


@pytest.mark.parametrize(("method", "path"), FUZZED)
def test_server_keeps_to_the_document(
    api_schema: schemathesis.BaseSchema, live: LiveRelay, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    # Generated path parameters name nothing (404); half the cases use objects that exist.
    known = {name: value for name, value in live.known(path).items() if f"{{{name}}}" in path}
    modes = [schemathesis.GenerationMode.POSITIVE]
    if can_be_negated(method, path):
        modes.append(schemathesis.GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(generation_mode=mode) for mode in modes]
    if known:
        strategies += [
            operation.as_strategy(generation_mode=mode, path_parameters=known) for mode in modes
        ]

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_MODE * len(modes),
        deadline=None,
        database=None,  # nothing written into the work tree
        derandomize=True,  # the same cases on every run: a failure here is reproducible
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=hypothesis.strategies.one_of(strategies))
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=live.url, headers=AUTH, checks=CHECKS, timeout=10)

    for seed in reversed(SEEDS.get((method, path), [])):
        run = hypothesis.example(case=operation.Case(**seed))(run)
    run()


@pytest.mark.parametrize(
    ("body", "status"),
    [(None, 200), ({}, 200), ({"to": "someone@example.org"}, 200), ({"to": "nobody"}, 400)],
)
def test_upstream_test_keeps_to_the_document(
    api_schema: schemathesis.BaseSchema, live: LiveRelay, body: Any, status: int
) -> None:
    """The one operation not fuzzed, with fixed cases against the loopback upstream."""
    operation = api_schema["/api/v1/upstreams/{name}/test"]["POST"]
    extra = {} if body is None else {"body": body, "media_type": "application/json"}
    case = operation.Case(path_parameters={"name": "main"}, **extra)
    response = case.call_and_validate(base_url=live.url, headers=AUTH, checks=CHECKS, timeout=10)
    assert response.status_code == status
    if status == 200:
        probe = response.json()
        assert (probe["ok"], probe["stage"]) == (False, "connect")  # main is a closed port


def test_lifecycles_keep_to_the_document(
    api_schema: schemathesis.BaseSchema, live: LiveRelay
) -> None:
    """Creating, changing and deleting API objects, each answer validated against the document.

    Generated bodies are nearly always refused (422: the input schemas do not say
    which keys are required), so the success answers are checked here.
    """

    def call(method: str, template: str, status: int, body: Any = None, **names: str) -> Any:
        operation = api_schema[template][method]
        extra = {} if body is None else {"body": body, "media_type": "application/json"}
        case = operation.Case(path_parameters=names or None, **extra)
        response = case.call_and_validate(
            base_url=live.url, headers=AUTH, checks=CHECKS, timeout=10
        )
        assert response.status_code == status, (method, template, names, response.text)
        return response.json() if response.content else None

    upstream = "/api/v1/upstreams/{name}"
    created = call(
        "POST",
        "/api/v1/upstreams",
        201,
        {"name": "api-up", "host": "127.0.0.1", "port": closed_port(), "tls": "starttls",
         "username": "relay", "password": "upstream-secret"},
    )  # fmt: skip
    assert (created["managed_by"], created["has_password"]) == ("api", True)
    assert "password" not in created
    call("GET", upstream, 200, name="api-up")
    assert call("PATCH", upstream, 200, {"priority": 5}, name="api-up")["priority"] == 5
    assert call("POST", upstream + "/deactivate", 200, name="api-up")["active"] is False
    assert call("POST", upstream + "/activate", 200, name="api-up")["active"] is True
    call("GET", upstream + "/stats", 200, name="api-up")
    call("POST", "/api/v1/upstreams", 409, {"name": "api-up", "host": "127.0.0.1"})
    call("PATCH", upstream, 409, {"priority": 5}, name="main")  # from the file
    call("POST", "/api/v1/upstreams", 422, {"name": "bad", "port": "x"})

    site = "/api/v1/sites/{id}"
    spec = {
        "id": "api-site",
        "name": "API site",
        "from": {"email": "api@example.com", "name": "API"},
        "senders": ["*@api.example.com"],
        "upstreams": ["api-up"],
    }
    assert call("POST", "/api/v1/sites", 201, spec)["managed_by"] == "api"
    call("GET", site, 200, id="api-site")
    assert call("PATCH", site, 200, {"name": "Renamed"}, id="api-site")["name"] == "Renamed"
    generated = call("POST", site + "/credentials", 201, id="api-site")
    assert generated["site"] == "api-site" and generated["password"]
    named = call("POST", site + "/credentials", 201, {"username": "api-user"}, id="api-site")
    assert named["username"] == "api-user"
    users = [c["username"] for c in call("GET", site, 200, id="api-site")["credentials"]]
    assert sorted(users) == sorted([generated["username"], "api-user"])
    call("DELETE", site + "/credentials/{username}", 204, id="api-site", username="api-user")
    call("DELETE", upstream, 409, name="api-up")  # a site still uses it
    call("DELETE", site, 204, id="api-site")
    call("GET", site, 404, id="api-site")
    call("DELETE", upstream, 204, name="api-up")
    call("GET", upstream, 404, name="api-up")

    domain = "/api/v1/domains/{name}"
    added = call(
        "POST", "/api/v1/domains", 201, {"name": "api.example.com", "algorithm": "ed25519"}
    )
    assert (added["managed_by"], added["signing"]) == ("api", True)
    call("GET", domain, 200, name="api.example.com")
    call("GET", domain + "/dns-records", 200, name="api.example.com")
    verification = call("POST", domain + "/verify", 200, name="api.example.com")
    assert verification["verified"] is False  # the loopback zone publishes nothing
    call("DELETE", domain, 204, name="api.example.com")
    call("DELETE", domain, 409, name="shop.example.com")  # from the file

    template = "/api/v1/templates/{name}"
    made = call("POST", "/api/v1/templates", 201, {"name": "api-t", "text": "Hi {{ n }}"})
    assert made["managed_by"] == "api"
    call("GET", template, 200, name="api-t")
    assert call("PUT", template, 200, {"html": "<p>{{ n }}</p>"}, name="api-t")["text"] is None
    assert call("PATCH", template, 200, {"subject": "S"}, name="api-t")["subject"] == "S"
    preview = call("POST", template + "/preview", 200, {"variables": {"n": "<&>"}}, name="api-t")
    assert preview == {"subject": "S", "text": None, "html": "<p>&lt;&amp;&gt;</p>"}
    call("POST", template + "/preview", 422, {}, name="api-t")  # n is undefined
    call("POST", "/api/v1/templates", 422, {"name": "bad", "text": "{{"})
    call("PATCH", template, 409, {"text": "x"}, name="welcome")  # from the file
    call("DELETE", template, 204, name="api-t")
    call("GET", template, 404, name="api-t")

    call("POST", "/api/v1/messages/{id}/retry", 200, id=live.message_id)
    message = call("GET", "/api/v1/messages/{id}", 200, id=live.message_id)
    assert [c["change"] for c in message["header_changes"] if c["name"] == "Bcc"] == ["removed"]
    call("POST", "/api/v1/reload", 200)
    audit = call("GET", "/api/v1/audit", 200)
    assert {"create", "update", "delete", "retry", "reload"} <= {
        e["action"] for e in audit["items"]
    }
