"""A plain HTML form post that fails is answered with a page a person can read.

A browser that navigated to the answer (it asks ``text/html`` and not JSON) would
show the error envelope as raw JSON; the page says the same in words, with the
same status and headers (Retry-After). Scripts and API clients still get JSON.
Everything shown is escaped; the page has no script and loads nothing (its one
style is inline).
"""

from __future__ import annotations

import html
import json

from aiohttp import web

_FIELD_PREFIX = "formData."  # the API's path of a field; a person knows the field's name
_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:3rem auto;"
    "padding:0 1rem;color:#222}h1{font-size:1.5rem;color:#b42318}li{margin:.25rem 0}"
)


def wants_page(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


def error_page(response: web.Response) -> web.Response:
    """The envelope ``response`` (an error_response) as an HTML page."""
    assert isinstance(response.body, bytes)
    error = json.loads(response.body)["error"]
    problems = [p.removeprefix(_FIELD_PREFIX) for p in error.get("problems", [])]
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Your message was not sent</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head>\n"
        "<body><h1>Your message was not sent</h1>"
        f"<p>{html.escape(_sentence(error['message']))}</p>"
        + (f"<ul>{items}</ul>" if items else "")
        + "<p>Go back with your browser's Back button: what you typed is still in the "
        "form.</p></body></html>\n"
    )
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() in {"retry-after", "access-control-allow-origin", "vary"}
    }
    headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return web.Response(
        status=response.status, text=page, content_type="text/html", headers=headers
    )


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")
