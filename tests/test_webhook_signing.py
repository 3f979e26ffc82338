"""Standard Webhooks signing, checked by a verifier written here from the specification.

The verifier follows the spec (github.com/standard-webhooks, "Verifying
webhooks"), not our code: the key is the base64 after ``whsec_``; the signed
content is ``{webhook-id}.{webhook-timestamp}.{body}``; ``webhook-signature``
is a space-separated list of ``v1,<base64 HMAC-SHA256>``; a timestamp more
than five minutes away from now is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from relay.core.webhook_signing import (
    BadSecret,
    new_secret,
    parse_secret,
    signed_headers,
)

TOLERANCE_SECONDS = 5 * 60


class Refused(Exception):
    pass


def spec_verify(secret: str, headers: dict[str, str], body: bytes, now: float) -> None:
    """Raise Refused unless the request is signed as the Standard Webhooks spec says."""
    headers = {k.lower(): v for k, v in headers.items()}
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise Refused("missing headers")
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise Refused("timestamp out of tolerance")
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = hmac.new(key, content, hashlib.sha256).digest()
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return
    raise Refused("no matching signature")


def test_a_signature_verifies_by_the_specification() -> None:
    secret = new_secret(bytes(range(32)))
    body = '{"id":"evt_1","type":"webhook.test","data":{"note":"é"}}'
    now = int(time.time())
    headers = signed_headers(parse_secret(secret), "evt_1", now, body)
    spec_verify(secret, headers, body.encode(), now)
    assert headers["webhook-signature"].startswith("v1,")


def test_a_tampered_body_an_old_timestamp_or_another_id_fail() -> None:
    secret = new_secret(b"k" * 32)
    body = '{"id":"evt_1"}'
    now = int(time.time())
    headers = signed_headers(parse_secret(secret), "evt_1", now, body)
    with pytest.raises(Refused, match="no matching"):
        spec_verify(secret, headers, b'{"id":"evt_2"}', now)
    with pytest.raises(Refused, match="no matching"):
        spec_verify(secret, {**headers, "webhook-id": "evt_2"}, body.encode(), now)
    old = signed_headers(parse_secret(secret), "evt_1", now - 600, body)
    with pytest.raises(Refused, match="tolerance"):
        spec_verify(secret, old, body.encode(), now)
    with pytest.raises(Refused, match="no matching"):
        spec_verify(new_secret(b"x" * 32), headers, body.encode(), now)


def test_a_known_vector() -> None:
    """Computed once by hand from the formula, so a change of encoding shows up."""
    key = parse_secret("whsec_" + base64.b64encode(b"a" * 24).decode())
    digest = hmac.new(key, b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert signed_headers(key, "msg_1", 1_700_000_000, "{}")["webhook-signature"] == (
        "v1," + base64.b64encode(digest).decode()
    )


def test_new_secrets_look_like_whsec_and_parse_back() -> None:
    secret = new_secret(b"\xff" * 32)
    assert secret.startswith("whsec_")
    assert parse_secret(secret) == b"\xff" * 32
    assert parse_secret(secret.rstrip("=")) == b"\xff" * 32  # padding optional


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("abc", "must start with whsec_"),
        ("whsec_!!!!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes"),
    ],
)
def test_bad_secrets_say_why(text: str, problem: str) -> None:
    with pytest.raises(BadSecret, match=problem):
        parse_secret(text)
