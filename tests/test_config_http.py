"""The HTTP ingress's YAML: `http:`, a site's `form:` and `api_keys:`, `templates:`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from relay.config import ConfigError, load_config
from relay.config_http import HttpConfig, unsubscribe_base_url
from relay.core.model import FormSettings
from relay.core.templates import Template
from relay.core.tokens import hash_token
from tests.test_config import base, problems_of, write

KEY_HASH = hash_token("a-site-api-key-of-some-length")


def with_http(**site_keys: Any) -> dict[str, Any]:
    data = base()
    data["http"] = {"host": "127.0.0.1", "port": 8080}
    data["sites"][0].update(site_keys)
    return data


def test_http_form_api_keys_and_templates_load(tmp_path: Path) -> None:
    data = with_http(
        form={
            "to": ["sales@example.com"],
            "allowed_origins": ["https://Shop.Example.com", "http://localhost:8000/"],
            "template": "inquiry",
            "required": ["email", "message"],
            "reply_to_field": "email",
            "honeypot_field": "website",
            "min_fill_seconds": 2,
            "rate_per_minute_per_ip": 7,
            "redirect": "https://shop.example.com/thanks",
        },
        api_keys=[
            {"name": "backend", "key_hash": KEY_HASH},
            {"name": "old", "key_hash": KEY_HASH, "expires_at": "2027-06-30"},
        ],
    )
    data["http"]["trusted_proxies"] = ["10.0.0.0/8"]
    data["templates"] = [
        {"name": "inquiry", "subject": "From {{ formData.name }}", "text": "{{ formData.message }}"}
    ]
    config = load_config(write(tmp_path, data))

    assert config.http is not None
    assert (config.http.host, config.http.port, str(config.http.trusted_proxies[0])) == (
        "127.0.0.1",
        8080,
        "10.0.0.0/8",
    )
    assert config.sites[0].form == FormSettings(
        to=("sales@example.com",),
        allowed_origins=("https://shop.example.com", "http://localhost:8000"),
        template="inquiry",
        required=("email", "message"),
        reply_to_field="email",
        honeypot_field="website",
        min_fill_seconds=2,
        rate_per_minute_per_ip=7,
        redirect="https://shop.example.com/thanks",
    )
    backend, old = config.api_keys
    assert (backend.name, backend.site_id, backend.expires_at) == ("backend", "site-a", None)
    assert old.expires_at == dt.datetime(2027, 6, 30, tzinfo=dt.UTC).timestamp()
    directory = config.directory()
    assert directory.api_key(KEY_HASH) is not None
    assert directory.template("inquiry") == Template(
        "inquiry", subject="From {{ formData.name }}", text="{{ formData.message }}"
    )


def test_http_is_off_when_absent(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, base()))
    assert (config.http, config.templates, config.api_keys) == (None, (), ())


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda d: d["sites"][0].update(form={"to": ["not-an-address"]}),
            "sites[0].form.to[0]: not an email address",
        ),
        (
            lambda d: d["sites"][0].update(form={"allowed_origins": ["https://a.example"]}),
            "sites[0].form.to: is required: the form's fixed recipients",
        ),
        (
            lambda d: d["sites"][0].update(
                form={"to": ["a@example.com"], "allowed_origins": ["https://a.example/path"]}
            ),
            "sites[0].form.allowed_origins[0]: not an origin such as https://shop.example.com",
        ),
        (
            lambda d: d["sites"][0].update(
                form={"to": ["a@example.com"], "redirect": "javascript:alert(1)"}
            ),
            "sites[0].form.redirect: not an http:// or https:// URL",
        ),
        (
            lambda d: d["sites"][0].update(
                form={"to": ["a@example.com"], "required": ["bad name!"]}
            ),
            "sites[0].form.required[0]: not a field name (letters, digits, '_', '.', '-')",
        ),
        (
            lambda d: d["sites"][0].update(form={"to": ["a@example.com"], "template": "nope"}),
            "sites[0].form.template: no template named 'nope'",
        ),
        (
            lambda d: d["sites"][0].update(form={"to": ["a@example.com"], "bcc": ["x@evil.test"]}),
            "sites[0].form.bcc: unknown key",
        ),
        (
            lambda d: d["sites"][0].update(api_keys=[{"name": "k", "key_hash": "plain"}]),
            "sites[0].api_keys[0].key_hash: not a key hash; make one with `relay hash-token`",
        ),
        (
            lambda d: d["sites"][0].update(
                api_keys=[{"name": "k", "key_hash": KEY_HASH, "expires_at": "soon"}]
            ),
            "sites[0].api_keys[0].expires_at: must be a date or time such as 2027-06-30 "
            "(got 'soon')",
        ),
        (
            lambda d: d.update(templates=[{"name": "t", "text": "{{ x }"}]),
            "templates[0]: text: line 1: unexpected '}'",
        ),
        (
            lambda d: d.update(http={"host": "0.0.0.0"}),
            "http.host: an HTTP listener beyond loopback (0.0.0.0) sends API keys over the "
            "network: give cert_file and key_file (HTTPS), or allow_plaintext: true behind "
            "your own TLS",
        ),
        (
            lambda d: d.update(http={"trusted_proxies": ["not a network"]}),
            "http.trusted_proxies[0]: not a network (CIDR): 'not a network'",
        ),
    ],
)
def test_problems_have_their_paths(tmp_path: Path, change: Any, problem: str) -> None:
    data = base()
    change(data)
    assert problem in problems_of(write(tmp_path, data))


def test_a_public_listener_behind_a_proxy_may_be_plain(tmp_path: Path) -> None:
    data = base()
    data["http"] = {"host": "0.0.0.0", "allow_plaintext": True}
    config = load_config(write(tmp_path, data))
    assert config.http is not None and config.http.allow_plaintext


def test_api_sites_cannot_carry_api_keys() -> None:
    from relay.config import parse_site_spec

    spec = {"id": "x", "from": {"email": "a@example.com"}, "api_keys": []}
    site, problems = parse_site_spec(spec, set())
    assert site is None
    assert problems == ["site.api_keys: not accepted through the API (use the config file)"]


def test_a_bad_form_fails_the_whole_file(tmp_path: Path) -> None:
    data = with_http(form={"to": []})
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, data))
    assert "sites[0].form.to: needs at least one address" in raised.value.problems


def test_null_origin_is_kept_only_when_listed(tmp_path: Path) -> None:
    """What a page opened from a file sends: allowed only when written out (development)."""
    form = {"to": ["sales@example.com"], "allowed_origins": ["null", "http://localhost:8000"]}
    config = load_config(write(tmp_path, with_http(form=form)))
    assert config.sites[0].form is not None
    assert config.sites[0].form.allowed_origins == ("null", "http://localhost:8000")


def test_template_parts_may_span_lines(tmp_path: Path) -> None:
    data = base()
    data["templates"] = [
        {"name": "t", "subject": "Hi {{ name }}", "text": "Hello {{ name }},\n\nThanks.\n"}
    ]
    config = load_config(write(tmp_path, data))
    assert config.templates[0].text == "Hello {{ name }},\n\nThanks.\n"
    data["templates"] = [{"name": "t", "text": ["not", "text"]}]
    assert "templates[0].text: must be a string" in problems_of(write(tmp_path, data))


# -- http.public_url and http.unsubscribe_mailto: the List-Unsubscribe links


def test_public_url_and_mailto_load(tmp_path: Path) -> None:
    data = with_http()
    data["http"].update(
        public_url="https://relay.example.com/mail/", unsubscribe_mailto="unsub@example.com"
    )
    config = load_config(write(tmp_path, data))
    assert config.http is not None
    assert config.http.public_url == "https://relay.example.com/mail"  # no trailing slash
    assert config.http.unsubscribe_mailto == "unsub@example.com"
    assert unsubscribe_base_url(config.http) == "https://relay.example.com/mail"


def test_without_public_url_the_base_is_the_listeners_own_address(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    assert HttpConfig().public_url is None and HttpConfig().unsubscribe_mailto is None
    assert unsubscribe_base_url(HttpConfig()) == "http://127.0.0.1:8080"
    assert unsubscribe_base_url(HttpConfig(host="::1", port=80)) == "http://[::1]"
    cert, key = cert_pair
    tls = HttpConfig(host="relay.example.com", port=443, cert_file=cert, key_file=key)
    assert unsubscribe_base_url(tls) == "https://relay.example.com"
    assert unsubscribe_base_url(HttpConfig(host="h.example", port=8443, cert_file=cert)) == (
        "https://h.example:8443"
    )


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Paths only: unsubscribe_base_url reads no file."""
    return tmp_path / "cert.pem", tmp_path / "key.pem"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("public_url", "relay.example.com", "not an http:// or https:// URL"),
        ("public_url", "ftp://relay.example.com", "not an http:// or https:// URL"),
        ("public_url", "https://relay.example.com/?a=1", "without query or fragment"),
        ("public_url", "https://relay.example.com/#x", "without query or fragment"),
        ("public_url", "https://user:pw@relay.example.com", "user name or password"),
        ("public_url", "https://relay.example.com/a,b", "cannot carry"),
        ("public_url", "https://relay.example.com/a>b", "cannot carry"),
        ("public_url", "https://relay.example.com:99999", "not an http:// or https:// URL"),
        ("unsubscribe_mailto", "not an address", "not a plain address"),
        ("unsubscribe_mailto", "a>b@example.com", "not a plain address"),
        ("unsubscribe_mailto", "a@example.com?subject=x", "not a plain address"),
    ],
)
def test_bad_links_are_refused_with_their_path(
    tmp_path: Path, key: str, value: str, problem: str
) -> None:
    data = with_http()
    data["http"][key] = value
    problems = problems_of(write(tmp_path, data))
    assert any(p.startswith(f"http.{key}: ") and problem in p for p in problems), problems
