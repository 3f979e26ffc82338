"""POST /api/v1/send and GET /api/v1/send/{id}: the send API over HTTP.

Translates the wire to relay/send_controller.py and back. The body is JSON
(``application/json``), or ``multipart/form-data`` with a ``message`` part
holding that JSON and one part per attached file (a part's own filename,
its percent-escapes decoded, and type; ``application/octet-stream`` or none
is guessed from the filename). A multipart body is read part by part within
the listener's cap (aiohttp's ``client_max_size`` covers only bodies read
whole). Answers use the admin API's error envelope: 400 malformed, 401 (with
``WWW-Authenticate: Bearer``) no, unknown or expired key, 404 another site's
or an unknown message, 409 the same Idempotency-Key in flight, 413, 415, 422
with ``problems`` (code ``suppressed`` when every recipient is on the site's
suppression list), 429 with ``Retry-After``. A 202 lists the recipients left
out as suppressed, when there are any.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

from admin_http.errors import ApiError, bad_request, error_response, not_found
from admin_http.schemas import parse_json
from public_http import answers
from public_http.client import client_ip
from public_http.deps import deps_of
from relay.core import idempotency
from relay.core.model import ApiKey, Site
from relay.core.send_request import Upload
from relay.queue_database import MessageDetail
from relay.send_controller import (
    AllSuppressed,
    IdempotencyKey,
    Invalid,
    SendController,
    SendResult,
    Sent,
    Throttled,
    Unauthorized,
    sent_body,
)

# The listener's client_max_size (public_http/app.py), which a multipart body read part by
# part does not meet: counted here.
MAX_BODY_BYTES = 40 * 1024 * 1024
MAX_PARTS = 101  # the message and 100 files
_ON_LOOP_BYTES = 65_536
_UNSPECIFIED_TYPES = {None, "", "application/octet-stream"}


async def send(request: web.Request) -> web.Response:
    controller, ip = _controller(request), _client(request)
    caller = await _caller(controller, request, ip)
    if isinstance(caller, web.Response):
        return caller
    key, site = caller
    header = request.headers.get("Idempotency-Key")
    if header is not None and (problem := idempotency.key_problem(header)):
        raise bad_request(problem)
    body, files, digest = await _read(request)
    claim = IdempotencyKey(header, digest) if header is not None else None
    return _answer(await controller.send(key, site, body, files, ip, claim))


async def status(request: web.Request) -> web.Response:
    controller = _controller(request)
    caller = await _caller(controller, request, _client(request))
    if isinstance(caller, web.Response):
        return caller
    message_id = request.match_info["id"]
    detail = await controller.status(caller[1], message_id)
    if detail is None:
        raise not_found(f"no message {message_id[:64]!r} of this site")
    return web.json_response(_status_view(detail))


def _controller(request: web.Request) -> SendController:
    controller = deps_of(request).send
    if controller is None:
        raise not_found("the send API is not enabled")
    return controller


def _client(request: web.Request) -> str:
    proxies = deps_of(request).config().trusted_proxies
    return client_ip(request.remote or "", request.headers.get("X-Forwarded-For"), proxies)


async def _caller(
    controller: SendController, request: web.Request, ip: str
) -> tuple[ApiKey, Site] | web.Response:
    """The caller's key and site, or the refusal to answer with."""
    found = await controller.authenticate(request.headers.get("Authorization"), ip)
    if isinstance(found, Throttled):
        return error_response(
            429,
            "too_many_requests",
            "too many failed authentications from this address; try again later",
            headers={"Retry-After": str(found.retry_after)},
        )
    if isinstance(found, Unauthorized):
        return error_response(
            401, "unauthorized", found.message, headers={"WWW-Authenticate": "Bearer"}
        )
    return found


def _answer(result: SendResult) -> web.Response:
    if isinstance(result, Sent):
        return web.json_response(sent_body(result.message_id, result.suppressed), status=202)
    if isinstance(result, AllSuppressed):
        return error_response(
            422,
            "suppressed",
            "every recipient is on the site's suppression list; nothing was sent",
            [
                f"{address}: recipient is suppressed for this site ({reason})"
                for address, reason in result.suppressed.items()
            ],
        )
    if isinstance(result, Invalid):
        return error_response(422, "invalid", "the request has problems", result.problems)
    if isinstance(result, idempotency.Replay):
        return web.json_response(
            result.body, status=result.status, headers={"Idempotent-Replayed": "true"}
        )
    if isinstance(result, idempotency.InProgress):
        return error_response(
            409, "conflict", "a request with this Idempotency-Key is in progress; retry"
        )
    if isinstance(result, idempotency.OtherRequest):
        return error_response(
            422,
            "invalid",
            "this Idempotency-Key was used for another request",
            ["Idempotency-Key: already used with a different body (within 24 hours)"],
        )
    return answers.answer(result)


# -- the body


async def _read(request: web.Request) -> tuple[object, list[Upload], str]:
    """(the JSON message, the uploaded files, the request's digest for Idempotency-Key)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    kind = request.content_type
    if kind == "application/json":
        raw = await request.read()
        if len(raw) > _ON_LOOP_BYTES:  # megabytes of base64 attachments: parsed in a thread
            return await asyncio.to_thread(_json_request, raw)
        return _json_request(raw)
    if kind == "multipart/form-data":
        return await _multipart(request)
    raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")


async def _multipart(request: web.Request) -> tuple[object, list[Upload], str]:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError, KeyError) as error:  # no or a bad boundary
        raise bad_request(f"not a multipart body ({error})") from None
    message: bytes | None = None
    files: list[Upload] = []
    parts: list[tuple[str, str | None, str | None, bytes]] = []
    budget = MAX_BODY_BYTES
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise bad_request("nested multipart bodies are not accepted")
            if len(parts) >= MAX_PARTS:
                raise bad_request(f"at most {MAX_PARTS} parts")
            data = await _part_bytes(part, budget)
            budget -= len(data)
            kind = part.headers.get("Content-Type")
            parts.append((part.name or "", part.filename, kind, data))
            if part.filename == "" and not data:
                continue  # a browser's file input left empty
            if part.filename is not None:
                content_type = None if kind in _UNSPECIFIED_TYPES else kind
                files.append(Upload(_filename(part.filename), content_type, data))
            elif part.name == "message" and message is None:
                message = data
            else:
                raise bad_request(
                    f"part {str(part.name)[:64]!r}: expected one 'message' part (the JSON) "
                    "and file parts (with a filename)"
                )
    except ValueError as error:  # a broken multipart body (aiohttp says ValueError)
        raise bad_request(f"not a valid multipart body ({error})") from None
    if message is None:
        raise bad_request("a 'message' part holding the JSON message is required")
    return parse_json(message, "the message"), files, idempotency.multipart_digest(parts)


def _filename(sent: str) -> str:
    """A part's filename with percent-escapes decoded: browsers escape '"', CR and LF so
    (WHATWG's multipart/form-data), aiohttp's client every non-ASCII character; curl sends
    UTF-8 as it is. What is left of a control character is refused later (422)."""
    try:
        return unquote(sent, errors="strict")
    except UnicodeDecodeError:
        return sent


async def _part_bytes(part: BodyPartReader, budget: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(65_536):
        size += len(chunk)
        if size > budget:
            raise ApiError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_request(raw: bytes) -> tuple[object, list[Upload], str]:
    return parse_json(raw, "the message"), [], idempotency.json_digest(raw)


def _status_view(detail: MessageDetail) -> dict[str, Any]:
    return {
        "id": detail.id,
        "status": detail.status.value,
        "subject": detail.subject,
        "attempts": detail.attempt_count,
        "recipients": [
            {
                "address": r.address,
                "status": r.status.value,
                "reply_code": r.reply_code,
                "reply": r.reply_text,
            }
            for r in detail.recipients
        ],
    }
