"""Who is logged in: the session cookie, checked against the admin tokens in force.

The cookie is encrypted (Fernet, aiohttp-session's EncryptedCookieStorage)
under a key derived from ``server.secret_key_file``, so every worker and
node reads it. It holds:

- ``admin``: the name of the token that logged in, and ``fp``, an HMAC of
  that token's hash under the session key. A request is logged in only
  while a token of that name *and* that hash is in force: a reload that
  removes or replaces the token logs its sessions out at once.
- ``admin`` = ``local`` with an empty ``fp`` after a one-time login link:
  good only while no admin tokens are configured.
- ``csrf``: the form token every POST must carry (compared in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from aiohttp import web
from aiohttp_session import Session, get_session, new_session

from admin_http.deps import DEPS, DashboardDeps
from relay.login_link_controller import LOCAL_ADMIN

ADMIN = web.RequestKey("dashboard_admin", str)
SESSION_SECONDS = 12 * 3600  # a session lasts a working day, then the token is asked again
CSRF_FIELD = "_csrf"


def dashboard_of(request: web.Request) -> DashboardDeps:
    dashboard = request.app[DEPS].dashboard
    assert dashboard is not None
    return dashboard


def fingerprint(key: bytes, token_hash: str) -> str:
    return hmac.new(key, token_hash.encode(), hashlib.sha256).hexdigest()[:32]


def admin_in_force(session: Session, request: web.Request) -> str | None:
    """The session's admin, if its token (or the no-token local login) still holds."""
    name, fp = session.get("admin"), session.get("fp")
    if not isinstance(name, str) or not isinstance(fp, str):
        return None
    tokens: Sequence[tuple[str, str]] = request.app[DEPS].tokens()
    dashboard = dashboard_of(request)
    if not fp:
        local = name == LOCAL_ADMIN and not tokens and dashboard.login_links is not None
        return name if local else None
    for token_name, token_hash in tokens:
        if token_name == name and hmac.compare_digest(
            fingerprint(dashboard.session_key, token_hash), fp
        ):
            return name
    return None


async def log_in(request: web.Request, name: str, token_hash: str | None) -> None:
    """A new session (never the one from before the login) for ``name``."""
    dashboard = dashboard_of(request)
    session = await new_session(request)
    session["admin"] = name
    session["fp"] = fingerprint(dashboard.session_key, token_hash) if token_hash else ""
    session["csrf"] = secrets.token_urlsafe(32)


async def csrf_token(request: web.Request) -> str:
    """This session's form token, made on first use (the login form has one too)."""
    session = await get_session(request)
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


async def csrf_ok(request: web.Request) -> bool:
    session = await get_session(request)
    expected = session.get("csrf")
    form = await request.post()
    given = form.get(CSRF_FIELD)
    if not isinstance(expected, str) or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


async def flash(request: web.Request, text: str, kind: str = "ok") -> None:
    """A one-line notice shown on the next page (after a POST's redirect)."""
    session = await get_session(request)
    session["flash"] = [kind, text]


async def take_flash(request: web.Request) -> tuple[str, str] | None:
    session = await get_session(request)
    found = session.pop("flash", None)
    if isinstance(found, list) and len(found) == 2:
        return str(found[0]), str(found[1])
    return None
