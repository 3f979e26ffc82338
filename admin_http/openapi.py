"""The OpenAPI 3.1 document of the admin API, served at /api/v1/openapi.json.

Written by hand next to the route table; tests validate it and run
schemathesis against the live server, so it cannot drift from what the
server answers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def _object(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def _list_of(item: str) -> Schema:
    return _object(
        {
            "items": {"type": "array", "items": _ref(item)},
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "page_size": {"type": "integer", "minimum": 1},
        }
    )


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _json(_ref("Error"), "Error")
_ERRORS = {
    "400": _ERROR,
    "401": _ERROR,
    "404": _ERROR,
    "409": _ERROR,
    "422": _ERROR,
    "429": _ERROR,
}
_PAGING = [
    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {
        "name": "page_size",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
    },
]
_TIME = {"type": "string", "description": "ISO 8601 (UTC when no offset) or UNIX seconds"}
_STATS_WINDOW = (
    "Counted from per-minute counters kept as mail is accepted and delivered, so the window "
    "is whole UTC minutes: from the minute holding `since` to the end of the minute holding "
    "`until` (without `until`: up to now, the current minute included). `since` and `until` "
    "in the answer are the edges counted. Site figures count messages created in the window "
    "at their current status; upstream figures count attempts started in it. `p95_seconds` "
    "is the upper bound of the duration bucket holding the 95th percentile (buckets about "
    "1.5x apart: 1, 1.5, 2, 3, 5, 7, 10 ms ... 200 s, 600 s). Retention never changes them."
)
_SEARCH = (
    "Newest first. `status`, `site`, `since`, `until` and a `recipient` (exact, any letter "
    "case) are looked up in indexes; `q` (a substring of subject, original sender or id), "
    "`upstream`, the second of `status` and `site`, and a recipient of very many messages "
    "are checked message by message on at most 5,000 messages per request: when the page is "
    "not full by then, `complete` is false and `next_cursor` goes on from there. `total` "
    "counts up to 10,000 (`total_exact` false beyond); with checked filters it is the "
    "matches this request met, exact only when it met them all. `next_cursor` (null at the "
    "end) passed as `cursor` gives the next page in constant time, whatever arrives "
    "meanwhile; `page` still works (an offset: slower the deeper)."
)
_WINDOW = [
    {"name": "since", "in": "query", "schema": _TIME},
    {"name": "until", "in": "query", "schema": _TIME},
]


def _path(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _op(
    summary: str,
    ok: Schema | None,
    status: str = "200",
    params: list[Schema] | None = None,
    body: Schema | None = None,
    body_required: bool = True,
    description: str | None = None,
) -> Schema:
    responses = {status: ok if ok is not None else {"description": "Done"}, **_ERRORS}
    op: Schema = {"summary": summary, "responses": responses}
    if description is not None:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    return op


def _schemas() -> dict[str, Schema]:
    text, integer, number, boolean = (
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
    )
    managed = {"type": "string", "enum": ["file", "api"]}
    quota = {
        "type": "object",
        "additionalProperties": _object({"used": integer, "limit": integer, "ratio": number}),
    }
    check = _object(
        {
            "name": text,
            "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
            "required": boolean,
            "found": text,
            "detail": text,
            "publish": _nullable("string"),
        }
    )
    limit = {"type": ["integer", "null"], "minimum": 1}
    upstream_input = {
        "type": "object",
        "description": "The keys of an upstream in the config file; `password` is write-only. "
        "`password_env`, `password_file`, `path`, `ca_file`, `allow_plaintext_auth` and "
        "`kind: file` are refused; so is a password with `tls: none`. A change of `host`, "
        "`port`, `tls`, `verify_tls` or `username` must give `password` again (or null) when "
        "one is stored. `host` must be, and resolve to, public addresses only, unless the "
        "config file sets `admin.allow_private_upstreams: true`.",
        "properties": {
            "name": text,
            "kind": {"type": "string", "enum": ["smtp"]},
            "host": text,
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "tls": {"type": "string", "enum": ["none", "starttls", "implicit"]},
            "verify_tls": boolean,
            "username": text,
            "password": {"type": ["string", "null"], "writeOnly": True},
            "priority": integer,
            "active": boolean,
            "rate_per_minute": limit,
            "daily_limit": limit,
            "monthly_limit": limit,
            "max_connections": {"type": "integer", "minimum": 1},
            "timeout_seconds": {"type": "number", "minimum": 10},
            "cost_per_1000": {"type": ["number", "null"], "minimum": 0},
            "weight": {"type": "integer", "minimum": 0},
            "spf_include": {"oneOf": [text, {"type": "array", "items": text}]},
        },
    }
    site_input = {
        "type": "object",
        "description": "The keys of a site in the config file, without `credentials` "
        "(see /credentials).",
        "properties": {
            "id": text,
            "name": text,
            "from": _object({"email": text, "name": text}, ["email"]),
            "reply_to": {"type": "string", "description": "original, none or an address"},
            "senders": {"type": "array", "items": text},
            "upstreams": {"type": "array", "items": text},
            "bounce_address": text,
            "rate_per_minute": limit,
            "daily_limit": limit,
            "monthly_limit": limit,
            "strategy": {"type": "string", "enum": ["priority", "cost", "weighted"]},
            "message_class": {"type": "string", "enum": ["transactional", "bulk"]},
        },
    }
    template_parts = {
        "type": "object",
        "description": "Jinja2 sources, each at most 100000 characters; text or html is "
        "required. They render in a sandbox (no include/import/extends, no names starting "
        "with __, html alone autoescaped) and are checked when saved: a syntax error is a "
        "422 naming the part and line. PATCH is a JSON merge patch (null removes a part); "
        "PUT replaces every part.",
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
            "subject": _nullable("string"),
            "text": _nullable("string"),
            "html": _nullable("string"),
        },
    }
    return {
        "Error": _object(
            {
                "error": _object(
                    {
                        "code": text,
                        "message": text,
                        "problems": {"type": "array", "items": text},
                    },
                    ["code", "message"],
                )
            }
        ),
        "Upstream": _object(
            {
                "name": text,
                "kind": {"type": "string", "enum": ["smtp", "file"]},
                "host": _nullable("string"),
                "port": _nullable("integer"),
                "tls": {"type": "string", "enum": ["none", "starttls", "implicit"]},
                "verify_tls": boolean,
                "username": _nullable("string"),
                "has_password": boolean,
                "priority": integer,
                "active": boolean,
                "rate_per_minute": _nullable("integer"),
                "daily_limit": _nullable("integer"),
                "monthly_limit": _nullable("integer"),
                "max_connections": integer,
                "timeout_seconds": number,
                "cost_per_1000": _nullable("number"),
                "weight": integer,
                "spf_include": {"type": "array", "items": text},
                "managed_by": managed,
                "circuit": {"type": "string", "enum": ["closed", "open", "half_open"]},
            }
        ),
        "UpstreamPatch": upstream_input,
        "UpstreamInput": {**upstream_input, "required": ["name", "host"]},
        "Site": _object(
            {
                "id": text,
                "name": text,
                "from": _object({"email": text, "name": _nullable("string")}),
                "reply_to": text,
                "senders": {"type": "array", "items": text},
                "upstreams": {"type": "array", "items": text},
                "bounce_address": _nullable("string"),
                "rate_per_minute": _nullable("integer"),
                "daily_limit": _nullable("integer"),
                "monthly_limit": _nullable("integer"),
                "strategy": _nullable("string"),
                "message_class": {"type": "string", "enum": ["transactional", "bulk"]},
                "credentials": {"type": "array", "items": _object({"username": text})},
                "managed_by": managed,
            }
        ),
        "SitePatch": site_input,
        "SiteInput": {**site_input, "required": ["id", "from"]},
        "NewCredential": _object({"site": text, "username": text, "password": text}),
        "TemplateSummary": _object(
            {
                "name": text,
                "source": managed,
                "updated_at": _nullable("string", description="null for the file's"),
            }
        ),
        "Template": _object(
            {
                "name": text,
                "source": managed,
                "updated_at": _nullable("string", description="null for the file's"),
                "subject": _nullable("string"),
                "text": _nullable("string"),
                "html": _nullable("string"),
            }
        ),
        "TemplateParts": template_parts,
        "TemplateInput": {**template_parts, "required": ["name"]},
        "Rendered": _object(
            {
                "subject": _nullable("string"),
                "text": _nullable("string"),
                "html": _nullable("string"),
            }
        ),
        "ApiKey": _object(
            {
                "name": text,
                "managed_by": managed,
                "created_at": _nullable("string"),
                "expires_at": _nullable("string"),
                "last_used_at": _nullable("string"),
            }
        ),
        "NewApiKey": _object(
            {
                "site": text,
                "name": text,
                "key": text,
                "created_at": text,
                "expires_at": _nullable("string"),
            }
        ),
        "Check": check,
        "Domain": _object(
            {
                "name": text,
                "managed_by": managed,
                "signing": boolean,
                "keys": {
                    "type": "array",
                    "items": _object(
                        {
                            "selector": text,
                            "state": {"type": "string", "enum": ["active", "next", "retired"]},
                            "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]},
                            "public_key": _nullable("string"),
                            "retire_until": _nullable("string"),
                        }
                    ),
                },
                "checks": {"type": ["array", "null"], "items": check},
                "records": {"type": "array", "items": check},
            },
            ["name", "managed_by", "signing", "keys", "checks"],
        ),
        "DomainInput": _object(
            {
                "name": text,
                "selector": text,
                "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]},
            },
            ["name"],
        ),
        "DnsRecords": _object({"domain": text, "records": {"type": "array", "items": check}}),
        "Verification": _object(
            {
                "domain": text,
                "verified": boolean,
                "checks": {"type": "array", "items": check},
                "preflights": {
                    "type": "array",
                    "items": _object(
                        {
                            "site": text,
                            "upstream": text,
                            "status": text,
                            "spf": text,
                            "dkim": text,
                            "detail": text,
                        }
                    ),
                },
            }
        ),
        "Probe": _object(
            {
                "ok": boolean,
                "stage": text,
                "detail": text,
                "steps": {"type": "array", "items": _object({"step": text, "ms": number})},
                "message": {
                    "oneOf": [
                        {"type": "null"},
                        _object(
                            {
                                "id": text,
                                "accepted": boolean,
                                "stage": text,
                                "reply": _nullable("string"),
                                "detail": text,
                                "ms": number,
                            }
                        ),
                    ]
                },
            }
        ),
        "MessageSummary": _object(
            {
                "id": text,
                "site": text,
                "status": {"type": "string"},
                "message_class": text,
                "original_sender": text,
                "envelope_sender": text,
                "subject": text,
                "size": integer,
                "recipients": {"type": "array", "items": text},
                "created_at": text,
                "updated_at": text,
                "next_attempt_at": _nullable("string"),
                "attempt_count": integer,
                "last_error": _nullable("string"),
            }
        ),
        "Message": _object(
            {
                "id": text,
                "site": text,
                "status": text,
                "message_class": text,
                "original_sender": text,
                "envelope_sender": text,
                "subject": text,
                "size": integer,
                "created_at": text,
                "next_attempt_at": _nullable("string"),
                "attempt_count": integer,
                "last_error": _nullable("string"),
                "recipients": {
                    "type": "array",
                    "items": _object(
                        {
                            "address": text,
                            "status": text,
                            "upstream": _nullable("string"),
                            "reply_code": _nullable("integer"),
                            "reply_text": _nullable("string"),
                        }
                    ),
                },
                "attempts": {
                    "type": "array",
                    "items": _object(
                        {
                            "upstream": text,
                            "started_at": text,
                            "duration_seconds": number,
                            "reply_code": _nullable("integer"),
                            "reply_text": _nullable("string"),
                            "outcome": text,
                            "recipients": {"type": "array", "items": text},
                            "detail": text,
                            "route": text,
                        }
                    ),
                },
                "header_changes": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": text,
                            "change": {"type": "string", "enum": ["added", "removed", "changed"]},
                            "before": {"type": "array", "items": text},
                            "after": {"type": "array", "items": text},
                        }
                    ),
                },
                "headers": _object({"original": text, "sent": text}),
            }
        ),
        "MessagePage": {
            "allOf": [
                _list_of("MessageSummary"),
                _object(
                    {
                        "total_exact": boolean,
                        "next_cursor": _nullable("string"),
                        "complete": boolean,
                    }
                ),
            ]
        },
        "Retry": _object({"id": text, "status": text}),
        "Flush": _object({"messages": integer, "upstreams": {"type": "array", "items": text}}),
        "SiteStats": _object(
            {
                "site": text,
                "accepted": integer,
                "sent": integer,
                "failed": integer,
                "partial": integer,
                "deferred": integer,
                "queued": integer,
                "held": integer,
                "success_rate": _nullable("number"),
                "quota": quota,
            }
        ),
        "UpstreamStats": _object(
            {
                "upstream": text,
                "attempts": integer,
                "sent": integer,
                "failed": integer,
                "deferred": integer,
                "success_rate": _nullable("number"),
                "average_seconds": _nullable("number"),
                "p95_seconds": _nullable("number"),
                "quota": quota,
            }
        ),
        "UpstreamStatsWindow": {
            "allOf": [
                _ref("UpstreamStats"),
                _object({"since": text, "until": text}),
            ]
        },
        "Stats": _object(
            {
                "since": text,
                "until": text,
                "sites": {"type": "array", "items": _ref("SiteStats")},
                "upstreams": {"type": "array", "items": _ref("UpstreamStats")},
                "queue": _object({"depth": integer, "held": integer, "oldest_age_seconds": number}),
            }
        ),
        "AuditEntry": _object(
            {
                "at": text,
                "token": text,
                "action": text,
                "kind": text,
                "target": text,
                "detail": {"type": "object"},
            }
        ),
        "Reloaded": _object(
            {
                "status": text,
                "restart_needed": {"type": "array", "items": text},
                "warnings": {"type": "array", "items": text},
            }
        ),
        "Status": _object({"status": text}),
    }


def _paths() -> dict[str, Schema]:
    name, site_id, domain, message = _path("name"), _path("id"), _path("name"), _path("id")
    return {
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "security": [],
                "responses": {"200": _json(_ref("Status"))},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database answers and the SMTP listeners are up",
                "security": [],
                "responses": {"200": _json(_ref("Status")), "503": _ERROR},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/v1/openapi.json": {"get": _op("This document", _json({"type": "object"}))},
        "/api/v1/reload": {
            "post": _op("Re-read the config file (like SIGHUP)", _json(_ref("Reloaded")))
        },
        "/api/v1/audit": {
            "get": _op(
                "Changes made through the API, newest first",
                _json(_list_of("AuditEntry")),
                params=_PAGING,
            )
        },
        "/api/v1/stats": {
            "get": _op(
                "Per site and per upstream over a window (default: 24 hours)",
                _json(_ref("Stats")),
                params=_WINDOW,
                description=_STATS_WINDOW,
            )
        },
        "/api/v1/upstreams": {
            "get": _op(
                "Upstreams, from the file and the API", _json(_list_of("Upstream")), params=_PAGING
            ),
            "post": _op(
                "Create an upstream",
                _json(_ref("Upstream"), "Created"),
                "201",
                body=_ref("UpstreamInput"),
            ),
        },
        "/api/v1/upstreams/{name}": {
            "get": _op("One upstream", _json(_ref("Upstream")), params=[name]),
            "patch": _op(
                "Change an API upstream (JSON merge patch)",
                _json(_ref("Upstream")),
                params=[name],
                body=_ref("UpstreamPatch"),
            ),
            "delete": _op(
                "Delete an API upstream (its history keeps the name)", None, "204", params=[name]
            ),
        },
        "/api/v1/upstreams/{name}/test": {
            "post": _op(
                "Connect, TLS, AUTH with timings; with `to`, also send a test message",
                _json(_ref("Probe")),
                params=[name],
                body=_object(
                    {
                        "to": {"type": "string", "format": "email"},
                        "from": {"type": "string", "format": "email"},
                    },
                    [],
                ),
                body_required=False,
            )
        },
        "/api/v1/upstreams/{name}/activate": {
            "post": _op("Let routing use the upstream", _json(_ref("Upstream")), params=[name])
        },
        "/api/v1/upstreams/{name}/deactivate": {
            "post": _op(
                "Keep routing away from the upstream", _json(_ref("Upstream")), params=[name]
            )
        },
        "/api/v1/upstreams/{name}/stats": {
            "get": _op(
                "The upstream's statistics over a window",
                _json(_ref("UpstreamStatsWindow")),
                params=[name, *_WINDOW],
                description=_STATS_WINDOW,
            )
        },
        "/api/v1/sites": {
            "get": _op("Sites, from the file and the API", _json(_list_of("Site")), params=_PAGING),
            "post": _op(
                "Create a site", _json(_ref("Site"), "Created"), "201", body=_ref("SiteInput")
            ),
        },
        "/api/v1/sites/{id}": {
            "get": _op("One site", _json(_ref("Site")), params=[site_id]),
            "patch": _op(
                "Change an API site (JSON merge patch)",
                _json(_ref("Site")),
                params=[site_id],
                body=_ref("SitePatch"),
            ),
            "delete": _op("Delete an API site and its credentials", None, "204", params=[site_id]),
        },
        "/api/v1/sites/{id}/credentials": {
            "post": _op(
                "A new SMTP credential; the password is in this answer only",
                _json(_ref("NewCredential"), "Created"),
                "201",
                params=[site_id],
                body=_object({"username": text_schema()}, []),
                body_required=False,
            )
        },
        "/api/v1/sites/{id}/credentials/{username}": {
            "delete": _op("Remove a credential", None, "204", params=[site_id, _path("username")])
        },
        "/api/v1/sites/{id}/api-keys": {
            "get": _op(
                "The site's send API keys (names and times, never a key)",
                _json(_list_of("ApiKey")),
                params=[site_id, *_PAGING],
            ),
            "post": _op(
                "A new send API key; the key is in this answer only",
                _json(_ref("NewApiKey"), "Created"),
                "201",
                params=[site_id],
                body=_object(
                    {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
                        "expires_at": {
                            "type": ["string", "number", "null"],
                            "description": "ISO 8601 (UTC when no offset) or UNIX seconds",
                        },
                    },
                    ["name"],
                ),
            ),
        },
        "/api/v1/sites/{id}/api-keys/{name}": {
            "delete": _op(
                "Revoke an API key made through the API",
                None,
                "204",
                params=[site_id, _path("name")],
            )
        },
        "/api/v1/domains": {
            "get": _op("Sending domains", _json(_list_of("Domain")), params=_PAGING),
            "post": _op(
                "Add a domain with a new DKIM key",
                _json(_ref("Domain"), "Created"),
                "201",
                body=_ref("DomainInput"),
            ),
        },
        "/api/v1/domains/{name}": {
            "get": _op(
                "One domain with its last verification", _json(_ref("Domain")), params=[domain]
            ),
            "delete": _op("Remove an API domain and its keys", None, "204", params=[domain]),
        },
        "/api/v1/domains/{name}/dns-records": {
            "get": _op("The records to publish", _json(_ref("DnsRecords")), params=[domain])
        },
        "/api/v1/domains/{name}/verify": {
            "post": _op("Check the domain's DNS now", _json(_ref("Verification")), params=[domain])
        },
        "/api/v1/templates": {
            "get": _op(
                "Templates, from the file and the API",
                _json(_list_of("TemplateSummary")),
                params=_PAGING,
            ),
            "post": _op(
                "Create a template (checked: 422 lists every problem)",
                _json(_ref("Template"), "Created"),
                "201",
                body=_ref("TemplateInput"),
            ),
        },
        "/api/v1/templates/{name}": {
            "get": _op("One template with its parts", _json(_ref("Template")), params=[name]),
            "put": _op(
                "Replace an API template's parts",
                _json(_ref("Template")),
                params=[name],
                body=_ref("TemplateParts"),
            ),
            "patch": _op(
                "Change an API template's parts (JSON merge patch)",
                _json(_ref("Template")),
                params=[name],
                body=_ref("TemplateParts"),
            ),
            "delete": _op(
                "Delete an API template no site's form names", None, "204", params=[name]
            ),
        },
        "/api/v1/templates/{name}/preview": {
            "post": _op(
                "Render without sending (422: the render's problems, among them "
                "'template took too long')",
                _json(_ref("Rendered")),
                params=[name],
                body=_object({"variables": {"type": "object"}}, []),
                body_required=False,
            )
        },
        "/api/v1/messages": {
            "get": _op(
                "Search the message log, newest first",
                _json(_ref("MessagePage")),
                description=_SEARCH,
                params=[
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "enum": ["queued", "held", "deferred", "sent", "failed", "partial"],
                        },
                    },
                    *(
                        {"name": key, "in": "query", "schema": {"type": "string"}}
                        for key in ("site", "upstream", "recipient", "q")
                    ),
                    *_WINDOW,
                    *_PAGING,
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
            )
        },
        "/api/v1/messages/{id}": {
            "get": _op(
                "One message: recipients, attempts, header changes",
                _json(_ref("Message")),
                params=[message],
            )
        },
        "/api/v1/messages/{id}/retry": {
            "post": _op("Try a waiting or held message now", _json(_ref("Retry")), params=[message])
        },
        "/api/v1/queue/flush": {
            "post": _op(
                "Make every waiting message due now and close every open circuit",
                _json(_ref("Flush")),
            )
        },
    }


def text_schema() -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": 128}


@cache
def document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay admin API",
            "version": "1",
            "description": "Upstreams, sites, domains, templates, messages and statistics of a "
            "relay. Objects from the config file are listed with managed_by=file (a template: "
            "source=file) and cannot be changed here (409). Secrets are never returned.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
