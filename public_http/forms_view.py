"""Landing-page forms over HTTP: ``GET /api/form-token``, ``POST /api/send-inquiry`` and their
CORS preflights (relay/form_controller.py decides; this module reads and answers).

A post is JSON (``{"landingPageId", "formData": {...}, "formToken"}``) or an HTML
form, urlencoded or multipart, whose fields are ``landingPageId``, ``formToken``
and either ``formData[name]`` or plain names (a name sent twice: its values joined
with ", "). The body is read up to ``http.max_form_bytes`` and no further: a
bigger one is 413, its Content-Length refused before a byte is read, and the
connection is closed after the answer (aiohttp reads and drops what the client
still sends for up to 10 s, so that the client sees the 413; none of it is kept).

CORS: an answer to a request whose Origin the form allows carries
``Access-Control-Allow-Origin: <that origin>`` and ``Vary: Origin``; a request
whose Origin it does not allow gets 403 and no CORS header at all. A preflight
(OPTIONS) is 204 with the allowed method, ``Content-Type`` as the one allowed
header and a max age, for an Origin some form allows (the form named by
``?landingPageId=`` when the URL names one), else 403. Answers that come before
the form is known (400, 413, 415, 404) carry CORS headers when some form allows
the Origin, so the page's script can read them.

A JSON post, or an HTML one that asks ``Accept: application/json`` (a script's
fetch of a FormData), is answered ``202 {"id", "status": "queued"}``; a plain
HTML post ``303`` to the form's ``redirect``, or without one a short "Thank you"
page (202). A bot gets exactly what a person would. Errors are the error envelope,
or a page saying the same to a browser's plain post (error_page.py).
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import re
from urllib.parse import parse_qsl

from aiohttp import web

from admin_http.errors import ApiError, bad_request, error_response
from admin_http.schemas import parse_json
from public_http.answers import accepted, answer
from public_http.client import client_ip
from public_http.deps import deps_of
from public_http.error_page import error_page, wants_page
from relay.core.send_request import shown
from relay.form_controller import (
    Decoy,
    FormController,
    FormPost,
    Invalid,
    NotFound,
    OriginRefused,
    Outcome,
    RateLimited,
)
from relay.ingress_controller import Queued

JSON = "application/json"
URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
PREFLIGHT_MAX_AGE_SECONDS = 600  # browsers keep the answer this long (Chrome at most 7200)
_READ_CHUNK = 65_536
_FORM_DATA_NAME = re.compile(r"formData\[(.*)\]", re.DOTALL)
_THANKS = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Thank you</title>'
    '<meta name="viewport" content="width=device-width, initial-scale=1"></head>\n'
    "<body><p>Thank you: we received your message.</p></body></html>\n"
)


async def form_token(request: web.Request) -> web.Response:
    """``{"token": ...}`` for the page of ``landingPageId``, signed and dated now."""
    forms = _forms(request)
    origin = request.headers.get("Origin")
    page = request.query.get("landingPageId")
    if not page:
        return _cors(_bad_request("landingPageId is required"), forms, origin)
    token = forms.issue_token(page, origin)
    if isinstance(token, OriginRefused):
        return _forbidden()
    if isinstance(token, NotFound):
        return _cors(_not_found(), forms, origin)
    response = web.json_response({"token": token}, headers={"Cache-Control": "no-store"})
    return _with_cors_headers(response, origin)


async def send_inquiry(request: web.Request) -> web.Response:
    response = await _send_inquiry(request)
    if response.status >= 400 and wants_page(request):
        return error_page(response)
    return response


async def _send_inquiry(request: web.Request) -> web.Response:
    forms = _forms(request)
    deps = deps_of(request)
    http = deps.config()
    origin = request.headers.get("Origin")
    forwarded = request.headers.getall("X-Forwarded-For", None)
    client = client_ip(
        request.remote or "", ",".join(forwarded) if forwarded else None, http.trusted_proxies
    )
    try:
        post, wants_html = await _read_post(request, http.max_form_bytes, origin, client)
    except ApiError as e:
        response = error_response(e.status, e.code, e.message, e.problems)
        if e.status == 413:
            response.force_close()  # no next request on it: what still comes is dropped
        return _cors(response, forms, origin)
    outcome = await forms.submit(post)
    if isinstance(outcome, OriginRefused):
        return _forbidden()
    site = forms.site(post.landing_page_id)
    redirect = site.form.redirect if site is not None and site.form is not None else None
    response = _answer(outcome, wants_html, redirect)
    if isinstance(outcome, NotFound):
        return _cors(response, forms, origin)
    return _with_cors_headers(response, origin)


async def preflight_token(request: web.Request) -> web.Response:
    return _preflight(request, "GET")


async def preflight_inquiry(request: web.Request) -> web.Response:
    return _preflight(request, "POST")


def _preflight(request: web.Request, method: str) -> web.Response:
    origin = request.headers.get("Origin")
    if origin is None or not _forms(request).preflight_allowed(
        origin, request.query.get("landingPageId")
    ):
        return _forbidden()
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": method,
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
            "Vary": "Origin",
        },
    )


def _answer(outcome: Outcome, wants_html: bool, redirect: str | None) -> web.Response:
    if isinstance(outcome, Queued | Decoy):
        if not wants_html:
            return accepted(outcome.message_id)
        if redirect is not None:
            return web.Response(status=303, headers={"Location": redirect})
        return web.Response(
            status=202,
            text=_THANKS,
            content_type="text/html",
            headers={"Content-Security-Policy": "default-src 'none'"},
        )
    if isinstance(outcome, Invalid):
        return error_response(422, "invalid", "the form has problems", outcome.problems)
    if isinstance(outcome, RateLimited):
        wait = outcome.retry_after
        return error_response(
            429,
            "too_many_requests",
            f"too many posts from your address; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    if isinstance(outcome, NotFound):
        return _not_found()
    if isinstance(outcome, OriginRefused):
        return _forbidden()
    return answer(outcome)


async def _read_post(
    request: web.Request, limit: int, origin: str | None, client: str
) -> tuple[FormPost, bool]:
    """The post and whether it wants an HTML answer; ApiError for what is not one."""
    kind = request.content_type
    if kind not in (JSON, URLENCODED, MULTIPART):
        raise ApiError(415, "unsupported_media_type", f"send {JSON}, {URLENCODED} or {MULTIPART}")
    body = await _read_capped(request, limit)
    if body is None:
        raise ApiError(413, "too_large", f"a form post is at most {limit} bytes")
    if kind == JSON:
        page, fields, token = _from_json(body)
        return FormPost(page, fields, token, origin, client), False
    if kind == URLENCODED:
        pairs, problems = _urlencoded(body), list[str]()
    else:
        pairs, problems = _multipart(body, request.headers.get("Content-Type", ""))
    page, fields, token = _from_pairs(pairs)
    wants_html = JSON not in request.headers.get("Accept", "")
    return FormPost(page, fields, token, origin, client, tuple(problems)), wants_html


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body when it is at most ``limit`` bytes; None, having read at most limit + a chunk,
    when it is bigger."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, size = [], 0
    while chunk := await request.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _from_json(body: bytes) -> tuple[str, dict[str, object], str | None]:
    data = parse_json(body, "the body")
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    page = data.get("landingPageId")
    if not isinstance(page, str) or not page:
        raise bad_request("landingPageId is required (a string)")
    fields = data.get("formData", {})
    if not isinstance(fields, dict):
        raise bad_request("formData must be an object")
    token = data.get("formToken")
    return page, fields, token if isinstance(token, str) else None


def _urlencoded(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise bad_request("the form is not UTF-8") from None


def _multipart(body: bytes, content_type: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The text fields of a multipart/form-data body (RFC 7578), and a problem per file."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    if not message.is_multipart() or message.defects:
        raise bad_request("the multipart body is malformed")
    pairs, problems = [], []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue  # not a form field (RFC 7578 4.2 requires the name)
        name = _utf8(name)
        payload = part.get_payload(decode=True)
        if part.get_filename() is not None:
            problems.append(f"formData.{shown(name)}: a file; forms take text fields only")
            continue
        try:
            value = payload.decode("utf-8") if isinstance(payload, bytes) else ""
        except UnicodeDecodeError:
            raise bad_request("the form is not UTF-8") from None
        pairs.append((name, value))
    return pairs, problems


def _utf8(text: str) -> str:
    """A parameter the email parser read as ASCII with surrogate escapes, as the UTF-8 it was."""
    try:
        return text.encode("ascii", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return text  # not UTF-8 either: check_form refuses the lone surrogates


def _from_pairs(pairs: list[tuple[str, str]]) -> tuple[str, dict[str, object], str | None]:
    page = token = None
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name == "landingPageId":
            page = value
        elif name == "formToken":
            token = value
        else:
            match = _FORM_DATA_NAME.fullmatch(name)
            values.setdefault(match.group(1) if match else name, []).append(value)
    if not page:
        raise bad_request("landingPageId is required")
    return page, {name: ", ".join(v) for name, v in values.items()}, token


def _forms(request: web.Request) -> FormController:
    forms = deps_of(request).forms
    if forms is None:
        raise web.HTTPNotFound()
    return forms


def _cors(response: web.Response, forms: FormController, origin: str | None) -> web.Response:
    """CORS headers on an answer given before the form was known: when some form allows it."""
    if origin is not None and forms.any_form_allows(origin):
        return _with_cors_headers(response, origin)
    return response


def _with_cors_headers(response: web.Response, origin: str | None) -> web.Response:
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        response.headers["Vary"] = "Origin"
    return response


def _bad_request(message: str) -> web.Response:
    return error_response(400, "bad_request", message)


def _not_found() -> web.Response:
    return error_response(404, "not_found", "no landing page form with this landingPageId")


def _forbidden() -> web.Response:
    return error_response(403, "forbidden", "this origin may not use this form")
