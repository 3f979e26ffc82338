"""The public listener's OpenAPI document: valid 3.1, in step with the route table, true of the
server's answers.

The relay runs in a thread with its own event loop for the whole module, so
schemathesis (synchronous, over ``requests``) can call it like any client and
check each answer (status, content type, body, headers) against the document.
Everything stays on loopback: the only upstream is a closed port, and no
redirect is followed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openapi_spec_validator
import pytest
import schemathesis
import sqlalchemy as sa
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from public_http.app import create_app
from public_http.deps import PublicDeps
from public_http.openapi import document
from relay.app import RelayApp
from relay.config import load_config
from relay.config_http import HttpConfig
from relay.core import unsubscribe
from relay.core.tokens import hash_token
from relay.metrics import Metrics
from relay.tables import campaign_recipients, campaigns, contacts
from tests.conftest import base_config, smtp_upstream, write_config
from tests.test_admin_openapi import closed_port, documented_operations

KEY = "shop-key-0123456789abcdef"
TIGHT_KEY = "tight-key-0123456789abcdef"
ORIGIN = "https://shop.example.com"
REDIRECT = f"http://127.0.0.1:{closed_port()}/thanks"  # never followed; loopback if it were
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
FORM = {
    "to": ["sales@example.com"],
    "allowed_origins": [ORIGIN],
    "required": ["email", "message"],
    "reply_to_field": "email",
    "honeypot_field": "website",
    "min_fill_seconds": 0,  # tokens are good at once: the 422 and 202 answers are reachable
    "rate_per_minute_per_ip": 1000,
    "redirect": REDIRECT,
}
FIELDS = {"email": "visitor@example.net", "message": "Hello", "website": ""}


@dataclass
class LiveRelay:
    app: RelayApp
    url: str

    def get(self, path: str) -> Any:
        """GET over plain HTTP on loopback (the URL is ours, never a file: or other scheme)."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:  # noqa: S310
            assert response.status == 200
            assert response.headers.get_content_type() == "application/json"
            return json.load(response)


def relay_config(tmp_path: Path) -> dict[str, Any]:
    config = base_config(tmp_path, [smtp_upstream("main", closed_port())])
    config["upstreams"] += [  # provider events in; no site sends through them
        smtp_upstream("mailgun", closed_port(), events="mailgun", events_key="mailgun-key"),
        smtp_upstream(
            "postmark",
            closed_port(),
            events="postmark",
            events_username="hooks",
            events_password="hooks-password",
        ),
    ]
    config["http"] = {"host": "127.0.0.1", "port": 0}
    config["limits"] = {"max_message_bytes": 20_000}
    config["delivery"] = {"retry_first_seconds": 600, "retry_max_seconds": 1200}
    shop = config["sites"][0]
    shop["api_keys"] = [{"name": "backend", "key_hash": hash_token(KEY)}]
    shop["form"] = FORM
    tight = {"from": {"email": "news@tight.example.com"}, "upstreams": ["main"]}
    config["sites"] += [
        {  # one message a minute
            "id": "tight",
            "rate_per_minute": 1,
            "api_keys": [{"name": "cms", "key_hash": hash_token(TIGHT_KEY)}],
            **tight,
        },
        {"id": "busy", "form": {**FORM, "rate_per_minute_per_ip": 1}, **tight},  # a post a minute
    ]
    return config


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    tmp_path = tmp_path_factory.mktemp("public-openapi")
    path = write_config(tmp_path, relay_config(tmp_path))
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
            yield LiveRelay(app, f"http://127.0.0.1:{app.http_port}")
        finally:
            asyncio.run_coroutine_threadsafe(app.stop(), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def api_schema(live: LiveRelay) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live.url}/api/openapi.json", timeout=10)


# -- The document itself


def test_document_is_served_without_auth_and_is_valid_openapi_3_1(live: LiveRelay) -> None:
    served = live.get("/api/openapi.json")
    assert served["openapi"].startswith("3.1.")
    openapi_spec_validator.validate(served, cls=openapi_spec_validator.OpenAPIV31SpecValidator)
    assert served == json.loads(json.dumps(document()))  # what the module builds, as JSON

    broken = json.loads(json.dumps(served))  # the validator does judge
    del broken["paths"]["/api/v1/send"]["post"]["responses"]["202"]["description"]
    with pytest.raises(OpenAPIValidationError):
        openapi_spec_validator.validate(broken, cls=openapi_spec_validator.OpenAPIV31SpecValidator)


def routes_of_the_table() -> set[tuple[str, str]]:
    """(METHOD, path) of every route ``create_app`` makes; HEAD aside (aiohttp adds it to GET)."""
    app = create_app(PublicDeps(config=HttpConfig, metrics=Metrics()))
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        assert path, f"a route without a path: {route}"
        found.add((route.method, path))
    return found


def test_the_document_covers_exactly_the_route_table() -> None:
    routes = routes_of_the_table()
    documented = documented_operations(document())
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the server does not route"
    assert ("POST", "/api/v1/send") in routes and ("OPTIONS", "/api/send-inquiry") in routes


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_path_parameters_are_documented() -> None:
    for method, path, operation in operations():
        placeholders = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        parameters = operation.get("parameters", [])
        declared = {p["name"] for p in parameters if p["in"] == "path" and p["required"]}
        assert declared == placeholders, (method, path)


def test_every_answer_is_documented_with_the_envelope_and_retry_after() -> None:
    statuses = set()
    for method, path, operation in operations():
        for status, answer in operation["responses"].items():
            statuses.add(status)
            if int(status) >= 400:
                schema = answer["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            if status in ("429", "503"):
                assert "Retry-After" in answer["headers"], (method, path, status)
    assert statuses == {"200", "202", "204", "303"} | {
        "400", "401", "403", "404", "409", "413", "415", "422", "429", "503"
    }  # fmt: skip

    send = document()["paths"]["/api/v1/send"]["post"]
    assert set(send["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert [p["name"] for p in send["parameters"]] == ["Idempotency-Key"]
    assert send["security"] == [{"apiKey": []}]
    inquiry = document()["paths"]["/api/send-inquiry"]["post"]
    assert set(inquiry["requestBody"]["content"]) == {
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    }
    scheme = document()["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


# -- The server's answers against the document

BEARER = {"Authorization": f"Bearer {KEY}"}
MESSAGE = {"to": ["someone@example.org"], "subject": "Hello", "text": "Hi"}
JSON_POST = {"landingPageId": "shop", "formData": FIELDS}


def call(
    api_schema: schemathesis.BaseSchema,
    live: LiveRelay,
    method: str,
    path: str,
    status: int,
    **case: Any,
) -> Any:
    """One request, its answer checked against the document, and its status against ours."""
    operation = api_schema[path][method]
    response = operation.Case(**case).call_and_validate(
        base_url=live.url, checks=CHECKS, timeout=10, allow_redirects=False
    )
    assert response.status_code == status, (method, path, response.text)
    return response


def header(response: Any, name: str) -> str:
    """The one value of a header of an answer (schemathesis keeps lists under lower-case names)."""
    [value] = response.headers[name.lower()]
    return str(value)


def form_token(api_schema: schemathesis.BaseSchema, live: LiveRelay, page: str = "shop") -> str:
    response = call(
        api_schema,
        live,
        "GET",
        "/api/form-token",
        200,
        query={"landingPageId": page},
        headers={"Origin": ORIGIN},
    )
    return str(response.json()["token"])


def test_the_form_answers_keep_to_the_document(
    api_schema: schemathesis.BaseSchema, live: LiveRelay
) -> None:
    def answer(status: int, **case: Any) -> Any:
        return call(api_schema, live, "POST", "/api/send-inquiry", status, **case)

    call(api_schema, live, "GET", "/healthz", 200)
    call(api_schema, live, "GET", "/api/openapi.json", 200)
    token = "/api/form-token"
    call(api_schema, live, "GET", token, 400, headers={"Origin": ORIGIN})
    call(api_schema, live, "GET", token, 403, query={"landingPageId": "shop"},
         headers={"Origin": "https://evil.example"})  # fmt: skip
    call(api_schema, live, "GET", token, 404, query={"landingPageId": "nope"})
    for path, method in ((token, "GET"), ("/api/send-inquiry", "POST")):
        preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": method}
        call(api_schema, live, "OPTIONS", path, 204, headers=preflight)
        call(api_schema, live, "OPTIONS", path, 403, headers={"Origin": "https://evil.example"})

    origin = {"Origin": ORIGIN}
    json_post = {"body": {**JSON_POST, "formToken": form_token(api_schema, live)}}
    assert (
        answer(202, headers=origin, media_type="application/json", **json_post).json()["status"]
        == "queued"
    )
    answer(202, media_type="application/json", body=JSON_POST)  # no token: a bot's, queues nothing
    html_post = {"landingPageId": "shop", "formToken": form_token(api_schema, live)}
    html_post |= {f"formData[{name}]": value for name, value in FIELDS.items()}
    response = answer(303, media_type="application/x-www-form-urlencoded", body=html_post)
    assert header(response, "Location") == REDIRECT
    multipart = {"landingPageId": "shop", "formToken": form_token(api_schema, live), **FIELDS}
    answer(303, media_type="multipart/form-data", body=multipart)

    bad_email = {**JSON_POST, "formData": {**FIELDS, "email": "ada@example"}}
    problems = answer(422, media_type="application/json",
                      body={**bad_email, "formToken": form_token(api_schema, live)})  # fmt: skip
    assert problems.json()["error"]["problems"] == ["formData.email: not an email address"]
    answer(403, media_type="application/json", body=JSON_POST,
           headers={"Origin": "https://evil.example"})  # fmt: skip
    answer(404, media_type="application/json", body={**JSON_POST, "landingPageId": "nope"})
    answer(400, media_type="application/json", body={"formData": FIELDS})
    answer(415, media_type="text/plain", body="hello")
    answer(413, media_type="application/json",
           body={**JSON_POST, "formData": {"message": "x" * 70_000}})  # fmt: skip
    busy = {"landingPageId": "busy", "formData": FIELDS}
    for status in (202, 429):
        busy["formToken"] = form_token(api_schema, live, "busy")
        answered = answer(status, media_type="application/json", body=busy)
    assert int(header(answered, "Retry-After")) > 0


def test_the_send_answers_keep_to_the_document(
    api_schema: schemathesis.BaseSchema, live: LiveRelay
) -> None:
    def send(status: int, headers: dict[str, str] = BEARER, **case: Any) -> Any:
        case.setdefault("media_type", "application/json")
        return call(api_schema, live, "POST", "/api/v1/send", status, headers=headers, **case)

    def status_of(status: int, message_id: str, headers: dict[str, str] = BEARER) -> Any:
        path_parameters = {"id": message_id}
        return call(api_schema, live, "GET", "/api/v1/send/{id}", status, headers=headers,
                    path_parameters=path_parameters)  # fmt: skip

    queued = send(202, body=MESSAGE).json()
    status_of(200, queued["id"])
    status_of(404, "0" * 26)
    status_of(401, queued["id"], headers={})

    once = {**BEARER, "Idempotency-Key": "order-1042"}
    first = send(202, headers=once, body=MESSAGE).json()
    again = send(202, headers=once, body=MESSAGE)
    assert (again.json(), header(again, "Idempotent-Replayed")) == (first, "true")
    send(422, headers=once, body={**MESSAGE, "subject": "Another"})
    send(400, headers={**BEARER, "Idempotency-Key": ""}, body=MESSAGE)

    files = {"message": json.dumps(MESSAGE), "file": [b"%PDF-1.7\n", b"\x89PNG\r\n"]}
    send(202, media_type="multipart/form-data", body=files)
    send(401, headers={"Authorization": "Bearer wrong-key-0123456789"}, body=MESSAGE)
    send(422, body={"to": ["nobody"], "subject": "x"})
    send(415, media_type="text/plain", body="hello")
    send(413, body={**MESSAGE, "text": "x" * 30_000})  # over limits.max_message_bytes
    tight = {"Authorization": f"Bearer {TIGHT_KEY}"}
    into_minute = time.time() % 60
    if into_minute > 50:  # the site's limit is per minute: both sends in the same one
        time.sleep(61 - into_minute)
    send(202, headers=tight, body=MESSAGE)
    assert int(header(send(429, headers=tight, body=MESSAGE), "Retry-After")) > 0


def test_the_provider_event_answers_keep_to_the_document(
    api_schema: schemathesis.BaseSchema, live: LiveRelay
) -> None:
    def post(status: int, upstream: str, body: Any, **headers: str) -> Any:
        return call(api_schema, live, "POST", "/api/v1/provider-events/{upstream}", status,
                    path_parameters={"upstream": upstream}, media_type="application/json",
                    body=body, headers=headers)  # fmt: skip

    record = {"RecordType": "Delivery", "MessageID": "pm-1", "Recipient": "a@example.org"}
    hooks = "Basic " + base64.b64encode(b"hooks:hooks-password").decode()
    answer = post(200, "postmark", record, Authorization=hooks).json()
    assert answer == {"status": "accepted", "events": 1, "matched": 0, "unmatched": 1, "ignored": 0}
    wrong = post(
        401, "postmark", record, Authorization="Basic " + base64.b64encode(b"a:b").decode()
    )
    assert header(wrong, "WWW-Authenticate").startswith("Basic")
    post(400, "mailgun", {"signature": "not an object"})
    signature = {"timestamp": "1", "token": "t", "signature": "0" * 64}
    post(401, "mailgun", {"signature": signature, "event-data": {}})
    post(404, "main", record)  # no events:
    post(404, "nope", record)


def test_the_unsubscribe_answers_keep_to_the_document(
    api_schema: schemathesis.BaseSchema, live: LiveRelay
) -> None:
    now = time.time()
    store = sa.create_engine(str(live.app.engine.url).replace("+aiosqlite", ""))
    with store.begin() as connection:  # what the campaign engine writes
        contact_id = connection.execute(
            contacts.insert()
            .values(site_id="shop", email="kim@example.org", attributes={}, tags=[],
                    created_at=now, updated_at=now)
            .returning(contacts.c.id)
        ).scalar_one()  # fmt: skip
        connection.execute(
            campaigns.insert().values(id="news", site_id="shop", name="News", status="completed",
                                      audience="all", created_at=now, updated_at=now)
        )  # fmt: skip
        connection.execute(
            campaign_recipients.insert().values(campaign_id="news", contact_id=contact_id,
                                                email="kim@example.org", status="sent",
                                                updated_at=now)
        )  # fmt: skip
    store.dispose()
    token = unsubscribe.issue(live.app.unsubscribe_key, "news", contact_id)
    one_click = {"List-Unsubscribe": "One-Click"}

    def answer(method: str, status: int, link: str, **case: Any) -> Any:
        return call(api_schema, live, method, "/u/{token}", status,
                    path_parameters={"token": link}, **case)  # fmt: skip

    assert "Unsubscribe?" in answer("GET", 200, token).text
    form = {"media_type": "application/x-www-form-urlencoded"}
    assert "You are unsubscribed" in answer("POST", 200, token, body=one_click, **form).text
    assert "Already unsubscribed" in answer("GET", 200, token).text
    answer("POST", 200, token, body=one_click, **form)
    answer("GET", 404, token[:-2])
    answer("POST", 404, token[:-2], body=one_click, **form)
    answer("POST", 413, token, body={"List-Unsubscribe": "x" * 2048}, **form)
