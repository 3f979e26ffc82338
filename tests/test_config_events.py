"""``upstreams[].events`` and its credentials, and the test-only ``provider_events:`` section:
what loads, and every refusal with its YAML path."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config import load_config, parse_upstream_spec
from relay.core.model import Secret
from relay.core.providers import sendgrid
from tests.test_config import base, problems_of, write

EC_KEY = ec.generate_private_key(ec.SECP256R1())
DER = EC_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)
PEM = (
    EC_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"


def with_upstream(**keys: Any) -> dict[str, Any]:
    data = base()
    data["upstreams"][0].update(keys)
    return data


def test_each_provider_loads_with_its_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_KEY", "key-from-env")
    (tmp_path / "pm").write_text("pm-password\n")
    cases = {
        "ses": {"events": "ses", "events_topics": [TOPIC]},
        "mailgun": {"events": "mailgun", "events_key_env": "MG_KEY"},
        "sendgrid": {"events": "sendgrid", "events_key": base64.b64encode(DER).decode()},
        "sendgrid-pem": {"events": "sendgrid", "events_key": PEM},
        "postmark": {
            "events": "postmark",
            "events_username": "hooks",
            "events_password_file": str(tmp_path / "pm"),
        },
    }
    for name, keys in cases.items():
        events = load_config(write(tmp_path, with_upstream(**keys))).upstreams[0].events
        assert events is not None, name
        assert events.provider == keys["events"]
        if events.provider == "sendgrid":  # a PEM is kept as SendGrid's base64 DER
            assert events.key is not None and sendgrid.load_public_key(events.key.reveal())
            assert events.key == Secret(base64.b64encode(DER).decode())
    ses = load_config(write(tmp_path, with_upstream(**cases["ses"]))).upstreams[0].events
    assert ses is not None and ses.topics == (TOPIC,)
    plain = load_config(write(tmp_path, base())).upstreams[0]
    assert plain.events is None
    postmark = load_config(write(tmp_path, with_upstream(**cases["postmark"]))).upstreams[0]
    assert postmark.events is not None and postmark.events.password == Secret("pm-password")
    assert "pm-password" not in repr(postmark)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"events": "sparkpost"},
            "upstreams[0].events: must be one of ses | mailgun | sendgrid | postmark "
            "(got 'sparkpost')",
        ),
        (
            {"events": "mailgun"},
            "upstreams[0].events_key: events: mailgun needs events_key (the webhook signing "
            "key of Mailgun; or events_key_env, events_key_file)",
        ),
        (
            {"events": "sendgrid"},
            "upstreams[0].events_key: events: sendgrid needs events_key (the verification key "
            "of SendGrid's Signed Event Webhook; or events_key_env, events_key_file)",
        ),
        (
            {"events": "sendgrid", "events_key": "bm90IGEga2V5"},
            "upstreams[0].events_key: not a SendGrid verification key (an ECDSA P-256 public "
            "key, base64 or PEM, as SendGrid shows it)",
        ),
        (
            {"events": "postmark", "events_username": "hooks"},
            "upstreams[0].events_password: events: postmark needs events_password (the "
            "password of the webhook URL; or events_password_env, events_password_file)",
        ),
        (
            {"events": "postmark", "events_password": "x", "events_username": "a:b"},
            "upstreams[0].events_username: events: postmark needs events_username (the user "
            "name of the webhook URL's basic auth, without ':')",
        ),
        (
            {"events": "ses", "events_topics": ["arn:aws:sqs:eu-west-1:123456789012:q"]},
            "upstreams[0].events_topics[0]: not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)",
        ),
        (
            {"events": "ses", "events_key": "k"},
            "upstreams[0].events_key: not used by events: ses",
        ),
        (
            {"events_key": "k"},
            "upstreams[0].events_key: is only read with events: ses | mailgun | sendgrid | "
            "postmark",
        ),
        (
            {"events": "mailgun", "events_key": "k", "events_key_env": "K"},
            "upstreams[0].events_key: give only one of events_key, events_key_env",
        ),
    ],
)
def test_refusals_say_what_is_missing(tmp_path: Path, keys: dict[str, Any], expected: str) -> None:
    assert problems_of(write(tmp_path, with_upstream(**keys))) == [expected]


def test_the_sns_test_host_is_loopback_only(tmp_path: Path, cert_files: Any) -> None:
    data = base()
    data["provider_events"] = {
        "sns_test_certificate_host": "127.0.0.1:8443",
        "sns_test_ca_file": str(cert_files[2]),
    }
    loaded = load_config(write(tmp_path, data)).provider_events
    assert loaded.sns_test_certificate_host == "127.0.0.1:8443"
    assert loaded.sns_test_ca_file == Path(cert_files[2])
    assert load_config(write(tmp_path, base())).provider_events.sns_test_certificate_host is None

    for host in ("sns.us-east-1.amazonaws.com:443", "10.0.0.1:8443", "127.0.0.1", "[::1]:x"):
        data["provider_events"] = {"sns_test_certificate_host": host}
        assert problems_of(write(tmp_path, data)) == [
            "provider_events.sns_test_certificate_host: for tests only: a loopback address "
            "and port such as 127.0.0.1:8443"
        ]
    data["provider_events"] = {"sns_test_ca_file": str(cert_files[2])}
    assert problems_of(write(tmp_path, data)) == [
        "provider_events.sns_test_ca_file: needs sns_test_certificate_host"
    ]


def test_the_admin_api_refuses_the_events_keys() -> None:
    spec = {"name": "api", "host": "smtp.example.net", "events": "mailgun", "events_key": "k"}
    upstream, problems = parse_upstream_spec(spec)
    assert upstream is None
    assert problems == [
        "upstream.events: not accepted through the API (use the config file)",
        "upstream.events_key: not accepted through the API (use the config file)",
    ]
