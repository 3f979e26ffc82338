"""The HTTP ingress's part of the YAML: the `http:` listener, a site's `form:` and
`api_keys:`, and the named `templates:`.

The same rules as the rest of the file (relay/config.py): every problem with
its path, unknown keys refused. What strangers reach is decided here once: a
form's recipients are addresses from this file, never from a post; its
origins are exact `scheme://host[:port]` strings, compared as they are.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from relay.config_section import (
    IpNetwork,
    Section,
    check_unique,
    read_existing_file,
    read_name,
    read_networks,
)
from relay.core.addresses import is_address
from relay.core.model import ApiKey, FormSettings
from relay.core.templates import Template, check_template
from relay.core.tokens import is_token_hash

_FIELD = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# What a link inside List-Unsubscribe's <...> carries as written: RFC 3986's unreserved and a
# few sub-delims (never ",", which separates the header's links), ":", "/", "@", "%", and
# "[]" for an IPv6 host.
_URL_SAFE = re.compile(r"[A-Za-z0-9._~&+;=:/@%\[\]-]+")
_MAILTO = re.compile(r"[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+")  # nothing to escape inside mailto:


@dataclass(frozen=True)
class HttpConfig:
    """The public listener (forms, the send API); never the admin one: it faces the internet."""

    host: str = "127.0.0.1"
    port: int = 8080
    trusted_proxies: tuple[IpNetwork, ...] = ()  # their X-Forwarded-For is believed
    cert_file: Path | None = None  # with key_file: HTTPS
    key_file: Path | None = None
    allow_plaintext: bool = False  # plain HTTP beyond loopback, behind the operator's own TLS
    max_form_bytes: int = 65_536  # a form post's body; over it 413
    form_token_max_age_seconds: int = 7_200  # a page left open longer must fetch a new token
    # The listener's address as recipients reach it (https://relay.example.com, a path prefix
    # allowed): the base of campaign messages' List-Unsubscribe links. None: host and port.
    public_url: str | None = None
    # A mailbox an operator reads, offered beside the link in List-Unsubscribe (the relay
    # receives no mail): mail to it carries the link's token in its subject.
    unsubscribe_mailto: str | None = None


def unsubscribe_base_url(http: HttpConfig) -> str:
    """Where recipients reach the public listener: ``public_url``, else derived from the
    listener's own host and port (right only when recipients reach it there directly)."""
    if http.public_url is not None:
        return http.public_url
    scheme = "https" if http.cert_file is not None else "http"
    host = f"[{http.host}]" if ":" in http.host else http.host
    default_port = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if http.port == default_port else f"{scheme}://{host}:{http.port}"


def parse_http(s: Section, is_loopback: bool) -> HttpConfig:
    d = HttpConfig()
    host = s.text("host", d.host) or d.host
    port = s.integer("port", d.port, minimum=0)
    if port is not None and port > 65535:
        s.problem("must be at most 65535", "port")
    proxies = read_networks(s, "trusted_proxies")
    cert_file, key_file = read_existing_file(s, "cert_file"), read_existing_file(s, "key_file")
    if (cert_file is None) != (key_file is None):
        s.problem("give both cert_file and key_file, or neither")
    plaintext = s.boolean("allow_plaintext", False)
    if cert_file is None and not plaintext and not is_loopback:
        s.problem(
            f"an HTTP listener beyond loopback ({host}) sends API keys over the network: "
            "give cert_file and key_file (HTTPS), or allow_plaintext: true behind your own TLS",
            "host",
        )
    max_form_bytes = s.integer("max_form_bytes", d.max_form_bytes, minimum=1024)
    max_age = s.integer("form_token_max_age_seconds", d.form_token_max_age_seconds, minimum=60)
    public_url = _public_url(s)
    mailto = s.text("unsubscribe_mailto", None)
    if mailto is not None and not (_MAILTO.fullmatch(mailto) and is_address(mailto)):
        s.problem("not a plain address such as unsubscribe@example.com", "unsubscribe_mailto")
        mailto = None
    s.finish()
    return HttpConfig(
        host,
        port if port is not None else d.port,
        proxies,
        cert_file,
        key_file,
        plaintext,
        max_form_bytes or d.max_form_bytes,
        max_age or d.form_token_max_age_seconds,
        public_url,
        mailto,
    )


def _public_url(s: Section) -> str | None:
    """``public_url`` without a trailing slash: http(s), a host, maybe a path; nothing that
    would not survive ``/u/{token}`` appended to it."""
    value: str | None = s.text("public_url", None)
    if value is None:
        return None
    parts = urlsplit(value) if _is_web_url(value) else None
    if parts is None or parts.query or parts.fragment or "?" in value or "#" in value:
        s.problem("not an http:// or https:// URL without query or fragment", "public_url")
        return None
    if parts.username is not None or parts.password is not None:
        s.problem("must not carry a user name or password", "public_url")
        return None
    if not _URL_SAFE.fullmatch(value):
        s.problem("has characters a link in a mail header cannot carry", "public_url")
        return None
    return value.rstrip("/")


def parse_form(s: Section) -> FormSettings | None:
    """A site's `form:`; None when it has problems (recorded in ``s``)."""
    count = len(s.problems)
    to = []
    for j, address in s.items("to"):
        if not isinstance(address, str) or not is_address(address):
            s.problem("not an email address", f"to[{j}]")
        else:
            to.append(address)
    if not to and s.has("to"):
        s.problem("needs at least one address", "to")
    elif not s.has("to"):
        s.problem("is required: the form's fixed recipients", "to")
    origins = []
    for j, origin in s.items("allowed_origins"):
        normal = _origin(origin)
        if normal is None:
            s.problem("not an origin such as https://shop.example.com", f"allowed_origins[{j}]")
        else:
            origins.append(normal)
    template = s.text("template", None)
    required = _fields(s, "required")
    reply_to_field = _field(s, "reply_to_field")
    honeypot_field = _field(s, "honeypot_field")
    d = FormSettings(to=())
    min_fill = s.integer("min_fill_seconds", d.min_fill_seconds, minimum=0)
    rate = s.integer("rate_per_minute_per_ip", d.rate_per_minute_per_ip, minimum=1)
    redirect = s.text("redirect", None)
    if redirect is not None and not _is_web_url(redirect):
        s.problem("not an http:// or https:// URL", "redirect")
    s.finish()
    if len(s.problems) > count:
        return None
    return FormSettings(
        to=tuple(to),
        allowed_origins=tuple(origins),
        template=template,
        required=required,
        reply_to_field=reply_to_field,
        honeypot_field=honeypot_field,
        min_fill_seconds=min_fill if min_fill is not None else d.min_fill_seconds,
        rate_per_minute_per_ip=rate or d.rate_per_minute_per_ip,
        redirect=redirect,
    )


def parse_api_keys(s: Section, site_id: str | None, names: set[str]) -> list[ApiKey]:
    """A site's `api_keys:` (name, key_hash, expires_at); names unique within the site."""
    keys = []
    for j, data in s.items("api_keys"):
        k = Section(data, s.child("api_keys") + f"[{j}]", s.problems)
        name = read_name(k, "name")
        check_unique(s, "api_keys", j, name, names, "API key name")
        key_hash = k.text("key_hash")
        if key_hash is not None and not is_token_hash(key_hash):
            k.problem("not a key hash; make one with `relay hash-token`", "key_hash")
            key_hash = None
        expires_at = _moment(k, "expires_at")
        k.finish()
        if site_id is not None and name is not None and key_hash is not None:
            keys.append(ApiKey(name, key_hash, site_id, expires_at))
    return keys


def parse_templates(root: Section) -> tuple[Template, ...]:
    """`templates:`, each checked as a save through the API is (syntax, size, name)."""
    templates, names = [], set[str]()
    for i, data in root.items("templates"):
        s = Section(data, root.child("templates") + f"[{i}]", root.problems)
        name = s.text("name")
        parts = {part: _template_part(s, part) for part in ("subject", "text", "html")}
        s.finish()
        if name is None:
            continue
        check_unique(root, "templates", i, name, names, "template name")
        template = Template(name, **parts)
        problems = check_template(template)
        for problem in problems:
            s.problem(problem)
        if not problems:
            templates.append(template)
    return tuple(templates)


def _template_part(s: Section, part: str) -> str | None:
    """A part as written: bodies span lines (YAML's ``|`` blocks), unlike other values."""
    value = s.raw(part, None)
    if value is not None and not isinstance(value, str):
        s.problem("must be a string", part)
        return None
    return value


def _origin(value: object) -> str | None:
    """``scheme://host[:port]`` in lower case, as browsers send Origin; None when it is not.

    ``null`` is kept when it is listed: what a page opened from a file sends (and a
    sandboxed iframe on any site), so for development only.
    """
    if value == "null":
        return value
    if not isinstance(value, str) or not _is_web_url(value):
        return None
    parts = urlsplit(value)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def _is_web_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and text.isprintable()


def _fields(s: Section, key: str) -> tuple[str, ...]:
    found = []
    for j, value in s.items(key):
        if not isinstance(value, str) or not _FIELD.fullmatch(value):
            s.problem("not a field name (letters, digits, '_', '.', '-')", f"{key}[{j}]")
        else:
            found.append(value)
    return tuple(found)


def _field(s: Section, key: str) -> str | None:
    value: str | None = s.text(key, None)
    if value is not None and not _FIELD.fullmatch(value):
        s.problem("not a field name (letters, digits, '_', '.', '-')", key)
        return None
    return value


def _moment(s: Section, key: str) -> float | None:
    """A date (midnight UTC) or an ISO 8601 time, as Unix seconds."""
    value = s.raw(key, None)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # not a time: reported below as it was given
            value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if value is not None:
        s.problem(f"must be a date or time such as 2027-06-30 (got {value!r})", key)
    return None
