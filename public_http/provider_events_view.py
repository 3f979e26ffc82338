"""POST /api/v1/provider-events/{upstream}: bounces, complaints and deliveries reported by
SES (through SNS), Mailgun, SendGrid or Postmark, for an upstream with ``events:``.

The upstream is looked up before the body is read (404 when it takes no provider events,
the same answer whether it exists or not); the body is read within the core's
``MAX_BODY_BYTES`` (413 beyond, before anything looks at it). Then
relay/provider_event_controller.py verifies and applies it. Answers: 200 when taken (also
when its messages are not ours, or it was taken before: a provider retries anything
else for days), 400 malformed or of an unknown type, 401 signature, credentials, or time
that do not verify (``WWW-Authenticate: Basic`` for Postmark's), 403 an SNS topic that is
not configured, 503 when the SNS certificate could not be fetched (SNS tries again).
"""

from __future__ import annotations

from aiohttp import web

from admin_http.errors import error_response, not_found
from public_http.deps import deps_of
from relay.core.providers.model import MAX_BODY_BYTES, Refusal, Refused
from relay.provider_event_controller import Applied, Noted, Result, Unavailable

RETRY_AFTER_SECONDS = 60
_CHUNK_BYTES = 64 * 1024
_STATUS = {
    Refusal.MALFORMED: 400,
    Refusal.UNKNOWN_TYPE: 400,
    Refusal.BAD_SIGNATURE: 401,
    Refusal.BAD_CREDENTIALS: 401,
    Refusal.STALE_TIMESTAMP: 401,
    Refusal.CERT_URL_REFUSED: 401,
    Refusal.BAD_CERTIFICATE: 401,
    Refusal.UNEXPECTED_TOPIC: 403,
}


async def receive(request: web.Request) -> web.StreamResponse:
    controller = deps_of(request).provider_events
    name = request.match_info["upstream"]
    settings = controller.settings(name) if controller is not None else None
    if controller is None or settings is None:
        raise not_found(f"no upstream {name[:64]!r} takes provider events (upstreams[].events)")
    body = await _read(request)
    if body is None:
        return error_response(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    return _answer(await controller.receive(name, settings, body, request.headers))


async def _read(request: web.Request) -> bytes | None:
    """The body, or None once it passes the limit (what was declared or what came)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


def _answer(result: Result) -> web.Response:
    if isinstance(result, Applied):
        return web.json_response(
            {
                "status": "replayed" if result.replayed else "accepted",
                "events": result.events,
                "matched": result.matched,
                "unmatched": result.unmatched,
                "ignored": result.ignored,
            }
        )
    if isinstance(result, Noted):
        return web.json_response({"status": "noted", "detail": result.what})
    if isinstance(result, Unavailable):
        return error_response(
            503, "unavailable", result.detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )
    return _refused(result)


def _refused(result: Refused) -> web.Response:
    headers = None
    if result.reason is Refusal.BAD_CREDENTIALS:
        headers = {"WWW-Authenticate": 'Basic realm="relay provider events"'}
    return error_response(
        _STATUS[result.reason], result.reason.value, result.detail, headers=headers
    )
