"""The configuration of provider events in: ``upstreams[].events`` and its credentials, and
the test-only ``provider_events:`` section.

Each provider needs what verifies it, and a file that lacks it is refused at load, never at
the first event: Mailgun its webhook signing key, SendGrid the verification key of its
Signed Event Webhook (loaded here, so a key that is not an ECDSA P-256 public key fails
now), Postmark a basic-auth user name and password. SES needs nothing secret (SNS signs with
AWS's certificate); ``events_topics`` narrows which topics it takes. Secrets follow the
``x`` / ``x_env`` / ``x_file`` rule of every other secret.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from relay.config_section import Section, read_existing_file
from relay.core.model import Secret, UpstreamEvents
from relay.core.providers import sendgrid
from relay.core.providers.model import Provider

# arn:aws:sns:us-east-1:123456789012:ses-bounces (also aws-cn, aws-us-gov partitions).
_TOPIC_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:sns:[a-z0-9-]{1,32}:[0-9]{12}:[A-Za-z0-9_.-]{1,256}")
_PEM_LINE = re.compile(r"-----(?:BEGIN|END) [A-Z ]+-----")
# Which of the credentials each provider takes; the others are a mistake worth saying.
_USES = {
    Provider.SES: {"events_topics"},
    Provider.MAILGUN: {"events_key"},
    Provider.SENDGRID: {"events_key"},
    Provider.POSTMARK: {"events_username", "events_password"},
}
_CREDENTIALS = ("events_key", "events_username", "events_password", "events_topics")


@dataclass(frozen=True)
class ProviderEventsConfig:
    """``provider_events:``: settings for tests only. Never set them in production."""

    # "127.0.0.1:PORT": an SNS SigningCertURL / SubscribeURL on this loopback host is taken
    # as if it were AWS's (core.providers.sns's loopback_host); only a loopback address.
    sns_test_certificate_host: str | None = None
    sns_test_ca_file: Path | None = None  # trusted, besides the system's, to fetch from it


def parse_upstream_events(s: Section) -> UpstreamEvents | None:
    """``events`` and its credentials, read from an upstream's section."""
    given = [key for key in _CREDENTIALS if _given(s, key)]
    for key in _CREDENTIALS:  # read here; each provider reads its own again below
        for variant in (key, f"{key}_env", f"{key}_file"):
            s.raw(variant, None)
    if not s.has("events"):
        for key in given:
            s.problem("is only read with events: ses | mailgun | sendgrid | postmark", key)
        return None
    provider = _provider(s)
    if provider is None:
        return None
    for key in given:
        if key not in _USES[provider]:
            s.problem(f"not used by events: {provider.value}", key)
    if provider is Provider.MAILGUN:
        signing_key = _required_secret(s, "events_key", "the webhook signing key of Mailgun")
        return UpstreamEvents(provider.value, key=signing_key) if signing_key else None
    if provider is Provider.SENDGRID:
        return _sendgrid(s)
    if provider is Provider.POSTMARK:
        username = s.text("events_username", None)
        if username is None or not username or ":" in username:
            s.problem(
                "events: postmark needs events_username (the user name of the webhook URL's "
                "basic auth, without ':')",
                "events_username",
            )
        password = _required_secret(s, "events_password", "the password of the webhook URL")
        if username is None or password is None:
            return None
        return UpstreamEvents(provider.value, username=username, password=password)
    return UpstreamEvents(provider.value, topics=_topics(s))


def _provider(s: Section) -> Provider | None:
    value = s.raw("events")
    try:
        return Provider(value)
    except ValueError:
        allowed = " | ".join(p.value for p in Provider)
        s.problem(f"must be one of {allowed} (got {value!r})", "events")
        return None


def _given(s: Section, key: str) -> bool:
    return any(s.has(k) for k in (key, f"{key}_env", f"{key}_file"))


def _required_secret(s: Section, key: str, what: str) -> Secret | None:
    value = s.secret(key)
    if value is None and not _given(s, key):
        provider = s.raw("events", None)
        s.problem(f"events: {provider} needs {key} ({what}; or {key}_env, {key}_file)", key)
    return value


def _sendgrid(s: Section) -> UpstreamEvents | None:
    value = _required_secret(
        s, "events_key", "the verification key of SendGrid's Signed Event Webhook"
    )
    if value is None:
        return None
    der = sendgrid_key_text(value.reveal())
    if sendgrid.load_public_key(der) is None:
        s.problem(
            "not a SendGrid verification key (an ECDSA P-256 public key, base64 or PEM, as "
            "SendGrid shows it)",
            "events_key",
        )
        return None
    return UpstreamEvents(Provider.SENDGRID.value, key=Secret(der))


def sendgrid_key_text(text: str) -> str:
    """SendGrid's verification key as base64 DER: a PEM's armour lines and breaks removed."""
    return "".join(_PEM_LINE.sub("", text).split())


def _topics(s: Section) -> tuple[str, ...]:
    topics = []
    for i, arn in s.items("events_topics"):
        if not isinstance(arn, str) or _TOPIC_ARN.fullmatch(arn) is None:
            s.problem(
                "not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)", f"events_topics[{i}]"
            )
        else:
            topics.append(arn)
    return tuple(topics)


def parse_provider_events(s: Section) -> ProviderEventsConfig:
    host = s.text("sns_test_certificate_host", None)
    if host is not None and not _is_loopback_host(host):
        s.problem(
            "for tests only: a loopback address and port such as 127.0.0.1:8443",
            "sns_test_certificate_host",
        )
        host = None
    ca_file = read_existing_file(s, "sns_test_ca_file")
    if ca_file is not None and host is None:
        s.problem("needs sns_test_certificate_host", "sns_test_ca_file")
    s.finish()
    return ProviderEventsConfig(host, ca_file)


def _is_loopback_host(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False
