"""The YAML configuration: the example loads, every problem is reported with its YAML path.

Also the two CLI commands that only read: `relay check-config` and `relay hash-password`.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import ConfigError, load_config
from relay.core import dkim
from relay.core.model import AuthMode, ReplyTo, TlsMode, UpstreamKind
from relay.core.passwords import verify_password
from relay.core.tokens import hash_token

REPO = Path(__file__).resolve().parent.parent
RELAY = Path(sys.executable).with_name("relay")  # the console script of this venv
# The example's development hash (of "dev-password"): syntactically valid, cheap to reuse.
HASH = "$scrypt$ln=15,r=8,p=1$c2FsdC1mb3ItZGV2LW9ubHk=$0Y5v+477BsvPPaaIQHrveqrlo2jgrdt/CifEI9nIWqw="
UNSET_VAR = "RELAY_TEST_SURELY_UNSET_VARIABLE"
TLS_CHOICES = "none | starttls | implicit"
NEEDS_TLS = (
    "listeners[0]: AUTH needs TLS: set tls: starttls|implicit, or allow_plaintext_auth: true"
)


def base() -> dict[str, Any]:
    """A small valid configuration; each case changes one thing."""
    return {
        "server": {"hostname": "relay.test"},
        "listeners": [
            {
                "name": "submission",
                "host": "127.0.0.1",
                "port": 2525,
                "tls": "starttls",
                "auth": "required",
            }
        ],
        "upstreams": [
            {"name": "primary", "kind": "smtp", "host": "smtp.example.net", "port": 587},
        ],
        "sites": [
            {
                "id": "site-a",
                "name": "Site A",
                "from": {"email": "sales@example.com", "name": "Sales"},
                "credentials": [{"username": "site-a", "password_hash": HASH}],
                "senders": ["*@shop.example.com"],
                "upstreams": ["primary"],
            }
        ],
    }


def write(tmp_path: Path, data: object, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == "\n".join(raised.value.problems)
    return raised.value.problems


def second_site(**overrides: Any) -> dict[str, Any]:
    site: dict[str, Any] = {"id": "site-b", "from": {"email": "info@example.org"}}
    site.update(overrides)
    return site


# -- The example and valid variations


def test_example_config_validates() -> None:
    config = load_config(REPO / "config.example.yaml")
    assert config.server.hostname == "relay.localhost"
    assert config.server.workers == 1
    (listener,) = config.listeners
    assert (listener.name, listener.port, listener.tls, listener.auth) == (
        "submission",
        2525,
        TlsMode.STARTTLS,
        AuthMode.REQUIRED,
    )
    (upstream,) = config.upstreams
    assert (upstream.name, upstream.kind, upstream.path) == (
        "outbox",
        UpstreamKind.FILE,
        "./data/outbox",
    )
    (site,) = config.sites
    assert site.id == "product-page-1"
    assert (site.from_email, site.from_name) == ("sales@example.com", "Sales Team")
    assert site.senders == ("*@shop.example.com",)
    assert site.upstreams == ("outbox",)
    assert site.reply_to is ReplyTo.ORIGINAL
    (credential,) = config.credentials
    assert (credential.username, credential.site_id) == ("product-page-1", "product-page-1")
    assert config.limits.max_recipients == 100
    assert config.limits.duplicate_window_seconds == 86_400
    assert config.directory().credential("product-page-1") == credential


def test_base_config_validates(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, base()))
    assert [s.id for s in config.sites] == ["site-a"]
    assert config.sites[0].senders == ("*@shop.example.com",)


def _dkim_key(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(dkim.private_pem(dkim.generate(dkim.Algorithm.ED25519)))
    return str(path)


def _existing(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("x", encoding="utf-8")
    return str(path)


VALID_CASES: list[Any] = [
    pytest.param(
        lambda d, t: d["listeners"][0].update(tls="none", allow_plaintext_auth=True),
        id="plaintext-auth-allowed",
    ),
    pytest.param(
        lambda d, t: d["listeners"][0].update(
            auth="optional", trusted_networks=["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
        ),
        id="optional-with-networks",
    ),
    pytest.param(
        lambda d, t: d["listeners"][0].update(auth="none", trusted_networks=["127.0.0.0/8"]),
        id="none-with-networks",
    ),
    pytest.param(
        lambda d, t: d["listeners"][0].update(
            host="0.0.0.0",
            cert_file=_existing(t, "cert.pem"),
            key_file=_existing(t, "key.pem"),
        ),
        id="public-listener-with-cert",
    ),
    pytest.param(
        lambda d, t: d["upstreams"].append({"name": "dev", "kind": "file", "path": str(t)}),
        id="file-upstream",
    ),
    pytest.param(lambda d, t: d["sites"][0].update(upstreams=[]), id="empty-upstream-list"),
    pytest.param(lambda d, t: d["sites"][0].update(reply_to="none"), id="reply-to-none"),
    pytest.param(
        lambda d, t: d["sites"][0].update(reply_to="help@example.com"), id="reply-to-address"
    ),
    pytest.param(
        lambda d, t: d.update(
            domains=[
                {
                    "name": "example.com",
                    "dkim": {"selector": "s1", "private_key_file": _dkim_key(t, "k.pem")},
                }
            ]
        ),
        id="domain-with-dkim",
    ),
    pytest.param(
        lambda d, t: d.update(admin={"tokens": [{"name": "ops", "token_hash": TOKEN_HASH}]}),
        id="admin-token-hash",
    ),
    pytest.param(lambda d, t: d.update(domains=[], admin=None, limits=None), id="empty-sections"),
]


@pytest.mark.parametrize("mutate", VALID_CASES)
def test_valid_variations_load(
    tmp_path: Path, mutate: Callable[[dict[str, Any], Path], None]
) -> None:
    data = base()
    mutate(data, tmp_path)
    load_config(write(tmp_path, data))


def test_reply_to_and_senders_are_parsed(tmp_path: Path) -> None:
    data = base()
    data["sites"][0].update(reply_to="help@example.com", senders=["News@Shop.Example.com"])
    data["sites"].append(second_site(reply_to="none"))
    sites = load_config(write(tmp_path, data)).sites
    assert (sites[0].reply_to, sites[0].reply_to_address) == (ReplyTo.ADDRESS, "help@example.com")
    assert sites[0].senders == ("news@shop.example.com",)  # stored lower case
    assert (sites[1].reply_to, sites[1].reply_to_address) == (ReplyTo.NONE, None)


# -- Each kind of problem, with its exact YAML path

Mutation = Callable[[dict[str, Any], Path], list[str]]


def _set(path: list[str | int], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _delete(path: list[str | int]) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


def case(change: Callable[[dict[str, Any]], None], *expected: str) -> Mutation:
    def mutate(data: dict[str, Any], _tmp: Path) -> list[str]:
        change(data)
        return list(expected)

    return mutate


def _dup_upstream(d: dict[str, Any]) -> None:
    d["upstreams"].append(copy.deepcopy(d["upstreams"][0]))


def _dup_listener(d: dict[str, Any]) -> None:
    d["listeners"].append({**d["listeners"][0], "port": 2526})


def _dup_site(d: dict[str, Any]) -> None:
    d["sites"].append(second_site(id="site-a"))


def _dup_username_across_sites(d: dict[str, Any]) -> None:
    d["sites"].append(second_site(credentials=[{"username": "site-a", "password_hash": HASH}]))


def _dup_username_in_site(d: dict[str, Any]) -> None:
    d["sites"][0]["credentials"].append({"username": "site-a", "password_hash": HASH})


def _cert_without_key(d: dict[str, Any], tmp: Path) -> list[str]:
    d["listeners"][0]["cert_file"] = _existing(tmp, "cert.pem")
    return [
        "listeners[0]: give both cert_file and key_file, or neither (a development certificate)"
    ]


def _key_without_cert(d: dict[str, Any], tmp: Path) -> list[str]:
    d["listeners"][0]["key_file"] = _existing(tmp, "key.pem")
    return [
        "listeners[0]: give both cert_file and key_file, or neither (a development certificate)"
    ]


def _missing_cert_file(d: dict[str, Any], tmp: Path) -> list[str]:
    d["listeners"][0].update(cert_file=str(tmp / "nope.pem"), key_file=_existing(tmp, "key.pem"))
    return [f"listeners[0].cert_file: file not found: {tmp / 'nope.pem'}"]


def _unreadable_password_file(d: dict[str, Any], tmp: Path) -> list[str]:
    missing = tmp / "missing-password.txt"
    d["upstreams"][0].update(username="relay@example.net", password_file=str(missing))
    return [f"upstreams[0].password_file: cannot read {missing} (No such file or directory)"]


def _password_file_is_a_directory(d: dict[str, Any], tmp: Path) -> list[str]:
    d["upstreams"][0].update(username="relay@example.net", password_file=str(tmp))
    return [f"upstreams[0].password_file: cannot read {tmp} (Is a directory)"]


def _unset_env(d: dict[str, Any], _tmp: Path) -> list[str]:
    d["upstreams"][0].update(username="relay@example.net", password_env=UNSET_VAR)
    return [f"upstreams[0].password_env: environment variable {UNSET_VAR} is not set"]


TOKEN_HASH = hash_token("a-long-admin-token-for-tests")


def _unset_admin_token_env(d: dict[str, Any], _tmp: Path) -> list[str]:
    d["admin"] = {"tokens": [{"name": "ops", "token_env": UNSET_VAR}]}
    return [
        f"admin.tokens[0].token_env: environment variable {UNSET_VAR} is not set",
        "admin.tokens[0]: give token (or token_env / token_file) or token_hash",
    ]


def _dkim_key_missing(d: dict[str, Any], tmp: Path) -> list[str]:
    d["domains"] = [
        {"name": "example.com", "dkim": {"selector": "s1", "private_key_file": str(tmp / "k")}}
    ]
    return [f"domains[0].dkim.private_key_file: file not found: {tmp / 'k'}"]


ERROR_CASES: list[Any] = [
    # Values that are not what they claim to be.
    pytest.param(
        case(
            lambda d: d["sites"].append(second_site(**{"from": {"email": "not-an-email"}})),
            "sites[1].from.email: not an email address",
        ),
        id="bad-from-email",
    ),
    pytest.param(
        case(
            _set(["sites", 0, "reply_to"], "nobody"),
            "sites[0].reply_to: not an email address",
        ),
        id="bad-reply-to",
    ),
    pytest.param(
        case(
            _set(["sites", 0, "bounce_address"], "bounces@"),
            "sites[0].bounce_address: not an email address",
        ),
        id="bad-bounce-address",
    ),
    pytest.param(
        case(
            _set(["sites", 0, "senders"], ["*@shop.example.com", "shop.example.com"]),
            "sites[0].senders[1]: not an address pattern such as *@shop.example.com",
        ),
        id="bad-sender-pattern",
    ),
    pytest.param(
        case(
            _set(["sites", 0, "id"], "site a"),
            "sites[0].id: use letters, digits, '.', '_' or '-' (at most 64)",
        ),
        id="bad-site-id",
    ),
    pytest.param(
        case(
            _set(["server", "hostname"], "relay_test!"),
            "server.hostname: not a host name: 'relay_test!'",
        ),
        id="bad-hostname",
    ),
    pytest.param(
        case(_set(["server", "workers"], 0), "server.workers: must be at least 1"),
        id="no-workers",
    ),
    pytest.param(
        case(_set(["server", "workers"], "2"), "server.workers: must be a whole number"),
        id="workers-not-a-number",
    ),
    pytest.param(
        case(
            _set(["sites", 0, "from", "name"], "Sales\r\nBcc: victim@example.com"),
            "sites[0].from.name: must be a single line",
        ),
        id="multi-line-from-name",
    ),
    *(
        pytest.param(
            case(
                _set(["sites", 0, "from", "name"], f"Sales{char}Team"),
                f"sites[0].from.name: must not contain control characters (found {code})",
            ),
            id=f"control-in-from-name-{code}",
        )
        for char, code in [
            ("\x00", "U+0000"),
            ("\x1b", "U+001B"),
            ("\t", "U+0009"),
            ("\x7f", "U+007F"),
            ("\x85", "U+0085"),
            ("\x9f", "U+009F"),
        ]
    ),
    pytest.param(
        case(
            _set(["sites", 0, "bounce_address"], '"b\x00ounces"@example.com'),
            "sites[0].bounce_address: not an email address",
        ),
        id="control-in-quoted-local-part",
    ),
    # Unknown keys, at every level.
    pytest.param(
        case(_set(["sites", 0, "bogus"], 1), "sites[0].bogus: unknown key"),
        id="unknown-key-site",
    ),
    pytest.param(case(_set(["listener"], []), "listener: unknown key"), id="unknown-key-top"),
    pytest.param(
        case(_set(["listeners", 0, "prot"], 25), "listeners[0].prot: unknown key"),
        id="unknown-key-listener",
    ),
    pytest.param(
        case(_set(["sites", 0, "from", "mail"], "x"), "sites[0].from.mail: unknown key"),
        id="unknown-key-from",
    ),
    pytest.param(
        case(
            _set(["sites", 0, "credentials", 0, "password"], "plain"),
            "sites[0].credentials[0].password: unknown key",
        ),
        id="unknown-key-credential",
    ),
    pytest.param(
        case(_set(["upstreams", 0, "passwd"], "x"), "upstreams[0].passwd: unknown key"),
        id="unknown-key-upstream",
    ),
    # Enums.
    pytest.param(
        case(
            _set(["listeners", 0, "tls"], "ssl"),
            f"listeners[0].tls: must be one of {TLS_CHOICES} (got 'ssl')",
        ),
        id="bad-listener-tls",
    ),
    pytest.param(
        case(
            _set(["listeners", 0, "auth"], "yes"),
            "listeners[0].auth: must be one of required | optional | none (got 'yes')",
        ),
        id="bad-listener-auth",
    ),
    pytest.param(
        case(
            _set(["upstreams", 0, "kind"], "http"),
            "upstreams[0].kind: must be one of smtp | file (got 'http')",
        ),
        id="bad-upstream-kind",
    ),
    pytest.param(
        case(
            _set(["upstreams", 0, "tls"], "STARTTLS"),
            f"upstreams[0].tls: must be one of {TLS_CHOICES} (got 'STARTTLS')",
        ),
        id="bad-upstream-tls-case",
    ),
    # References and duplicates.
    pytest.param(
        case(
            _set(["sites", 0, "upstreams"], ["primary", "secondary"]),
            "sites[0].upstreams[1]: unknown upstream 'secondary'",
        ),
        id="unknown-upstream-reference",
    ),
    pytest.param(
        case(_dup_upstream, "upstreams[1]: duplicate upstream name 'primary'"),
        id="duplicate-upstream",
    ),
    pytest.param(
        case(_dup_listener, "listeners[1]: duplicate listener name 'submission'"),
        id="duplicate-listener",
    ),
    pytest.param(case(_dup_site, "sites[1]: duplicate site id 'site-a'"), id="duplicate-site"),
    pytest.param(
        case(
            _dup_username_across_sites,
            "sites[1].credentials[0]: duplicate username (across all sites) 'site-a'",
        ),
        id="duplicate-username-across-sites",
    ),
    pytest.param(
        case(
            _dup_username_in_site,
            "sites[0].credentials[1]: duplicate username (across all sites) 'site-a'",
        ),
        id="duplicate-username-in-site",
    ),
    pytest.param(
        case(
            _set(["admin"], {"tokens": [{"name": "ops", "token_hash": "abc"}]}),
            "admin.tokens[0].token_hash: not a token hash; make one with `relay hash-token`",
        ),
        id="bad-token-hash",
    ),
    pytest.param(
        case(
            _set(["admin"], {"tokens": [{"name": "ops", "token": "short"}]}),
            "admin.tokens[0].token: too short: at least 16 characters "
            "(`relay hash-token` makes one)",
        ),
        id="short-token",
    ),
    pytest.param(
        case(
            _set(["domains"], [{"name": "example.com"}, {"name": "Example.COM"}]),
            "domains[1]: duplicate domain 'example.com'",
        ),
        id="duplicate-domain-any-case",
    ),
    pytest.param(
        case(
            _set(["admin"], {"tokens": [{"name": "ops", "token_hash": TOKEN_HASH}] * 2}),
            "admin.tokens[1]: duplicate token name 'ops'",
        ),
        id="duplicate-token",
    ),
    # Missing required keys.
    pytest.param(
        case(_delete(["server", "hostname"]), "server.hostname: is required"),
        id="missing-hostname",
    ),
    pytest.param(case(_delete(["sites", 0, "id"]), "sites[0].id: is required"), id="missing-id"),
    pytest.param(
        case(_delete(["sites", 0, "from", "email"]), "sites[0].from.email: is required"),
        id="missing-from-email",
    ),
    pytest.param(
        case(_delete(["listeners", 0, "port"]), "listeners[0].port: is required"),
        id="missing-port",
    ),
    pytest.param(
        case(_delete(["listeners", 0, "name"]), "listeners[0].name: is required"),
        id="missing-listener-name",
    ),
    pytest.param(
        case(_delete(["upstreams", 0, "host"]), "upstreams[0].host: is required"),
        id="missing-upstream-host",
    ),
    pytest.param(
        case(
            _set(["upstreams", 0], {"name": "primary", "kind": "file"}),
            "upstreams[0].path: is required",
        ),
        id="missing-file-path",
    ),
    pytest.param(
        case(
            _delete(["sites", 0, "credentials", 0, "password_hash"]),
            "sites[0].credentials[0].password_hash: is required",
        ),
        id="missing-password-hash",
    ),
    pytest.param(
        case(_delete(["listeners"]), "listeners: at least one listener is required"),
        id="missing-listeners",
    ),
    pytest.param(
        case(_set(["listeners"], []), "listeners: at least one listener is required"),
        id="empty-listeners",
    ),
    pytest.param(
        case(
            _set(["domains"], [{"name": "example.com", "dkim": {"selector": "s1"}}]),
            "domains[0].dkim.private_key_file: is required (make one with `relay dkim keygen`)",
        ),
        id="missing-dkim-key",
    ),
    # Networks and listener rules.
    pytest.param(
        case(
            _set(
                ["listeners", 0],
                {"name": "l", "port": 25, "auth": "optional", "trusted_networks": ["10.0.0.0/33"]},
            ),
            "listeners[0].trusted_networks[0]: not a network (CIDR): '10.0.0.0/33'",
        ),
        id="bad-cidr",
    ),
    pytest.param(
        case(
            _set(
                ["listeners", 0],
                {
                    "name": "l",
                    "port": 25,
                    "auth": "optional",
                    "trusted_networks": ["10.0.0.1/8", "x"],
                },
            ),
            "listeners[0].trusted_networks[1]: not a network (CIDR): 'x'",
        ),
        id="bad-cidr-second",
    ),
    pytest.param(
        case(
            _set(["listeners", 0, "trusted_networks"], ["10.0.0.0/8"]),
            "listeners[0]: trusted_networks has no effect with auth: required; use auth: optional",
        ),
        id="auth-required-with-networks",
    ),
    pytest.param(
        case(
            _set(["listeners", 0, "auth"], "none"),
            "listeners[0]: auth: none needs trusted_networks, or nobody could send",
        ),
        id="auth-none-without-networks",
    ),
    pytest.param(
        case(
            _set(["listeners", 0, "tls"], "none"),
            NEEDS_TLS,
        ),
        id="plaintext-auth-required",
    ),
    pytest.param(
        case(
            _set(
                ["listeners", 0],
                {
                    "name": "l",
                    "port": 25,
                    "tls": "none",
                    "auth": "optional",
                    "trusted_networks": ["10.0.0.0/8"],
                },
            ),
            NEEDS_TLS,
        ),
        id="plaintext-auth-optional",
    ),
    pytest.param(_cert_without_key, id="cert-without-key"),
    pytest.param(_key_without_cert, id="key-without-cert"),
    pytest.param(_missing_cert_file, id="cert-file-not-found"),
    pytest.param(
        case(
            _set(["listeners", 0, "host"], "0.0.0.0"),
            "listeners[0]: a listener beyond loopback needs cert_file and key_file",
        ),
        id="public-listener-without-cert",
    ),
    pytest.param(
        case(_set(["listeners", 0, "port"], 70000), "listeners[0].port: must be at most 65535"),
        id="port-too-big",
    ),
    pytest.param(
        case(_set(["listeners", 0, "port"], "25"), "listeners[0].port: must be a whole number"),
        id="port-as-string",
    ),
    # Secrets.
    pytest.param(_unset_env, id="env-var-unset"),
    pytest.param(_unset_admin_token_env, id="admin-token-env-unset"),
    pytest.param(_unreadable_password_file, id="secret-file-missing"),
    pytest.param(_password_file_is_a_directory, id="secret-file-is-a-directory"),
    pytest.param(
        case(
            lambda d: d["upstreams"][0].update(
                username="relay@example.net", password="x", password_env="SOME_VAR"
            ),
            "upstreams[0].password: give only one of password, password_env",
        ),
        id="password-and-password-env",
    ),
    pytest.param(
        case(
            lambda d: d["upstreams"][0].update(
                username="u", password_env="A", password_file="/dev/null", password="x"
            ),
            "upstreams[0].password: give only one of password, password_env, password_file",
        ),
        id="all-three-password-forms",
    ),
    pytest.param(
        case(
            _set(["upstreams", 0, "password"], "x"),
            "upstreams[0].password: a password needs a username",
        ),
        id="password-without-username",
    ),
    pytest.param(
        case(
            lambda d: d["upstreams"][0].update(tls="none", username="u", password="x"),
            "upstreams[0].password: with tls: none the password would cross the network in "
            "clear; use tls: starttls or implicit (or, in the config file only, "
            "allow_plaintext_auth: true)",
        ),
        id="password-without-tls",
    ),
    pytest.param(
        case(
            _set(["admin"], {"host": "0.0.0.0"}),
            "admin.host: an admin listener beyond loopback (0.0.0.0) sends tokens over the "
            "network: give cert_file and key_file (HTTPS), or allow_plaintext: true behind "
            "your own TLS",
        ),
        id="public-admin-without-tls",
    ),
    pytest.param(
        case(
            _set(["admin"], {"allow_private_upstreams": "yes"}),
            "admin.allow_private_upstreams: must be true or false",
        ),
        id="allow-private-not-boolean",
    ),
    pytest.param(
        case(
            _set(["sites", 0, "credentials", 0, "password_hash"], "hunter2"),
            "sites[0].credentials[0].password_hash: not a password hash; "
            "make one with `relay hash-password`",
        ),
        id="bad-password-hash",
    ),
    pytest.param(_dkim_key_missing, id="dkim-key-not-found"),
    # Sections of the wrong shape.
    pytest.param(case(_set(["sites"], {"id": "x"}), "sites: must be a list"), id="sites-not-list"),
    pytest.param(
        case(_set(["limits"], {"max_recipients": 0}), "limits.max_recipients: must be at least 1"),
        id="limit-too-small",
    ),
    pytest.param(
        case(
            _set(["limits"], {"duplicate_window_seconds": -1}),
            "limits.duplicate_window_seconds: must be at least 0",
        ),
        id="duplicate-window-negative",
    ),
    pytest.param(
        case(
            _set(["delivery"], {"retry_first_seconds": -5}),
            "delivery.retry_first_seconds: must be a positive number",
        ),
        id="negative-retry",
    ),
    pytest.param(
        case(
            _set(["upstreams", 0, "verify_tls"], "yes"),
            "upstreams[0].verify_tls: must be true or false",
        ),
        id="boolean-as-string",
    ),
]


@pytest.mark.parametrize("mutate", ERROR_CASES)
def test_each_problem_is_reported_with_its_yaml_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutate: Mutation
) -> None:
    monkeypatch.delenv(UNSET_VAR, raising=False)
    data = base()
    expected = mutate(data, tmp_path)
    assert problems_of(write(tmp_path, data)) == expected


def test_missing_from_section_is_reported(tmp_path: Path) -> None:
    data = base()
    del data["sites"][0]["from"]
    problems = problems_of(write(tmp_path, data))
    assert "sites[0].from: is required" in problems
    assert "sites[0].from.email: is required" in problems
    assert all(p.startswith("sites[0].from") for p in problems)


def test_missing_server_section_is_reported(tmp_path: Path) -> None:
    data = base()
    del data["server"]
    problems = problems_of(write(tmp_path, data))
    assert "server: is required" in problems
    assert "server.hostname: is required" in problems
    assert all(p.startswith("server") for p in problems)


@pytest.mark.parametrize(
    ("change", "path_prefix"),
    [
        pytest.param(_set(["server", "data_dir"], ["./data"]), "server.data_dir: ", id="data-dir"),
        pytest.param(
            _set(["server", "secret_key_file"], {"path": "x"}),
            "server.secret_key_file: ",
            id="secret-key-file",
        ),
        pytest.param(
            _set(["sites", 0, "upstreams"], [["primary"]]),
            "sites[0].upstreams[0]: ",
            id="upstream-ref-list",
        ),
        pytest.param(
            _set(["sites", 0, "upstreams"], [{"name": "primary"}]),
            "sites[0].upstreams[0]: ",
            id="upstream-ref-mapping",
        ),
    ],
)
def test_wrong_types_are_reported_never_raised(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], path_prefix: str
) -> None:
    """A user mistake must become a problem line, not a TypeError traceback."""
    data = base()
    change(data)
    problems = problems_of(write(tmp_path, data))
    assert any(p.startswith(path_prefix) for p in problems), problems


def test_several_problems_are_all_reported_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET_VAR, raising=False)
    data = base()
    data["sites"][0]["bogus"] = True
    data["sites"].append(second_site(**{"from": {"email": "not-an-email"}}))
    data["listeners"][0]["tls"] = "ssl"
    data["upstreams"][0].update(username="u", password_env=UNSET_VAR)
    data["sites"][0]["upstreams"] = ["primary", "nope"]
    data["sites"][0]["credentials"][0]["password_hash"] = "plain"
    problems = problems_of(write(tmp_path, data))
    assert sorted(problems) == sorted(
        [
            f"listeners[0].tls: must be one of {TLS_CHOICES} (got 'ssl')",
            f"upstreams[0].password_env: environment variable {UNSET_VAR} is not set",
            "sites[0].upstreams[1]: unknown upstream 'nope'",
            "sites[0].credentials[0].password_hash: not a password hash; "
            "make one with `relay hash-password`",
            "sites[0].bogus: unknown key",
            "sites[1].from.email: not an email address",
        ]
    )


# -- The file itself

YAML_ERRORS = [
    pytest.param("server:\n  hostname: relay.test\n  data_dir: [unclosed\nlisteners: []\n", 4),
    pytest.param("server:\n  hostname: a\n bad: b\n", 3),
    pytest.param("a: b: c\n", 1),
    pytest.param("server: {hostname: x\n", 2),
    pytest.param("\tserver: 1\n", 1),
]


@pytest.mark.parametrize(("text", "line"), YAML_ERRORS)
def test_yaml_syntax_error_names_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: line {line}, column ")
    assert "not valid YAML" in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n", "[server]\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert problems_of(write(tmp_path, text)) == [
        "(top level): must be a mapping of keys to values"
    ]


def test_empty_file_reports_what_is_required(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, ""))
    assert "server.hostname: is required" in problems
    assert "listeners: at least one listener is required" in problems


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"{path}: cannot read the file (No such file or directory)"]


# -- Secrets


def test_secrets_from_inline_env_and_file_never_show_in_repr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline, from_env, from_file, token = (
        "inline-Secret-1",
        "env-Secret-2",
        "file-Secret-3",
        "token-Secret-4-0123456789",
    )
    monkeypatch.setenv("RELAY_TEST_PASSWORD", from_env)
    monkeypatch.setenv("RELAY_TEST_TOKEN", token)
    secret_file = tmp_path / "password.txt"
    secret_file.write_text(from_file + "\n", encoding="utf-8")
    data = base()
    data["upstreams"] = [
        {"name": "a", "host": "a.test", "username": "u", "password": inline},
        {"name": "b", "host": "b.test", "username": "u", "password_env": "RELAY_TEST_PASSWORD"},
        {"name": "c", "host": "c.test", "username": "u", "password_file": str(secret_file)},
    ]
    data["sites"][0]["upstreams"] = ["a", "b", "c"]
    data["admin"] = {"tokens": [{"name": "ops", "token_env": "RELAY_TEST_TOKEN"}]}
    config = load_config(write(tmp_path, data))
    revealed = []
    for upstream in config.upstreams:
        assert upstream.password is not None
        revealed.append(upstream.password.reveal())
        for text in (repr(upstream), str(upstream), repr(upstream.password)):
            assert all(s not in text for s in (inline, from_env, from_file))
    assert revealed == [inline, from_env, from_file]  # the file's final newline is stripped
    assert config.admin.tokens[0].token is not None
    assert config.admin.tokens[0].token.reveal() == token
    everything = repr(config) + str(config) + repr(config.directory())
    for secret in (inline, from_env, from_file, token):
        assert secret not in everything


# -- CLI


def run_relay(
    *args: str, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"}
    environment.update(env or {})
    return subprocess.run(
        [str(RELAY), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_check_config_good_file_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    result = run_relay("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
def test_check_config_example_exits_0(tmp_path: Path) -> None:
    result = run_relay("check-config", "-c", str(REPO / "config.example.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_check_config_bad_file_exits_2_listing_every_problem(tmp_path: Path) -> None:
    data = base()
    data["sites"][0]["bogus"] = True
    data["sites"].append(second_site(**{"from": {"email": "not-an-email"}}))
    data["listeners"][0]["tls"] = "ssl"
    data["upstreams"][0].update(username="u", password_env=UNSET_VAR)
    path = write(tmp_path, data)
    environment = {k: v for k, v in os.environ.items() if k != UNSET_VAR}
    result = subprocess.run(
        [str(RELAY), "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert sorted(result.stderr.splitlines()) == sorted(
        [
            "sites[0].bogus: unknown key",
            "sites[1].from.email: not an email address",
            f"listeners[0].tls: must be one of {TLS_CHOICES} (got 'ssl')",
            f"upstreams[0].password_env: environment variable {UNSET_VAR} is not set",
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a: b: c\n", "line 1, column", id="yaml-syntax"),
        pytest.param("- a\n", "(top level): must be a mapping", id="not-a-mapping"),
        pytest.param(None, "cannot read the file", id="missing-file"),
        pytest.param(
            yaml.safe_dump({**base(), "server": {"hostname": "r.test", "data_dir": ["x"]}}),
            "server.data_dir: ",
            id="wrong-type-data-dir",
        ),
    ],
)
def test_check_config_user_mistakes_never_show_a_traceback(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    result = run_relay("check-config", "-c", str(path), cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert expected in result.stderr


@pytest.mark.slow
def test_hash_password_output_verifies(tmp_path: Path) -> None:
    result = run_relay("hash-password", cwd=tmp_path, stdin="correct horse ünïcode\n")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert verify_password("correct horse ünïcode", line)
    assert not verify_password("correct horse unicode", line)
    # The hash is usable as password_hash in the config.
    data = base()
    data["sites"][0]["credentials"][0]["password_hash"] = line
    load_config(write(tmp_path, data))


@pytest.mark.slow
def test_hash_password_refuses_an_empty_password(tmp_path: Path) -> None:
    result = run_relay("hash-password", cwd=tmp_path, stdin="\n")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "empty" in result.stderr


def _rotating_domain(tmp_path: Path) -> dict[str, Any]:
    return {
        "name": "Example.com",
        "dkim": {
            "selector": "relay2",
            "private_key_file": _dkim_key(tmp_path, "relay2.pem"),
            "next": {"selector": "relay3", "private_key_file": _dkim_key(tmp_path, "relay3.pem")},
            "retired": [
                {"selector": "relay1", "until": "2026-12-31"},
                {
                    "selector": "relay0",
                    "private_key_file": _dkim_key(tmp_path, "r0.pem"),
                    "until": "2026-12-01",
                },
            ],
        },
    }


def test_domains_dns_and_spf_includes_are_parsed(tmp_path: Path) -> None:
    data = base()
    data["domains"] = [_rotating_domain(tmp_path)]
    data["dns"] = {"nameservers": ["127.0.0.1:5353", "::1", "[::1]:53"], "timeout_seconds": 2}
    data["upstreams"][0]["spf_include"] = ["AmazonSES.com", "_spf.google.com"]
    config = load_config(write(tmp_path, data))
    (domain,) = config.domains
    assert domain.name == "example.com"
    assert [(k.selector, k.state.value) for k in domain.keys] == [
        ("relay2", "active"),
        ("relay3", "next"),
        ("relay1", "retired"),
        ("relay0", "retired"),
    ]
    assert domain.keys[2].public_key is None  # a retired key whose file is gone
    assert str(domain.keys[2].retire_until) == "2026-12-31"
    assert domain.signing_key is not None and domain.signing_key.selector == "relay2"
    assert config.directory().signing_key("EXAMPLE.com") == domain.signing_key
    assert config.dns.nameservers == ("127.0.0.1:5353", "::1", "[::1]:53")
    assert config.upstreams[0].spf_include == ("amazonses.com", "_spf.google.com")


def _domain_problem(change: Callable[[dict[str, Any]], None], *expected: str) -> Mutation:
    def mutate(data: dict[str, Any], tmp: Path) -> list[str]:
        domain = _rotating_domain(tmp)
        change(domain)
        data["domains"] = [domain]
        return list(expected)

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(
            _domain_problem(
                lambda d: d["dkim"]["next"].update(selector="relay2"),
                "domains[0].dkim: selector 'relay2' is used twice",
            ),
            id="selector-twice",
        ),
        pytest.param(
            _domain_problem(
                lambda d: d["dkim"]["retired"][0].update(until="next week"),
                "domains[0].dkim.retired[0].until: must be a date such as 2026-12-31 "
                "(got 'next week')",
            ),
            id="retired-bad-date",
        ),
        pytest.param(
            _domain_problem(
                lambda d: d["dkim"]["retired"][0].pop("until"),
                "domains[0].dkim.retired[0].until: is required",
            ),
            id="retired-no-date",
        ),
        pytest.param(
            _domain_problem(
                lambda d: d["dkim"].update(selector="bad_selector!"),
                "domains[0].dkim.selector: not a DKIM selector: 'bad_selector!'",
            ),
            id="bad-selector",
        ),
        pytest.param(
            case(
                _set(["upstreams", 0, "spf_include"], "not a domain"),
                "upstreams[0].spf_include: must be a domain such as amazonses.com, "
                "or a list of them",
            ),
            id="bad-spf-include",
        ),
        pytest.param(
            case(
                _set(["dns"], {"nameservers": ["dns.example.com"]}),
                "dns.nameservers[0]: not an IP address or IP:port",
            ),
            id="nameserver-by-name",
        ),
    ],
)
def test_domain_and_dns_problems(tmp_path: Path, mutate: Mutation) -> None:
    data = base()
    expected = mutate(data, tmp_path)
    assert problems_of(write(tmp_path, data)) == expected


def test_a_key_file_that_is_not_a_key_is_reported(tmp_path: Path) -> None:
    data = base()
    domain = _rotating_domain(tmp_path)
    (tmp_path / "relay2.pem").write_text("not a key", encoding="utf-8")
    data["domains"] = [domain]
    assert problems_of(write(tmp_path, data)) == [
        f"domains[0].dkim.private_key_file: {tmp_path / 'relay2.pem'}: "
        "not a PEM private key (or it needs a passphrase)"
    ]


def test_plaintext_upstream_auth_and_a_public_admin_listener_need_an_explicit_choice(
    tmp_path: Path, cert_files: tuple[Path, Path, Path]
) -> None:
    data = base()
    data["upstreams"][0].update(tls="none", username="u", password="x", allow_plaintext_auth=True)
    data["admin"] = {"host": "0.0.0.0", "allow_plaintext": True, "allow_private_upstreams": True}
    config = load_config(write(tmp_path, data))
    assert config.upstreams[0].allow_plaintext_auth is True
    assert (config.admin.allow_plaintext, config.admin.allow_private_upstreams) == (True, True)

    data["admin"] = {"host": "::", "cert_file": str(cert_files[0]), "key_file": str(cert_files[1])}
    config = load_config(write(tmp_path, data))
    assert (config.admin.cert_file, config.admin.allow_plaintext) == (cert_files[0], False)
    assert config.admin.allow_private_upstreams is False  # the default

    data["admin"] = {"host": "::", "cert_file": str(cert_files[0])}
    assert problems_of(write(tmp_path, data)) == [
        "admin: give both cert_file and key_file, or neither"
    ]


def test_check_config_refuses_a_public_admin_listener_without_tls(tmp_path: Path) -> None:
    data = base()
    data["admin"] = {"host": "0.0.0.0", "port": 8025}
    path = write(tmp_path, data)

    result = run_relay("check-config", "-c", str(path), cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "admin.host: an admin listener beyond loopback (0.0.0.0) sends tokens over the network: "
        "give cert_file and key_file (HTTPS), or allow_plaintext: true behind your own TLS"
    ]


# -- cluster


def test_cluster_defaults_and_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(write(tmp_path, base())).cluster.sync_seconds == 2.0
    assert load_config(write(tmp_path, base())).cluster.redis_url is None
    data = base()
    monkeypatch.setenv("RELAY_TEST_REDIS", "rediss://:pw@redis.internal:6380/2")
    data["cluster"] = {"sync_seconds": 0.5, "redis_url_env": "RELAY_TEST_REDIS"}
    cluster = load_config(write(tmp_path, data)).cluster
    assert cluster.sync_seconds == 0.5
    assert cluster.redis_url is not None
    assert cluster.redis_url.reveal() == "rediss://:pw@redis.internal:6380/2"
    assert "pw" not in repr(cluster)


@pytest.mark.parametrize(
    ("cluster", "problem"),
    [
        ({"sync_seconds": 0.1}, "cluster.sync_seconds: must be at least 0.2"),
        ({"sync_seconds": "fast"}, "cluster.sync_seconds: must be a positive number"),
        ({"redis_url": "http://127.0.0.1:6379"}, "cluster.redis_url: must be a redis://"),
        ({"redis_url": "redis://"}, "cluster.redis_url: must be a redis://"),
        ({"redis_url": "redis://127.0.0.1:99999"}, "cluster.redis_url: must be a redis://"),
        ({"redis_url": "redis://127.0.0.1/zero"}, "cluster.redis_url: must be a redis://"),
        ({"redis": "redis://127.0.0.1"}, "cluster.redis: unknown key"),
    ],
)
def test_cluster_problems_name_their_key(
    tmp_path: Path, cluster: dict[str, Any], problem: str
) -> None:
    data = base()
    data["cluster"] = cluster
    [reported] = problems_of(write(tmp_path, data))
    assert reported.startswith(problem), reported
