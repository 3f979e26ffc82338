"""The ingress's verdict on a message as an HTTP answer (the admin API's error envelope).

202 once the message is stored (the same moment SMTP says 250); a site over
its limits 429 with Retry-After; a message the relay refuses 413 (too large)
or 422 (with the SMTP reply's text, which says why); the relay's own trouble
503, to be tried again.
"""

from __future__ import annotations

from aiohttp import web

from admin_http.errors import error_response
from relay.core.policy import Reject, TempFail
from relay.ingress_controller import Queued

RETRY_AFTER_LOCAL_ERROR = 30  # seconds; the store was unreachable or failed


def accepted(message_id: str) -> web.Response:
    return web.json_response({"id": message_id, "status": "queued"}, status=202)


def answer(result: Queued | Reject | TempFail) -> web.Response:
    if isinstance(result, Queued):
        return accepted(result.message_id)
    text = result.reply.text
    if isinstance(result, TempFail):
        if result.retry_after is not None:
            return error_response(
                429, "too_many_requests", text, headers={"Retry-After": str(result.retry_after)}
            )
        return error_response(
            503, "unavailable", text, headers={"Retry-After": str(RETRY_AFTER_LOCAL_ERROR)}
        )
    if result.reply.code == 552:  # 5.3.4: the message or its header block is too big
        return error_response(413, "too_large", text)
    return error_response(422, "invalid", "the message was refused", [text])
