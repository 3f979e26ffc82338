"""SendGrid's signed Event Webhook: a batch in the documented format, signed here with a P-256
key made here (ECDSA, SHA-256, over the timestamp header then the raw body)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.core.providers import sendgrid
from relay.core.providers.model import Accepted, EventKind, Provider, Refusal, Refused

NOW = 1_513_299_600.0
STAMP = "1513299569"

# From the "Event Webhook Reference" example batch.
BATCH: list[dict[str, Any]] = [
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "processed",
        "category": "cat facts",
        "sg_event_id": "sg_event_id",
        "sg_message_id": "sg_message_id",
    },
    {
        "email": "Example@Test.com",
        "timestamp": 1513299569,
        "smtp-id": "<01hq3x7k9m@relay.example.org>",
        "event": "bounce",
        "category": "cat facts",
        "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "reason": "500 unknown recipient",
        "status": "5.0.0",
        "type": "bounce",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "bounce",
        "sg_event_id": "b1",
        "sg_message_id": "m1",
        "reason": "550 5.7.1 blocked by policy",
        "status": "5.7.1",
        "type": "blocked",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "event": "deferred",
        "sg_event_id": "d1",
        "sg_message_id": "m1",
        "response": "400 try again later",
        "attempt": "5",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "event": "delivered",
        "sg_event_id": "d2",
        "sg_message_id": "m1",
        "response": "250 OK",
    },
    {
        "email": "example@test.com",
        "timestamp": 1513299569,
        "event": "dropped",
        "reason": "Bounced Address",
    },
    {"email": "example@test.com", "timestamp": 1513299569, "event": "spamreport"},
    {"email": "example@test.com", "timestamp": 1513299569, "event": "open", "useragent": "x"},
    {"email": "example@test.com", "timestamp": 1513299569, "event": "something_new"},
]


@pytest.fixture(scope="module")
def private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def public_key(private_key: ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePublicKey:
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = sendgrid.load_public_key(base64.b64encode(der).decode())  # as SendGrid shows it
    assert key is not None
    return key


def _sign(body: bytes, key: ec.EllipticCurvePrivateKey, stamp: str = STAMP) -> str:
    return base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()


def test_a_signed_batch_maps_each_event(private_key, public_key) -> None:
    body = json.dumps(BATCH).encode()
    signature = _sign(body, private_key)
    verdict = sendgrid.verify(body, signature, STAMP, public_key, now=NOW)
    assert isinstance(verdict, Accepted)
    kinds = [e.kind for e in verdict.events]
    assert kinds == [
        EventKind.BOUNCED_HARD,
        EventKind.BOUNCED_SOFT,
        EventKind.DEFERRED,
        EventKind.DELIVERED,
        EventKind.DROPPED,
        EventKind.COMPLAINED,
    ]
    assert verdict.ignored == ("processed", "open", "something_new")
    # The signed bytes identify the request (a signature has a twin that verifies too).
    assert verdict.replay_key == hashlib.sha256(STAMP.encode() + b"\n" + body).hexdigest()
    bounce = verdict.events[0]
    assert bounce.provider is Provider.SENDGRID and bounce.suppresses
    assert bounce.recipient == "example@test.com"
    assert bounce.message_id == "01hq3x7k9m@relay.example.org"
    assert bounce.provider_message_id == "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"
    assert bounce.reply is not None and bounce.reply.code == 500 and bounce.status == "5.0.0"
    assert (
        bounce.raw_type == "bounce/bounce"
        and bounce.provider_event_id == "6g4ZI7SA-xmRDv57GoPIPw=="
    )
    assert not verdict.events[1].suppresses  # a block is not an address failure
    assert verdict.events[2].reply is not None and verdict.events[2].reply.code == 400


def test_a_tampered_body_is_refused(private_key, public_key) -> None:
    body = json.dumps(BATCH).encode()
    signature = _sign(body, private_key)
    tampered = body.replace(b'"type": "blocked"', b'"type": "bounce"')
    verdict = sendgrid.verify(tampered, signature, STAMP, public_key, now=NOW)
    assert verdict == Refused(Refusal.BAD_SIGNATURE, "the SendGrid signature does not verify")
    moved = sendgrid.verify(body, signature, "1513299570", public_key, now=NOW)
    assert isinstance(moved, Refused) and moved.reason is Refusal.BAD_SIGNATURE


def test_a_wrong_key_is_refused(public_key) -> None:
    body = json.dumps(BATCH).encode()
    signature = _sign(body, ec.generate_private_key(ec.SECP256R1()))
    verdict = sendgrid.verify(body, signature, STAMP, public_key, now=NOW)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.BAD_SIGNATURE


def test_an_old_timestamp_is_refused(private_key, public_key) -> None:
    body = json.dumps(BATCH).encode()
    old = str(int(NOW) - 3600)
    verdict = sendgrid.verify(body, _sign(body, private_key, old), old, public_key, now=NOW)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.STALE_TIMESTAMP


@pytest.mark.parametrize(
    ("signature", "stamp"),
    [
        (None, STAMP),
        ("", STAMP),
        ("abc", None),
        ("!!!", STAMP),
        ("A" * 10_000, STAMP),
        ("QUJD", "x"),
    ],
)
def test_absent_or_garbled_headers_are_refused(signature, stamp, public_key) -> None:
    verdict = sendgrid.verify(b"[]", signature, stamp, public_key, now=NOW)
    assert isinstance(verdict, Refused)
    assert verdict.reason in (Refusal.BAD_SIGNATURE, Refusal.MALFORMED)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[",
        b"{}",
        b"[1]",
        b'[{"event": "bounce", "email": "a@example.com", "type": "sideways"}]',
        b'[{"event": "delivered", "email": "not an address"}]',
        b'[{"event": "delivered"}]',
        b'[{"event": ["delivered"], "email": "a@example.com"}]',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xc3\x28",
    ],
)
def test_malformed_but_signed_bodies_are_refusals(body: bytes, private_key, public_key) -> None:
    verdict = sendgrid.verify(body, _sign(body, private_key), STAMP, public_key, now=NOW)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.MALFORMED


def test_a_huge_body_is_refused_before_any_work(private_key, public_key) -> None:
    body = b"[" + b'"x",' * 1_000_000 + b'"x"]'
    verdict = sendgrid.verify(body, "QUJD", STAMP, public_key, now=NOW)
    assert isinstance(verdict, Refused) and verdict.reason is Refusal.MALFORMED


@pytest.mark.parametrize(
    "text",
    ["", "not base64!", base64.b64encode(b"junk").decode(), "A" * 5000],
)
def test_verification_keys_that_do_not_load(text: str) -> None:
    assert sendgrid.load_public_key(text) is None


def test_a_key_on_another_curve_is_not_taken() -> None:
    der = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert sendgrid.load_public_key(base64.b64encode(der).decode()) is None


def test_an_unreadable_time_leaves_occurred_at_empty(private_key, public_key) -> None:
    body = b'[{"event": "delivered", "email": "a@example.com", "timestamp": 1e999}]'
    verdict = sendgrid.verify(body, _sign(body, private_key), STAMP, public_key, now=NOW)
    assert isinstance(verdict, Accepted) and verdict.events[0].occurred_at is None
