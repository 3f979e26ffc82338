"""/api/v1/sites/{id}/contacts: a site's contacts (relay/contact_controller.py).

POST takes one contact object (201 when new, 200 when it updated one; 422
when it is invalid), ``{"contacts": [...]}`` or a ``text/csv`` body with a
header row; the last two answer 200 with how many were added, updated and
rejected, and why each rejected one was (its ``index`` in the list, or its
``row`` in the file, the header being row 1). A CSV body is streamed: up to
``MAX_CSV_BYTES`` (413 beyond), never all held at once; a JSON body is held,
so is bound by the admin API's body limit (1 MiB).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from admin_http.deps import api_of
from admin_http.errors import ApiError, bad_request, error_response
from admin_http.middlewares import ACTOR
from admin_http.schemas import iso, json_body, listing, page_of
from relay.contact_controller import MAX_CSV_BYTES, ContactController, Tally, TooLarge
from relay.contact_database import ContactRow, Search
from relay.core.addresses import control_character

CHUNK_BYTES = 16 * 1024  # about 200 rows: parsed and checked between two turns of the loop


class BrokenBody(Exception):
    """The client stopped sending before the body's end."""


def _controller(request: web.Request) -> ContactController:
    controller = api_of(request).contacts
    assert controller is not None
    return controller


def contact_view(c: ContactRow) -> dict[str, Any]:
    return {
        "email": c.email,
        "first_name": c.first_name,
        "last_name": c.last_name,
        "company": c.company,
        "attributes": c.attributes,
        "tags": c.tags,
        "unsubscribed": c.unsubscribed,
        "unsubscribed_at": iso(c.unsubscribed_at),
        "last_email_sent": iso(c.last_email_sent),
        "email_count": c.email_count,
        "created_at": iso(c.created_at),
        "updated_at": iso(c.updated_at),
    }


async def list_contacts(request: web.Request) -> web.Response:
    page, size = page_of(request)
    flag = request.query.get("unsubscribed")
    if flag not in (None, "", "true", "false"):
        raise bad_request("unsubscribed: true or false")
    tag, q = request.query.get("tag") or None, request.query.get("q") or None
    if any(len(t) > 256 or control_character(t) for t in (tag or "", q or "")):
        raise bad_request("tag, q: at most 256 characters, no control characters")
    search = Search(
        site_id=request.match_info["id"],
        tag=tag,
        q=q,
        unsubscribed=None if not flag else flag == "true",
        offset=(page - 1) * size,
        limit=size,
    )
    found, total = await _controller(request).search(search)
    return web.json_response(listing([contact_view(c) for c in found], total, page, size))


async def add_contacts(request: web.Request) -> web.Response:
    controller, actor, site_id = _controller(request), request[ACTOR], request.match_info["id"]
    if request.content_type == "text/csv":
        return await _import_csv(request, controller, actor, site_id)
    body = await json_body(request)
    if "contacts" not in body:
        created = await controller.add_one(actor, site_id, body)
        contact = await controller.get(site_id, str(body["email"]).strip())
        tally = Tally(added=int(created), updated=int(not created))
        answer = {**tally.answer(), "contact": contact_view(contact)}
        return web.json_response(answer, status=201 if created else 200)
    if set(body) != {"contacts"} or not isinstance(body["contacts"], list):
        raise bad_request('either one contact object or {"contacts": [...]}')
    tally = await controller.add_many(actor, site_id, body["contacts"])
    return web.json_response(tally.answer())


async def _import_csv(
    request: web.Request, controller: ContactController, actor: str, site_id: str
) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_CSV_BYTES:
        raise ApiError(413, "too_large", f"a CSV body may have at most {MAX_CSV_BYTES} bytes")
    tally = Tally()
    try:
        await controller.import_csv(actor, site_id, _chunks(request), tally)
    except TooLarge:
        return _broken_off(413, "too_large", f"the body passed {MAX_CSV_BYTES} bytes", tally)
    except BrokenBody as error:
        return _broken_off(400, "bad_request", f"the body broke off ({error})", tally)
    return web.json_response(tally.answer())


async def _chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body as it arrives; TooLarge past MAX_CSV_BYTES, BrokenBody when it stops short."""
    size = 0
    while True:
        try:
            chunk = await request.content.read(CHUNK_BYTES)
        except Exception as error:  # the peer went away: aiohttp's own errors or OSError
            raise BrokenBody(type(error).__name__) from None
        if not chunk:
            return
        size += len(chunk)
        if size > MAX_CSV_BYTES:
            raise TooLarge
        yield chunk


def _broken_off(status: int, code: str, why: str, tally: Tally) -> web.Response:
    done = f"{tally.added} added, {tally.updated} updated, {tally.rejected} rejected"
    return error_response(
        status, code, f"{why}: the batches before stay ({done}); the rest was not read"
    )


async def get_contact(request: web.Request) -> web.Response:
    site_id, email = request.match_info["id"], request.match_info["email"]
    return web.json_response(contact_view(await _controller(request).get(site_id, email)))


async def patch_contact(request: web.Request) -> web.Response:
    site_id, email = request.match_info["id"], request.match_info["email"]
    body = await json_body(request)
    changed = await _controller(request).update(request[ACTOR], site_id, email, body)
    return web.json_response(contact_view(changed))


async def delete_contact(request: web.Request) -> web.Response:
    site_id, email = request.match_info["id"], request.match_info["email"]
    await _controller(request).delete(request[ACTOR], site_id, email)
    return web.Response(status=204)
