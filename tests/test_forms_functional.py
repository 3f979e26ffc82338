"""Landing-page forms end to end: a real relay, real HTTP on loopback, a real SMTP sink.

A form's inquiry arrives from the site's From with the visitor as Reply-To,
rendered, DKIM-signed; the abuse cases (foreign origins, bots, floods,
injection, huge bodies) are answered as DESIGN's public HTTP ingress contract
says, and what they must not send never reaches the sink. Time is a FakeClock
where it matters (the token's minimum fill time, the rate's minute).
"""

from __future__ import annotations

import asyncio
import email.policy
import io
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
import yaml

from relay.app import RelayApp
from relay.config import load_config
from relay.core.model import MessageStatus
from relay.tables import form_nonces, messages
from tests.conftest import FakeClock, RunningRelay, Sink, base_config, smtp_upstream
from tests.dns_zone import Zone
from tests.test_delivery_functional import delivery_pass, plaintext_listener, submit
from tests.test_dkim_functional import dkimpy_verdict, signature_tags, signing_domain
from tests.two_nodes import store_url

__all__ = ["store_url"]  # fixture: SQLite, and PostgreSQL when there is one
REPO = Path(__file__).parent.parent
ORIGIN = "https://shop.example.com"
INBOX = "inbox@example.org"
VISITOR = "visitor@example.net"
INBOX_OF_EXAMPLE = "sales@example.com"  # config.example.yaml's form.to
FORM: dict[str, Any] = {
    "to": [INBOX],
    "allowed_origins": [ORIGIN],
    "required": ["email", "message"],
    "reply_to_field": "email",
    "honeypot_field": "website",
    "min_fill_seconds": 3,
    "rate_per_minute_per_ip": 5,
    "redirect": "https://shop.example.com/thanks",
}
FIELDS = {"name": "Ada Visitor", "email": VISITOR, "message": "Do you ship to Lyon?", "website": ""}
MESSAGE_ID = re.compile(r"[0-9abcdefghjkmnpqrstvwxyz]{26}")
MakeSink = Callable[..., Awaitable[Sink]]
StartRelay = Callable[..., Awaitable[RunningRelay]]


def form_config(tmp_path: Path, sink: Sink, **form: Any) -> dict[str, Any]:
    config = base_config(
        tmp_path, [smtp_upstream("sink", sink.port)], http={"host": "127.0.0.1", "port": 0}
    )
    config["sites"][0]["form"] = {**FORM, **form}
    return config


class Visitor:
    """A browser (or a bot) on loopback: fetches tokens, posts the form."""

    def __init__(self, session: aiohttp.ClientSession, relay: RunningRelay, clock: FakeClock):
        self.session, self.clock = session, clock
        self.base = f"http://127.0.0.1:{relay.app.http_port}"

    async def token(self, origin: str | None = ORIGIN, page: str = "shop") -> str:
        headers = {"Origin": origin} if origin else {}
        url = f"{self.base}/api/form-token"
        async with self.session.get(url, params={"landingPageId": page}, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Cache-Control"] == "no-store"
            return str((await r.json())["token"])

    async def filled_token(self) -> str:
        """A token as a person has it: fetched, then the form filled in (3 s)."""
        token = await self.token()
        self.clock.advance(3)
        return token

    async def post(
        self,
        fields: dict[str, Any] | None = None,
        token: str | None = None,
        origin: str | None = ORIGIN,
        headers: dict[str, str] | None = None,
        page: str = "shop",
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        body: dict[str, Any] = {
            "landingPageId": page,
            "formData": FIELDS if fields is None else fields,
        }
        if token is not None:
            body["formToken"] = token
        sent = {**({"Origin": origin} if origin else {}), **(headers or {})}
        async with self.session.post(f"{self.base}/api/send-inquiry", json=body, headers=sent) as r:
            return r.status, await r.json(), r.headers

    async def send(self, fields: dict[str, Any] | None = None, **kwargs: Any) -> str:
        """A person's post: a filled token, then 202 with a message id."""
        status, answer, _ = await self.post(fields, await self.filled_token(), **kwargs)
        assert (status, answer["status"]) == (202, "queued"), answer
        return str(answer["id"])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def start(
    start_relay: StartRelay,
    config: dict[str, Any],
    session: aiohttp.ClientSession,
    clock: FakeClock | None = None,
) -> tuple[RunningRelay, Visitor, FakeClock]:
    clock = clock or FakeClock()
    relay = await start_relay(config, clock=clock)
    return relay, Visitor(session, relay, clock), clock


def parsed(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body_text(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


async def stored_count(relay: RunningRelay) -> int:
    async with relay.app.engine.connect() as c:
        return int((await c.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one())


def form_outcomes(relay: RunningRelay) -> dict[str, float]:
    registry = relay.app.metrics.registry
    outcomes = ("queued", "bot", "invalid", "rate_limited", "refused")
    values = {
        o: registry.get_sample_value("relay_form_submissions_total", {"site": "shop", "outcome": o})
        for o in outcomes
    }
    return {o: v for o, v in values.items() if v}


# -- A person's inquiry


async def test_inquiry_arrives_from_the_site_with_the_visitor_as_reply_to_dkim_signed(
    tmp_path: Path,
    make_sink: MakeSink,
    start_relay: StartRelay,
    session: aiohttp.ClientSession,
    dns_zone: Zone,
) -> None:
    sink = await make_sink()
    config = form_config(tmp_path, sink)
    config["domains"] = [signing_domain(tmp_path, dns_zone)]
    config["dns"] = {"nameservers": [dns_zone.nameserver], "verify_interval_seconds": 0}
    config["sites"][0]["reply_to"] = "none"  # the form's visitor is Reply-To all the same
    # Now: verifiers refuse a signature dated in the future (the FakeClock's 2027).
    relay, visitor, _ = await start(start_relay, config, session, FakeClock(time.time()))

    status, answer, headers = await visitor.post(FIELDS, await visitor.filled_token())

    assert status == 202 and answer["status"] == "queued" and MESSAGE_ID.fullmatch(answer["id"])
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Vary"] == "Origin"
    (received,) = await sink.handler.wait_for(1)
    assert (received.mail_from, received.rcpt_tos) == ("sales@example.com", [INBOX])
    message = parsed(received.content)
    assert message["From"] == "Sales Team <sales@example.com>"
    assert message["To"] == INBOX
    assert message["Reply-To"] == VISITOR
    assert message["Subject"] == "New inquiry from Shop"
    text = body_text(message)
    assert "name: Ada Visitor\n" in text and "message: Do you ship to Lyon?\n" in text
    assert "website" not in text  # the honeypot is no field of the inquiry
    assert "<th" in body_text(message, "html") and "Ada Visitor" in body_text(message, "html")
    assert signature_tags(received.content)["d"] == "example.com"
    assert await dkimpy_verdict(received.content, dns_zone) == "pass"
    assert form_outcomes(relay) == {"queued": 1}


async def test_the_forms_template_renders_and_a_failing_one_falls_back_to_the_listing(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = form_config(tmp_path, sink, template="inquiry")
    config["templates"] = [
        {
            "name": "inquiry",
            "subject": "{{ formData.name }} asks about {{ company }}",
            "text": "{{ message }} -- {{ name }} via {{ landingPageId }}",
            "html": "<p>{{ formData.message }}</p>",
        }
    ]
    _, visitor, _ = await start(start_relay, config, session)

    await visitor.send({**FIELDS, "company": "Acme", "message": "<b>Lyon</b>?"})
    await visitor.send(FIELDS)  # no company: the template fails, the listing goes

    first, second = (parsed(m.content) for m in await sink.handler.wait_for(2))
    assert first["Subject"] == "Ada Visitor asks about Acme"
    assert body_text(first) == "<b>Lyon</b>? -- Ada Visitor via shop\n"
    assert body_text(first, "html") == "<p>&lt;b&gt;Lyon&lt;/b&gt;?</p>\n"
    assert second["Subject"] == "New inquiry from Shop"
    assert "message: Do you ship to Lyon?\n" in body_text(second)


async def test_plain_html_form_gets_its_303_and_a_scripts_formdata_its_json(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    relay, visitor, _ = await start(start_relay, form_config(tmp_path, sink), session)
    url = f"{visitor.base}/api/send-inquiry"

    html_form = {
        "landingPageId": "shop",
        "formToken": await visitor.filled_token(),
        "formData[name]": "Ada",
        "formData[email]": VISITOR,
        "message": "urlencoded",  # a plain name works as well
        "website": "",
    }
    headers = {"Origin": ORIGIN, "Accept": "text/html"}
    async with session.post(url, data=html_form, headers=headers, allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == FORM["redirect"]

    multipart = aiohttp.FormData({**html_form, "formToken": await visitor.filled_token()})
    multipart.add_field("message", "multipart, second line\r\nhere")
    headers = {"Origin": ORIGIN, "Accept": "application/json"}
    async with session.post(url, data=multipart, headers=headers) as r:
        assert r.status == 202
        assert (await r.json())["status"] == "queued"

    received = await sink.handler.wait_for(2)
    texts = sorted(body_text(parsed(m.content)) for m in received)
    assert "message: urlencoded\n" in texts[0]
    assert "message: urlencoded, multipart, second line\n    here\n" in texts[1]
    assert form_outcomes(relay) == {"queued": 2}


async def test_without_a_redirect_a_plain_post_gets_a_thank_you_page(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = form_config(tmp_path, sink)
    del config["sites"][0]["form"]["redirect"]
    _, visitor, _ = await start(start_relay, config, session)
    form = {"landingPageId": "shop", "formToken": await visitor.filled_token(), **FIELDS}

    async with session.post(f"{visitor.base}/api/send-inquiry", data=form) as r:
        assert (r.status, r.content_type) == (202, "text/html")
        assert "Thank you" in await r.text()
    await sink.handler.wait_for(1)


async def test_a_browsers_plain_post_with_a_mistake_gets_a_page_and_a_script_json(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    relay, visitor, _ = await start(start_relay, form_config(tmp_path, sink), session)
    token = await visitor.filled_token()
    form = {"landingPageId": "shop", "formToken": token, **FIELDS, "email": "ada@<b>example"}
    url = f"{visitor.base}/api/send-inquiry"
    navigation = {"Origin": ORIGIN, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}

    async with session.post(url, data=form, headers=navigation) as r:
        assert (r.status, r.content_type) == (422, "text/html")
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none';")
        page = await r.text()
    assert "Your message was not sent" in page and "<script" not in page
    assert "<li>email: not an email address</li>" in page
    assert "<b>" not in page  # what the visitor typed is never markup

    async with session.post(url, data=form, headers={"Origin": ORIGIN}) as r:  # curl: */*
        assert (r.status, (await r.json())["error"]["code"]) == (422, "invalid")
    assert (await visitor.post({**FIELDS, "email": "x@y"}, token))[0] == 422  # JSON: envelope
    await visitor.send()  # the token of a refused post was not spent; a new one works
    await sink.handler.wait_for(1)
    assert form_outcomes(relay)["queued"] == 1


# -- Origins and CORS


async def test_a_foreign_origin_gets_403_and_no_cors_headers(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    relay, visitor, _ = await start(start_relay, form_config(tmp_path, sink), session)
    token = await visitor.filled_token()
    evil = "https://evil.example"

    status, answer, headers = await visitor.post(FIELDS, token, origin=evil)
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    # The Referer says nothing: the Origin decides.
    status, _, _ = await visitor.post(FIELDS, token, origin=evil, headers={"Referer": ORIGIN + "/"})
    assert status == 403
    async with session.get(
        f"{visitor.base}/api/form-token", params={"landingPageId": "shop"}, headers={"Origin": evil}
    ) as r:
        assert r.status == 403
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    for path in ("/api/send-inquiry", "/api/form-token"):
        preflight = {"Origin": evil, "Access-Control-Request-Method": "POST"}
        async with session.options(visitor.base + path, headers=preflight) as r:
            assert r.status == 403
            assert not [h for h in r.headers if h.lower().startswith("access-control-")]

    # The token was not spent by the refused posts: the page's own post goes through.
    assert (await visitor.post(FIELDS, token))[0] == 202
    await sink.handler.wait_for(1)
    assert form_outcomes(relay) == {"refused": 2, "queued": 1}


async def test_preflight_for_an_allowed_origin_is_answered_exactly(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    _, visitor, _ = await start(start_relay, form_config(tmp_path, sink), session)
    asks = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    for path, method in (
        ("/api/send-inquiry", "POST"),
        ("/api/form-token?landingPageId=shop", "GET"),
    ):
        async with session.options(visitor.base + path, headers=asks) as r:
            assert r.status == 204
            cors = {k: v for k, v in r.headers.items() if k.lower().startswith("access-control-")}
            assert cors == {
                "Access-Control-Allow-Origin": ORIGIN,
                "Access-Control-Allow-Methods": method,
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "600",
            }
            assert r.headers["Vary"] == "Origin"
    async with session.options(
        visitor.base + "/api/send-inquiry?landingPageId=nope", headers=asks
    ) as r:
        assert r.status == 403


async def test_unknown_page_or_a_site_without_a_form_is_404(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = form_config(tmp_path, sink)
    other = {**config["sites"][0], "id": "plain", "credentials": []}
    del other["form"]
    config["sites"].append(other)
    _, visitor, _ = await start(start_relay, config, session)

    for page in ("nope", "plain"):
        status, answer, _ = await visitor.post(FIELDS, "x", page=page)
        assert (status, answer["error"]["code"]) == (404, "not_found")
        async with session.get(
            f"{visitor.base}/api/form-token", params={"landingPageId": page}
        ) as r:
            assert r.status == 404


# -- Bots learn nothing


async def test_bots_get_202_and_nothing_is_sent(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = form_config(tmp_path, sink)
    config["sites"].append({**config["sites"][0], "id": "other", "credentials": []})
    relay, visitor, _ = await start(start_relay, config, session)
    used = await visitor.filled_token()
    assert (await visitor.post(FIELDS, used))[0] == 202  # a person's: sent

    honeypot_filled, honeypot_absent = await visitor.filled_token(), await visitor.filled_token()
    young = await visitor.token()  # posted at once: no person fills a form in no time
    tries = [
        ({**FIELDS, "website": "http://spam.example"}, honeypot_filled),
        ({k: v for k, v in FIELDS.items() if k != "website"}, honeypot_absent),
        (FIELDS, young),
        (FIELDS, used),  # a token is good for one post
        (FIELDS, None),
        (FIELDS, used[:-4] + ("AAAA" if not used.endswith("AAAA") else "BBBB")),  # forged
        (FIELDS, await visitor.token(page="other")),  # another site's
    ]
    for fields, token in tries:
        status, answer, headers = await visitor.post(fields, token)
        assert (status, answer["status"]) == (202, "queued")
        assert MESSAGE_ID.fullmatch(answer["id"])
        assert headers["Access-Control-Allow-Origin"] == ORIGIN

    await visitor.send()  # a person again: it arrives, alone after the first
    await sink.handler.wait_for(2)
    assert len(sink.messages) == 2
    assert await stored_count(relay) == 2
    assert form_outcomes(relay) == {"queued": 2, "bot": len(tries)}


async def test_a_used_token_stays_used_and_expired_nonces_are_swept(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = form_config(tmp_path, sink)
    config["http"]["form_token_max_age_seconds"] = 60
    relay, visitor, clock = await start(start_relay, config, session)
    await visitor.send()
    clock.advance(200)  # the first token is long expired: its nonce may go
    await visitor.send()
    assert await relay.app.housekeeping.run_once() is not None  # every minute, by one node
    assert deleted(relay, "form_nonces") == 1

    async with relay.app.engine.connect() as c:
        rows = (await c.execute(sa.select(form_nonces.c.expires_at))).scalars().all()
    assert len(rows) == 1 and rows[0] > clock.now
    await sink.handler.wait_for(2)


def deleted(relay: RunningRelay, kind: str) -> float:
    value = relay.app.metrics.registry.get_sample_value(
        "relay_retention_deleted_total", {"kind": kind}
    )
    return value or 0.0


# -- Limits


async def test_the_sixth_post_from_one_address_in_a_minute_is_429(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    relay, visitor, clock = await start(start_relay, form_config(tmp_path, sink), session)
    tokens = [await visitor.token() for _ in range(7)]
    clock.advance(3)  # 3 s into the minute (the FakeClock starts on one)

    for token in tokens[:5]:
        # X-Forwarded-For is not believed without trusted proxies: one address all along.
        status, _, _ = await visitor.post(FIELDS, token, headers={"X-Forwarded-For": token[:8]})
        assert status == 202
    status, answer, headers = await visitor.post(FIELDS, tokens[5])
    assert (status, answer["error"]["code"]) == (429, "too_many_requests")
    assert headers["Retry-After"] == "57"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN

    clock.advance(57)  # the next minute: the refused post's token was not spent
    assert (await visitor.post(FIELDS, tokens[5]))[0] == 202
    await sink.handler.wait_for(6)
    assert form_outcomes(relay) == {"queued": 6, "rate_limited": 1}


async def test_behind_a_trusted_proxy_each_visitor_has_its_own_rate(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = form_config(tmp_path, sink)
    config["http"]["trusted_proxies"] = ["127.0.0.1/32"]
    _, visitor, clock = await start(start_relay, config, session)
    tokens = [await visitor.token() for _ in range(12)]
    clock.advance(3)

    for i, address in enumerate(["198.51.100.1", "198.51.100.2"]):
        proxied = {"X-Forwarded-For": f"203.0.113.77, {address}"}  # the left one: the client's word
        for token in tokens[6 * i : 6 * i + 5]:
            assert (await visitor.post(FIELDS, token, headers=proxied))[0] == 202
        assert (await visitor.post(FIELDS, tokens[6 * i + 5], headers=proxied))[0] == 429
    await sink.handler.wait_for(10)


async def test_the_sites_daily_limit_counts_form_and_smtp_messages_together(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    config = plaintext_listener(form_config(tmp_path, sink))
    config["sites"][0]["daily_limit"] = 2
    relay, visitor, _ = await start(start_relay, config, session)
    await submit(relay, ["a@example.org"], b"Subject: by SMTP\r\n\r\nhello\r\n")
    await visitor.send()

    status, answer, headers = await visitor.post(FIELDS, await visitor.filled_token())
    assert (status, answer["error"]["code"]) == (429, "too_many_requests")
    assert int(headers["Retry-After"]) > 0
    await sink.handler.wait_for(2)
    assert await stored_count(relay) == 2
    assert form_outcomes(relay) == {"queued": 1, "rate_limited": 1}


# -- Hostile input


async def test_control_characters_bound_for_a_header_are_422_and_the_token_stays_good(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    relay, visitor, _ = await start(start_relay, form_config(tmp_path, sink), session)
    token = await visitor.filled_token()

    for bad in (
        {"email": f"{VISITOR}\r\nBcc: victim@example.org"},
        {"email": f"{VISITOR}\nX-Spam: no"},
        {"email": f"{VISITOR}\x00"},
        {"message": "hello\x00"},
        {"Subject\r\nBcc": "x"},
        {"email": ""},
    ):
        status, answer, _ = await visitor.post({**FIELDS, **bad}, token)
        assert (status, answer["error"]["code"]) == (422, "invalid"), bad
        assert answer["error"]["problems"][0].startswith("formData.")

    assert (await visitor.post(FIELDS, token))[0] == 202  # corrected, with the same token
    (received,) = await sink.handler.wait_for(1)
    assert parsed(received.content)["Reply-To"] == VISITOR
    assert form_outcomes(relay) == {"invalid": 6, "queued": 1}


async def test_form_data_never_chooses_recipients_or_adds_headers(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    _, visitor, _ = await start(start_relay, form_config(tmp_path, sink), session)
    hostile = {
        **FIELDS,
        "to": "victim@example.org",
        "cc": "victim2@example.org",
        "bcc": "victim3@example.org",
        "subject": "Cheap pills\r\nBcc: victim4@example.org",
        "Reply-To": "attacker@example.org",
        "message": "hi\r\n\r\nBcc: victim5@example.org\r\n.\r\nMAIL FROM:<x@example.org>",
    }
    await visitor.send(hostile)

    (received,) = await sink.handler.wait_for(1)
    assert received.rcpt_tos == [INBOX]
    message = parsed(received.content)
    assert set(message.keys()) == {
        "Received",
        "From",
        "To",
        "Reply-To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
    }
    assert (message["To"], message["Reply-To"]) == (INBOX, VISITOR)
    assert message["Subject"] == "New inquiry from Shop"
    assert "subject: Cheap pills\n    Bcc: victim4@example.org\n" in body_text(message)


async def test_ten_megabytes_of_form_data_are_413(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    sink = await make_sink()
    relay, visitor, _ = await start(start_relay, form_config(tmp_path, sink), session)
    token = await visitor.filled_token()

    url = f"{visitor.base}/api/send-inquiry"
    huge = {"landingPageId": "shop", "formData": {**FIELDS, "message": "x" * 10_000_000}}
    headers = {"Content-Type": "application/json", "Origin": ORIGIN}
    async with session.post(url, data=io.BytesIO(json.dumps(huge).encode()), headers=headers) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (413, "too_large")
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN  # the page's script may read it

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"landingPageId": "shop", "formData": {"message": "'
        for _ in range(160):
            yield b"x" * 65_536
        yield b'"}}'

    async with session.post(url, data=chunks(), headers=headers) as r:
        assert r.status == 413

    assert (await visitor.post(FIELDS, token))[0] == 202  # the listener is fine
    await sink.handler.wait_for(1)
    assert await stored_count(relay) == 1


# -- The shipped example: examples/contact-form.html against config.example.yaml


class ExamplePage(HTMLParser):
    """The page's forms (their attributes and fields, by form id) and its script."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.meta: dict[str, str] = {}  # <meta name=... content=...>
        self.forms: dict[str, dict[str, str | None]] = {}
        self.fields: dict[str, dict[str, str]] = {}
        self.script = ""
        self._form: str | None = None
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "meta" and found.get("name"):
            self.meta[str(found["name"])] = found.get("content") or ""
        if tag == "form":
            self._form = str(found["id"])
            self.forms[self._form] = found
            self.fields[self._form] = {}
        elif tag in ("input", "textarea") and self._form is not None:
            self.fields[self._form][str(found["name"])] = found.get("value") or ""
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script += data


async def test_the_example_page_sends_an_inquiry_into_the_example_outbox(
    tmp_path: Path, start_relay: StartRelay, session: aiohttp.ClientSession
) -> None:
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    data = tmp_path / "data"  # the example's paths are relative: here, under tmp_path
    config["server"].update(data_dir=str(data), secret_key_file=str(data / "secret.key"))
    config["store"]["url"] = f"sqlite+aiosqlite:///{data / 'relay.db'}"
    config["upstreams"][0]["path"] = str(data / "outbox")
    relay_url = f"http://{config['http']['host']}:{config['http']['port']}"
    for section in (config["listeners"][0], config["admin"], config["http"]):
        section["port"] = 0  # the test may not own the example's ports
    relay, visitor, clock = await start(start_relay, config, session)
    site = config["sites"][0]
    page = ExamplePage((REPO / "examples" / "contact-form.html").read_text())
    assert page.meta["relay"] == relay_url  # where the script points both forms
    assert f'const PAGE = "{site["id"]}";' in page.script
    origin = "http://localhost:8000"  # `python3 -m http.server 8000` in examples/

    plain = {**page.fields["plain"], "formToken": await visitor.token(origin, site["id"])}
    plain.update({"formData[name]": "Ada", "formData[email]": VISITOR, "formData[message]": "Hi"})
    clock.advance(3)
    headers = {"Origin": origin, "Accept": "text/html"}
    async with session.post(
        f"{visitor.base}/api/send-inquiry", data=plain, headers=headers, allow_redirects=False
    ) as r:
        assert r.status == 303
        assert r.headers["Location"] == site["form"]["redirect"] == f"{origin}/thanks.html"
    assert (REPO / "examples" / "thanks.html").exists()

    scripted = {**page.fields["scripted"], "email": VISITOR, "message": "Hi again"}
    token = await visitor.token(origin, site["id"])
    clock.advance(3)
    status, _, _ = await visitor.post(scripted, token, origin=origin, page=site["id"])
    assert status == 202

    async with relay.app.engine.connect() as c:
        ids = (await c.execute(sa.select(messages.c.id))).scalars().all()
    for message_id in ids:
        await delivery_pass(relay, message_id, {MessageStatus.SENT})
    written = [parsed(p.read_bytes()) for p in sorted((data / "outbox").iterdir())]
    assert len(written) == 2
    for message in written:
        assert (message["From"], message["To"]) == (
            "Sales Team <sales@example.com>",
            INBOX_OF_EXAMPLE,
        )
        assert message["Reply-To"] == VISITOR


# -- Two nodes on one store (SQLite, or PostgreSQL when there is one)


@pytest.fixture
async def two_nodes(
    tmp_path: Path, store_url: str, make_sink: MakeSink
) -> AsyncIterator[tuple[list[RelayApp], Sink, FakeClock]]:
    """Two in-process relays on one store, one data directory (one secret), one FakeClock."""
    sink = await make_sink()
    clock = FakeClock()
    apps = []
    for name in ("a", "b"):
        config = form_config(tmp_path, sink)
        config["store"] = {"url": store_url}
        path = tmp_path / name / "config.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(config))
        app = RelayApp(load_config(path), clock=clock)
        await app.start()  # one after the other: the first one migrates the store
        apps.append(app)
    yield apps, sink, clock
    for app in reversed(apps):
        await app.stop()


async def test_tokens_and_rates_hold_across_nodes(
    two_nodes: tuple[list[RelayApp], Sink, FakeClock], session: aiohttp.ClientSession
) -> None:
    apps, sink, clock = two_nodes
    a, b = (Visitor(session, RunningRelay(app), clock) for app in apps)
    tokens = [await a.token() for _ in range(2)] + [await b.token() for _ in range(2)]
    clock.advance(3)

    # One token posted to both nodes at once: one message.
    answers = await asyncio.gather(a.post(FIELDS, tokens[0]), b.post(FIELDS, tokens[0]))
    assert sorted(status for status, _, _ in answers) == [202, 202]
    assert (await b.post(FIELDS, tokens[0]))[0] == 202  # and again later: a bot's answer
    # Each of those three counted for the address (five a minute), whichever node took it.
    assert (await b.post(FIELDS, tokens[1]))[0] == 202
    assert (await a.post(FIELDS, tokens[2]))[0] == 202
    status, _, headers = await b.post(FIELDS, tokens[3])
    assert (status, headers["Retry-After"]) == (429, "57")

    await sink.handler.wait_for(3)
    async with apps[0].engine.connect() as c:
        stored = (await c.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one()
    assert stored == 3
