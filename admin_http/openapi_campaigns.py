"""The campaigns' part of the admin API's OpenAPI document (admin_http/openapi.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from admin_http.openapi_parts import Schema, json_answer, nullable, obj, path_parameter, ref
from relay.core.campaigns import CampaignStatus, RecipientState

Op = Callable[..., Schema]


def campaign_schemas() -> dict[str, Schema]:
    text, integer = {"type": "string"}, {"type": "integer", "minimum": 0}
    audience = {
        "oneOf": [
            {"type": "string", "enum": ["all"]},
            obj({"tags": {"type": "array", "items": text, "minItems": 1, "maxItems": 50}}),
        ]
    }
    return {
        "Campaign": obj(
            {
                "id": text,
                "name": text,
                "status": {"type": "string", "enum": list(CampaignStatus)},
                "total_contacts": integer,
                "queued_count": {
                    "type": "integer",
                    "description": "messages waiting for delivery (paused ones held)",
                },
                "sent_count": integer,
                "failed_count": {
                    "type": "integer",
                    "description": "refused, expired, suppressed at delivery, not rendered, "
                    "or cancelled while waiting",
                },
                "skipped_count": {
                    "type": "integer",
                    "description": "unsubscribed or suppressed when their turn came: no message",
                },
                "created_at": text,
                "updated_at": text,
                "site": text,
                "audience": audience,
                "template": nullable("string"),
                "subject": nullable("string"),
                "rate_per_minute": nullable("integer"),
                "schedule_at": nullable("string"),
                "started_at": nullable("string"),
                "finished_at": nullable("string"),
                "all_contacts_reached": {"type": "boolean"},
                "note": nullable(
                    "string", description="why generation waits (the site's limits), if it does"
                ),
                "attachments": {
                    "type": "array",
                    "items": obj({"filename": text, "content_type": text, "size": integer}),
                },
                "rate_per_minute_measured": nullable("number"),
                "eta_seconds": nullable("integer"),
            }
        ),
        "CampaignCreated": obj(
            {"id": text, "status": {"type": "string", "enum": ["draft", "scheduled"]}}
        ),
        "CampaignRecipient": obj(
            {
                "email": text,
                "contact_id": {"type": "integer"},
                "status": {"type": "string", "enum": list(RecipientState)},
                "reason": nullable("string"),
                "message_id": nullable("string"),
                "updated_at": text,
            }
        ),
    }


def campaign_paths(op: Op, list_of: Callable[[str], Schema], paging: list[Any]) -> Schema:
    campaign = path_parameter("id")
    text = {"type": "string"}
    create = obj(
        {
            "site": text,
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "template": {"type": "string", "description": "a template's name (its parts copied)"},
            "subject": text,
            "text": text,
            "html": text,
            "attachments": {
                "type": "array",
                "items": obj(
                    {
                        "filename": text,
                        "content_type": text,
                        "content": {"type": "string", "description": "base64"},
                    },
                    ["filename", "content"],
                ),
            },
            "audience": campaign_schemas()["Campaign"]["properties"]["audience"],
            "schedule_at": {
                "type": ["string", "number"],
                "description": "ISO 8601 (UTC when no offset) or UNIX seconds: starts by itself",
            },
            "rate_per_minute": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        },
        ["site", "name", "audience"],
    )
    paths: Schema = {
        "/api/v1/campaigns": {
            "get": op(
                "Campaigns, newest first",
                json_answer(list_of("Campaign")),
                params=[
                    {"name": "site", "in": "query", "schema": text},
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(CampaignStatus)},
                    },
                    *paging,
                ],
            ),
            "post": op(
                "Create a campaign: a draft (`start` starts it), or scheduled with `schedule_at`. "
                "A template or parts that do not compile are 422",
                json_answer(ref("CampaignCreated"), "Created"),
                "201",
                body=create,
            ),
        },
        "/api/v1/campaigns/{id}": {
            "get": op(
                "One campaign with its counts", json_answer(ref("Campaign")), params=[campaign]
            ),
            "delete": op(
                "Delete a draft, scheduled or finished campaign with nothing queued (409 else)",
                None,
                "204",
                params=[campaign],
            ),
        },
        "/api/v1/campaigns/{id}/recipients": {
            "get": op(
                "The contacts the campaign reached, by contact id",
                json_answer(list_of("CampaignRecipient")),
                params=[
                    campaign,
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": list(RecipientState)},
                    },
                    *paging,
                ],
            )
        },
    }
    for action, summary in (
        ("start", "Start a draft or scheduled campaign now"),
        ("pause", "Stop generating and hold its waiting messages"),
        ("resume", "Go on: held messages are due now"),
        ("cancel", "Stop for good: waiting messages fail as cancelled; in flight ones end"),
    ):
        paths[f"/api/v1/campaigns/{{id}}/{action}"] = {
            "post": op(
                f"{summary} (409 when its status does not allow it)",
                json_answer(ref("Campaign")),
                params=[campaign],
            )
        }
    return paths
