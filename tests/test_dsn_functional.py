"""Where DSNs go and what they cost, end to end: client -> relay -> aiosmtpd sink on loopback.

A DSN goes only to an address the site owns (DESIGN.md, "Contract: delivery"):
the MAIL FROM when the site lists `senders` and it matches them, else the
site's bounce address. A leaked credential of a site without `senders` must
not turn the relay into a source of null-sender mail to third parties
(backscatter), and every DSN counts against the site's limits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import sqlalchemy as sa

from relay.core.model import MessageStatus
from relay.tables import recipients
from tests.conftest import SITE_PASSWORD, FakeClock, RunningRelay, smtp_upstream, write_config
from tests.test_delivery_engine_functional import (
    MESSAGE,
    MakeSink,
    StartRelay,
    all_messages,
    down_config,
    metric,
    next_record,
    parse,
    relay_config,
    status_groups,
)
from tests.test_delivery_functional import FINAL, SENDER, delivery_pass, submit

VICTIM = "victim@elsewhere.example"
BOUNCES = "bounces@example.com"
GONE = "gone@example.org"
REFUSE_GONE = {"rcpt": {GONE: "550 5.1.1 no such user"}}


def without_senders(config: dict[str, Any], bounce_address: str | None = BOUNCES) -> dict[str, Any]:
    site = config["sites"][0]
    del site["senders"]
    if bounce_address is not None:
        site["bounce_address"] = bounce_address
    return config


async def send_as(relay: RunningRelay, sender: str, recipients: list[str]) -> str:
    """Log in as the shop site and send with ``sender`` as MAIL FROM; the queued id."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        await client.login("shop", SITE_PASSWORD)
        _, reply = await client.sendmail(sender, recipients, MESSAGE)
    return reply.split()[-1]


async def stored_recipients(relay: RunningRelay) -> set[str]:
    """Every recipient of every stored message (the DSNs included)."""
    async with relay.app.engine.connect() as connection:
        rows = await connection.execute(sa.select(recipients.c.address))
        return {r.address for r in rows}


# -- Who gets the DSN.


async def test_a_site_without_senders_bounces_to_its_bounce_address_never_to_mail_from(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink(replies=REFUSE_GONE)
    config = without_senders(relay_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    relay = await start_relay(config)

    message_id = await send_as(relay, VICTIM, [GONE])

    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.FAILED
    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "<>"
    assert received.rcpt_tos == [BOUNCES]
    dsn = parse(received.content)
    assert dsn["To"].addresses[0].addr_spec == BOUNCES
    assert dsn["From"].addresses[0].addr_spec == BOUNCES
    [_, per_recipient] = status_groups(dsn)
    assert per_recipient["Final-Recipient"] == f"rfc822; {GONE}"
    # The site's owner learns which MAIL FROM the client gave; the victim gets nothing.
    assert f"<{VICTIM}>" in dsn.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert VICTIM not in await stored_recipients(relay)
    assert metric(relay, "relay_dsn_queued_total", action="failed") == 1


async def test_without_a_bounce_address_the_dsn_goes_to_the_sites_from_address(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink(replies=REFUSE_GONE)
    config = relay_config(tmp_path, [smtp_upstream("sink", sink.port)])
    relay = await start_relay(without_senders(config, bounce_address=None))

    await send_as(relay, VICTIM, [GONE])

    [received] = await sink.handler.wait_for(1)
    assert received.rcpt_tos == ["sales@example.com"]  # the site's from.email


async def test_a_site_with_senders_bounces_to_the_matching_mail_from(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink(replies=REFUSE_GONE)
    config = relay_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["sites"][0]["bounce_address"] = BOUNCES
    relay = await start_relay(config)

    await submit(relay, [GONE], MESSAGE)

    [received] = await sink.handler.wait_for(1)
    assert received.rcpt_tos == [SENDER]


async def test_a_delay_notice_of_a_site_without_senders_goes_to_its_bounce_address(
    tmp_path: Path, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    config = without_senders(down_config(tmp_path, closed_port, delay_notice_seconds=600))
    relay = await start_relay(config, clock)
    message_id = await send_as(relay, VICTIM, ["a@example.org"])
    await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})

    record = await next_record(relay, message_id, lambda: relay.advance(clock, 601))

    [notice] = record.notices
    assert notice.recipients == (BOUNCES,)
    assert parse(notice.content)["Subject"] == "Delayed Mail (still being retried)"


async def test_no_dsn_when_the_site_is_gone(
    tmp_path: Path, start_relay: StartRelay, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    config = down_config(tmp_path, closed_port, max_age_seconds=3600)
    relay = await start_relay(config, clock)
    message_id = await submit(relay, ["a@example.org"], MESSAGE)
    await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
    config["sites"][0]["id"] = "shop2"  # the shop site is removed by a reload
    config["sites"][0]["credentials"][0]["username"] = "shop2"
    write_config(tmp_path, config)
    assert relay.app.reload().problems == []

    with caplog.at_level(logging.WARNING, logger="relay.delivery_controller"):
        record = await next_record(relay, message_id, lambda: relay.advance(clock, 3601))

    assert record.notices == ()
    assert set(await all_messages(relay)) == {message_id}
    assert any(
        message_id in r.getMessage() and "site shop is gone" in r.getMessage()
        for r in caplog.records
    )
    assert metric(relay, "relay_dsn_dropped_total", site="shop", reason="site_gone") == 1


# -- What a DSN costs.


async def test_a_dsn_counts_against_the_sites_limits(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink(replies=REFUSE_GONE)
    config = without_senders(relay_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    config["sites"][0]["daily_limit"] = 2
    relay = await start_relay(config, FakeClock())

    message_id = await send_as(relay, VICTIM, [GONE])
    await delivery_pass(relay, message_id, FINAL)
    await sink.handler.wait_for(1)  # the DSN, to the bounce address

    # One message and its DSN: the day's two are used.
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await send_as(relay, VICTIM, [GONE])
    assert refused.value.code == 451
    assert "over day limit (2/2 messages per day)" in refused.value.message


async def test_a_site_over_its_limit_gets_no_dsn(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    sink = await make_sink(replies=REFUSE_GONE)
    config = without_senders(relay_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    config["sites"][0]["rate_per_minute"] = 1
    relay = await start_relay(config, FakeClock())

    with caplog.at_level(logging.WARNING, logger="relay.delivery_controller"):
        message_id = await send_as(relay, VICTIM, [GONE])
        detail = await delivery_pass(relay, message_id, FINAL)

    assert detail.status is MessageStatus.FAILED
    assert set(await all_messages(relay)) == {message_id}
    assert sink.messages == []
    assert metric(relay, "relay_dsn_dropped_total", site="shop", reason="over_limit") == 1
    assert metric(relay, "relay_dsn_queued_total", action="failed") is None
    assert any(
        "no failed DSN" in r.getMessage() and "over minute limit" in r.getMessage()
        for r in caplog.records
    )


async def test_a_delay_notice_over_the_limit_is_dropped_once_and_not_retried(
    tmp_path: Path, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    config = without_senders(down_config(tmp_path, closed_port, delay_notice_seconds=600))
    config["sites"][0]["daily_limit"] = 1
    relay = await start_relay(config, clock)
    message_id = await send_as(relay, VICTIM, ["a@example.org"])
    await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})

    record = await next_record(relay, message_id, lambda: relay.advance(clock, 601))

    assert record.notices == ()
    assert record.delay_notified
    later = await next_record(relay, message_id, lambda: relay.advance(clock, 10))
    assert later.notices == ()
    assert metric(relay, "relay_dsn_dropped_total", site="shop", reason="over_limit") == 1
