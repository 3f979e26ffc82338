"""The OpenAPI 3.1 document of the admin API, served at /api/v1/openapi.json.

Written by hand next to the route table (its building blocks, shared with the
public listener's document, are in admin_http/openapi_parts.py); tests
validate it and run schemathesis against the live server, so it cannot drift
from what the server answers.
"""

from __future__ import annotations

from functools import cache

from admin_http.openapi_campaigns import campaign_paths, campaign_schemas
from admin_http.openapi_parts import (
    ERROR_ANSWER,
    ERROR_SCHEMA,
    Schema,
    json_answer,
    nullable,
    obj,
    path_parameter,
    ref,
)
from relay.core.model import Strategy
from relay.core.outbound_events import SUBSCRIBABLE
from relay.suppression_controller import SOURCES


def _list_of(item: str) -> Schema:
    return obj(
        {
            "items": {"type": "array", "items": ref(item)},
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "page_size": {"type": "integer", "minimum": 1},
        }
    )


_ERRORS = {
    "400": ERROR_ANSWER,
    "401": ERROR_ANSWER,
    "404": ERROR_ANSWER,
    "409": ERROR_ANSWER,
    "422": ERROR_ANSWER,
    "429": ERROR_ANSWER,
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


def _also(status: str, answer: Schema, op: Schema) -> Schema:
    """``op`` with one more documented answer."""
    return {**op, "responses": {status: answer, **op["responses"]}}


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
        "additionalProperties": obj({"used": integer, "limit": integer, "ratio": number}),
    }
    check = obj(
        {
            "name": text,
            "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
            "required": boolean,
            "found": text,
            "detail": text,
            "publish": nullable("string"),
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
            "from": obj({"email": text, "name": text}, ["email"]),
            "reply_to": {"type": "string", "description": "original, none or an address"},
            "senders": {"type": "array", "items": text},
            "upstreams": {"type": "array", "items": text},
            "bounce_address": text,
            "rate_per_minute": limit,
            "daily_limit": limit,
            "monthly_limit": limit,
            "strategy": {"type": "string", "enum": [s.value for s in Strategy]},
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
            "subject": nullable("string"),
            "text": nullable("string"),
            "html": nullable("string"),
        },
    }
    return {
        "Error": ERROR_SCHEMA,
        "Upstream": obj(
            {
                "name": text,
                "kind": {"type": "string", "enum": ["smtp", "file"]},
                "host": nullable("string"),
                "port": nullable("integer"),
                "tls": {"type": "string", "enum": ["none", "starttls", "implicit"]},
                "verify_tls": boolean,
                "username": nullable("string"),
                "has_password": boolean,
                "priority": integer,
                "active": boolean,
                "rate_per_minute": nullable("integer"),
                "daily_limit": nullable("integer"),
                "monthly_limit": nullable("integer"),
                "max_connections": integer,
                "timeout_seconds": number,
                "cost_per_1000": nullable("number"),
                "weight": integer,
                "spf_include": {"type": "array", "items": text},
                "managed_by": managed,
                "circuit": {"type": "string", "enum": ["closed", "open", "half_open"]},
                "performance": {
                    **obj(
                        {
                            "score": number,
                            "success_rate": number,
                            "latency_seconds": number,
                            "samples": integer,
                            "updated_at": text,
                        }
                    ),
                    "type": ["object", "null"],
                    "description": "Measured over recent attempts (exponentially weighted), "
                    "shared by every node; null until an upstream is measured. The "
                    "performance strategy orders by score.",
                },
            }
        ),
        "UpstreamPatch": upstream_input,
        "UpstreamInput": {**upstream_input, "required": ["name", "host"]},
        "Site": obj(
            {
                "id": text,
                "name": text,
                "from": obj({"email": text, "name": nullable("string")}),
                "reply_to": text,
                "senders": {"type": "array", "items": text},
                "upstreams": {"type": "array", "items": text},
                "bounce_address": nullable("string"),
                "rate_per_minute": nullable("integer"),
                "daily_limit": nullable("integer"),
                "monthly_limit": nullable("integer"),
                "strategy": nullable("string"),
                "message_class": {"type": "string", "enum": ["transactional", "bulk"]},
                "credentials": {"type": "array", "items": obj({"username": text})},
                "managed_by": managed,
            }
        ),
        "SitePatch": site_input,
        "SiteInput": {**site_input, "required": ["id", "from"]},
        "NewCredential": obj({"site": text, "username": text, "password": text}),
        "TemplateSummary": obj(
            {
                "name": text,
                "managed_by": managed,
                "updated_at": nullable("string", description="null for the file's"),
            }
        ),
        "Template": obj(
            {
                "name": text,
                "managed_by": managed,
                "updated_at": nullable("string", description="null for the file's"),
                "subject": nullable("string"),
                "text": nullable("string"),
                "html": nullable("string"),
            }
        ),
        "TemplateParts": template_parts,
        "TemplateInput": {**template_parts, "required": ["name"]},
        "Rendered": obj(
            {
                "subject": nullable("string"),
                "text": nullable("string"),
                "html": nullable("string"),
            }
        ),
        "ApiKey": obj(
            {
                "name": text,
                "managed_by": managed,
                "created_at": nullable("string"),
                "expires_at": nullable("string"),
                "last_used_at": nullable("string"),
            }
        ),
        "NewApiKey": obj(
            {
                "site": text,
                "name": text,
                "key": text,
                "created_at": text,
                "expires_at": nullable("string"),
            }
        ),
        **_contact_schemas(),
        "Suppression": obj(
            {
                "site": text,
                "address": {"type": "string", "description": "lower case"},
                "reason": text,
                "source": {"type": "string", "enum": list(SOURCES)},
                "message_id": nullable("string"),
                "created_at": text,
                "expires_at": nullable("string"),
            }
        ),
        "Webhook": obj(
            {
                "name": text,
                "url": text,
                "events": {"type": "array", "items": text, "description": "empty: all"},
                "sites": {"type": "array", "items": text, "description": "empty: all"},
                "max_in_flight": limit,
                "secret_set": boolean,
                "enabled": boolean,
                "disabled_at": nullable("string"),
                "disabled_reason": nullable("string"),
                "failing_since": nullable("string"),
                "last_success_at": nullable("string"),
                "managed_by": managed,
            }
        ),
        "WebhookDelivery": obj(
            {
                "event_id": text,
                "event_type": text,
                "at": text,
                "duration_ms": number,
                "status_code": {"type": ["integer", "null"]},
                "error": nullable("string"),
                "response": nullable("string", description="the answer's first 512 bytes"),
            }
        ),
        "Check": check,
        "Domain": obj(
            {
                "name": text,
                "managed_by": managed,
                "signing": boolean,
                "keys": {
                    "type": "array",
                    "items": obj(
                        {
                            "selector": text,
                            "state": {"type": "string", "enum": ["active", "next", "retired"]},
                            "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]},
                            "public_key": nullable("string"),
                            "retire_until": nullable("string"),
                        }
                    ),
                },
                "checks": {"type": ["array", "null"], "items": check},
                "records": {"type": "array", "items": check},
            },
            ["name", "managed_by", "signing", "keys", "checks"],
        ),
        "DomainInput": obj(
            {
                "name": text,
                "selector": text,
                "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]},
            },
            ["name"],
        ),
        "KeyInput": obj(
            {"selector": text, "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]}},
            ["selector"],
        ),
        "Activation": obj(
            {
                "retire_until": {
                    "type": "string",
                    "format": "date",
                    "description": "the retired key stays published until then (default: "
                    "in 7 days)",
                },
                "force": {
                    "type": "boolean",
                    "description": "activate although the last DNS check has not found the "
                    "key's record published and matching (else 409)",
                },
            }
        ),
        "DnsRecords": obj({"domain": text, "records": {"type": "array", "items": check}}),
        "Verification": obj(
            {
                "domain": text,
                "verified": boolean,
                "checks": {"type": "array", "items": check},
                "preflights": {
                    "type": "array",
                    "items": obj(
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
        "Probe": obj(
            {
                "ok": boolean,
                "stage": text,
                "detail": text,
                "steps": {"type": "array", "items": obj({"step": text, "ms": number})},
                "message": {
                    "oneOf": [
                        {"type": "null"},
                        obj(
                            {
                                "id": text,
                                "accepted": boolean,
                                "stage": text,
                                "reply": nullable("string"),
                                "detail": text,
                                "ms": number,
                            }
                        ),
                    ]
                },
            }
        ),
        "MessageSummary": obj(
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
                "next_attempt_at": nullable("string"),
                "attempt_count": integer,
                "last_error": nullable("string"),
            }
        ),
        "Message": obj(
            {
                "id": text,
                "site": text,
                "status": text,
                "message_class": text,
                "original_sender": text,
                "envelope_sender": text,
                "subject": text,
                "size": integer,
                "content_deleted": boolean,
                "content_deleted_at": nullable("string"),
                "created_at": text,
                "next_attempt_at": nullable("string"),
                "attempt_count": integer,
                "last_error": nullable("string"),
                "recipients": {
                    "type": "array",
                    "items": obj(
                        {
                            "address": text,
                            "status": text,
                            "upstream": nullable("string"),
                            "reply_code": nullable("integer"),
                            "reply_text": nullable("string"),
                        }
                    ),
                },
                "attempts": {
                    "type": "array",
                    "items": obj(
                        {
                            "upstream": text,
                            "started_at": text,
                            "duration_seconds": number,
                            "reply_code": nullable("integer"),
                            "reply_text": nullable("string"),
                            "outcome": text,
                            "recipients": {"type": "array", "items": text},
                            "detail": text,
                            "route": text,
                        }
                    ),
                },
                "provider_events": {
                    "description": "What the upstreams' providers reported after taking it "
                    "(`upstreams[].events`): bounces, complaints, deliveries.",
                    "type": "array",
                    "items": obj(
                        {
                            "received_at": text,
                            "occurred_at": nullable("string"),
                            "upstream": text,
                            "recipient": text,
                            "kind": {
                                "type": "string",
                                "enum": [
                                    "delivered",
                                    "deferred",
                                    "bounced_hard",
                                    "bounced_soft",
                                    "dropped",
                                    "complained",
                                ],
                            },
                            "raw_type": text,
                            "smtp_code": nullable("integer"),
                            "smtp_text": nullable("string"),
                            "detail": nullable("string"),
                        }
                    ),
                },
                "webhook_events": {
                    "description": "Its events for the webhook endpoints, with their delivery.",
                    "type": "array",
                    "items": obj(
                        {
                            "id": text,
                            "type": text,
                            "webhook": text,
                            "status": {
                                "type": "string",
                                "enum": ["pending", "delivered", "failed"],
                            },
                            "created_at": text,
                            "attempt_count": integer,
                            "last_error": nullable("string"),
                        }
                    ),
                },
                "header_changes": {
                    "type": "array",
                    "items": obj(
                        {
                            "name": text,
                            "change": {"type": "string", "enum": ["added", "removed", "changed"]},
                            "before": {"type": "array", "items": text},
                            "after": {"type": "array", "items": text},
                        }
                    ),
                },
                "headers": obj({"original": text, "sent": text}),
            }
        ),
        "MessagePage": {
            "allOf": [
                _list_of("MessageSummary"),
                obj(
                    {
                        "total_exact": boolean,
                        "next_cursor": nullable("string"),
                        "complete": boolean,
                    }
                ),
            ]
        },
        "Retry": obj({"id": text, "status": text}),
        "Flush": obj({"messages": integer, "upstreams": {"type": "array", "items": text}}),
        "SiteStats": obj(
            {
                "site": text,
                "accepted": integer,
                "sent": integer,
                "failed": integer,
                "partial": integer,
                "deferred": integer,
                "queued": integer,
                "held": integer,
                "success_rate": nullable("number"),
                "quota": quota,
            }
        ),
        "UpstreamStats": obj(
            {
                "upstream": text,
                "attempts": integer,
                "sent": integer,
                "failed": integer,
                "deferred": integer,
                "success_rate": nullable("number"),
                "average_seconds": nullable("number"),
                "p95_seconds": nullable("number"),
                "quota": quota,
            }
        ),
        "UpstreamStatsWindow": {
            "allOf": [
                ref("UpstreamStats"),
                obj({"since": text, "until": text}),
            ]
        },
        "Stats": obj(
            {
                "since": text,
                "until": text,
                "sites": {"type": "array", "items": ref("SiteStats")},
                "upstreams": {"type": "array", "items": ref("UpstreamStats")},
                "queue": obj({"depth": integer, "held": integer, "oldest_age_seconds": number}),
            }
        ),
        "AuditEntry": obj(
            {
                "at": text,
                "token": text,
                "action": text,
                "kind": text,
                "target": text,
                "detail": {"type": "object"},
            }
        ),
        "Reloaded": obj(
            {
                "status": text,
                "restart_needed": {"type": "array", "items": text},
                "warnings": {"type": "array", "items": text},
            }
        ),
        "Status": obj({"status": text}),
    }


def _paths() -> dict[str, Schema]:
    name, site_id = path_parameter("name"), path_parameter("id")
    domain, message = path_parameter("name"), path_parameter("id")
    return {
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "security": [],
                "responses": {"200": json_answer(ref("Status"))},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database answers and the SMTP listeners are up",
                "security": [],
                "responses": {"200": json_answer(ref("Status")), "503": ERROR_ANSWER},
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
        "/api/v1/openapi.json": {"get": _op("This document", json_answer({"type": "object"}))},
        "/api/v1/reload": {
            "post": _op("Re-read the config file (like SIGHUP)", json_answer(ref("Reloaded")))
        },
        "/api/v1/audit": {
            "get": _op(
                "Changes made through the API, newest first",
                json_answer(_list_of("AuditEntry")),
                params=_PAGING,
            )
        },
        "/api/v1/stats": {
            "get": _op(
                "Per site and per upstream over a window (default: 24 hours)",
                json_answer(ref("Stats")),
                params=_WINDOW,
                description=_STATS_WINDOW,
            )
        },
        "/api/v1/upstreams": {
            "get": _op(
                "Upstreams, from the file and the API",
                json_answer(_list_of("Upstream")),
                params=_PAGING,
            ),
            "post": _op(
                "Create an upstream",
                json_answer(ref("Upstream"), "Created"),
                "201",
                body=ref("UpstreamInput"),
            ),
        },
        "/api/v1/upstreams/{name}": {
            "get": _op("One upstream", json_answer(ref("Upstream")), params=[name]),
            "patch": _op(
                "Change an API upstream (JSON merge patch)",
                json_answer(ref("Upstream")),
                params=[name],
                body=ref("UpstreamPatch"),
            ),
            "delete": _op(
                "Delete an API upstream (its history keeps the name)", None, "204", params=[name]
            ),
        },
        "/api/v1/upstreams/{name}/test": {
            "post": _op(
                "Connect, TLS, AUTH with timings; with `to`, also send a test message",
                json_answer(ref("Probe")),
                params=[name],
                body=obj(
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
            "post": _op("Let routing use the upstream", json_answer(ref("Upstream")), params=[name])
        },
        "/api/v1/upstreams/{name}/deactivate": {
            "post": _op(
                "Keep routing away from the upstream", json_answer(ref("Upstream")), params=[name]
            )
        },
        "/api/v1/upstreams/{name}/stats": {
            "get": _op(
                "The upstream's statistics over a window",
                json_answer(ref("UpstreamStatsWindow")),
                params=[name, *_WINDOW],
                description=_STATS_WINDOW,
            )
        },
        "/api/v1/sites": {
            "get": _op(
                "Sites, from the file and the API", json_answer(_list_of("Site")), params=_PAGING
            ),
            "post": _op(
                "Create a site", json_answer(ref("Site"), "Created"), "201", body=ref("SiteInput")
            ),
        },
        "/api/v1/sites/{id}": {
            "get": _op("One site", json_answer(ref("Site")), params=[site_id]),
            "patch": _op(
                "Change an API site (JSON merge patch)",
                json_answer(ref("Site")),
                params=[site_id],
                body=ref("SitePatch"),
            ),
            "delete": _op("Delete an API site and its credentials", None, "204", params=[site_id]),
        },
        "/api/v1/sites/{id}/credentials": {
            "post": _op(
                "A new SMTP credential; the password is in this answer only",
                json_answer(ref("NewCredential"), "Created"),
                "201",
                params=[site_id],
                body=obj({"username": text_schema()}, []),
                body_required=False,
            )
        },
        "/api/v1/sites/{id}/credentials/{username}": {
            "delete": _op(
                "Remove a credential", None, "204", params=[site_id, path_parameter("username")]
            )
        },
        "/api/v1/sites/{id}/api-keys": {
            "get": _op(
                "The site's send API keys (names and times, never a key)",
                json_answer(_list_of("ApiKey")),
                params=[site_id, *_PAGING],
            ),
            "post": _op(
                "A new send API key; the key is in this answer only",
                json_answer(ref("NewApiKey"), "Created"),
                "201",
                params=[site_id],
                body=obj(
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
                params=[site_id, path_parameter("name")],
            )
        },
        **_contact_paths(),
        "/api/v1/domains": {
            "get": _op("Sending domains", json_answer(_list_of("Domain")), params=_PAGING),
            "post": _op(
                "Add a domain with a new DKIM key",
                json_answer(ref("Domain"), "Created"),
                "201",
                body=ref("DomainInput"),
            ),
        },
        "/api/v1/domains/{name}": {
            "get": _op(
                "One domain with its last verification", json_answer(ref("Domain")), params=[domain]
            ),
            "delete": _op("Remove an API domain and its keys", None, "204", params=[domain]),
        },
        "/api/v1/domains/{name}/dns-records": {
            "get": _op("The records to publish", json_answer(ref("DnsRecords")), params=[domain])
        },
        "/api/v1/domains/{name}/verify": {
            "post": _op(
                "Check the domain's DNS now", json_answer(ref("Verification")), params=[domain]
            )
        },
        "/api/v1/domains/{name}/keys": {
            "post": _op(
                "Rotation, step 1: a new DKIM key, published ahead and not signing (next)",
                json_answer(ref("Domain"), "Created; the answer lists the records to publish"),
                "201",
                params=[domain],
                body=ref("KeyInput"),
            )
        },
        "/api/v1/domains/{name}/keys/{selector}/activate": {
            "post": _op(
                "Rotation, step 2: the next key signs, the active one retires",
                json_answer(ref("Domain")),
                params=[domain, path_parameter("selector")],
                body=ref("Activation"),
                body_required=False,
            )
        },
        "/api/v1/templates": {
            "get": _op(
                "Templates, from the file and the API",
                json_answer(_list_of("TemplateSummary")),
                params=_PAGING,
            ),
            "post": _op(
                "Create a template (checked: 422 lists every problem)",
                json_answer(ref("Template"), "Created"),
                "201",
                body=ref("TemplateInput"),
            ),
        },
        "/api/v1/templates/{name}": {
            "get": _op("One template with its parts", json_answer(ref("Template")), params=[name]),
            "put": _op(
                "Replace an API template's parts",
                json_answer(ref("Template")),
                params=[name],
                body=ref("TemplateParts"),
            ),
            "patch": _op(
                "Change an API template's parts (JSON merge patch)",
                json_answer(ref("Template")),
                params=[name],
                body=ref("TemplateParts"),
            ),
            "delete": _op(
                "Delete an API template no site's form names", None, "204", params=[name]
            ),
        },
        "/api/v1/templates/{name}/preview": {
            "post": _op(
                "Render without sending (422: the render's problems, among them "
                "'template took too long')",
                json_answer(ref("Rendered")),
                params=[name],
                body=obj({"variables": {"type": "object"}}, []),
                body_required=False,
            )
        },
        "/api/v1/suppressions": {
            "get": _op(
                "The suppression lists, newest first: an expired entry shows its `expires_at` "
                "(it no longer suppresses) until housekeeping deletes it",
                json_answer(_list_of("Suppression")),
                params=[
                    {"name": "site", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "q",
                        "in": "query",
                        "description": "A substring of the address, any letter case",
                        "schema": {"type": "string"},
                    },
                    *_PAGING,
                ],
            ),
            "post": _also(
                "200",
                json_answer(ref("Suppression"), "It was listed: reason, source, expiry replaced"),
                _op(
                    "Put an address on a site's suppression list: RCPT refuses it (550 5.1.1), "
                    "the send API leaves it out, queued mail to it fails. 201 for a new entry; "
                    "200 when it was listed (reason, source and expiry replaced)",
                    json_answer(ref("Suppression"), "Created"),
                    "201",
                    body=obj(
                        {
                            "site": {"type": "string", "description": "an existing site's id"},
                            "address": {"type": "string", "description": "stored in lower case"},
                            "reason": {"type": "string", "minLength": 1, "maxLength": 500},
                            "source": {
                                "type": "string",
                                "enum": list(SOURCES),
                                "description": "default `manual`",
                            },
                            "expires_at": {
                                "type": ["string", "number", "null"],
                                "description": "ISO 8601 (UTC when no offset) or UNIX seconds; "
                                "absent or null: never",
                            },
                        },
                        ["site", "address", "reason"],
                    ),
                ),
            ),
        },
        "/api/v1/suppressions/{site}/{address}": {
            "delete": _op(
                "Take an address off a site's suppression list (404 when it is not on it)",
                None,
                "204",
                params=[path_parameter("site"), path_parameter("address")],
            )
        },
        **_webhook_paths(),
        **campaign_paths(_op, _list_of, _PAGING),
        "/api/v1/messages": {
            "get": _op(
                "Search the message log, newest first",
                json_answer(ref("MessagePage")),
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
                "One message: recipients, attempts, header changes; `content_deleted` once "
                "retention removed its content (the headers stay)",
                json_answer(ref("Message")),
                params=[message],
            )
        },
        "/api/v1/messages/{id}/retry": {
            "post": _op(
                "Try a waiting or held message now", json_answer(ref("Retry")), params=[message]
            )
        },
        "/api/v1/queue/flush": {
            "post": _op(
                "Make every waiting message due now and close every open circuit",
                json_answer(ref("Flush")),
            )
        },
    }


def _contact_schemas() -> dict[str, Schema]:
    moment = nullable("string")
    scalar = {"type": ["string", "number", "boolean", "null"]}
    tags = {
        "type": "array",
        "maxItems": 50,
        "items": {"type": "string", "minLength": 1, "maxLength": 64},
        "description": "no ';', '|' or ','",
    }
    attributes = {
        "type": "object",
        "maxProperties": 50,
        "additionalProperties": scalar,
        "description": "texts of at most 1,000 characters, numbers, true, false or null; "
        "8,192 characters of keys and texts in all",
    }
    names = {
        n: {"type": "string", "maxLength": 200} for n in ("first_name", "last_name", "company")
    }
    problem = {
        "type": "object",
        "properties": {
            "row": {"type": "integer", "description": "CSV: the row in the file (header = 1)"},
            "index": {"type": "integer", "description": "JSON: the position in `contacts`"},
            "email": {"type": "string"},
            "problem": {"type": "string"},
        },
        "required": ["email", "problem"],
    }
    counts: dict[str, Schema] = {
        "added": {"type": "integer"},
        "updated": {"type": "integer"},
        "rejected": {"type": "integer"},
        "problems": {"type": "array", "items": problem, "description": "the first 1,000"},
        "more_problems": {"type": "integer", "description": "rejected rows not listed"},
    }
    return {
        "Contact": obj(
            {
                "email": {"type": "string", "description": "lower case"},
                **names,
                "attributes": attributes,
                "tags": tags,
                "unsubscribed": {"type": "boolean"},
                "unsubscribed_at": moment,
                "last_email_sent": moment,
                "email_count": {"type": "integer", "minimum": 0},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"},
            }
        ),
        "ContactInput": obj(
            {
                "email": {"type": "string"},
                **names,
                "attributes": {**attributes, "description": "merged into the stored ones"},
                "tags": {**tags, "description": "added to the stored ones"},
                "unsubscribed": {
                    "type": "boolean",
                    "description": "true marks the contact unsubscribed; false changes nothing",
                },
            },
            ["email"],
        ),
        "ContactPatch": obj(
            {
                **names,
                "attributes": {**attributes, "description": "replaces them all"},
                "tags": {**tags, "description": "replaces them all"},
                "unsubscribed": {
                    "type": "boolean",
                    "description": "false re-subscribes (an admin's decision; audited)",
                },
            },
            [],
        ),
        "ContactImport": obj(counts),
        "ContactAdded": obj({**counts, "contact": ref("Contact")}),
    }


def _contact_paths() -> dict[str, Schema]:
    site_id, email = path_parameter("id"), path_parameter("email")
    one_or_many = {"oneOf": [ref("ContactInput"), obj({"contacts": {"type": "array"}})]}
    post = _op(
        'Add or update contacts: one object, `{"contacts": [...]}` or a `text/csv` body',
        json_answer(ref("ContactImport"), "Many or CSV: how many were added, updated, rejected"),
        params=[site_id],
        body=one_or_many,
        description=(
            "Upsert by email (lower-cased). Absent keys and empty CSV cells change nothing; "
            "tags are added and attributes merged; nothing here re-subscribes anyone. A CSV "
            "has a header row with an `email` column; `first_name`, `last_name`, `company`, "
            "`tags` (separated by `;` or `|`) and `unsubscribed` (true/yes/1) are known, "
            "read-only columns are ignored, any other column is an attribute. It is read as "
            "it arrives and stored in batches of 500, up to 64 MiB (413 beyond); when the "
            "body breaks off, the batches stored before stay."
        ),
    )
    post["requestBody"]["content"]["text/csv"] = {"schema": {"type": "string"}}
    post["responses"]["201"] = json_answer(ref("ContactAdded"), "One new contact")
    post["responses"]["413"] = ERROR_ANSWER
    return {
        "/api/v1/sites/{id}/contacts": {
            "get": _op(
                "The site's contacts in the order they were added",
                json_answer(_list_of("Contact")),
                params=[
                    site_id,
                    {"name": "tag", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "q",
                        "in": "query",
                        "description": "A substring of the email, names or company, any case",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "unsubscribed",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                    *_PAGING,
                ],
            ),
            "post": post,
        },
        "/api/v1/sites/{id}/contacts/{email}": {
            "get": _op("One contact", json_answer(ref("Contact")), params=[site_id, email]),
            "patch": _op(
                "Change a contact (tags and attributes replaced whole)",
                json_answer(ref("Contact")),
                params=[site_id, email],
                body=ref("ContactPatch"),
            ),
            "delete": _op("Delete a contact", None, "204", params=[site_id, email]),
        },
    }


def _webhook_paths() -> dict[str, Schema]:
    name = path_parameter("name")
    spec: dict[str, Schema] = {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "url": {"type": "string", "description": "http:// or https://"},
        "events": {
            "type": "array",
            "items": {"type": "string", "enum": sorted(SUBSCRIBABLE)},
            "description": "absent or empty: all",
        },
        "sites": {"type": "array", "items": {"type": "string"}, "description": "empty: all"},
        "secret": {
            "type": "string",
            "description": "whsec_ and the base64 of 24 to 64 random bytes; absent: generated",
        },
        "max_in_flight": {"type": "integer", "minimum": 1},
    }
    with_secret = {**ref("Webhook"), "description": "with `secret`, shown this once"}
    return {
        "/api/v1/webhooks": {
            "get": _op(
                "Every webhook endpoint, the file's and the API's",
                json_answer(
                    obj(
                        {
                            "items": {"type": "array", "items": ref("Webhook")},
                            "total": {"type": "integer"},
                        }
                    )
                ),
            ),
            "post": _op(
                "Make an endpoint; the answer holds its secret, the only time it is shown",
                json_answer(with_secret, "Created"),
                "201",
                body=obj(spec, ["name", "url"]),
            ),
        },
        "/api/v1/webhooks/{name}": {
            "get": _op(
                "One endpoint (never its secret)", json_answer(ref("Webhook")), params=[name]
            ),
            "patch": _op(
                "Change an API endpoint; `enabled` (true enables a disabled one, forgiving its "
                "failures) works for the file's endpoints too",
                json_answer(ref("Webhook")),
                params=[name],
                body=obj({**spec, "enabled": {"type": "boolean"}}, []),
            ),
            "delete": _op(
                "Delete an API endpoint; its waiting events are dropped", None, "204", params=[name]
            ),
        },
        "/api/v1/webhooks/{name}/rotate-secret": {
            "post": _op(
                "A new secret for an API endpoint, shown this once; the old one stops at once",
                json_answer(obj({"name": {"type": "string"}, "secret": {"type": "string"}})),
                params=[name],
            )
        },
        "/api/v1/webhooks/{name}/deliveries": {
            "get": _op(
                "The endpoint's tries, newest first; `next_cursor` (null at the end) passed as "
                "`cursor` gives the next page",
                json_answer(
                    obj(
                        {
                            "items": {"type": "array", "items": ref("WebhookDelivery")},
                            "next_cursor": nullable("string"),
                        }
                    )
                ),
                params=[
                    name,
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "page_size",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                ],
            )
        },
        "/api/v1/webhooks/{name}/replay": {
            "post": _op(
                "Queue again every event the endpoint was given since a time (same ids and bodies)",
                json_answer(obj({"name": {"type": "string"}, "queued": {"type": "integer"}})),
                params=[name],
                body=obj(
                    {"since": {"type": ["string", "number"], "description": _TIME["description"]}}
                ),
            )
        },
        "/api/v1/webhooks/{name}/test": {
            "post": _op(
                "Queue a `webhook.test` event for this endpoint; its id",
                json_answer(obj({"event_id": {"type": "string"}}), "Queued"),
                "202",
                params=[name],
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
            "relay. Objects from the config file are listed with managed_by=file and cannot be "
            "changed here (409). Secrets are never returned.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": {**_schemas(), **campaign_schemas()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
