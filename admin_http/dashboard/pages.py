"""Rendering a page: the template, the layout's context, the headers every page carries."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from admin_http.dashboard.session import ADMIN, CSRF_FIELD, csrf_token, take_flash

T = TypeVar("T")

# No inline script or style anywhere: the pages load /static/ only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",  # for browsers older than frame-ancestors
}
NAV = (
    ("overview", "Overview", "/"),
    ("upstreams", "Upstreams", "/upstreams"),
    ("sites", "Sites", "/sites"),
    ("domains", "Domains", "/domains"),
    ("messages", "Messages", "/messages"),
    ("queue", "Queue", "/queue"),
    ("suppressions", "Suppressions", "/suppressions"),
    ("webhooks", "Webhooks", "/webhooks"),
    ("templates", "Templates", "/templates"),
    ("campaigns", "Campaigns", "/campaigns"),
    ("audit", "Audit", "/audit"),
)
# Sections with pages; any other is greyed out in the sidebar ("soon").
BUILT = frozenset(key for key, _, _ in NAV)
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9/_.~%?=&+-]*")


async def page(
    request: web.Request,
    template: str,
    context: dict[str, Any],
    *,
    section: str = "",
    title: str = "",
    status: int = 200,
) -> web.Response:
    layout = {
        "admin": request.get(ADMIN),
        "csrf": await csrf_token(request),
        "csrf_field": CSRF_FIELD,
        "nav": NAV,
        "built": BUILT,
        "section": section,
        "title": title,
        "flash": await take_flash(request),
    }
    response = aiohttp_jinja2.render_template(
        template, request, {**layout, **context}, status=status
    )
    response.headers["Cache-Control"] = "no-store"  # pages hold what only admins may see
    return response


def see_other(location: str) -> web.Response:
    """303 after a POST: the browser GETs ``location``, and reloading posts nothing again."""
    return web.Response(status=303, headers={"Location": location})


def local_path(wanted: str | None, default: str = "/") -> str:
    """``wanted`` when it is a path on this site (never ``//host`` or a scheme), else default."""
    return wanted if wanted and _LOCAL_PATH.fullmatch(wanted) else default


def page_number(text: str | None, default: int, allowed: range | tuple[int, ...]) -> int:
    """A page or page size from the query: ASCII digits in ``allowed``, else ``default``."""
    if text is None or not text.isascii() or not text.isdigit():
        return default
    value = int(text)
    return value if value in allowed else default


LIST_PAGE_SIZE = 50  # the pages of sites, upstreams, domains and templates


def page_of(request: web.Request, items: Sequence[T], path: str) -> tuple[list[T], dict[str, Any]]:
    """One page of a list held in memory (sites, upstreams, domains, templates) and its pager;
    a page past the end shows the last one."""
    pages = max(-(-len(items) // LIST_PAGE_SIZE), 1)
    page_no = min(page_number(request.query.get("page"), 1, range(1, 1_000_000)), pages)
    shown = list(items[(page_no - 1) * LIST_PAGE_SIZE : page_no * LIST_PAGE_SIZE])
    return shown, pager(path, {}, page_no, LIST_PAGE_SIZE, len(shown), len(items))


def pager(
    path: str,
    kept: dict[str, str],
    page_no: int,
    page_size: int,
    shown: int,
    total: int,
    exact: bool = True,
) -> dict[str, Any]:
    """What the pager under a table needs: the links either way and the range shown
    (``exact`` false: the message log counted up to a limit, and there are at least ``total``)."""
    pages = max(-(-total // page_size), 1)

    def link(number: int) -> str:
        return f"{path}?" + urlencode({**kept, "page": number})

    first = (page_no - 1) * page_size + 1 if shown else 0
    return {
        "page": page_no,
        "pages": pages,
        "total": total,
        "exact": exact,
        "first_shown": first,
        "last_shown": first + shown - 1 if shown else 0,
        "previous": link(page_no - 1) if page_no > 1 else None,
        "next": link(page_no + 1) if page_no < pages or not exact else None,
        "single": pages == 1 and page_no == 1 and exact,  # nothing to page through
    }
