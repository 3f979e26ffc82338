"""``/u/{token}``: the one-click unsubscribe link of a campaign message (RFC 8058).

``POST`` unsubscribes in one request, with no cookie, redirect, script or confirmation
(section 3.2): a mailbox provider posts ``List-Unsubscribe=One-Click`` when its user presses
its own Unsubscribe button. The body is not required to be exactly that: the token in the
URL is what authorises (only the relay can sign one), some clients post an empty body, and
the page's own button posts the same field. Only its size is checked: at most
``MAX_BODY_BYTES`` (413 beyond, refused by its Content-Length before a byte is read, or as it
comes), read before the token is looked at. The answer is 200 with a "You are unsubscribed"
page, the same for the first post and every later one.

``GET`` (and ``HEAD``, which aiohttp answers from it) never unsubscribes: mail scanners and
link previews open every link of a message. It shows "Unsubscribe j***@example.com from
<site> mailings?" and a plain HTML form that posts the one field back to the same URL, or
says the address is already unsubscribed.

A forged or altered token, or one whose campaign or contact is gone: 404 and nothing
changed; a page saying so to a browser, the error envelope to anything else. Every value on
a page goes through Jinja's escaping; the pages load nothing and run no script, and their
Content-Security-Policy says so (and that nothing may frame them, so no other site can
trick a visitor into pressing the button).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from admin_http.errors import error_response, not_found
from public_http.deps import deps_of
from public_http.error_page import wants_page
from relay.core.unsubscribe import masked
from relay.unsubscribe_controller import Contact, UnsubscribeController

MAX_BODY_BYTES = 1024  # "List-Unsubscribe=One-Click" is 26
_NOT_OURS = "this unsubscribe link is not valid: cut short, changed, or its mailing is gone"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}
_PAGES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_TITLES = {
    "confirm": "Unsubscribe?",
    "done": "You are unsubscribed",
    "already": "Already unsubscribed",
    "unknown": "Unsubscribe link not valid",
    "too_large": "Request too large",
}


async def confirm(request: web.Request) -> web.Response:
    """GET and HEAD: what the link would do; it does nothing."""
    token = request.match_info["token"]
    contact = await _controller(request).look(token)
    if contact is None:
        return _not_ours(request)
    state = "already" if contact.unsubscribed else "confirm"
    return _page(200, state, contact, token=token)


async def unsubscribe(request: web.Request) -> web.Response:
    """POST: unsubscribe now (RFC 8058 one-click, or the confirmation page's button)."""
    if not await _body_fits(request):
        if wants_page(request):
            return _page(413, "too_large", limit=MAX_BODY_BYTES)
        return error_response(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    contact = await _controller(request).unsubscribe(request.match_info["token"])
    if contact is None:
        return _not_ours(request)
    return _page(200, "done", contact)


def _controller(request: web.Request) -> UnsubscribeController:
    controller = deps_of(request).unsubscribe
    if controller is None:  # the relay always builds one; a test's bare app may not
        raise not_found(_NOT_OURS)
    return controller


async def _body_fits(request: web.Request) -> bool:
    """Read (and drop) the body; False once it passes the cap, declared or as it came."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return False
    size = 0
    async for chunk in request.content.iter_chunked(MAX_BODY_BYTES + 1):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return False
    return True


def _not_ours(request: web.Request) -> web.Response:
    if wants_page(request):
        return _page(404, "unknown")
    return error_response(404, "not_found", _NOT_OURS)


def _page(status: int, state: str, contact: Contact | None = None, **values: Any) -> web.Response:
    if contact is not None:
        values.update(email=masked(contact.email), site=contact.site_name)
    text = _PAGES.get_template("unsubscribe.html").render(
        state=state, title=_TITLES[state], **values
    )
    return web.Response(status=status, text=text, content_type="text/html", headers=_HEADERS)
