"""Building blocks of the OpenAPI 3.1 documents: the admin API's (admin_http/openapi.py) and the
public listener's (public_http/openapi.py).

Both listeners answer errors with one envelope (admin_http/errors.py), so both
documents describe it with the same ``Error`` schema.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def obj(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    """An object with these properties, all of them required unless ``required`` says."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


def json_answer(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def path_parameter(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


ERROR_ANSWER = json_answer(ref("Error"), "Error")
ERROR_SCHEMA = obj(
    {
        "error": obj(
            {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "problems": {"type": "array", "items": {"type": "string"}},
            },
            ["code", "message"],
        )
    }
)
