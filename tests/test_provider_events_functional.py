"""Provider events in, end to end: a real relay on loopback, real HTTP, requests in each
provider's documented format signed here with keys this test makes.

SES comes through SNS: its signing certificate is served over HTTPS by a loopback server
(the test CA's certificate for 127.0.0.1), which the relay may fetch only because the
test-only ``provider_events.sns_test_certificate_host`` names it. A message goes through
the relay's SMTP path to a sink; the test then writes the ``provider_refs`` rows the
delivery will write (the upstream's queue id and our Message-ID) and posts the provider's
report about it. The string-to-sign, HMACs and signatures are built here from the
providers' guides, not with the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import hashlib
import hmac
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import sqlalchemy as sa
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID

from relay import tls as relay_tls
from relay.core.model import MessageStatus
from relay.core.outbound_events import Subscription, Subscriptions
from relay.core.providers.model import MAX_BODY_BYTES
from relay.retention_database import delete_expired, delete_finished
from relay.tables import (
    messages,
    provider_events,
    provider_refs,
    provider_replays,
    suppressions,
    webhook_outbox,
)
from tests.conftest import SITE_PASSWORD, RunningRelay, Sink, base_config, smtp_upstream
from tests.two_nodes import start_node, store_url

__all__ = ["start_node", "store_url"]  # fixtures

SENDER = "orders@shop.example.com"
TOPIC = "arn:aws:sns:us-west-2:123456789012:ses-events"
OTHER_TOPIC = "arn:aws:sns:us-west-2:999999999999:someone-elses"
MAILGUN_KEY = "key-4e0b1f7c9a2d3e5f60718293a4b5c6d7"
POSTMARK_USER, POSTMARK_PASSWORD = "relay-hooks", "pm:s3cret"
SG_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    EC_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


def sns_certificate() -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(RSA_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(RSA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- The loopback "AWS": certificates and subscription confirmations, over HTTPS.


@dataclass
class Aws:
    host: str  # 127.0.0.1:PORT
    certificate_gets: int = 0
    confirmations: list[str] = field(default_factory=list)

    @property
    def cert_url(self) -> str:
        return f"https://{self.host}/SimpleNotificationService-test.pem"


@pytest.fixture
async def aws(cert_files: tuple[Path, Path, Path]) -> AsyncIterator[Aws]:
    pem = sns_certificate()
    state = Aws("")

    async def certificate(request: web.Request) -> web.Response:
        state.certificate_gets += 1
        return web.Response(body=pem, content_type="application/x-pem-file")

    async def confirm(request: web.Request) -> web.Response:
        state.confirmations.append(request.query_string)
        return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")

    app = web.Application()
    app.router.add_get("/{name}.pem", certificate)
    app.router.add_get("/", confirm)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner, "127.0.0.1", 0, ssl_context=relay_tls.server_context(*cert_files[:2])
    )
    await site.start()
    state.host = f"127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


# -- Requests as each provider makes them.


def sns_string_to_sign(message: dict[str, Any]) -> bytes:
    # AWS: Notification -> Message, MessageId, Subject (if any), Timestamp, TopicArn, Type;
    # confirmations -> Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type.
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def sns_post(aws: Aws, fields: dict[str, Any]) -> bytes:
    message = {
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        **fields,
    }
    signature = RSA_KEY.sign(sns_string_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
    message.update(
        SignatureVersion="2",
        Signature=base64.b64encode(signature).decode(),
        SigningCertURL=aws.cert_url,
    )
    return json.dumps(message).encode()


def ses_notification(aws: Aws, inner: dict[str, Any]) -> bytes:
    return sns_post(aws, {"Type": "Notification", "Message": json.dumps(inner)})


def ses_bounce(queue_id: str, address: str) -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2026-12-06T14:59:38.237Z",
            "feedbackId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
        },
        "mail": {"messageId": queue_id, "destination": [address]},
    }


def ses_complaint(message_id: str, address: str) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
            "timestamp": "2026-12-06T14:59:38.237Z",
        },
        "mail": {
            "messageId": "not-a-ref-we-know",
            "commonHeaders": {"messageId": f"<{message_id}>"},
        },
    }


def mailgun_post(
    event: dict[str, Any],
    *,
    token: str | None = None,
    stamp: int | None = None,
    key: str = MAILGUN_KEY,
) -> bytes:
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    timestamp = str(stamp if stamp is not None else int(time.time()))
    mac = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    signature = {"token": token, "timestamp": timestamp, "signature": mac}
    return json.dumps({"signature": signature, "event-data": event}).encode()


def mailgun_failed(message_id: str, address: str) -> dict[str, Any]:
    return {
        "event": "failed",
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": time.time(),
        "severity": "permanent",
        "reason": "bounce",
        "recipient": address,
        "message": {"headers": {"message-id": f"<{message_id}>"}},
        "delivery-status": {"code": 550, "message": "No Such User Here", "enhanced-code": "5.1.1"},
    }


def sendgrid_post(batch: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(batch).encode()
    stamp = str(int(time.time()))
    signature = EC_KEY.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {
        SG_SIGNATURE: base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- The relay, and a message sent through it.


def relay_config(tmp_path: Path, sink: Sink, cert_files: Any, aws: Aws) -> dict[str, Any]:
    upstreams = [
        smtp_upstream("ses", sink.port, events="ses", events_topics=[TOPIC]),
        smtp_upstream("mailgun", sink.port, events="mailgun", events_key=MAILGUN_KEY),
        smtp_upstream("sendgrid", sink.port, events="sendgrid", events_key=SENDGRID_PUBLIC),
        smtp_upstream(
            "postmark",
            sink.port,
            events="postmark",
            events_username=POSTMARK_USER,
            events_password=POSTMARK_PASSWORD,
        ),
        smtp_upstream("plain", sink.port),
    ]
    config = base_config(tmp_path, upstreams)
    config["listeners"][0].update(cert_file=str(cert_files[0]), key_file=str(cert_files[1]))
    config["http"] = {"host": "127.0.0.1", "port": 0}
    config["provider_events"] = {
        "sns_test_certificate_host": aws.host,
        "sns_test_ca_file": str(cert_files[2]),
    }
    return config


@dataclass
class World:
    relay: RunningRelay
    sink: Sink
    aws: Aws
    http: aiohttp.ClientSession
    tls: Any

    def url(self, upstream: str) -> str:
        return f"http://127.0.0.1:{self.relay.app.http_port}/api/v1/provider-events/{upstream}"

    async def post(
        self, upstream: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        async with self.http.post(self.url(upstream), data=body, headers=headers) as reply:
            return reply.status, await reply.json(), reply.headers

    async def send(self, recipient: str, upstream: str, queue_id: str) -> tuple[str, str]:
        """A message through SMTP to the sink; then the refs its delivery by ``upstream``
        leaves. (Our message id, its Message-ID without <>.)"""
        before = len(self.sink.messages)
        content = f"From: <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: hi\r\n\r\nhello\r\n"
        async with aiosmtplib.SMTP(
            hostname="127.0.0.1", port=self.relay.port, start_tls=True, tls_context=self.tls
        ) as client:
            await client.login("shop", SITE_PASSWORD)
            _, reply = await client.sendmail(SENDER, [recipient], content.encode())
        ours = reply.split()[-1]
        received = (await self.sink.handler.wait_for(before + 1))[-1]
        header = email.message_from_bytes(received.content)["Message-ID"].strip("<> ")
        # The delivery (through the site's first upstream, "ses") wrote its own refs: the
        # sink's reply has no queue id, so here are the ones ``upstream`` would have left.
        await self.refs_of(ours)
        rows = [
            {"upstream": upstream, "ref": ref, "message_id": ours, "created_at": time.time()}
            for ref in (queue_id, header)
            if (upstream, ref) != ("ses", header)
        ]
        async with self.relay.app.engine.begin() as connection:
            await connection.execute(provider_refs.insert(), rows)
        return ours, header

    async def refs_of(self, message_id: str) -> list[Any]:
        """The provider refs of a message, once its delivery has written them."""
        async with asyncio.timeout(10):
            while True:
                async with self.relay.app.engine.connect() as connection:
                    found = list(
                        await connection.execute(
                            sa.select(provider_refs).where(provider_refs.c.message_id == message_id)
                        )
                    )
                if found:
                    return found
                await asyncio.sleep(0.02)

    async def rows(self, table: sa.Table) -> list[Any]:
        async with self.relay.app.engine.connect() as connection:
            return list((await connection.execute(sa.select(table))).all())

    async def counts(self) -> dict[str, int]:
        tables = (suppressions, provider_events, webhook_outbox, provider_replays)
        return {t.name: len(await self.rows(t)) for t in tables}

    def metric(self, upstream: str, outcome: str) -> float:
        value = self.relay.app.metrics.registry.get_sample_value(
            "relay_provider_events_total", {"upstream": upstream, "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
async def world(
    tmp_path: Path, make_sink: Any, start_relay: Any, cert_files: Any, client_tls: Any, aws: Aws
) -> AsyncIterator[World]:
    sink = await make_sink()
    relay = await start_relay(relay_config(tmp_path, sink, cert_files, aws))
    # Until the webhooks land in relay/app.py: one endpoint that takes every event.
    relay.app.provider_events._subscriptions = lambda: Subscriptions((Subscription("app"),))
    async with aiohttp.ClientSession() as http:
        yield World(relay, sink, aws, http, client_tls)


async def rcpt_refused(world: World, address: str) -> bool:
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=world.relay.port, start_tls=True, tls_context=world.tls
    ) as client:
        await client.login("shop", SITE_PASSWORD)
        await client.mail(SENDER)
        try:
            await client.rcpt(address)
        except aiosmtplib.SMTPRecipientRefused as error:
            return error.code == 550
        return False


# -- SES through SNS


async def test_the_queue_id_of_the_upstreams_250_finds_the_message(world: World) -> None:
    """No refs written by the test: the delivery keeps the id of the upstream's reply."""
    world.sink.handler.replies["data"] = "250 2.0.0 Ok: queued as 0100018cREAL42"
    content = f"From: <{SENDER}>\r\nTo: <kim@example.com>\r\nSubject: hi\r\n\r\nhello\r\n"
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=world.relay.port, start_tls=True, tls_context=world.tls
    ) as client:
        await client.login("shop", SITE_PASSWORD)
        _, reply = await client.sendmail(SENDER, ["kim@example.com"], content.encode())
    ours = reply.split()[-1]
    refs = {(r.upstream, r.ref) for r in await world.refs_of(ours)}
    assert ("ses", "0100018cREAL42") in refs and len(refs) == 2  # and our Message-ID
    body = ses_notification(world.aws, ses_bounce("0100018cREAL42", "kim@example.com"))
    status, answer, _ = await world.post("ses", body)
    assert (status, answer["matched"]) == (200, 1), answer
    (timeline,) = await world.rows(provider_events)
    assert (timeline.message_id, timeline.kind) == (ours, "bounced_hard")


async def test_an_ses_hard_bounce_suppresses_and_emits_message_bounced(world: World) -> None:
    ours, _ = await world.send("jane@example.com", "ses", "0100018c-ses-queue-id")
    body = ses_notification(world.aws, ses_bounce("0100018c-ses-queue-id", "Jane@Example.com"))
    status, answer, _ = await world.post("ses", body)
    assert status == 200, answer
    assert answer == {"status": "accepted", "events": 1, "matched": 1, "unmatched": 0, "ignored": 0}

    (entry,) = await world.rows(suppressions)
    assert (entry.site_id, entry.address, entry.source) == ("shop", "jane@example.com", "bounce")
    assert entry.message_id == ours and "550 5.1.1 user unknown" in entry.reason
    (timeline,) = await world.rows(provider_events)
    assert (timeline.message_id, timeline.upstream, timeline.kind) == (ours, "ses", "bounced_hard")
    assert (timeline.smtp_code, timeline.raw_type) == (550, "Bounce/Permanent")
    (outbox,) = await world.rows(webhook_outbox)
    event = json.loads(outbox.payload)
    assert (outbox.webhook, outbox.event_type, outbox.message_id) == (
        "app",
        "message.bounced",
        ours,
    )
    assert event["data"] == {
        "message_id": ours,
        "site": "shop",
        "recipient": "jane@example.com",
        "upstream": "ses",
        "smtp_code": 550,
        "smtp_text": "5.1.1 user unknown",
        "bounce_type": "hard",
        "reported_by": "ses",
    }
    assert await rcpt_refused(world, "jane@example.com")  # at once, in this process
    assert world.aws.certificate_gets == 1
    assert world.metric("ses", "matched") == 1

    # SNS retries with the same MessageId: taken, nothing done twice.
    status, answer, _ = await world.post("ses", body)
    assert (status, answer["status"]) == (200, "replayed")
    assert len(await world.rows(provider_events)) == 1
    assert world.aws.certificate_gets == 1  # cached


async def test_an_ses_complaint_found_by_message_id_suppresses(world: World) -> None:
    ours, header = await world.send("rich@example.com", "ses", "0100018c-other")
    body = ses_notification(world.aws, ses_complaint(header, "rich@example.com"))
    status, answer, _ = await world.post("ses", body)
    assert (status, answer["matched"]) == (200, 1)
    (entry,) = await world.rows(suppressions)
    assert (entry.address, entry.source, entry.message_id) == (
        "rich@example.com",
        "complaint",
        ours,
    )
    assert [r.event_type for r in await world.rows(webhook_outbox)] == ["message.complained"]


async def test_a_burst_after_start_fetches_the_certificate_once(world: World) -> None:
    bodies = [ses_notification(world.aws, ses_bounce(f"q-{i}", "x@example.com")) for i in range(8)]
    answers = await asyncio.gather(*(world.post("ses", body) for body in bodies))
    assert [(status, answer["unmatched"]) for status, answer, _ in answers] == [(200, 1)] * 8
    assert world.aws.certificate_gets == 1


async def test_a_bad_sns_signature_is_401_and_changes_nothing(world: World) -> None:
    await world.send("jane@example.com", "ses", "q-1")
    body = ses_notification(world.aws, ses_bounce("q-1", "jane@example.com"))
    tampered = body.replace(b"jane@example.com", b"john@example.com")
    before = await world.counts()
    status, answer, _ = await world.post("ses", tampered)
    assert (status, answer["error"]["code"]) == (401, "bad_signature")
    assert await world.counts() == before
    assert world.metric("ses", "refused") == 1


async def test_a_certificate_url_off_sns_and_the_test_host_is_refused(world: World) -> None:
    body = json.loads(ses_notification(world.aws, ses_bounce("q-1", "jane@example.com")))
    for url in (
        "https://evil.example/SimpleNotificationService-test.pem",
        f"http://{world.aws.host}/SimpleNotificationService-test.pem",  # not HTTPS
        "https://127.0.0.2:443/SimpleNotificationService-test.pem",  # another loopback host
    ):
        status, answer, _ = await world.post(
            "ses", json.dumps({**body, "SigningCertURL": url}).encode()
        )
        assert (status, answer["error"]["code"]) == (401, "cert_url_refused")
    assert world.aws.certificate_gets == 0


async def test_subscription_confirmation_visits_the_subscribe_url(world: World) -> None:
    subscribe = f"https://{world.aws.host}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=abc"
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "Token": "abc",
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": subscribe,
    }
    status, answer, _ = await world.post("ses", sns_post(world.aws, confirmation))
    assert (status, answer) == (200, {"status": "noted", "detail": "subscription confirmed"})
    assert world.aws.confirmations == [f"Action=ConfirmSubscription&TopicArn={TOPIC}&Token=abc"]

    # Another account's topic: not visited, and its certificate URL not even fetched.
    other = {**confirmation, "SubscribeURL": subscribe.replace(TOPIC, OTHER_TOPIC)}
    posted = json.loads(sns_post(world.aws, {**other, "TopicArn": OTHER_TOPIC}))
    posted["SigningCertURL"] = world.aws.cert_url.replace("-test.pem", "-other.pem")
    fetched = world.aws.certificate_gets
    status, answer, _ = await world.post("ses", json.dumps(posted).encode())
    assert (status, answer["error"]["code"]) == (403, "unexpected_topic")
    assert len(world.aws.confirmations) == 1
    assert world.aws.certificate_gets == fetched

    goodbye = {**confirmation, "Type": "UnsubscribeConfirmation"}
    status, answer, _ = await world.post("ses", sns_post(world.aws, goodbye))
    assert (status, answer["detail"]) == (200, "unsubscribe confirmation noted")
    assert len(world.aws.confirmations) == 1


# -- Mailgun, SendGrid, Postmark


async def test_mailgun_bounce_replay_and_window(world: World) -> None:
    ours, header = await world.send("alice@example.com", "mailgun", "mailgun-queue")
    body = mailgun_post(mailgun_failed(header, "Alice@Example.com"))
    status, answer, _ = await world.post("mailgun", body)
    assert (status, answer["matched"]) == (200, 1)
    (entry,) = await world.rows(suppressions)
    assert (entry.address, entry.source, entry.message_id) == ("alice@example.com", "bounce", ours)
    counts = await world.counts()

    status, answer, _ = await world.post("mailgun", body)  # the same token again
    assert (status, answer["status"]) == (200, "replayed")
    assert await world.counts() == counts
    assert world.metric("mailgun", "replayed") == 1

    for stamp in (int(time.time()) - 400, int(time.time()) + 400):
        stale = mailgun_post(mailgun_failed(header, "bob@example.com"), stamp=stamp)
        status, answer, _ = await world.post("mailgun", stale)
        assert (status, answer["error"]["code"]) == (401, "stale_timestamp")
    wrong = mailgun_post(mailgun_failed(header, "bob@example.com"), key="key-not-ours")
    status, answer, _ = await world.post("mailgun", wrong)
    assert (status, answer["error"]["code"]) == (401, "bad_signature")
    assert await world.counts() == counts


async def test_sendgrid_batch_matched_by_its_queue_id_prefix(world: World) -> None:
    ours, _ = await world.send("ex@example.com", "sendgrid", "14c5d75ce93")
    batch = [
        {
            "email": "ex@example.com",
            "timestamp": int(time.time()),
            "event": "bounce",
            "type": "bounce",
            "sg_event_id": "e1",
            "sg_message_id": "14c5d75ce93.filter0001.16648.5515E0B88.0",
            "reason": "550 5.1.1 unknown recipient",
            "status": "5.1.1",
        },
        {"email": "ex@example.com", "timestamp": 1, "event": "open", "sg_message_id": "x"},
        {
            "email": "stranger@example.com",
            "timestamp": 1,
            "event": "delivered",
            "sg_message_id": "zz",
        },
    ]
    body, headers = sendgrid_post(batch)
    status, answer, _ = await world.post("sendgrid", body, headers)
    assert status == 200, answer
    assert answer == {"status": "accepted", "events": 2, "matched": 1, "unmatched": 1, "ignored": 1}
    (entry,) = await world.rows(suppressions)
    assert (entry.address, entry.message_id) == ("ex@example.com", ours)
    assert world.metric("sendgrid", "unmatched") == 1

    # The same request with the signature's twin (r, n - s), which verifies too: a replay.
    r, s = decode_dss_signature(base64.b64decode(headers[SG_SIGNATURE]))
    twin = encode_dss_signature(r, P256_ORDER - s)
    status, answer, _ = await world.post(
        "sendgrid", body, {**headers, SG_SIGNATURE: base64.b64encode(twin).decode()}
    )
    assert (status, answer["status"]) == (200, "replayed")
    assert len(await world.rows(suppressions)) == 1

    status, answer, _ = await world.post("sendgrid", body.replace(b"bounce", b"bounds"), headers)
    assert (status, answer["error"]["code"]) == (401, "bad_signature")


async def test_postmark_complaint_and_wrong_credentials(world: World) -> None:
    ours, _ = await world.send("john@example.com", "postmark", "883953f4-6105-42a2")
    record = {
        "RecordType": "SpamComplaint",
        "MessageID": "883953f4-6105-42a2",
        "Email": "john@example.com",
        "BouncedAt": "2026-12-05T16:33:54Z",
        "Details": "Test spam complaint details",
    }
    body = json.dumps(record).encode()
    status, answer, headers = await world.post("postmark", body, basic(POSTMARK_USER, "nope"))
    assert (status, answer["error"]["code"]) == (401, "bad_credentials")
    assert headers["WWW-Authenticate"].startswith("Basic")
    assert await world.rows(suppressions) == []

    status, answer, _ = await world.post("postmark", body, basic(POSTMARK_USER, POSTMARK_PASSWORD))
    assert (status, answer["matched"]) == (200, 1)
    (entry,) = await world.rows(suppressions)
    assert (entry.address, entry.source, entry.message_id) == (
        "john@example.com",
        "complaint",
        ours,
    )
    (outbox,) = await world.rows(webhook_outbox)
    assert json.loads(outbox.payload)["data"]["reported_by"] == "postmark"


# -- The endpoint's edges


async def test_unknown_upstreams_and_big_bodies(world: World) -> None:
    for name in ("nope", "plain"):  # none, and one without events:
        status, answer, _ = await world.post(name, b"{}")
        assert status == 404
        assert "takes provider events" in answer["error"]["message"]

    big = io.BytesIO(b"[" + b" " * MAX_BODY_BYTES + b"]")  # declared in Content-Length
    async with world.http.post(world.url("mailgun"), data=big) as reply:
        assert (reply.status, (await reply.json())["error"]["code"]) == (413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    async with world.http.post(world.url("mailgun"), data=chunks()) as reply:
        assert reply.status == 413
    assert world.metric("mailgun", "refused") == 0  # never parsed


async def test_message_rows_untouched_by_unmatched_events(world: World) -> None:
    status, answer, _ = await world.post(
        "mailgun", mailgun_post(mailgun_failed("unknown@relay.test", "who@example.com"))
    )
    assert (status, answer["unmatched"]) == (200, 1)
    counts = await world.counts()
    assert counts == {
        "suppressions": 0,
        "provider_events": 0,
        "webhook_outbox": 0,
        "provider_replays": 1,
    }
    assert await world.rows(messages) == []


async def test_retention_takes_a_messages_provider_rows_with_it(world: World) -> None:
    _, header = await world.send("alice@example.com", "mailgun", "mailgun-queue")
    status, _, _ = await world.post(
        "mailgun", mailgun_post(mailgun_failed(header, "alice@example.com"))
    )
    assert status == 200
    assert (
        len(await world.rows(provider_events)) == 1 and len(await world.rows(provider_refs)) == 3
    )  # the delivery's own and two

    def delete(connection: sa.Connection) -> int:
        return delete_finished(connection, MessageStatus.SENT, time.time() + 1, 100).messages

    assert await world.relay.app.writer.write_apart(delete) == 1
    assert await world.rows(provider_events) == [] and await world.rows(provider_refs) == []


# -- The seen-set across nodes (SQLite and PostgreSQL), and its housekeeping


async def test_one_mailgun_request_counts_once_across_two_nodes(
    tmp_path: Path, make_sink: Any, start_node: Any, cert_files: Any, aws: Aws
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, sink, cert_files, aws)
    config["admin"]["port"] = 0
    first = await start_node("a", config)
    second = await start_node("b", config)
    body = mailgun_post(mailgun_failed("unknown@relay.test", "who@example.com"))

    async def post(port: int | None) -> str:
        url = f"http://127.0.0.1:{port}/api/v1/provider-events/mailgun"
        async with aiohttp.ClientSession() as http, http.post(url, data=body) as reply:
            assert reply.status == 200
            return str((await reply.json())["status"])

    statuses = await asyncio.gather(post(first.http_port), post(second.http_port))
    assert sorted(statuses) == ["accepted", "replayed"]
    statuses = await asyncio.gather(post(first.http_port), post(second.http_port))
    assert statuses == ["replayed", "replayed"]
    async with first.engine.connect() as connection:
        (row,) = (await connection.execute(sa.select(provider_replays))).all()
    assert row.key.startswith("mailgun:") and row.expires_at > time.time() + 600

    # Housekeeping deletes it once it has expired, not before.
    def expire(connection: sa.Connection, before: float) -> int:
        return delete_expired(connection, "provider_replays", before, 100)

    assert await first.writer.write_apart(lambda c: expire(c, time.time())) == 0
    assert await first.writer.write_apart(lambda c: expire(c, row.expires_at + 1)) == 1
