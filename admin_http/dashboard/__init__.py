"""The dashboard: a web UI at ``/`` of the admin listener, over the API's own controllers.

Server-rendered (Jinja2, autoescaped) with no inline script or style, so a
strict Content-Security-Policy holds; a session cookie (encrypted, HttpOnly,
SameSite=Strict) names the admin token that logged in and is checked against
the tokens in force on every request.
"""
