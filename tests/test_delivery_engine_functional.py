"""The delivery engine end to end: limits, quotas, circuits, DSNs, queue operations, strategies.

Real SMTP on loopback (client -> relay -> aiosmtpd sinks); a FakeClock drives
every decision that depends on time (quota windows, cooldowns, ages, backoff),
so nothing here waits for wall-clock time to pass.
"""

from __future__ import annotations

import asyncio
import email.policy
import logging
from collections.abc import Awaitable, Callable
from email import message_from_bytes
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from relay.core.classify import Stage
from relay.core.health import CircuitState
from relay.core.model import MessageStatus, RecipientStatus
from relay.core.quota import QuotaWarning, Scope, Window
from relay.events import CircuitChange
from relay.queue_database import DeliveryRecord, MessageDetail, QueueConflict, load_message
from relay.tables import messages, upstream_health
from tests.conftest import (
    SITE_PASSWORD,
    FakeClock,
    RunningRelay,
    Sink,
    base_config,
    smtp_upstream,
)
from tests.test_delivery_functional import (
    FINAL,
    SENDER,
    delivery_pass,
    message_detail,
    plaintext_listener,
    submit,
)

START = 1_800_000_000.0  # FakeClock's default: 2027-01-15 08:00 UTC, the start of a minute
UTC_MIDNIGHT = 1_800_057_600.0  # 2027-01-16 00:00 UTC
BERLIN_2358 = 1_800_053_880.0  # 2027-01-15 23:58 in Europe/Berlin (22:58 UTC)
BERLIN_MIDNIGHT = 1_800_054_000.0  # 2027-01-16 00:00 in Europe/Berlin (23:00 UTC)


def mail(subject: str = "hi", extra_headers: str = "") -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: a@example.org\r\nSubject: {subject}\r\n{extra_headers}"
        "\r\nhello\r\n"
    ).encode()


MESSAGE = mail()
MakeSink = Callable[..., Awaitable[Sink]]
StartRelay = Callable[..., Awaitable[RunningRelay]]


def relay_config(
    tmp_path: Path, upstreams: list[dict[str, Any]], **overrides: Any
) -> dict[str, Any]:
    return plaintext_listener(base_config(tmp_path, upstreams, **overrides))


async def submit_many(relay: RunningRelay, count: int, content: bytes = MESSAGE) -> list[str]:
    """Send ``count`` messages in one authenticated session; return their ids."""
    ids = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        await client.login("shop", SITE_PASSWORD)
        for _ in range(count):
            _, reply = await client.sendmail(SENDER, ["a@example.org"], content)
            ids.append(reply.split()[-1])
    return ids


async def next_record(
    relay: RunningRelay, message_id: str, action: Callable[[], object]
) -> DeliveryRecord:
    """Do ``action`` (advance the clock, retry...) and wait for the message's next delivery pass."""
    got: asyncio.Future[DeliveryRecord] = asyncio.get_running_loop().create_future()

    def on_event(event: object) -> None:
        if isinstance(event, DeliveryRecord) and event.message_id == message_id and not got.done():
            got.set_result(event)

    relay.app.events.subscribe(on_event)
    try:
        action()
        return await asyncio.wait_for(got, timeout=10)
    finally:
        relay.app.events.unsubscribe(on_event)


async def all_messages(relay: RunningRelay) -> dict[str, tuple[MessageStatus, str, bytes]]:
    """Every stored message: id -> (status, envelope sender, content)."""
    async with relay.app.engine.connect() as connection:
        rows = await connection.execute(
            sa.select(
                messages.c.id, messages.c.status, messages.c.envelope_sender, messages.c.content
            )
        )
        return {r.id: (MessageStatus(r.status), r.envelope_sender, r.content) for r in rows}


async def next_attempt_at(relay: RunningRelay, message_id: str) -> float:
    async with relay.app.engine.connect() as connection:
        value = await connection.scalar(
            sa.select(messages.c.next_attempt_at).where(messages.c.id == message_id)
        )
    assert value is not None
    return float(value)


def status_groups(dsn: EmailMessage) -> list[Message]:
    """The field groups of the DSN's message/delivery-status part (per message, per recipient)."""
    [part] = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"]
    groups = part.get_payload()
    assert isinstance(groups, list)
    # A trailing blank line after the last group parses as one more, empty group.
    return [group for group in groups if isinstance(group, Message) and group.keys()]


def state_of(relay: RunningRelay, upstream: str) -> CircuitState:
    return relay.app.health.circuits[upstream].state


def tried(detail: MessageDetail) -> list[tuple[str, str]]:
    """(upstream, outcome) of each attempt, in order."""
    return [(t.upstream, t.outcome) for t in detail.attempts]


def parse(content: bytes) -> EmailMessage:
    parsed = message_from_bytes(content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def metric(relay: RunningRelay, sample: str, /, **labels: str) -> float | None:
    """The value of one sample of the relay's metrics, or None when it is not exported."""
    for family in text_string_to_metric_families(relay.app.metrics.render().decode()):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return float(found.value)
    return None


# -- 1. Site limits at ingress.


async def test_site_rate_per_minute_refuses_at_mail_until_the_next_minute(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["sites"][0]["rate_per_minute"] = 2
    clock = FakeClock()
    relay = await start_relay(config, clock)

    await submit_many(relay, 2)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await submit(relay, ["a@example.org"], MESSAGE)

    assert refused.value.code == 451
    assert refused.value.message.startswith("4.7.1 ")
    assert "shop" in refused.value.message
    assert "over minute limit (2/2 messages per minute)" in refused.value.message
    relay.advance(clock, 60)
    await submit(relay, ["a@example.org"], MESSAGE)
    await sink.handler.wait_for(3)


async def test_site_daily_limit_resets_at_midnight_of_the_configured_time_zone(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    config = relay_config(
        tmp_path, [smtp_upstream("sink", sink.port)], limits={"timezone": "Europe/Berlin"}
    )
    config["sites"][0]["daily_limit"] = 2
    clock = FakeClock(BERLIN_2358)
    relay = await start_relay(config, clock)

    await submit_many(relay, 2)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await submit(relay, ["a@example.org"], MESSAGE)
    assert refused.value.code == 451
    assert "shop" in refused.value.message
    assert "over day limit (2/2 messages per day)" in refused.value.message
    assert "try again in 120 s" in refused.value.message

    relay.advance(clock, 60)  # 23:59 in Berlin: still the same day
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await submit(relay, ["a@example.org"], MESSAGE)

    relay.advance(clock, BERLIN_MIDNIGHT + 1 - clock())  # a new day in Berlin, not yet in UTC
    await submit(relay, ["a@example.org"], MESSAGE)
    await sink.handler.wait_for(3)


async def test_site_limit_holds_for_concurrent_sessions(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["sites"][0]["rate_per_minute"] = 1
    clock = FakeClock()
    relay = await start_relay(config, clock)
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) for _ in range(3)
    ]
    for client in clients:  # three transactions open at once, each past MAIL and RCPT
        await client.connect()
        await client.login("shop", SITE_PASSWORD)
        await client.mail(SENDER)
        await client.rcpt("a@example.org")
    try:
        replies = await asyncio.gather(
            *(client.data(MESSAGE) for client in clients), return_exceptions=True
        )
    finally:
        for client in clients:
            client.close()

    accepted = [r for r in replies if isinstance(r, aiosmtplib.SMTPResponse)]
    refused = [r for r in replies if isinstance(r, aiosmtplib.SMTPDataError)]
    assert (len(accepted), len(refused)) == (1, 2)
    assert all(r.code == 451 and "minute limit" in r.message for r in refused)
    assert relay.app.usage.book.used(Scope.SITE, "shop", Window.MINUTE, clock()) == 1


# -- 2. Usage survives a restart.


async def test_quotas_hold_across_a_restart(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, [smtp_upstream("sink", sink.port, daily_limit=3)])
    config["sites"][0]["daily_limit"] = 4
    clock = FakeClock()
    relay = await start_relay(config, clock)
    for message_id in await submit_many(relay, 2):
        assert (await delivery_pass(relay, message_id, FINAL)).status is MessageStatus.SENT

    await relay.app.stop()
    relay = await start_relay(config, clock)

    book = relay.app.usage.book
    assert book.used(Scope.UPSTREAM, "sink", Window.DAY, clock()) == 2
    assert book.used(Scope.SITE, "shop", Window.DAY, clock()) == 2
    [third] = await submit_many(relay, 1)
    assert (await delivery_pass(relay, third, FINAL)).status is MessageStatus.SENT
    [fourth] = await submit_many(relay, 1)  # the site's 4th of 4, the upstream's 4th of 3
    detail = await delivery_pass(relay, fourth, {MessageStatus.DEFERRED})
    assert detail.last_error is not None
    assert "over day limit (3/3 recipients per day)" in detail.last_error
    assert len(sink.messages) == 3
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        await submit(relay, ["a@example.org"], MESSAGE)
    assert refused.value.code == 451
    assert "over day limit (4/4 messages per day)" in refused.value.message


# -- 3. Upstream quotas in routing.


async def test_upstream_over_its_quota_is_skipped_for_the_next_one(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.delivery_controller")
    a, b = await make_sink(), await make_sink()
    upstreams = [smtp_upstream("a", a.port, daily_limit=1), smtp_upstream("b", b.port)]
    clock = FakeClock()
    relay = await start_relay(relay_config(tmp_path, upstreams), clock)

    [first] = await submit_many(relay, 1)
    assert (await delivery_pass(relay, first, FINAL)).recipients[0].upstream == "a"
    [second] = await submit_many(relay, 1)
    detail = await delivery_pass(relay, second, FINAL)

    assert detail.status is MessageStatus.SENT
    assert tried(detail) == [("b", "sent")]
    skip = "skipped a: over day limit (1/1 recipients per day)"
    assert detail.attempts[0].route == f"priority: try b; {skip}"
    assert any(second in r.getMessage() and skip in r.getMessage() for r in caplog.records)
    assert (len(a.messages), len(b.messages)) == (1, 1)


async def test_message_waits_for_the_quota_window_when_no_upstream_has_room(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    clock = FakeClock()
    relay = await start_relay(
        relay_config(tmp_path, [smtp_upstream("a", sink.port, daily_limit=1)]), clock
    )
    [first] = await submit_many(relay, 1)
    await delivery_pass(relay, first, FINAL)

    [second] = await submit_many(relay, 1)
    detail = await delivery_pass(relay, second, {MessageStatus.DEFERRED})

    assert detail.last_error == "no upstream available (a: over day limit (1/1 recipients per day))"
    assert detail.attempts == ()
    assert detail.attempt_count == 0  # waiting for a window is not a failed attempt
    assert await next_attempt_at(relay, second) == UTC_MIDNIGHT
    record = await next_record(relay, second, lambda: relay.advance(clock, UTC_MIDNIGHT - clock()))
    assert record.retry_at is None
    detail = await message_detail(relay, second)
    assert detail.status is MessageStatus.SENT
    assert detail.attempt_count == 1
    assert len(sink.messages) == 2


# -- 4. Quota warnings.


async def test_quota_warnings_at_80_and_90_percent_once_each(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["sites"][0]["daily_limit"] = 10
    relay = await start_relay(config, FakeClock())
    warnings: list[QuotaWarning] = []
    relay.app.events.subscribe(
        lambda e: warnings.append(e) if isinstance(e, QuotaWarning) else None
    )

    await submit_many(relay, 7)
    assert warnings == []
    await submit_many(relay, 1)
    assert warnings == [QuotaWarning(Scope.SITE, "shop", Window.DAY, 0.8, 8, 10)]
    await submit_many(relay, 1)
    assert warnings[1:] == [QuotaWarning(Scope.SITE, "shop", Window.DAY, 0.9, 9, 10)]
    await submit_many(relay, 1)
    assert len(warnings) == 2

    site = {"scope": "site", "name": "shop", "window": "day"}
    assert metric(relay, "relay_quota_warnings_total", **site, level="0.8") == 1
    assert metric(relay, "relay_quota_warnings_total", **site, level="0.9") == 1
    assert metric(relay, "relay_quota_use_ratio", **site) == 1.0


async def test_an_upstream_quota_warning_is_not_repeated_after_a_reservation_is_given_back(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    a, b = await make_sink(), await make_sink()
    upstreams = [smtp_upstream("a", a.port, daily_limit=5), smtp_upstream("b", b.port)]
    clock = FakeClock()
    relay = await start_relay(relay_config(tmp_path, upstreams), clock)
    warnings: list[QuotaWarning] = []
    relay.app.events.subscribe(
        lambda e: warnings.append(e) if isinstance(e, QuotaWarning) else None
    )
    for message_id in await submit_many(relay, 3):
        await delivery_pass(relay, message_id, FINAL)
    a.handler.replies["mail"] = "451 4.3.0 busy, try the next one"  # a 4xx: on to b

    for _ in range(2):  # one after the other: concurrent reservations would reach 90 %
        [message_id] = await submit_many(relay, 1)
        assert tried(await delivery_pass(relay, message_id, FINAL)) == [
            ("a", "retry"),
            ("b", "sent"),
        ]

    assert relay.app.usage.book.used(Scope.UPSTREAM, "a", Window.DAY, clock()) == 3
    levels = [w.level for w in warnings if w.name == "a"]
    assert len(levels) == len(set(levels)) and 0.9 not in levels  # each level once, if at all


# -- 5. Circuit breaker.


def circuit_config(tmp_path: Path, down_port: int, up_port: int, threshold: int) -> dict[str, Any]:
    return relay_config(
        tmp_path,
        [smtp_upstream("a", down_port), smtp_upstream("b", up_port)],
        health={
            "failure_threshold": threshold,
            "cooldown_seconds": 60,
            "check_interval_seconds": 0,
        },
    )


async def test_circuit_opens_skips_the_upstream_and_a_probe_closes_it(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    b = await make_sink()
    clock = FakeClock()
    relay = await start_relay(circuit_config(tmp_path, closed_port, b.port, 2), clock)
    changes: list[tuple[CircuitState, CircuitState]] = []
    relay.app.events.subscribe(
        lambda e: changes.append((e.old, e.new)) if isinstance(e, CircuitChange) else None
    )

    for message_id in await submit_many(relay, 2):
        detail = await delivery_pass(relay, message_id, FINAL)
        assert tried(detail) == [("a", "retry"), ("b", "sent")]
    assert state_of(relay, "a") is CircuitState.OPEN
    [third] = await submit_many(relay, 1)
    detail = await delivery_pass(relay, third, FINAL)
    assert tried(detail) == [("b", "sent")]
    assert "skipped a: circuit open after 2 failures" in detail.attempts[0].route

    await make_sink(port=closed_port)
    relay.advance(clock, 61)
    [fourth] = await submit_many(relay, 1)
    assert tried(await delivery_pass(relay, fourth, FINAL)) == [("a", "sent")]

    assert state_of(relay, "a") is CircuitState.CLOSED
    assert changes == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.HALF_OPEN),
        (CircuitState.HALF_OPEN, CircuitState.CLOSED),
    ]
    assert metric(relay, "relay_upstream_circuit_state", upstream="a", state="closed") == 1
    assert metric(relay, "relay_upstream_circuit_state", upstream="a", state="open") == 0


async def test_a_failing_probe_reopens_the_circuit(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    b = await make_sink()
    clock = FakeClock()
    relay = await start_relay(circuit_config(tmp_path, closed_port, b.port, 2), clock)
    for message_id in await submit_many(relay, 2):
        await delivery_pass(relay, message_id, FINAL)
    assert state_of(relay, "a") is CircuitState.OPEN

    relay.advance(clock, 61)
    [probe] = await submit_many(relay, 1)
    assert tried(await delivery_pass(relay, probe, FINAL)) == [("a", "retry"), ("b", "sent")]

    circuit = relay.app.health.circuits["a"]
    assert circuit.state is CircuitState.OPEN
    assert circuit.changed_at == clock()  # a fresh cooldown starts now
    assert circuit.last_error == "connect: connection refused"
    relay.advance(clock, 30)
    [after] = await submit_many(relay, 1)
    assert tried(await delivery_pass(relay, after, FINAL)) == [("b", "sent")]


async def test_an_open_circuit_stays_open_across_a_restart(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    b = await make_sink()
    clock = FakeClock()
    config = circuit_config(tmp_path, closed_port, b.port, 1)
    relay = await start_relay(config, clock)
    [first] = await submit_many(relay, 1)
    await delivery_pass(relay, first, FINAL)
    assert state_of(relay, "a") is CircuitState.OPEN

    await relay.app.stop()
    clock.advance(30)  # before the cooldown ends
    relay = await start_relay(config, clock)

    async with relay.app.engine.connect() as connection:
        row = (await connection.execute(sa.select(upstream_health))).one()
    assert (row.upstream, row.state, row.changed_at) == ("a", "open", START)
    assert state_of(relay, "a") is CircuitState.OPEN
    assert metric(relay, "relay_upstream_circuit_state", upstream="a", state="open") == 1
    [second] = await submit_many(relay, 1)
    assert tried(await delivery_pass(relay, second, FINAL)) == [("b", "sent")]

    await make_sink(port=closed_port)
    relay.advance(clock, 31)
    [third] = await submit_many(relay, 1)
    assert tried(await delivery_pass(relay, third, FINAL)) == [("a", "sent")]
    assert state_of(relay, "a") is CircuitState.CLOSED


async def test_a_message_with_only_an_open_circuit_waits_for_the_cooldown(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    config = relay_config(
        tmp_path,
        [smtp_upstream("a", closed_port)],
        health={"failure_threshold": 1, "cooldown_seconds": 60, "check_interval_seconds": 0},
    )
    relay = await start_relay(config, clock)
    message_id = await submit(relay, ["a@example.org"], MESSAGE)
    assert (await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})).attempt_count == 1

    record = await next_record(relay, message_id, lambda: relay.advance(clock, 2))  # backoff over

    assert record.attempts == ()
    assert record.retry_at == START + 60  # when the circuit admits a probe, not blind backoff
    detail = await message_detail(relay, message_id)
    assert detail.attempt_count == 1
    assert detail.last_error is not None
    assert detail.last_error.startswith("no upstream available (a: circuit open")
    sink = await make_sink(port=closed_port)
    record = await next_record(relay, message_id, lambda: relay.advance(clock, 58))
    assert [a.outcome for a in record.attempts] == ["sent"]
    await sink.handler.wait_for(1)


async def test_periodic_checks_open_and_close_a_circuit_without_any_mail(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    config = relay_config(
        tmp_path,
        [smtp_upstream("a", closed_port)],
        health={"failure_threshold": 1, "cooldown_seconds": 60, "check_interval_seconds": 1},
    )
    relay = await start_relay(config, clock)
    changes: asyncio.Queue[CircuitChange] = asyncio.Queue()
    relay.app.events.subscribe(
        lambda e: changes.put_nowait(e) if isinstance(e, CircuitChange) else None
    )

    opened = await asyncio.wait_for(changes.get(), timeout=10)  # the first check, ~1 s from start
    assert (opened.upstream, opened.old, opened.new) == (
        "a",
        CircuitState.CLOSED,
        CircuitState.OPEN,
    )
    assert opened.reason == "connect: connection refused"
    await make_sink(port=closed_port)
    relay.advance(clock, 61)
    probing = await asyncio.wait_for(changes.get(), timeout=10)
    closed = await asyncio.wait_for(changes.get(), timeout=10)

    assert (probing.new, closed.new) == (CircuitState.HALF_OPEN, CircuitState.CLOSED)
    assert state_of(relay, "a") is CircuitState.CLOSED
    assert metric(relay, "relay_upstream_health_checks_total", upstream="a", result="ok") == 1


# -- 6. Active health checks.


async def test_health_check_on_demand(
    tmp_path: Path, start_relay: StartRelay, make_sink, cert_files: tuple[Path, Path, Path]
) -> None:
    auth_sink = (await make_sink(tls="starttls", auth=("relay", "right-password"))).port
    tls: dict[str, Any] = {"tls": "starttls", "host": "localhost", "timeout_seconds": 10}
    tls["ca_file"] = str(cert_files[2])
    upstreams = [
        smtp_upstream("a", auth_sink, username="relay", password="wrong-password", **tls),
        smtp_upstream("b", auth_sink, username="relay", password="right-password", **tls),
    ]
    config = relay_config(
        tmp_path,
        upstreams,
        health={"failure_threshold": 2, "cooldown_seconds": 60, "check_interval_seconds": 0},
    )
    relay = await start_relay(config, FakeClock())
    directory = relay.app.directory()
    bad, good = directory.upstream("a"), directory.upstream("b")
    assert bad is not None and good is not None

    result = await relay.app.health.check(bad)
    assert not result.ok
    assert result.stage is Stage.AUTH
    assert "535" in result.detail
    assert [step for step, _ in result.steps] == ["connect", "ehlo", "starttls"]
    circuit = relay.app.health.circuits["a"]
    assert (circuit.state, circuit.failures) == (CircuitState.CLOSED, 1)
    await relay.app.health.check(bad)
    assert state_of(relay, "a") is CircuitState.OPEN

    result = await relay.app.health.check(good)
    assert result.ok
    assert result.detail == "ok"
    assert [step for step, _ in result.steps] == ["connect", "ehlo", "starttls", "auth", "quit"]
    assert all(seconds >= 0 for _, seconds in result.steps)
    assert relay.app.health.circuits.get("b") is None or (
        state_of(relay, "b") is CircuitState.CLOSED
    )
    checks = "relay_upstream_health_checks_total"
    assert metric(relay, checks, upstream="a", result="failed") == 2
    assert metric(relay, checks, upstream="b", result="ok") == 1


# -- 7. DSNs.


async def test_permanent_failure_sends_a_dsn_to_the_original_sender(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink(replies={"rcpt": {"gone@example.org": "550 5.1.1 no such user"}})
    relay = await start_relay(relay_config(tmp_path, [smtp_upstream("sink", sink.port)]))

    message_id = await submit(relay, ["gone@example.org"], mail("Order 42"))

    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.FAILED
    [received] = await sink.handler.wait_for(1)
    assert received.mail_from == "<>"  # the null reverse path, as aiosmtpd reports it
    assert received.rcpt_tos == [SENDER]
    dsn = parse(received.content)
    assert dsn["To"].addresses[0].addr_spec == SENDER
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    per_message, per_recipient = status_groups(dsn)
    assert per_message["X-Relay-Message-ID"] == message_id
    assert per_recipient["Final-Recipient"] == "rfc822; gone@example.org"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    [headers] = [p for p in dsn.walk() if p.get_content_type() == "text/rfc822-headers"]
    assert b"Subject: Order 42" in headers.as_bytes()
    assert metric(relay, "relay_dsn_queued_total", action="failed") == 1


async def test_never_a_dsn_about_a_dsn(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    refusals = {"gone@example.org": "550 5.1.1 no such user", SENDER: "550 5.7.1 not here"}
    sink = await make_sink(replies={"rcpt": refusals})
    relay = await start_relay(relay_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    dsns: list[str] = []
    relay.app.events.subscribe(
        lambda e: dsns.extend(n.id for n in e.notices) if isinstance(e, DeliveryRecord) else None
    )

    message_id = await submit(relay, ["gone@example.org"], MESSAGE)
    await delivery_pass(relay, message_id, FINAL)
    [dsn_id] = dsns
    dsn = await delivery_pass(relay, dsn_id, FINAL)

    assert dsn.status is MessageStatus.FAILED
    assert dsn.envelope_sender == ""
    assert dsn.recipients[0].address == SENDER
    assert dsn.recipients[0].status is RecipientStatus.FAILED
    assert dsns == [dsn_id]
    assert set(await all_messages(relay)) == {message_id, dsn_id}
    assert sink.messages == []


async def test_no_dsn_for_a_null_sender(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sink = await make_sink(replies={"rcpt": {"gone@example.org": "550 5.1.1 no such user"}})
    config = relay_config(tmp_path, [smtp_upstream("sink", sink.port)])
    config["sites"][0]["senders"] = []
    relay = await start_relay(config)

    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.port, start_tls=False) as client:
        await client.login("shop", SITE_PASSWORD)
        _, reply = await client.sendmail("", ["gone@example.org"], MESSAGE)
    message_id = reply.split()[-1]

    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.FAILED
    assert set(await all_messages(relay)) == {message_id}


# -- 8. Expiry and 9. delay notices.


def down_config(tmp_path: Path, port: int, **delivery: Any) -> dict[str, Any]:
    return relay_config(
        tmp_path,
        [smtp_upstream("down", port)],
        delivery={"retry_first_seconds": 1, "retry_max_seconds": 2, **delivery},
        health={"failure_threshold": 1000, "check_interval_seconds": 0},
    )


async def test_a_message_older_than_max_age_fails_with_a_dsn(
    tmp_path: Path, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    relay = await start_relay(down_config(tmp_path, closed_port, max_age_seconds=3600), clock)
    message_id = await submit(relay, ["a@example.org"], MESSAGE)
    await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})

    record = await next_record(relay, message_id, lambda: relay.advance(clock, 3601))

    detail = await message_detail(relay, message_id)
    assert detail.status is MessageStatus.FAILED
    [recipient] = detail.recipients
    assert recipient.status is RecipientStatus.FAILED
    assert recipient.reply_text is not None
    assert recipient.reply_text.startswith("expired after 1.0 hours")
    assert "connection refused" in recipient.reply_text
    [notice] = record.notices
    assert notice.recipients == (SENDER,)
    [_, per_recipient] = status_groups(parse(notice.content))
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.4.7"
    stored = await all_messages(relay)
    assert set(stored) == {message_id, notice.id}
    assert stored[notice.id][1] == ""


async def test_one_delay_notice_after_delay_notice_seconds(
    tmp_path: Path, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    config = down_config(tmp_path, closed_port, delay_notice_seconds=600)
    relay = await start_relay(config, clock)
    message_id = await submit(relay, ["a@example.org"], MESSAGE)
    await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
    assert (await next_record(relay, message_id, lambda: relay.advance(clock, 300))).notices == ()

    record = await next_record(relay, message_id, lambda: relay.advance(clock, 301))

    [notice] = record.notices
    assert notice.recipients == (SENDER,)
    dsn = parse(notice.content)
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    [_, per_recipient] = status_groups(dsn)
    assert per_recipient["Action"] == "delayed"
    assert per_recipient["Final-Recipient"] == "rfc822; a@example.org"
    assert per_recipient["Will-Retry-Until"] is not None
    for _ in range(3):
        later = await next_record(relay, message_id, lambda: relay.advance(clock, 10))
        assert later.notices == ()
    await relay.app.stop()
    relay = await start_relay(config, clock)  # the notice is remembered in the store
    later = await next_record(relay, message_id, lambda: relay.advance(clock, 10))
    assert later.notices == ()
    assert (await message_detail(relay, message_id)).status is MessageStatus.DEFERRED
    assert set(await all_messages(relay)) == {message_id, notice.id}


# -- 10. Queue operations.


def slow_retry_config(tmp_path: Path, port: int) -> dict[str, Any]:
    """One upstream that is down; a deferred message waits 30-60 minutes."""
    return relay_config(
        tmp_path,
        [smtp_upstream("a", port)],
        delivery={"retry_first_seconds": 3600, "retry_max_seconds": 7200},
        health={"failure_threshold": 1000, "check_interval_seconds": 0},
    )


async def test_hold_release_and_stats(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    relay = await start_relay(slow_retry_config(tmp_path, closed_port), clock)
    queue = relay.app.queue
    held_id = await submit(relay, ["a@example.org"], mail("held"))
    await delivery_pass(relay, held_id, {MessageStatus.DEFERRED})
    relay.advance(clock, 100)
    stats = await queue.stats()
    assert (stats.depth, stats.held, stats.oldest_age(clock())) == (1, 0, 100.0)

    assert await queue.hold(held_id) is MessageStatus.HELD
    assert await queue.hold(held_id) is MessageStatus.HELD  # holding twice is harmless
    stats = await queue.stats()
    assert (stats.depth, stats.held, stats.oldest_age(clock())) == (0, 1, 0.0)
    sink = await make_sink(port=closed_port)
    relay.advance(clock, 7200)  # the held message is due by its schedule now
    other = await submit(relay, ["a@example.org"], mail("other"))
    [received] = await sink.handler.wait_for(1)
    assert f"id {other};".encode() in received.content
    await delivery_pass(relay, other, FINAL)
    assert (await message_detail(relay, held_id)).status is MessageStatus.HELD
    assert len(sink.messages) == 1

    assert await queue.release(held_id) is MessageStatus.DEFERRED
    await sink.handler.wait_for(2)
    assert (await delivery_pass(relay, held_id, FINAL)).status is MessageStatus.SENT
    assert f"id {held_id};".encode() in sink.messages[1].content

    for operation in (queue.hold, queue.retry, queue.release):
        with pytest.raises(QueueConflict):
            await operation(held_id)
    for operation in (queue.hold, queue.retry, queue.release):
        assert await operation("no-such-message") is None
    assert await queue.delete("no-such-message") is False


async def test_retry_now_and_delete(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    clock = FakeClock()
    relay = await start_relay(slow_retry_config(tmp_path, closed_port), clock)
    queue = relay.app.queue
    retried = await submit(relay, ["a@example.org"], mail("retried"))
    deleted = await submit(relay, ["a@example.org"], mail("deleted"))
    for message_id in (retried, deleted):
        await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
    assert await next_attempt_at(relay, retried) >= clock() + 1800
    sink = await make_sink(port=closed_port)

    assert await queue.retry(retried) is MessageStatus.DEFERRED
    [received] = await sink.handler.wait_for(1)  # at once: the fake clock has not moved

    assert f"id {retried};".encode() in received.content
    assert (await delivery_pass(relay, retried, FINAL)).status is MessageStatus.SENT
    assert (await message_detail(relay, deleted)).status is MessageStatus.DEFERRED
    assert await queue.delete(deleted) is True
    async with relay.app.engine.connect() as connection:
        assert await load_message(connection, deleted) is None
    stats = await queue.stats()
    assert (stats.depth, stats.held) == (0, 0)
    assert len(sink.messages) == 1


# -- 11. Strategies and message classes.


async def test_cost_strategy_picks_the_cheapest_upstream(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    sinks = [await make_sink() for _ in range(3)]
    upstreams = [
        smtp_upstream(name, sink.port, cost_per_1000=cost)
        for name, sink, cost in zip(("five", "one", "three"), sinks, (5, 1, 3), strict=True)
    ]
    relay = await start_relay(relay_config(tmp_path, upstreams, routing={"strategy": "cost"}))

    for message_id in await submit_many(relay, 3):
        assert (await delivery_pass(relay, message_id, FINAL)).recipients[0].upstream == "one"
    assert [len(s.messages) for s in sinks] == [0, 3, 0]


async def test_cost_strategy_fails_over_to_the_next_cheapest(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    five, three = await make_sink(), await make_sink()
    upstreams = [
        smtp_upstream("five", five.port, cost_per_1000=5),
        smtp_upstream("one", closed_port, cost_per_1000=1),
        smtp_upstream("unknown", five.port),  # no cost given: last
        smtp_upstream("three", three.port, cost_per_1000=3),
    ]
    config = relay_config(tmp_path, upstreams)
    config["sites"][0]["strategy"] = "cost"
    relay = await start_relay(config)

    [message_id] = await submit_many(relay, 1)

    detail = await delivery_pass(relay, message_id, FINAL)
    assert tried(detail) == [("one", "retry"), ("three", "sent")]
    assert detail.attempts[0].route.startswith("cost: try one, three, five, unknown")


async def test_weighted_strategy_follows_the_weights(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    heavy, never = await make_sink(), await make_sink()
    upstreams = [smtp_upstream("never", never.port, weight=0), smtp_upstream("heavy", heavy.port)]
    config = relay_config(tmp_path, upstreams)
    config["sites"][0]["strategy"] = "weighted"
    relay = await start_relay(config)

    await submit_many(relay, 5)

    await heavy.handler.wait_for(5)
    assert never.messages == []


async def test_weight_zero_upstream_is_still_the_last_resort(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, closed_port: int
) -> None:
    spare = await make_sink()
    upstreams = [smtp_upstream("spare", spare.port, weight=0), smtp_upstream("down", closed_port)]
    config = relay_config(tmp_path, upstreams, routing={"strategy": "weighted"})
    relay = await start_relay(config)

    [message_id] = await submit_many(relay, 1)

    assert tried(await delivery_pass(relay, message_id, FINAL)) == [
        ("down", "retry"),
        ("spare", "sent"),
    ]


async def test_weighted_strategy_with_equal_weights_uses_both(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    one, two = await make_sink(), await make_sink()
    config = relay_config(
        tmp_path, [smtp_upstream("one", one.port), smtp_upstream("two", two.port)]
    )
    config["sites"][0]["strategy"] = "weighted"
    relay = await start_relay(config)

    ids = await submit_many(relay, 20)

    for message_id in ids:
        await delivery_pass(relay, message_id, FINAL)
    # Each message picks either with probability 1/2: all 20 alike has odds 2 in 2**20.
    assert len(one.messages) + len(two.messages) == 20
    assert one.messages and two.messages


async def test_message_class_header_routes_and_is_removed(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    main, bulk = await make_sink(), await make_sink()
    upstreams = [
        smtp_upstream("main", main.port, priority=1),
        smtp_upstream("bulk", bulk.port, priority=2),
    ]
    config = relay_config(
        tmp_path, upstreams, routing={"classes": {"bulk": {"upstreams": ["bulk"]}}}
    )
    config["sites"][0]["upstreams"] = []
    relay = await start_relay(config)

    newsletter = await submit(relay, ["a@example.org"], mail("news", "X-Relay-Class: bulk\r\n"))
    receipt = await submit(relay, ["a@example.org"], mail("receipt"))

    [received] = await bulk.handler.wait_for(1)
    assert f"id {newsletter};".encode() in received.content
    assert b"x-relay-class" not in received.content.lower()
    [received] = await main.handler.wait_for(1)
    assert f"id {receipt};".encode() in received.content
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await submit(relay, ["a@example.org"], mail("odd", "X-Relay-Class: urgent\r\n"))
    assert refused.value.code == 550
    assert "X-Relay-Class" in refused.value.message
    assert (len(main.messages), len(bulk.messages)) == (1, 1)


async def test_a_site_whose_mail_is_bulk_by_default(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay
) -> None:
    main, bulk = await make_sink(), await make_sink()
    upstreams = [
        smtp_upstream("main", main.port, priority=1),
        smtp_upstream("bulk", bulk.port, priority=2),
    ]
    config = relay_config(
        tmp_path, upstreams, routing={"classes": {"bulk": {"upstreams": ["bulk"]}}}
    )
    config["sites"][0].update(upstreams=[], message_class="bulk")
    relay = await start_relay(config)

    newsletter = await submit(relay, ["a@example.org"], mail("news"))
    receipt = await submit(
        relay, ["a@example.org"], mail("receipt", "X-Relay-Class: transactional\r\n")
    )

    assert (await delivery_pass(relay, newsletter, FINAL)).recipients[0].upstream == "bulk"
    assert (await delivery_pass(relay, receipt, FINAL)).recipients[0].upstream == "main"
