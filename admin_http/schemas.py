"""JSON in and out: request parsing (body, pagination, times) and each object's view.

Views list what an operator may see; secrets never appear in them (an
upstream says ``has_password``, a credential shows its username only).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from typing import Any

from aiohttp import web

from admin_http.errors import ApiError, bad_request
from relay.core.domain_checks import Check
from relay.core.domains import Domain
from relay.core.health import Circuit
from relay.core.model import Attempt, Credential, Site, Upstream
from relay.core.outbound_events import iso_time
from relay.core.performance import Performance

MAX_PAGE_SIZE = 500
_YEAR_10000 = 253_402_300_800.0  # UNIX seconds
MAX_BODY_BYTES = 1024 * 1024  # aiohttp's client_max_size: a longer body is 413
MAX_JSON_DEPTH = 32  # our objects nest 3 deep; more is an attack on the recursive code
_WHOLE = re.compile(r"[0-9]{1,9}")


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_time(timestamp)


def parse_time(name: str, text: str) -> float:
    """UNIX seconds or ISO 8601 (UTC when no offset is given), from 1970 to 9999."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = _iso_seconds(name, text)
    if not (math.isfinite(seconds) and 0 <= seconds < _YEAR_10000):
        raise bad_request(f"{name}: out of range (1970-01-01 to 9999-12-31)")
    return seconds


def _iso_seconds(name: str, text: str) -> float:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(
            f"{name}: not a time; use ISO 8601 (2026-11-21T10:00:00Z) or UNIX seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):
        return -1.0  # before year 1 in UTC: out of range


def query_time(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    return parse_time(name, text) if text else None


def page_of(request: web.Request) -> tuple[int, int]:
    page = _positive(request, "page", 1)
    size = _positive(request, "page_size", 50)
    if size > MAX_PAGE_SIZE:
        raise bad_request(f"page_size: at most {MAX_PAGE_SIZE}")
    return page, size


def _positive(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses.
    if _WHOLE.fullmatch(text) is None or int(text) < 1:
        raise bad_request(f"{name}: must be a whole number, 1 or more")
    return int(text)


def listing(items: list[Any], total: int, page: int, page_size: int) -> dict[str, Any]:
    return {"items": items, "total": total, "page": page, "page_size": page_size}


def paged(items: list[Any], page: int, page_size: int) -> dict[str, Any]:
    """A listing of an in-memory list."""
    start = (page - 1) * page_size
    return listing(items[start : start + page_size], len(items), page, page_size)


async def json_body(request: web.Request, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; an empty body is ``{}`` when not ``required``."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if not raw.strip():
        if required:
            raise bad_request("a JSON object is required as the body")
        return {}
    value = parse_json(raw, "the body")
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value


def parse_json(raw: bytes, what: str) -> Any:
    """JSON from a stranger: 400 saying why when it is not JSON or nests too deep."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_request(f"{what} is not valid JSON ({error})") from None
    except RecursionError:
        raise bad_request(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise bad_request(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """How deep lists and objects nest in ``value``, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:  # deeper is refused anyway: no need to walk it
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def managed_by(managed_by_file: bool) -> str:
    return "file" if managed_by_file else "api"


def upstream_view(
    u: Upstream, circuit: Circuit | None, performance: Performance | None = None
) -> dict[str, Any]:
    return {
        "name": u.name,
        "kind": u.kind.value,
        "host": u.host,
        "port": u.port,
        "tls": u.tls.value,
        "verify_tls": u.verify_tls,
        "username": u.username,
        "has_password": u.password is not None,
        "priority": u.priority,
        "active": u.active,
        "rate_per_minute": u.rate_per_minute,
        "daily_limit": u.daily_limit,
        "monthly_limit": u.monthly_limit,
        "max_connections": u.max_connections,
        "timeout_seconds": u.timeout_seconds,
        "cost_per_1000": u.cost_per_1000,
        "weight": u.weight,
        "spf_include": list(u.spf_include),
        "managed_by": managed_by(u.managed_by_file),
        "circuit": (circuit or Circuit()).state.value,
        "performance": performance_view(performance) if performance else None,
    }


def performance_view(p: Performance) -> dict[str, Any]:
    return {
        "score": round(p.score, 4),
        "success_rate": round(p.success_rate, 4),
        "latency_seconds": round(p.latency_seconds, 4),
        "samples": p.samples,
        "updated_at": iso(p.updated_at),
    }


def site_view(s: Site, credentials: list[Credential]) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "from": {"email": s.from_email, "name": s.from_name},
        "reply_to": s.reply_to_address if s.reply_to_address else s.reply_to.value,
        "senders": list(s.senders),
        "upstreams": list(s.upstreams),
        "bounce_address": s.bounce_address,
        "rate_per_minute": s.rate_per_minute,
        "daily_limit": s.daily_limit,
        "monthly_limit": s.monthly_limit,
        "strategy": s.strategy.value if s.strategy else None,
        "message_class": s.message_class.value,
        "credentials": [{"username": c.username} for c in credentials],
        "managed_by": managed_by(s.managed_by_file),
    }


def domain_view(d: Domain, checks: list[Check] | None) -> dict[str, Any]:
    return {
        "name": d.name,
        "managed_by": managed_by(d.managed_by_file),
        "signing": d.signing_key is not None,
        "keys": [
            {
                "selector": k.selector,
                "state": k.state.value,
                "algorithm": k.algorithm.value,
                "public_key": k.public_key,
                "retire_until": k.retire_until.isoformat() if k.retire_until else None,
            }
            for k in d.keys
        ],
        "checks": [check_view(c) for c in checks] if checks is not None else None,
    }


def check_view(c: Check) -> dict[str, Any]:
    return {
        "name": c.name,
        "status": c.status.value,
        "required": c.required,
        "found": c.found,
        "detail": c.detail,
        "publish": c.publish,
    }


def attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "upstream": a.upstream,
        "started_at": iso(a.started_at),
        "duration_seconds": round(a.duration, 4),
        "reply_code": a.reply.code if a.reply else None,
        "reply_text": a.reply.text if a.reply else None,
        "outcome": a.outcome,
        "recipients": list(a.recipients),
        "detail": a.detail,
        "route": a.route,
    }


# -- Keyset cursors: where the next page of a list starts, opaque to clients

_NOT_A_CURSOR = "cursor: not a cursor this API gave (use next_cursor as it came)"


def encode_cursor(position: tuple[float, str | int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def decode_cursor(text: str, key: type[str] | type[int]) -> tuple[float, Any]:
    """A cursor ``encode_cursor`` made: (a finite time, a ``key``: an id or a row number)."""
    value = None
    if len(text) <= 200:  # ours are well under 100 characters
        try:
            value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, UnicodeDecodeError):
            value = None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], int | float)
        or isinstance(value[0], bool)
        or not math.isfinite(value[0])
        or not isinstance(value[1], key)
        or isinstance(value[1], bool)
        or (isinstance(value[1], str) and len(value[1]) > 64)
    ):
        raise bad_request(_NOT_A_CURSOR)
    return float(value[0]), value[1]
