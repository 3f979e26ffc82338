"""Verifying a provider's POST costs time linear in its size, whatever the body holds.

As in test_header_linearity: each case times a body of N and of 4N units (best of several
runs of CPU time); linear work takes about 4 times as long, quadratic 16. The bound is 8.
Bodies are signed, so the whole path runs: signature, JSON, mapping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.core.providers import mailgun, postmark, sendgrid, ses
from relay.core.providers.model import Accepted, Refused, parse_reply

UNITS = 2_000
RATIO = 8
NOW = 1_770_920_772.0
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PUBLIC = sendgrid.load_public_key(
    base64.b64encode(
        EC_KEY.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
)


def sendgrid_batch(n: int) -> Callable[[], object]:
    events = [
        {"email": f"u{i}@example.com", "timestamp": 1, "event": "bounce", "type": "bounce",
         "reason": "550 " + "x " * 20, "smtp-id": f"<{i}@example.org>"}
        for i in range(n)
    ]  # fmt: skip
    body = json.dumps(events).encode()
    signature = base64.b64encode(EC_KEY.sign(b"1770920772" + body, ec.ECDSA(hashes.SHA256())))
    assert EC_PUBLIC is not None
    key = EC_PUBLIC
    return lambda: sendgrid.verify(body, signature.decode(), "1770920772", key, now=NOW)


def ses_bounce(n: int) -> Callable[[], object]:
    recipients = [
        {"emailAddress": f"u{i}@example.com", "diagnosticCode": "smtp; 550 " + " " * 50}
        for i in range(n)
    ]
    message = json.dumps(
        {
            "notificationType": "Bounce",
            "mail": {"messageId": "m", "headers": [{"name": "X", "value": "y"}] * n},
            "bounce": {"bounceType": "Permanent", "bouncedRecipients": recipients},
        }
    )
    return lambda: ses.notification_events(message)


def mailgun_headers(n: int) -> Callable[[], object]:
    mac = hmac.new(b"k", b"1770920772t", hashlib.sha256).hexdigest()
    event = {
        "event": "failed",
        "severity": "permanent",
        "recipient": "a@example.com",
        "message": {"headers": {f"x-{i}": "v" * 50 for i in range(n)}},
    }
    body = json.dumps(
        {
            "signature": {"timestamp": "1770920772", "token": "t", "signature": mac},
            "event-data": event,
        }
    ).encode()
    return lambda: mailgun.verify(body, b"k", now=NOW)


def postmark_details(n: int) -> Callable[[], object]:
    body = json.dumps(
        {"RecordType": "Bounce", "Type": "HardBounce", "Email": "a@example.com",
         "Details": "550 " + "- " * (50 * n), "Content": "x" * (50 * n)}
    ).encode()  # fmt: skip
    authorization = "Basic " + base64.b64encode(b"u:p").decode()
    return lambda: postmark.verify(body, authorization, "u", "p")


def hostile_reply(n: int) -> Callable[[], object]:
    text = "smtp; " * n + "550" + " -" * (50 * n)
    return lambda: parse_reply(text)


CASES: dict[str, Callable[[int], Callable[[], object]]] = {
    "sendgrid batch": sendgrid_batch,
    "ses bounce": ses_bounce,
    "mailgun headers": mailgun_headers,
    "postmark details": postmark_details,
    "reply text": hostile_reply,
}


def cpu_seconds(work: Callable[[], object], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        result = work()
        best = min(best, time.process_time() - start)
    assert isinstance(result, Accepted | Refused) or result is None
    return best


@pytest.mark.parametrize("name", list(CASES))
def test_four_times_the_body_costs_less_than_eight_times_the_time(name: str) -> None:
    small = cpu_seconds(CASES[name](UNITS))
    large = cpu_seconds(CASES[name](4 * UNITS))
    print(f"{name}: {small * 1000:.1f} ms -> {large * 1000:.1f} ms")
    assert large < RATIO * max(small, 0.001), f"{name}: {small:.4f} s -> {large:.4f} s"
