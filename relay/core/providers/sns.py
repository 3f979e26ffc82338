"""Amazon SNS HTTP(S) messages: parse the envelope, check where its certificate may come from,
and verify its signature, exactly as AWS documents it.

Followed:

- "Verifying the signatures of Amazon SNS messages" and "Verifying the signature of an
  Amazon SNS message when using HTTP query-based requests" (docs.aws.amazon.com/sns/latest/
  dg/sns-verify-signature-of-message.html and ...-verify-message-signature.html): the string
  to sign holds, for a ``Notification``, ``Message``, ``MessageId``, ``Subject`` (only if
  present), ``Timestamp``, ``TopicArn``, ``Type``; for a ``SubscriptionConfirmation`` or
  ``UnsubscribeConfirmation``, ``Message``, ``MessageId``, ``SubscribeURL``, ``Timestamp``,
  ``Token``, ``TopicArn``, ``Type``; in that fixed (byte) order, each as the name, a
  newline, the value, a newline, and no other field. ``SignatureVersion`` 1 is
  SHA1withRSA, 2 is SHA256withRSA, over those bytes (UTF-8), with the public key of the
  certificate at ``SigningCertURL``; ``Signature`` is base64. "Reject any message with an
  unexpected TopicArn".
- "HTTP/HTTPS notification JSON format", "... subscription confirmation JSON format",
  "... unsubscribe confirmation JSON format" (same guide): the field names above.
- The certificate URL rule is the one of AWS's own validator (aws-php-sns-message-validator,
  ``MessageValidator::validateUrl``): https, a host ``sns.<region>.amazonaws.com`` or
  ``.amazonaws.com.cn``, a path ending in ``.pem``; ours is stricter (a region shaped like
  one, no user, port, query or fragment, no dot segments), so look-alikes such as
  ``sns.us-east-1.amazonaws.com.evil.example`` or ``evil.example/sns.us-east-1.amazonaws.com``
  fail.

The certificate's chain is not checked here: as AWS's SDK validators do, trust rests on
fetching it over verified HTTPS from an allowed host (the caller's job, with certificate
checks on). The Timestamp is signed, so a replay window is possible (``max_age_seconds``)
but AWS documents none; SNS keeps a ``MessageId`` across its retries, which makes it the
replay key.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.core.providers.model import (
    MAX_BODY_BYTES,
    Malformed,
    Refusal,
    Refused,
    load_json,
    obj,
    text,
)

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"
_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: _CONFIRMATION_FIELDS,
    UNSUBSCRIBE_CONFIRMATION: _CONFIRMATION_FIELDS,
}
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
_MAX_SIGNATURE_CHARS = 1024  # base64 of a 4096-bit RSA signature is 684
_MAX_CERT_BYTES = 64 * 1024
_MAX_URL_CHARS = 2048
# us-east-1, eu-central-2, us-gov-west-1, cn-northwest-1, us-isob-east-1, ...
_SNS_HOST = r"sns\.[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}\.amazonaws\.com(?:\.cn)?"
_SEGMENT = r"/[A-Za-z0-9_-][A-Za-z0-9._-]*"
_CERT_PATH = rf"(?:{_SEGMENT})*/[A-Za-z0-9_-][A-Za-z0-9._-]*\.pem"
_QUERY = r"/\?[A-Za-z0-9._~%&=:+-]*"


@dataclass(frozen=True)
class SnsEnvelope:
    type: str
    message_id: str
    topic_arn: str
    timestamp: str
    message: str
    signature_version: str
    signature: bytes
    signing_cert_url: str
    subject: str | None = None
    subscribe_url: str | None = None  # confirmations: GET it to confirm (see subscribe_url_allowed)
    token: str | None = None

    def string_to_sign(self) -> bytes:
        values = {
            "Message": self.message,
            "MessageId": self.message_id,
            "Subject": self.subject,
            "SubscribeURL": self.subscribe_url,
            "Timestamp": self.timestamp,
            "Token": self.token,
            "TopicArn": self.topic_arn,
            "Type": self.type,
        }
        lines = []
        for name in _SIGNED_FIELDS[self.type]:
            value = values[name]
            if value is not None:
                lines.append(f"{name}\n{value}\n")
        return "".join(lines).encode("utf-8")


def signing_cert_url_allowed(url: str, *, loopback_host: str | None = None) -> bool:
    """May the certificate at ``url`` be fetched? https on an SNS host, a ``.pem`` path.

    ``loopback_host`` ("127.0.0.1:8443") also allows that one host for tests; it is never a
    default, and only a loopback address is taken.
    """
    return _url_allowed(url, _CERT_PATH, loopback_host)


def subscribe_url_allowed(url: str, *, loopback_host: str | None = None) -> bool:
    """May a confirmation's SubscribeURL be visited? https on an SNS host, path ``/?...``."""
    return _url_allowed(url, _QUERY, loopback_host)


def _url_allowed(url: str, path: str, loopback_host: str | None) -> bool:
    if not isinstance(url, str) or len(url) > _MAX_URL_CHARS:
        return False
    hosts = _SNS_HOST
    if loopback_host is not None and _is_loopback(loopback_host):
        hosts = rf"(?:{_SNS_HOST}|{re.escape(loopback_host)})"
    return re.fullmatch(rf"https://{hosts}{path}", url, re.ASCII) is not None


def _is_loopback(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    if not port.isdigit() or not port.isascii():
        return False
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def parse_envelope(
    body: bytes, *, loopback_host: str | None = None, max_bytes: int = MAX_BODY_BYTES
) -> SnsEnvelope | Refused:
    """The envelope of an SNS POST, its certificate URL checked; not yet its signature."""
    try:
        envelope = _envelope(obj(load_json(body, max_bytes), "the body"))
    except Malformed as error:
        return Refused(Refusal.MALFORMED, str(error))
    if envelope is None:
        return Refused(Refusal.UNKNOWN_TYPE, "Type is not an SNS message type")
    if envelope.signature_version not in _HASHES:
        return Refused(Refusal.BAD_SIGNATURE, "SignatureVersion is neither 1 nor 2")
    if not signing_cert_url_allowed(envelope.signing_cert_url, loopback_host=loopback_host):
        return Refused(Refusal.CERT_URL_REFUSED, "SigningCertURL is not an SNS certificate URL")
    return envelope


def _envelope(fields: Mapping[str, Any]) -> SnsEnvelope | None:
    kind = text(fields, "Type")
    if kind not in _SIGNED_FIELDS:
        return None
    confirmation = kind != NOTIFICATION
    signature_text = text(fields, "Signature", limit=_MAX_SIGNATURE_CHARS)
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except binascii.Error:
        raise Malformed("Signature is not base64") from None
    subject = fields.get("Subject")
    if subject is not None and not isinstance(subject, str):
        raise Malformed("Subject is not a string")
    return SnsEnvelope(
        type=kind,
        message_id=text(fields, "MessageId"),
        topic_arn=text(fields, "TopicArn"),
        timestamp=text(fields, "Timestamp", limit=64),
        message=text(fields, "Message", limit=MAX_BODY_BYTES),
        signature_version=text(fields, "SignatureVersion", limit=8),
        signature=signature,
        signing_cert_url=text(fields, "SigningCertURL", limit=_MAX_URL_CHARS),
        subject=subject if not confirmation else None,
        subscribe_url=text(fields, "SubscribeURL", limit=_MAX_URL_CHARS) if confirmation else None,
        token=text(fields, "Token", limit=4096) if confirmation else None,
    )


def verify_envelope(
    envelope: SnsEnvelope,
    certificate_pem: bytes,
    *,
    topic_arns: Collection[str] | None = None,
    now: dt.datetime | None = None,
    max_age_seconds: float | None = None,
) -> Refused | None:
    """None when the signature verifies with the certificate (and the topic and age fit)."""
    key = _public_key(certificate_pem)
    if key is None:
        return Refused(Refusal.BAD_CERTIFICATE, "the signing certificate is not an RSA PEM")
    algorithm = _HASHES[envelope.signature_version]()
    try:
        key.verify(envelope.signature, envelope.string_to_sign(), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        return Refused(Refusal.BAD_SIGNATURE, "the SNS signature does not verify")
    if topic_arns is not None and envelope.topic_arn not in topic_arns:
        return Refused(Refusal.UNEXPECTED_TOPIC, "TopicArn is not a configured topic")
    if max_age_seconds is not None and now is not None:
        sent = _utc(envelope.timestamp)
        if sent is None:
            return Refused(Refusal.MALFORMED, "Timestamp is not ISO 8601")
        if abs((now - sent).total_seconds()) > max_age_seconds:
            return Refused(Refusal.STALE_TIMESTAMP, "Timestamp is outside the window")
    return None


def _public_key(certificate_pem: bytes) -> rsa.RSAPublicKey | None:
    if len(certificate_pem) > _MAX_CERT_BYTES:
        return None
    try:
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    except ValueError:
        return None
    return key if isinstance(key, rsa.RSAPublicKey) else None


def _utc(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
