"""The OpenAPI 3.1 document of the public HTTP listener, served at /api/openapi.json.

Written by hand next to the route table (public_http/app.py), from the same
building blocks as the admin API's (admin_http/openapi_parts.py): the same
error envelope, the same shapes. A test checks that it documents exactly the
routes the table makes, that it is valid 3.1, and that the server's answers
keep to it. No authentication: it describes what anyone may already call.
"""

from __future__ import annotations

from functools import cache

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
from public_http.forms_view import PREFLIGHT_MAX_AGE_SECONDS
from public_http.unsubscribe_view import MAX_BODY_BYTES as MAX_UNSUBSCRIBE_BODY_BYTES
from relay.core.idempotency import MAX_KEY_CHARS
from relay.core.model import MessageStatus, RecipientStatus
from relay.core.providers.model import MAX_BODY_BYTES as MAX_PROVIDER_BODY_BYTES
from relay.form_controller import MAX_FIELD_CHARS, MAX_FIELDS

_TEXT = {"type": "string"}
_ADDRESS = {"type": "string", "format": "email"}
_ADDRESSES = {"type": "array", "items": _ADDRESS}
_FILE = {"type": "string", "contentMediaType": "application/octet-stream"}
_CORS_HEADERS = {
    "Access-Control-Allow-Origin": {
        "description": "The request's Origin, when the form allows it (and `Vary: Origin`)",
        "schema": _TEXT,
    },
    "Access-Control-Expose-Headers": {
        "description": "`Retry-After`, so that the page's script can read it",
        "schema": _TEXT,
    },
}


def _header(name: str) -> Schema:
    return {"$ref": f"#/components/headers/{name}"}


def _error(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    answer = {**ERROR_ANSWER, "description": description}
    if headers:
        answer["headers"] = headers
    return answer


def _later(description: str) -> Schema:
    """An error to try again after the seconds its Retry-After says."""
    return _error(description, {"Retry-After": _header("RetryAfter")})


_ORIGIN = {
    "name": "Origin",
    "in": "header",
    "description": "Sent by browsers. A form answers only the origins of its `allowed_origins` "
    "(403 for others); a request without Origin (curl, a server) is judged by its token and "
    "limits alone.",
    "schema": _TEXT,
}
_PAGE = {
    "name": "landingPageId",
    "in": "query",
    "description": "The id of a site that has a `form:`",
    "schema": {"type": "string", "minLength": 1},
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "Within 24 h, the same key with the same request answers the first answer "
    "again (`Idempotent-Replayed: true`) and queues nothing; the same key with another "
    "request is 422, and while the first is still being stored, 409. A refused request "
    "gives its key back. Keys are per site.",
    "schema": {"type": "string", "pattern": f"^[\\x20-\\x7e]{{1,{MAX_KEY_CHARS}}}$"},
}


def _preflight(method: str, summary: str) -> Schema:
    return {
        "summary": summary,
        "description": "Answered for an Origin that some form allows (the form named by "
        "`landingPageId`, when the URL names one).",
        "parameters": [
            {**_ORIGIN, "required": True},
            {"name": "Access-Control-Request-Method", "in": "header", "schema": _TEXT},
            {**_PAGE, "required": False},
        ],
        "responses": {
            "204": {
                "description": "The origin may call it",
                "headers": {
                    "Access-Control-Allow-Origin": {
                        "description": "The request's Origin",
                        "schema": _TEXT,
                    },
                    "Access-Control-Allow-Methods": {
                        "description": method,
                        "schema": {"type": "string", "const": method},
                    },
                    "Access-Control-Allow-Headers": {
                        "description": "Content-Type",
                        "schema": {"type": "string", "const": "Content-Type"},
                    },
                    "Access-Control-Max-Age": {
                        "description": "Seconds a browser may keep this answer",
                        "schema": {"type": "string", "const": str(PREFLIGHT_MAX_AGE_SECONDS)},
                    },
                    "Vary": {"description": "Origin", "schema": _TEXT},
                },
            },
            "403": _error("No form allows this Origin, or there is none"),
        },
    }


def _form_token() -> Schema:
    return {
        "summary": "A signed, dated token for one post of the page's form",
        "description": "Fetch one when the page loads and a new one after each message sent. "
        "A post counts as a person's only when its token is this site's, at least the form's "
        "`min_fill_seconds` old, at most `http.form_token_max_age_seconds` old, and not used "
        "before.",
        "parameters": [{**_PAGE, "required": True}, _ORIGIN],
        "responses": {
            "200": {
                **json_answer(obj({"token": _TEXT})),
                "headers": {
                    "Cache-Control": {"schema": {"type": "string", "const": "no-store"}},
                    **_CORS_HEADERS,
                },
            },
            "400": _error("landingPageId is missing"),
            "403": _error("The form does not allow this Origin (no CORS headers)"),
            "404": _error("No site with a form has this landingPageId"),
        },
    }


def _send_inquiry() -> Schema:
    fields = {
        "type": "object",
        "description": "Fields as `formData[name]` or plain names; a name sent twice arrives "
        "as its values joined with `, `. multipart/form-data: text fields only (a file is "
        "422).",
        "properties": {"landingPageId": {"type": "string", "minLength": 1}, "formToken": _TEXT},
        "required": ["landingPageId"],
        "additionalProperties": _TEXT,
    }
    return {
        "summary": "A landing page's form post: an inquiry to the form's fixed recipients",
        "description": "A JSON post, or an HTML one with `Accept: application/json` (a "
        "script's fetch of a FormData), is answered 202 with the message's id; a plain HTML "
        "post 303 to the form's `redirect`, or without one a short HTML thank-you page (202). "
        "A bot's post (honeypot filled or missing; token missing, forged, too young, expired "
        "or used) gets what a person gets, and nothing is sent. A post answered 422, 429 or "
        "503 does not spend its token. Errors are the envelope, except to a browser's plain "
        "post (`Accept` with text/html and not JSON): a short HTML page saying the same.",
        "parameters": [_ORIGIN],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref("FormPost")},
                "application/x-www-form-urlencoded": {"schema": fields},
                "multipart/form-data": {"schema": fields},
            },
        },
        "responses": {
            "202": {
                "description": "Stored (or a bot's post, which queues nothing)",
                "headers": _CORS_HEADERS,
                "content": {
                    "application/json": {"schema": ref("Queued")},
                    "text/html": {"schema": {"type": "string"}},
                },
            },
            "303": {
                "description": "A plain HTML post, stored: on to the form's `redirect`",
                "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
            },
            **{
                status: _or_page(answer)
                for status, answer in {
                    "400": _error("Not a form post: malformed JSON or multipart, no landingPageId"),
                    "403": _error("The form does not allow this Origin (no CORS headers)"),
                    "404": _error("No site with a form has this landingPageId"),
                    "413": _error(
                        "The body is over `http.max_form_bytes`, or the message too large"
                    ),
                    "415": _error("Not JSON, urlencoded or multipart/form-data"),
                    "422": _error(
                        "The form has problems: each in `problems` (formData.email: ...)"
                    ),
                    "429": _later(
                        "Too many posts from this address, or the site is over its limits"
                    ),
                    "503": _later("The relay could not store the message; try again"),
                }.items()
            },
        },
    }


def _or_page(answer: Schema) -> Schema:
    """An error of the form post: the envelope, or to a browser's plain post a page."""
    return {**answer, "content": {**answer["content"], "text/html": {"schema": _TEXT}}}


def _send() -> Schema:
    return {
        "summary": "Send a message as the key's site",
        "description": "The message takes SMTP mail's path: the site's From and Reply-To "
        "policy, its limits and quotas, DKIM, and the durable store before the answer.",
        "security": [{"apiKey": []}],
        "parameters": [_IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref("SendRequest")},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "description": "The JSON in a `message` part; each file in a part of "
                        "its own, with its filename and type (no base64), under any name "
                        "(`file` here).",
                        "properties": {
                            "message": ref("SendRequest"),
                            "file": {"type": "array", "items": _FILE},
                        },
                        "required": ["message"],
                        "additionalProperties": _FILE,
                    },
                    "encoding": {"message": {"contentType": "application/json"}},
                },
            },
        },
        "responses": {
            "202": {
                **json_answer(
                    ref("Sent"),
                    "Stored: it will be delivered (not to the recipients in `suppressed`)",
                ),
                "headers": {
                    "Idempotent-Replayed": {
                        "description": "`true`: the first answer to this Idempotency-Key, "
                        "again; nothing was queued",
                        "schema": {"type": "string", "const": "true"},
                    }
                },
            },
            "400": _error("Malformed: not JSON, a broken multipart body, a bad Idempotency-Key"),
            "401": _unauthorized(),
            "404": _error("The send API is not enabled"),
            "409": _error("A request with this Idempotency-Key is still being stored; retry"),
            "413": _error("The body or the message is too large"),
            "415": _error("Not application/json or multipart/form-data"),
            "422": _error(
                "The request has problems (each in `problems`), the relay refused the "
                "message, the Idempotency-Key was used with another request, or every "
                "recipient is on the site's suppression list (code `suppressed`)"
            ),
            "429": _later(
                "The site is over a limit, or this address failed to authenticate too often"
            ),
            "503": _later("The relay could not store the message; try again"),
        },
    }


def _status() -> Schema:
    return {
        "summary": "A message of the key's site: its status per recipient",
        "security": [{"apiKey": []}],
        "parameters": [path_parameter("id")],
        "responses": {
            "200": json_answer(ref("SendStatus")),
            "401": _unauthorized(),
            "404": _error("No message with this id of this site (another site's included)"),
            "429": _later("This address failed to authenticate too often"),
        },
    }


def _provider_events() -> Schema:
    return {
        "summary": "Bounces, complaints and deliveries an upstream's provider reports",
        "description": "For an upstream with `events: ses | mailgun | sendgrid | postmark`: "
        "the provider's own request (SES through an SNS HTTPS subscription), verified its "
        "way: SNS message signature, Mailgun's HMAC and timestamp, SendGrid's ECDSA "
        "signature and timestamp, Postmark's basic auth. Hard bounces and complaints put the "
        "recipient on the site's suppression list; every event found is on its message's "
        "timeline and goes to the webhooks.",
        "parameters": [path_parameter("upstream")],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {}}, "text/plain": {"schema": _TEXT}},
        },
        "responses": {
            "200": json_answer(
                {
                    "oneOf": [
                        ref("ProviderEventsTaken"),
                        obj({"status": {"const": "noted"}, "detail": _TEXT}),
                    ]
                },
                "Taken (also when its messages are not ours, or it came before: "
                "`replayed`), or an SNS subscription message handled",
            ),
            "400": _error("Malformed, or a type the provider never documented"),
            "401": _error(
                "The signature, credentials or timestamp do not verify",
                {"WWW-Authenticate": {"schema": _TEXT, "description": "Postmark's: Basic"}},
            ),
            "403": _error("An SNS topic that is not among the upstream's `events_topics`"),
            "404": _error("No upstream of this name takes provider events"),
            "413": _error(f"The body is over {MAX_PROVIDER_BODY_BYTES} bytes"),
            "503": _later("The SNS signing certificate could not be fetched; try again"),
        },
    }


_HTML_PAGE = {"text/html": {"schema": _TEXT}}
_NOT_AN_UNSUBSCRIBE_LINK = (
    "A forged or altered token, or one whose campaign or contact is gone: nothing changed "
    "(a page saying so to a browser that asks for text/html)"
)


def _unsubscribe_link() -> dict[str, Schema]:
    token = path_parameter("token")
    token["description"] = "The signed token of a campaign message's List-Unsubscribe link"
    return {
        "get": {
            "summary": "The page of a campaign message's unsubscribe link (changes nothing)",
            "description": "Mail scanners open every link of a message, so GET (and HEAD) "
            "only show whom the link would unsubscribe, with a form that posts to the same "
            "URL, or say they are already unsubscribed (RFC 8058 section 3.2).",
            "parameters": [token],
            "responses": {
                "200": {"description": "The confirmation page", "content": _HTML_PAGE},
                "404": _error_or_page(_NOT_AN_UNSUBSCRIBE_LINK),
            },
        },
        "post": {
            "summary": "One-click unsubscribe (RFC 8058)",
            "description": "Unsubscribes the contact from the site's campaign mail at once: "
            "no cookie, redirect or confirmation. The body RFC 8058 sends is "
            "`List-Unsubscribe=One-Click`; any other body (or none) under "
            f"{MAX_UNSUBSCRIBE_BODY_BYTES} bytes is taken too. Answers 200 again for a "
            "contact already unsubscribed, and reports `message.unsubscribed` once.",
            "parameters": [token],
            "requestBody": {
                "required": False,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": obj({"List-Unsubscribe": {"const": "One-Click"}})
                    }
                },
            },
            "responses": {
                "200": {"description": "Unsubscribed (now or before)", "content": _HTML_PAGE},
                "404": _error_or_page(_NOT_AN_UNSUBSCRIBE_LINK),
                "413": _error_or_page(f"The body is over {MAX_UNSUBSCRIBE_BODY_BYTES} bytes"),
            },
        },
    }


def _error_or_page(description: str) -> Schema:
    """The error envelope, or a page saying the same to a browser."""
    answer = _error(description)
    answer["content"] = {**answer["content"], **_HTML_PAGE}
    return answer


def _unauthorized() -> Schema:
    return _error(
        "No key, or an unknown, revoked or expired one",
        {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    )


def _paths() -> dict[str, Schema]:
    return {
        "/healthz": {
            "get": {
                "summary": "The listener is up",
                "responses": {"200": json_answer(obj({"status": {"const": "ok"}}))},
            }
        },
        "/api/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": json_answer({"type": "object"})},
            }
        },
        "/api/form-token": {
            "get": _form_token(),
            "options": _preflight("GET", "CORS preflight of the token's fetch"),
        },
        "/api/send-inquiry": {
            "post": _send_inquiry(),
            "options": _preflight("POST", "CORS preflight of a JSON post"),
        },
        "/api/v1/send": {"post": _send()},
        "/api/v1/send/{id}": {"get": _status()},
        "/api/v1/provider-events/{upstream}": {"post": _provider_events()},
        "/u/{token}": _unsubscribe_link(),
    }


def _schemas() -> dict[str, Schema]:
    header_text = {"type": "string", "maxLength": 998}
    return {
        "Error": ERROR_SCHEMA,
        "Queued": obj(
            {
                "id": {"type": "string", "pattern": "^[0-9a-z]{26}$"},
                "status": {"type": "string", "const": "queued"},
            }
        ),
        "Sent": obj(
            {
                "id": {"type": "string", "pattern": "^[0-9a-z]{26}$"},
                "status": {"type": "string", "const": "queued"},
                "suppressed": {
                    "type": "array",
                    "description": "Only when some recipients are on the site's suppression "
                    "list: they were left out of the envelope",
                    "items": obj({"address": {"type": "string"}, "reason": {"type": "string"}}),
                },
            },
            ["id", "status"],
        ),
        "FormPost": {
            "type": "object",
            "properties": {
                "landingPageId": {"type": "string", "minLength": 1},
                "formData": {
                    "type": "object",
                    "description": f"At most {MAX_FIELDS} fields, each at most "
                    f"{MAX_FIELD_CHARS} characters; the form's `required` fields not blank; "
                    "its `reply_to_field` an address; its `honeypot_field` present and empty.",
                    "maxProperties": MAX_FIELDS,
                    "additionalProperties": {"type": "string", "maxLength": MAX_FIELD_CHARS},
                },
                "formToken": {"type": "string", "description": "From GET /api/form-token"},
            },
            "required": ["landingPageId"],
        },
        "SendRequest": {
            "type": "object",
            "description": "At least one recipient, at most `limits.max_recipients` in to, cc "
            "and bcc together (bcc reaches the envelope only); `subject` and `text` or `html` "
            "unless a template gives them. No value bound for a header may hold a control "
            "character.",
            "properties": {
                "from": obj({"email": _ADDRESS, "name": header_text}, []),
                "to": _ADDRESSES,
                "cc": _ADDRESSES,
                "bcc": _ADDRESSES,
                "reply_to": _ADDRESS,
                "subject": header_text,
                "text": _TEXT,
                "html": _TEXT,
                "template": {"type": "string", "description": "A template's name"},
                "variables": {"type": "object", "description": "The template's variables"},
                "attachments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "filename": {"type": "string", "minLength": 1, "maxLength": 255},
                            "content": {"type": "string", "contentEncoding": "base64"},
                            "content_type": {
                                "type": "string",
                                "description": "type/subtype; default: guessed from the "
                                "filename. multipart/* and message/* are refused.",
                            },
                        },
                        "required": ["filename", "content"],
                        "additionalProperties": False,
                    },
                },
                "headers": {
                    "type": "object",
                    "description": "Your own headers. From, Sender, To, Cc, Bcc, Reply-To, "
                    "Message-ID, Date, Received, DKIM-Signature, Return-Path, Subject, "
                    "MIME-Version, Authentication-Results, Content-*, Resent-* and ARC-*, in "
                    "any letter case, are the relay's (422).",
                    "additionalProperties": header_text,
                },
                "message_class": {"type": "string", "enum": ["transactional", "bulk"]},
            },
            "additionalProperties": False,
        },
        "ProviderEventsTaken": obj(
            {
                "status": {"enum": ["accepted", "replayed"]},
                "events": {"type": "integer"},
                "matched": {"type": "integer"},
                "unmatched": {"type": "integer"},
                "ignored": {"type": "integer"},
            }
        ),
        "SendStatus": obj(
            {
                "id": _TEXT,
                "status": {"type": "string", "enum": [s.value for s in MessageStatus]},
                "subject": _TEXT,
                "attempts": {"type": "integer", "minimum": 0},
                "recipients": {
                    "type": "array",
                    "items": obj(
                        {
                            "address": _TEXT,
                            "status": {
                                "type": "string",
                                "enum": [s.value for s in RecipientStatus],
                            },
                            "reply_code": nullable("integer"),
                            "reply": nullable("string"),
                        }
                    ),
                },
            }
        ),
    }


@cache
def document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay public HTTP API",
            "version": "1",
            "description": "The public listener (`http:`): landing-page forms, and the send "
            "API with a site's API key. Errors use the admin API's envelope.",
        },
        "servers": [{"url": "/"}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before trying again",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            },
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A site's API key: `relay hash-token` for the config "
                    "file's `api_keys`, or POST /api/v1/sites/{id}/api-keys on the admin API",
                }
            },
        },
    }
