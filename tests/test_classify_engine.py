"""The engine's decisions on answers and submissions: defer, hard bounces, upstream health,
site limits and message classes (relay.core.classify and relay.core.policy)."""

from __future__ import annotations

import pytest

from relay.core.classify import (
    Outcome,
    Stage,
    TransactionResult,
    classify,
    is_hard_bounce,
    upstream_failed,
)
from relay.core.headers import split_message
from relay.core.model import MessageClass, Site, SmtpReply
from relay.core.policy import Reject, TempFail, message_class, site_over_limit
from relay.core.quota import OverLimit, Window

SENT, RETRY, DEFER, FAILED = Outcome.SENT, Outcome.RETRY, Outcome.DEFER, Outcome.FAILED
OK = SmtpReply(250, "2.1.5 OK")
QUEUED = SmtpReply(250, "2.0.0 Ok: queued as ABC")
MAILBOX_FULL = SmtpReply(452, "4.2.2 mailbox full")
GREYLISTED = SmtpReply(450, "4.7.1 greylisted, try again later")
A, B, C = "a@example.com", "b@example.com", "c@example.com"


def outcomes(result: TransactionResult, recipients: tuple[str, ...] = (A, B, C)) -> list[Outcome]:
    found = classify(result, recipients)
    return [found[r].outcome for r in recipients]


# -- classify: 4.2.x defers


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(
            TransactionResult(Stage.DATA, QUEUED, {A: MAILBOX_FULL, B: GREYLISTED, C: OK}),
            [DEFER, RETRY, SENT],
            id="rcpt-mailbox-full-defers-greylist-retries",
        ),
        pytest.param(
            TransactionResult(Stage.RCPT, MAILBOX_FULL, dict.fromkeys((A, B, C), MAILBOX_FULL)),
            [DEFER, DEFER, DEFER],
            id="rcpt-all-full",
        ),
        pytest.param(
            TransactionResult(Stage.DATA, None, {A: MAILBOX_FULL, B: OK, C: OK}, "reset"),
            [DEFER, RETRY, RETRY],
            id="rcpt-refusal-stands-after-reset",
        ),
        pytest.param(
            TransactionResult(Stage.DATA, MAILBOX_FULL, dict.fromkeys((A, B, C), OK)),
            [DEFER, DEFER, DEFER],
            id="data-mailbox-full",
        ),
        pytest.param(
            TransactionResult(Stage.DATA, GREYLISTED, dict.fromkeys((A, B, C), OK)),
            [RETRY, RETRY, RETRY],
            id="data-4.7.1-retries",
        ),
        pytest.param(
            TransactionResult(Stage.DATA, MAILBOX_FULL, {A: OK, B: SmtpReply(550, "5.1.1 no")}),
            [DEFER, FAILED, RETRY],
            id="data-defer-only-for-accepted",
        ),
        pytest.param(
            TransactionResult(Stage.CONNECT, SmtpReply(421, "4.2.0 busy")),
            [RETRY, RETRY, RETRY],
            id="before-mail-never-defers",
        ),
    ],
)
def test_mailbox_4_2_x_defers(result: TransactionResult, expected: list[Outcome]) -> None:
    assert outcomes(result) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(SmtpReply(452, "4.2.2 mailbox full"), DEFER, id="4.2.2"),
        pytest.param(SmtpReply(450, "4.2.1 mailbox busy"), DEFER, id="4.2.1"),
        pytest.param(SmtpReply(452, "4.2.0 mailbox trouble"), DEFER, id="4.2.0"),
        pytest.param(SmtpReply(450, "4.7.1 greylisted"), RETRY, id="4.7.1"),
        pytest.param(SmtpReply(451, "4.3.0 local error"), RETRY, id="4.3.0"),
        pytest.param(SmtpReply(452, "4.5.3 too many recipients"), RETRY, id="4.5.3"),
        pytest.param(SmtpReply(452, "mailbox full"), RETRY, id="no-enhanced"),
        pytest.param(SmtpReply(452, "4.20.1 odd"), RETRY, id="4.20-is-not-4.2"),
        pytest.param(SmtpReply(552, "5.2.2 mailbox full"), FAILED, id="5.2.2-fails"),
    ],
)
def test_rcpt_reply_outcome(reply: SmtpReply, expected: Outcome) -> None:
    result = TransactionResult(Stage.DATA, QUEUED, {A: reply, B: OK})
    found = classify(result, (A, B))
    assert found[A].outcome is expected
    assert found[A].reply == reply
    assert found[A].detail == f"rcpt: {reply.render()}"
    assert found[B].outcome is SENT


# -- hard bounces


@pytest.mark.parametrize(
    ("reply", "hard"),
    [
        pytest.param(SmtpReply(550, "5.1.1 no such user"), True, id="5.1.1"),
        pytest.param(SmtpReply(553, "5.1.3 bad address syntax"), True, id="5.1.3"),
        pytest.param(SmtpReply(556, "5.1.10 null MX"), True, id="5.1.10"),
        pytest.param(SmtpReply(550, "5.2.1 mailbox disabled"), True, id="5.2.1"),
        pytest.param(SmtpReply(552, "5.2.2 mailbox full"), False, id="5.2.2"),
        pytest.param(SmtpReply(550, "5.2.10 odd"), False, id="5.2.10"),
        pytest.param(SmtpReply(550, "5.10.1 odd"), False, id="5.10.1"),
        pytest.param(SmtpReply(550, "5.7.1 relaying denied"), False, id="5.7.1"),
        pytest.param(SmtpReply(450, "4.1.1 try later"), False, id="4.1.1-transient"),
        pytest.param(SmtpReply(250, "2.1.5 OK"), False, id="success"),
        pytest.param(SmtpReply(550, "no such user"), False, id="550-without-enhanced"),
        pytest.param(SmtpReply(550, "user 5.1.1 unknown"), False, id="enhanced-not-first"),
        pytest.param(None, False, id="no-reply"),
    ],
)
def test_is_hard_bounce(reply: SmtpReply | None, hard: bool) -> None:
    assert is_hard_bounce(reply) is hard


# -- upstream health

AUTH_REFUSED = SmtpReply(535, "5.7.8 Authentication credentials invalid")


@pytest.mark.parametrize(
    ("result", "failed"),
    [
        pytest.param(TransactionResult(Stage.CONNECT, transport_error="refused"), True,
                     id="connect-refused"),
        pytest.param(TransactionResult(Stage.CONNECT, SmtpReply(554, "5.3.2 no service")), True,
                     id="greeting-554"),
        pytest.param(TransactionResult(Stage.TLS, SmtpReply(454, "4.7.0 TLS not available")),
                     True, id="starttls-454"),
        pytest.param(TransactionResult(Stage.TLS, transport_error="certificate verify failed"),
                     True, id="tls-error"),
        pytest.param(TransactionResult(Stage.AUTH, AUTH_REFUSED), True, id="auth-535"),
        pytest.param(TransactionResult(Stage.MAIL, transport_error="reset"), True,
                     id="mail-reset"),
        pytest.param(TransactionResult(Stage.RCPT, None, {A: OK}, "timeout after 60 s"), True,
                     id="rcpt-timeout"),
        pytest.param(TransactionResult(Stage.DATA, None, {A: OK}, "reset"), True,
                     id="data-reset"),
        pytest.param(TransactionResult(Stage.MAIL, SmtpReply(421, "4.3.2 shutting down")), True,
                     id="mail-421"),
        pytest.param(TransactionResult(Stage.RCPT, SmtpReply(421, "4.4.5 busy"),
                                       {A: SmtpReply(421, "4.4.5 busy")}), True, id="rcpt-421"),
        pytest.param(TransactionResult(Stage.DATA, SmtpReply(421, "4.4.2 timeout"), {A: OK}),
                     True, id="data-421"),
        pytest.param(TransactionResult(Stage.RCPT, SmtpReply(550, "5.1.1 no such user"),
                                       {A: SmtpReply(550, "5.1.1 no such user")}), False,
                     id="rcpt-550"),
        pytest.param(TransactionResult(Stage.DATA, QUEUED, {A: OK}), False, id="data-250"),
        pytest.param(TransactionResult(Stage.MAIL, SmtpReply(550, "5.7.1 sender refused")),
                     False, id="mail-550"),
        pytest.param(TransactionResult(Stage.MAIL, SmtpReply(451, "4.3.0 try later")), False,
                     id="mail-451"),
        pytest.param(TransactionResult(Stage.DATA, MAILBOX_FULL, {A: OK}), False,
                     id="data-452"),
        pytest.param(TransactionResult(Stage.DATA, SmtpReply(554, "5.7.1 spam"), {A: OK}),
                     False, id="data-554"),
    ],
)  # fmt: skip
def test_upstream_failed(result: TransactionResult, failed: bool) -> None:
    assert upstream_failed(result) is failed


# -- policy: site over its limit

SHOP = Site(id="shop", name="Shop", from_email="sales@example.com")
T = 1_763_719_530.0


@pytest.mark.parametrize(
    ("left", "wait"),
    [
        pytest.param(30.0, 30, id="whole"),
        pytest.param(29.2, 30, id="rounds-up"),
        pytest.param(0.4, 1, id="under-a-second"),
        pytest.param(0.0, 1, id="now"),
        pytest.param(-5.0, 1, id="already-past"),
        pytest.param(86_400.0, 86_400, id="a-day"),
    ],
)
def test_site_over_limit(left: float, wait: int) -> None:
    over = OverLimit(Window.DAY, 100, 100, T + left)
    verdict = site_over_limit(SHOP, over, T)
    assert isinstance(verdict, TempFail)
    assert verdict.reply == SmtpReply(
        451,
        f"4.7.1 Site shop is over day limit (100/100 messages per day); try again in {wait} s",
    )
    assert verdict.reply.enhanced == "4.7.1"
    assert verdict.reply.is_transient


@pytest.mark.parametrize("window", list(Window))
def test_site_over_limit_names_the_window(window: Window) -> None:
    verdict = site_over_limit(SHOP, OverLimit(window, 10, 12, T + 60), T)
    assert f"over {window.value} limit (12/10 messages per {window.value})" in verdict.reply.text


# -- policy: message class

BULK_SITE = Site(
    id="news", name="News", from_email="news@example.com", message_class=MessageClass.BULK
)


BODY = b"\r\nX-Relay-Class: bulk\r\n"  # a look-alike in the body is never read


def class_of(*headers: bytes, site: Site = SHOP) -> MessageClass | Reject:
    fields, _ = split_message(b"".join(headers) + b"From: a@example.com\r\n" + BODY)
    return message_class(fields, "X-Relay-Class", site)


@pytest.mark.parametrize(
    ("headers", "site", "expected"),
    [
        pytest.param((), SHOP, MessageClass.TRANSACTIONAL, id="no-header-site-default"),
        pytest.param((), BULK_SITE, MessageClass.BULK, id="no-header-site-bulk"),
        pytest.param((b"X-Relay-Class: bulk\r\n",), SHOP, MessageClass.BULK, id="bulk"),
        pytest.param((b"X-Relay-Class: Bulk\r\n",), SHOP, MessageClass.BULK, id="capitalised"),
        pytest.param((b"x-relay-class:  TRANSACTIONAL \r\n",), BULK_SITE,
                     MessageClass.TRANSACTIONAL, id="header-beats-site"),
        pytest.param((b"X-Relay-Class:\r\n\tbulk\r\n",), SHOP, MessageClass.BULK, id="folded"),
        pytest.param((b"X-Relay-Class: =?utf-8?q?bulk?=\r\n",), SHOP, MessageClass.BULK,
                     id="encoded-word"),
        pytest.param((b"X-Relay-Class: bulk\r\n", b"X-Relay-Class: nonsense\r\n"), SHOP,
                     MessageClass.BULK, id="first-wins"),
    ],
)  # fmt: skip
def test_message_class(headers: tuple[bytes, ...], site: Site, expected: MessageClass) -> None:
    assert class_of(*headers, site=site) is expected


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param(b"newsletter", "'newsletter'", id="unknown"),
        pytest.param(b"", "''", id="empty"),
        pytest.param(b"bulk, transactional", "'bulk, transactional'", id="list"),
        pytest.param(b"x" * 60, "'" + "x" * 40 + "'", id="long-truncated-to-40"),
        pytest.param(b"=?utf-8?q?x=0D=0A250_ok?=", "'x??250 ok'", id="encoded-crlf-replaced"),
    ],
)
def test_unknown_message_class_is_rejected(value: bytes, shown: str) -> None:
    verdict = class_of(b"X-Relay-Class: " + value + b"\r\n")
    assert verdict == Reject(
        SmtpReply(550, f"5.6.0 X-Relay-Class must be transactional or bulk, not {shown}")
    )
    assert "\r" not in verdict.reply.text
    assert "\n" not in verdict.reply.text


@pytest.mark.parametrize(
    "value", [b"b\xc3\xbclk", b"=?utf-8?q?b=C3=BClk?=", b"\xff\xfe"], ids=["utf8", "encoded", "bad"]
)
def test_rejected_message_class_reply_is_ascii(value: bytes) -> None:
    verdict = class_of(b"X-Relay-Class: " + value + b"\r\n")
    assert isinstance(verdict, Reject)
    assert verdict.reply.code == 550
    assert verdict.reply.render().isascii()
