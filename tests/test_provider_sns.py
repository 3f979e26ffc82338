"""SNS envelopes and SES notifications: fixtures in AWS's documented format, signed here.

The string to sign is built in this file from the AWS guide ("Verifying the signature of an
Amazon SNS message"), not with the code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from relay.core.providers import ses, sns
from relay.core.providers.model import Accepted, EventKind, Provider, Refusal, Refused

CERT_URL = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
TOPIC = "arn:aws:sns:us-west-2:123456789012:MyTopic"
NOW = dt.datetime(2026, 12, 6, 20, 0, 5, tzinfo=dt.UTC)


def _certificate(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def cert_pem(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return _certificate(rsa_key)


def _string_to_sign(message: dict[str, Any]) -> bytes:
    # The guide: Notification -> Message, MessageId, Subject (if present), Timestamp,
    # TopicArn, Type; confirmations -> Message, MessageId, SubscribeURL, Timestamp, Token,
    # TopicArn, Type; "name\nvalue\n" each.
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def _sign(message: dict[str, Any], key: rsa.RSAPrivateKey, version: str = "2") -> dict[str, Any]:
    digest = hashes.SHA256() if version == "2" else hashes.SHA1()  # noqa: S303 - SNS v1 is SHA1
    signature = key.sign(_string_to_sign(message), padding.PKCS1v15(), digest)
    return {
        **message,
        "SignatureVersion": version,
        "Signature": base64.b64encode(signature).decode(),
        "SigningCertURL": CERT_URL,
    }


# From "Amazon SNS notification contents for Amazon SES": a bounce with the original headers.
SES_BOUNCE = {
    "notificationType": "Bounce",
    "bounce": {
        "feedbackId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [
            {
                "emailAddress": "Jane@Example.com",
                "action": "failed",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
            },
            {"emailAddress": "richard@example.com"},
        ],
        "timestamp": "2016-01-27T14:59:38.237Z",
        "remoteMtaIp": "127.0.2.0",
        "reportingMTA": "dns; email.example.com",
    },
    "mail": {
        "timestamp": "2016-01-27T14:59:38.237Z",
        "messageId": "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000",
        "source": "john@example.com",
        "destination": ["jane@example.com", "richard@example.com"],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "John Doe <john@example.com>"},
            {"name": "Message-ID", "value": "<01hq3x7k9m@relay.example.org>"},
        ],
        "commonHeaders": {"messageId": "<other@example.com>", "subject": "Hello"},
    },
}
SES_COMPLAINT = {
    "notificationType": "Complaint",
    "complaint": {
        "userAgent": "AnyCompany Feedback Loop (V0.01)",
        "complainedRecipients": [{"emailAddress": "richard@example.com"}],
        "complaintFeedbackType": "abuse",
        "timestamp": "2016-01-27T14:59:38.237Z",
        "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000",
    },
    "mail": {
        "messageId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
        "commonHeaders": {"messageId": "<01hq3x7k9m@relay.example.org>"},
    },
}
SES_DELIVERY = {
    "notificationType": "Delivery",
    "mail": {"messageId": "0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000"},
    "delivery": {
        "timestamp": "2016-01-27T14:59:38.237Z",
        "recipients": ["jane@example.com"],
        "processingTimeMillis": 546,
        "reportingMTA": "a8-70.smtp-out.amazonses.com",
        "smtpResponse": "250 ok:  Message 64111812 accepted",
        "remoteMtaIp": "127.0.2.0",
    },
}


def _notification(inner: dict[str, Any] | str, key: rsa.RSAPrivateKey, **more: Any) -> bytes:
    message = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": inner if isinstance(inner, str) else json.dumps(inner),
        "Timestamp": "2026-12-06T20:00:00.000Z",
        **more,
    }
    signed = _sign(message, key, more.pop("version", "2") if "version" in more else "2")
    signed["UnsubscribeURL"] = "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&x=1"
    return json.dumps(signed).encode()


def _verified(body: bytes, pem: bytes, **kwargs: Any) -> sns.SnsEnvelope:
    envelope = sns.parse_envelope(body)
    assert isinstance(envelope, sns.SnsEnvelope), envelope
    assert sns.verify_envelope(envelope, pem, **kwargs) is None
    return envelope


def test_a_signed_bounce_maps_to_one_event_per_recipient(rsa_key, cert_pem) -> None:
    envelope = _verified(_notification(SES_BOUNCE, rsa_key), cert_pem, topic_arns={TOPIC})
    verdict = ses.notification_events(envelope.message)
    assert isinstance(verdict, Accepted)
    jane, richard = verdict.events
    assert jane.provider is Provider.SES
    assert jane.kind is EventKind.BOUNCED_HARD and jane.suppresses
    assert jane.recipient == "jane@example.com"
    assert jane.provider_message_id == SES_BOUNCE["mail"]["messageId"]  # type: ignore[index]
    assert jane.message_id == "01hq3x7k9m@relay.example.org"  # the headers win over commonHeaders
    assert jane.reply is not None and (jane.reply.code, jane.reply.enhanced) == (550, "5.1.1")
    assert jane.status == "5.1.1"
    assert jane.diagnostic == "smtp; 550 5.1.1 user unknown"
    assert jane.occurred_at == dt.datetime(2016, 1, 27, 14, 59, 38, 237000, tzinfo=dt.UTC)
    assert jane.raw_type == "Bounce/Permanent"
    assert richard.recipient == "richard@example.com" and richard.reply is None


def test_signature_version_1_sha1_verifies_too(rsa_key, cert_pem) -> None:
    body = _notification(SES_BOUNCE, rsa_key, Subject="Amazon SES Email Event", version="1")
    envelope = _verified(body, cert_pem)
    assert envelope.signature_version == "1" and envelope.subject == "Amazon SES Email Event"


@pytest.mark.parametrize(
    ("bounce_type", "kind"),
    [("Transient", EventKind.BOUNCED_SOFT), ("Undetermined", EventKind.BOUNCED_SOFT)],
)
def test_soft_bounces_never_suppress(bounce_type: str, kind: EventKind) -> None:
    notification = json.loads(json.dumps(SES_BOUNCE))
    notification["bounce"]["bounceType"] = bounce_type
    verdict = ses.notification_events(json.dumps(notification))
    assert isinstance(verdict, Accepted)
    assert {e.kind for e in verdict.events} == {kind}
    assert not any(e.suppresses for e in verdict.events)


def test_complaint_and_delivery() -> None:
    complaint = ses.notification_events(json.dumps(SES_COMPLAINT))
    assert isinstance(complaint, Accepted)
    (event,) = complaint.events
    assert (event.kind, event.recipient, event.diagnostic) == (
        EventKind.COMPLAINED,
        "richard@example.com",
        "abuse",
    )
    assert event.message_id == "01hq3x7k9m@relay.example.org"
    delivery = ses.notification_events(json.dumps(SES_DELIVERY))
    assert isinstance(delivery, Accepted)
    (event,) = delivery.events
    assert event.kind is EventKind.DELIVERED and event.message_id is None
    assert event.reply is not None and event.reply.code == 250


def test_event_publishing_types() -> None:
    delay = {
        "eventType": "DeliveryDelay",
        "mail": {"messageId": "abc"},
        "deliveryDelay": {
            "timestamp": "2020-06-16T00:15:40.641Z",
            "delayType": "TransientCommunicationFailure",
            "delayedRecipients": [
                {"emailAddress": "a@example.com", "status": "4.4.1", "diagnosticCode": "smtp; 421"}
            ],
        },
    }
    verdict = ses.notification_events(json.dumps(delay))
    assert isinstance(verdict, Accepted) and verdict.events[0].kind is EventKind.DEFERRED
    assert ses.notification_events(json.dumps({"eventType": "Open", "mail": {}})) == Accepted(
        events=(), ignored=("Open",)
    )
    assert ses.notification_events(json.dumps({"eventType": "Wat", "mail": {}})) == Refused(
        Refusal.UNKNOWN_TYPE, "not an SES notification type"
    )
    assert isinstance(ses.notification_events("hello from the console"), Refused)


def test_subscription_confirmation_is_signed_over_its_own_fields(rsa_key, cert_pem) -> None:
    message = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\nTo confirm ...",
        "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37",
        "Timestamp": "2012-04-26T20:45:04.751Z",
    }
    envelope = _verified(json.dumps(_sign(message, rsa_key)).encode(), cert_pem)
    assert envelope.type == sns.SUBSCRIPTION_CONFIRMATION
    assert envelope.subscribe_url is not None and sns.subscribe_url_allowed(envelope.subscribe_url)
    unsubscribe = {**message, "Type": "UnsubscribeConfirmation"}
    _verified(json.dumps(_sign(unsubscribe, rsa_key)).encode(), cert_pem)


def _refusal(body: bytes, pem: bytes, **kwargs: Any) -> Refused:
    envelope = sns.parse_envelope(body)
    if isinstance(envelope, Refused):
        return envelope
    verdict = sns.verify_envelope(envelope, pem, **kwargs)
    assert isinstance(verdict, Refused)
    return verdict


def test_a_tampered_message_is_refused(rsa_key, cert_pem) -> None:
    fields = json.loads(_notification(SES_BOUNCE, rsa_key))
    fields["Message"] = fields["Message"].replace("Permanent", "Transient")
    refused = _refusal(json.dumps(fields).encode(), cert_pem)
    assert refused.reason is Refusal.BAD_SIGNATURE
    # A field outside the string to sign may change; one inside may not, Subject included.
    fields = json.loads(_notification(SES_BOUNCE, rsa_key))
    fields["Subject"] = "added"
    assert _refusal(json.dumps(fields).encode(), cert_pem).reason is Refusal.BAD_SIGNATURE


def test_a_wrong_key_an_ec_cert_or_garbage_cert_is_refused(rsa_key) -> None:
    body = _notification(SES_BOUNCE, rsa_key)
    other = _certificate(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert _refusal(body, other).reason is Refusal.BAD_SIGNATURE
    ec_cert = _certificate(ec.generate_private_key(ec.SECP256R1()))
    assert _refusal(body, ec_cert).reason is Refusal.BAD_CERTIFICATE
    assert _refusal(body, b"-----BEGIN CERTIFICATE-----\nAAAA\n").reason is Refusal.BAD_CERTIFICATE


def test_topic_and_age_are_checked_when_asked(rsa_key, cert_pem) -> None:
    body = _notification(SES_BOUNCE, rsa_key)
    assert _refusal(body, cert_pem, topic_arns={"arn:aws:sns:x"}).reason is Refusal.UNEXPECTED_TOPIC
    late = NOW + dt.timedelta(hours=2)
    refused = _refusal(body, cert_pem, now=late, max_age_seconds=3600)
    assert refused.reason is Refusal.STALE_TIMESTAMP
    _verified(body, cert_pem, now=NOW, max_age_seconds=3600)


def test_signature_version_other_than_1_or_2_is_refused(rsa_key) -> None:
    fields = json.loads(_notification(SES_BOUNCE, rsa_key))
    fields["SignatureVersion"] = "3"
    assert _refusal(json.dumps(fields).encode(), b"").reason is Refusal.BAD_SIGNATURE


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    ],
)
def test_cert_urls_of_sns_hosts_are_allowed(url: str) -> None:
    assert sns.signing_cert_url_allowed(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-abc.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
        "https://user@sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com:8443/x.pem",
        "https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem",
        "https://mybucket.s3.amazonaws.com/x.pem",
        "https://sns.evil.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem?.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem#x",
        "https://sns.us-east-1.amazonaws.com/../x.pem",
        "https://sns.us-east-1.amazonaws.com/x.txt",
        "https://sns.us-east-1.amazonaws.com/x.pem\n",
        "https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem",
        "https://sns.us-east-1.amazonaws.co/x.pem",
        "https://sns.us-east-1.amazonaws.com.cn.evil/x.pem",
        "https://127.0.0.1:8443/x.pem",  # only with the explicit test hook
        "",
    ],
)
def test_look_alike_cert_urls_are_refused(url: str, rsa_key, cert_pem) -> None:
    assert not sns.signing_cert_url_allowed(url)
    fields = json.loads(_notification(SES_BOUNCE, rsa_key))
    fields["SigningCertURL"] = url
    refused = _refusal(json.dumps(fields).encode(), cert_pem)
    assert refused.reason in (Refusal.CERT_URL_REFUSED, Refusal.MALFORMED)


def test_the_loopback_hook_is_explicit_and_loopback_only() -> None:
    url = "https://127.0.0.1:8443/SimpleNotificationService-test.pem"
    assert not sns.signing_cert_url_allowed(url)
    assert sns.signing_cert_url_allowed(url, loopback_host="127.0.0.1:8443")
    assert not sns.signing_cert_url_allowed(url, loopback_host="127.0.0.1:9999")
    remote = "https://203.0.113.7:8443/x.pem"
    assert not sns.signing_cert_url_allowed(remote, loopback_host="203.0.113.7:8443")
    assert sns.signing_cert_url_allowed("https://[::1]:8443/x.pem", loopback_host="[::1]:8443")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"Type": "Notification"',
        b'{"Type": 5}',
        b'{"Type": "Nope"}',
        b'{"Type": "Notification", "Signature": "!!!"}',
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"Type": "Notification", "Message": NaN}',
        b'{"Type": "Notification", "MessageId": ' + b"9" * 10_000 + b"}",
        b'{"Type": "Notification", "Subject": ["x"], "MessageId": "a"}',
        json.dumps({"Type": "Notification", "Message": "x" * 3_000_000}).encode(),
    ],
)
def test_malformed_envelopes_are_refusals_never_exceptions(body: bytes) -> None:
    assert isinstance(sns.parse_envelope(body), Refused)


@pytest.mark.parametrize(
    "inner",
    [
        "{",
        "[]",
        '{"notificationType": "Bounce"}',
        '{"notificationType": "Bounce", "mail": {"messageId": "m"}, "bounce": {}}',
        '{"notificationType": "Bounce", "mail": {"messageId": "m"},'
        ' "bounce": {"bounceType": "Permanent", "bouncedRecipients": [{"emailAddress": 5}]}}',
        '{"notificationType": "Bounce", "mail": {"messageId": "m"},'
        ' "bounce": {"bounceType": "Weird", "bouncedRecipients": []}}',
        '{"notificationType": "Delivery", "mail": {"messageId": "m"},'
        ' "delivery": {"recipients": ["not an address"]}}',
        '{"notificationType": "Complaint", "mail": {"messageId": ["m"]}, "complaint": {}}',
    ],
)
def test_malformed_notifications_are_refusals_never_exceptions(inner: str) -> None:
    assert isinstance(ses.notification_events(inner), Refused)


def test_envelope_events_are_keyed_by_the_sns_message_id(rsa_key, cert_pem) -> None:
    envelope = _verified(_notification(SES_COMPLAINT, rsa_key), cert_pem)
    verdict = ses.envelope_events(envelope)
    assert isinstance(verdict, Accepted)
    assert verdict.replay_key == "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"
    assert verdict.events[0].kind is EventKind.COMPLAINED
    confirmation = sns.SnsEnvelope(
        type=sns.SUBSCRIPTION_CONFIRMATION,
        message_id="m",
        topic_arn=TOPIC,
        timestamp="2012-04-26T20:45:04.751Z",
        message="You have chosen to subscribe",
        signature_version="2",
        signature=b"",
        signing_cert_url=CERT_URL,
    )
    refused = ses.envelope_events(confirmation)
    assert isinstance(refused, Refused) and refused.reason is Refusal.UNKNOWN_TYPE
