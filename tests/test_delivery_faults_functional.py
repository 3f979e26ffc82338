"""Every upstream fault ends in the right state with nothing lost (real sockets on loopback).

The faulty upstream comes first in the site's route and a healthy aiosmtpd
sink second: each test checks the message and recipient states, the
attempts recorded (upstream, outcome, recipients, detail) and that the
healthy sink received exactly what it should -- never a second copy for a
recipient an upstream already accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from relay.core.health import CircuitState
from relay.core.model import MessageStatus, RecipientStatus
from relay.queue_database import DeliveryRecord, MessageDetail
from tests.conftest import (
    FakeClock,
    Received,
    RunningRelay,
    SinkFactory,
    SinkHandler,
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

BODY = b"Your order has shipped.\r\nTracking: 42.\r\n"
A, B, C = "a@example.org", "b@example.org", "c@example.org"
ACCEPTED = "data: 250 2.0.0 OK accepted"  # what the sink answers at the end of DATA
StartRelay = Callable[..., Awaitable[RunningRelay]]


def message_to(*recipients: str) -> bytes:
    headers = f"From: <{SENDER}>\r\nTo: {', '.join(recipients)}\r\nSubject: order\r\n\r\n"
    return headers.encode() + BODY


def body_of(content: bytes) -> bytes:
    return content.partition(b"\r\n\r\n")[2]


def attempts_of(detail: MessageDetail) -> list[tuple[str, str, tuple[str, ...], str]]:
    return [(a.upstream, a.outcome, a.recipients, a.detail) for a in detail.attempts]


def states_of(detail: MessageDetail) -> dict[str, tuple[RecipientStatus, str | None, int | None]]:
    return {r.address: (r.status, r.upstream, r.reply_code) for r in detail.recipients}


def dsn_recipients(content: bytes) -> list[tuple[str, str, str]]:
    """(Final-Recipient, Action, Status) of each recipient group of a DSN (RFC 3464)."""
    report = message_from_bytes(content)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    [status] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    payload = status.get_payload()
    assert isinstance(payload, list)  # one Message per group: per-message, then per-recipient
    groups = [g for g in payload[1:] if isinstance(g, Message)]
    # The blank line closing the last group parses as one more, empty group.
    return [(g["Final-Recipient"], g["Action"], g["Status"]) for g in groups if g.keys()]


class Records:
    """Every DeliveryRecord the relay commits, in order (to find the DSNs it queued)."""

    def __init__(self, relay: RunningRelay) -> None:
        self.items: list[DeliveryRecord] = []
        relay.app.events.subscribe(self._on_event)

    def _on_event(self, event: object) -> None:
        if isinstance(event, DeliveryRecord):
            self.items.append(event)

    def of(self, message_id: str) -> list[DeliveryRecord]:
        return [r for r in self.items if r.message_id == message_id]


# -- Upstreams that misbehave.


@dataclass
class RecordingHandler(SinkHandler):
    """A sink that also logs every RCPT it is asked, accepted or not."""

    rcpts: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.rcpts.append(address)
        return await super().handle_RCPT(server, session, envelope, address, options)


@dataclass
class RecordingSink:
    handler: RecordingHandler
    port: int


ServeSink = Callable[..., Awaitable[RecordingSink]]


@pytest.fixture
async def serve_sink(cert_files: tuple[Path, Path, Path]) -> AsyncIterator[ServeSink]:
    """serve_sink(host=, starttls=, auth=(user, password), replies=): a recording aiosmtpd sink.

    Unlike make_sink it can listen on any loopback address (127.0.0.2 is not in the
    test certificate), logs RCPT commands, and answers a wrong password with 535.
    AUTH is offered only after STARTTLS.
    """
    servers: list[asyncio.Server] = []

    async def serve(
        host: str = "127.0.0.1",
        starttls: bool = False,
        auth: tuple[str, str] | None = None,
        replies: dict[str, Any] | None = None,
    ) -> RecordingSink:
        handler = RecordingHandler(replies=replies or {})
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_files[0], cert_files[1])

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and (data.login.decode(), data.password.decode()) == auth
            )
            # handled=False: aiosmtpd itself answers "535 5.7.8" (the default,
            # handled=True, leaves the client waiting for a reply that never comes).
            return AuthResult(success=ok, handled=False)

        def factory() -> SMTP:
            return SMTP(
                handler,
                hostname="sink.test",
                tls_context=context if starttls else None,
                authenticator=authenticator if auth else None,
                auth_required=auth is not None,
                auth_require_tls=True,
            )

        server = await asyncio.get_running_loop().create_server(factory, host, 0)
        servers.append(server)
        return RecordingSink(handler, server.sockets[0].getsockname()[1])

    yield serve
    for server in servers:
        server.close()
        await server.wait_closed()


@dataclass
class FaultServer:
    """A hand-written SMTP server that fails on purpose (see ``_speak``)."""

    port: int
    connections: int = 0
    data: bytearray = field(default_factory=bytearray)  # what it read after 354


StartFault = Callable[[str], Awaitable[FaultServer]]


async def _speak(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str, fault: FaultServer
) -> None:
    """Just enough SMTP to fail on purpose.

    ``silent`` never greets; ``reset`` reads a few bytes after 354 and drops the
    connection; ``hang`` reads the whole message but never answers the end of DATA.
    """
    if mode == "silent":
        await reader.read()  # until the client gives up
        return
    writer.write(b"220 fault.test ESMTP\r\n")
    while line := await reader.readline():
        verb = line[:4].upper()
        if verb == b"EHLO":
            writer.write(b"250-fault.test\r\n250 8BITMIME\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            break
        elif verb != b"DATA":
            writer.write(b"250 OK\r\n")
        elif mode == "reset":
            writer.write(b"354 go ahead\r\n")
            await writer.drain()
            fault.data += await reader.read(32)
            writer.transport.abort()
            return
        else:
            writer.write(b"354 go ahead\r\n")
            fault.data += await reader.readuntil(b"\r\n.\r\n")
            await reader.read()  # say nothing until the client gives up
            return
        await writer.drain()
    writer.close()


@pytest.fixture
async def start_fault() -> AsyncIterator[StartFault]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(mode: str) -> FaultServer:
        fault = FaultServer(0)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            fault.connections += 1
            writers.append(writer)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await _speak(reader, writer, mode, fault)

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        fault.port = server.sockets[0].getsockname()[1]
        return fault

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


@dataclass
class Rig:
    """The fixtures a fault needs, so one table can build them all."""

    make_sink: SinkFactory
    serve_sink: ServeSink
    start_fault: StartFault
    greeting_421: int
    closed_port: int
    ca_file: Path


@dataclass
class Faulty:
    upstream: dict[str, Any]
    accepted: list[Received] = field(default_factory=list)  # what it took (nothing, we hope)
    server: FaultServer | None = None


async def _greeting_421(rig: Rig) -> Faulty:
    return Faulty(smtp_upstream("faulty", rig.greeting_421))


async def _refused(rig: Rig) -> Faulty:
    return Faulty(smtp_upstream("faulty", rig.closed_port))


async def _rcpt_450(rig: Rig) -> Faulty:
    reply = "450 4.7.1 greylisted, try again later"
    sink = await rig.make_sink(replies={"rcpt": {A: reply, B: reply}})
    return Faulty(smtp_upstream("faulty", sink.port), sink.messages)


async def _rcpt_451(rig: Rig) -> Faulty:
    reply = "451 4.7.1 try later"
    sink = await rig.make_sink(replies={"rcpt": {A: reply, B: reply}})
    return Faulty(smtp_upstream("faulty", sink.port), sink.messages)


async def _data_452(rig: Rig) -> Faulty:
    sink = await rig.make_sink(replies={"data": "452 4.3.1 insufficient storage"})
    return Faulty(smtp_upstream("faulty", sink.port), sink.messages)


async def _reset_in_data(rig: Rig) -> Faulty:
    server = await rig.start_fault("reset")
    return Faulty(smtp_upstream("faulty", server.port), server=server)


async def _implicit_tls_on_plaintext(rig: Rig) -> Faulty:
    sink = await rig.make_sink()
    upstream = smtp_upstream("faulty", sink.port, tls="implicit", ca_file=str(rig.ca_file))
    return Faulty(upstream, sink.messages)


async def _starttls_not_offered(rig: Rig) -> Faulty:
    sink = await rig.make_sink()
    upstream = smtp_upstream("faulty", sink.port, tls="starttls", ca_file=str(rig.ca_file))
    return Faulty(upstream, sink.messages)


async def _certificate_name_mismatch(rig: Rig) -> Faulty:
    sink = await rig.serve_sink(host="127.0.0.2", starttls=True)
    upstream = smtp_upstream(
        "faulty", sink.port, host="127.0.0.2", tls="starttls", ca_file=str(rig.ca_file)
    )
    return Faulty(upstream, sink.handler.messages)


async def _auth_535(rig: Rig) -> Faulty:
    sink = await rig.serve_sink(starttls=True, auth=("user", "right"))
    upstream = smtp_upstream(
        "faulty", sink.port, host="localhost", tls="starttls", ca_file=str(rig.ca_file),
        username="user", password="wrong",
    )  # fmt: skip
    return Faulty(upstream, sink.handler.messages)


async def _no_greeting(rig: Rig) -> Faulty:
    server = await rig.start_fault("silent")
    return Faulty(smtp_upstream("faulty", server.port, timeout_seconds=1))


async def _no_reply_to_data(rig: Rig) -> Faulty:
    server = await rig.start_fault("hang")
    return Faulty(smtp_upstream("faulty", server.port, timeout_seconds=1), server=server)


# fault -> (build the faulty upstream, how its attempt's detail starts, the reply code recorded)
FAULTS: dict[str, tuple[Callable[[Rig], Awaitable[Faulty]], str, int | None]] = {
    "421 greeting": (_greeting_421, "connect: 421 4.3.2 sink.test busy, try later", 421),
    "connection refused": (_refused, "connect: connection refused", None),
    "450 at RCPT": (_rcpt_450, "rcpt: 450 4.7.1 greylisted, try again later", 450),
    "451 at RCPT": (_rcpt_451, "rcpt: 451 4.7.1 try later", 451),
    "452 at DATA": (_data_452, "data: 452 4.3.1 insufficient storage", 452),
    "reset in DATA": (_reset_in_data, "data: ", None),
    "implicit TLS on plaintext": (_implicit_tls_on_plaintext, "tls: ", None),
    "STARTTLS not offered": (_starttls_not_offered, "tls: SMTP STARTTLS extension not", None),
    "certificate name mismatch": (
        _certificate_name_mismatch,
        "tls: certificate verify failed: IP address mismatch",
        None,
    ),
    "535 at AUTH": (_auth_535, "auth: 535 5.7.8 Authentication credentials invalid", 535),
    "no greeting in time": (_no_greeting, "connect: timed out after 1s", None),
    "no DATA reply in time": (_no_reply_to_data, "data: timed out after 1s", None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_moves_the_whole_message_to_the_next_upstream(
    tmp_path: Path,
    make_sink: SinkFactory,
    serve_sink: ServeSink,
    start_fault: StartFault,
    greeting_421: int,
    closed_port: int,
    cert_files: tuple[Path, Path, Path],
    start_relay: StartRelay,
    fault: str,
) -> None:
    build, detail_prefix, code = FAULTS[fault]
    rig = Rig(make_sink, serve_sink, start_fault, greeting_421, closed_port, cert_files[2])
    faulty = await build(rig)
    backup = await make_sink()
    upstreams = [faulty.upstream, smtp_upstream("backup", backup.port)]
    relay = await start_relay(plaintext_listener(base_config(tmp_path, upstreams)))

    message_id = await submit(relay, [A, B], message_to(A, B))

    detail = await delivery_pass(relay, message_id, FINAL)
    [received] = backup.messages  # recorded before the upstream's 250, so before the pass ended
    assert (received.mail_from, received.rcpt_tos) == ("sales@example.com", [A, B])
    assert body_of(received.content) == BODY
    assert faulty.accepted == []
    if faulty.server is not None:  # the fault came in the middle of DATA, not before
        assert faulty.server.connections == 1 and faulty.server.data
    assert detail.status is MessageStatus.SENT
    assert states_of(detail) == {
        A: (RecipientStatus.SENT, "backup", 250),
        B: (RecipientStatus.SENT, "backup", 250),
    }
    first, second = detail.attempts
    assert (first.upstream, first.outcome, first.recipients) == ("faulty", "retry", (A, B))
    assert first.detail.startswith(detail_prefix), first.detail
    assert (first.reply.code if first.reply else None) == code
    assert (second.upstream, second.outcome, second.recipients, second.detail) == (
        "backup", "sent", (A, B), ACCEPTED,
    )  # fmt: skip
    assert (detail.attempt_count, detail.last_error) == (1, None)


async def test_451_for_one_recipient_moves_only_that_one_to_the_next_upstream(
    tmp_path: Path, serve_sink: ServeSink, start_relay: StartRelay
) -> None:
    first = await serve_sink(replies={"rcpt": {B: "451 4.7.1 try later"}})
    backup = await serve_sink()
    upstreams = [smtp_upstream("first", first.port), smtp_upstream("backup", backup.port)]
    relay = await start_relay(plaintext_listener(base_config(tmp_path, upstreams)))

    message_id = await submit(relay, [A, B], message_to(A, B))

    detail = await delivery_pass(relay, message_id, FINAL)
    assert [m.rcpt_tos for m in first.handler.messages] == [[A]]
    assert [m.rcpt_tos for m in backup.handler.messages] == [[B]]
    assert backup.handler.rcpts == [B]  # A, already accepted by "first", is never offered again
    assert detail.status is MessageStatus.SENT
    assert states_of(detail) == {
        A: (RecipientStatus.SENT, "first", 250),
        B: (RecipientStatus.SENT, "backup", 250),
    }
    assert attempts_of(detail) == [
        ("first", "sent", (A,), ACCEPTED),
        ("first", "retry", (B,), "rcpt: 451 4.7.1 try later"),
        ("backup", "sent", (B,), ACCEPTED),
    ]


@pytest.mark.parametrize("reply", ["450 4.7.1 greylisted, try again later", "451 4.7.1 try later"])
async def test_4xx_at_rcpt_with_no_other_upstream_defers_then_sends(
    tmp_path: Path, serve_sink: ServeSink, start_relay: StartRelay, reply: str
) -> None:
    sink = await serve_sink(replies={"rcpt": {A: reply}})
    clock = FakeClock()
    config = base_config(tmp_path, [smtp_upstream("only", sink.port)])
    relay = await start_relay(plaintext_listener(config), clock)

    message_id = await submit(relay, [A], message_to(A))

    detail = await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
    assert states_of(detail) == {A: (RecipientStatus.PENDING, None, None)}
    assert attempts_of(detail) == [("only", "retry", (A,), f"rcpt: {reply}")]
    assert (detail.attempt_count, detail.last_error) == (1, f"rcpt: {reply}")
    assert sink.handler.messages == []

    sink.handler.replies.clear()
    relay.advance(clock, 2)  # past the first backoff (at most retry_first_seconds = 1)

    detail = await delivery_pass(relay, message_id, FINAL)
    assert [m.rcpt_tos for m in sink.handler.messages] == [[A]]
    assert detail.status is MessageStatus.SENT
    assert states_of(detail) == {A: (RecipientStatus.SENT, "only", 250)}
    assert attempts_of(detail)[1:] == [("only", "sent", (A,), ACCEPTED)]
    assert (detail.attempt_count, detail.last_error) == (2, None)
    assert sink.handler.rcpts == [A, A]


async def test_full_mailbox_defers_without_trying_the_next_upstream(
    tmp_path: Path, serve_sink: ServeSink, start_relay: StartRelay
) -> None:
    """A 4.2.x reply is about the mailbox: another upstream would reach the same one."""
    first = await serve_sink(replies={"rcpt": {A: "452 4.2.2 mailbox full"}})
    backup = await serve_sink()
    upstreams = [smtp_upstream("first", first.port), smtp_upstream("backup", backup.port)]
    relay = await start_relay(plaintext_listener(base_config(tmp_path, upstreams)), FakeClock())

    message_id = await submit(relay, [A], message_to(A))

    detail = await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
    assert states_of(detail) == {A: (RecipientStatus.PENDING, None, None)}
    assert attempts_of(detail) == [("first", "defer", (A,), "rcpt: 452 4.2.2 mailbox full")]
    assert detail.last_error == "rcpt: 452 4.2.2 mailbox full"
    assert backup.handler.ehlo_count == 0


async def test_550_for_one_of_three_fails_it_notifies_the_sender_and_suppresses_it(
    tmp_path: Path, serve_sink: ServeSink, start_relay: StartRelay
) -> None:
    gone = "gone@example.org"
    sink = await serve_sink(replies={"rcpt": {gone: "550 5.1.1 No such user"}})
    relay = await start_relay(
        plaintext_listener(base_config(tmp_path, [smtp_upstream("sink", sink.port)]))
    )
    records = Records(relay)

    message_id = await submit(relay, [A, gone, C], message_to(A, gone, C))

    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.PARTIAL
    assert states_of(detail) == {
        A: (RecipientStatus.SENT, "sink", 250),
        gone: (RecipientStatus.FAILED, "sink", 550),
        C: (RecipientStatus.SENT, "sink", 250),
    }
    assert detail.recipients[1].reply_text == "5.1.1 No such user"
    assert sorted(attempts_of(detail)) == [
        ("sink", "failed", (gone,), "rcpt: 550 5.1.1 No such user"),
        ("sink", "sent", (A, C), ACCEPTED),
    ]
    [record] = records.of(message_id)
    assert [(s.address, s.site_id) for s in record.suppress] == [(gone, "shop")]
    [notice] = record.notices
    assert (notice.envelope_sender, notice.recipients) == ("", (SENDER,))

    # The DSN takes the same route, with a null reverse path, to the original sender.
    received, bounce = await sink.handler.wait_for(2)
    assert received.rcpt_tos == [A, C]
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", [SENDER])  # aiosmtpd's null path
    assert dsn_recipients(bounce.content) == [(f"rfc822; {gone}", "failed", "5.1.1")]
    notice_detail = await delivery_pass(relay, notice.id, FINAL)
    assert (notice_detail.status, notice_detail.envelope_sender) == (MessageStatus.SENT, "")

    # The hard bounce is now on the site's suppression list: RCPT refuses the address...
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused, match="suppressed for this site"):
        await submit(relay, [gone], message_to(gone))
    # ...and mail a process accepted while its list of sites with entries was older than
    # the bounce (another node, within a second) fails with no attempt.
    suppressions = relay.app.suppressions
    suppressions._has_entries["shop"] = (False, time.monotonic())
    second_id = await submit(relay, [gone], message_to(gone))

    second = await delivery_pass(relay, second_id, FINAL)
    assert second.status is MessageStatus.FAILED
    assert states_of(second) == {gone: (RecipientStatus.FAILED, None, 550)}
    assert "suppression list" in (second.recipients[0].reply_text or "")
    assert (second.attempts, second.attempt_count) == ((), 0)
    [second_record] = records.of(second_id)
    [second_notice] = second_record.notices
    *_, second_bounce = await sink.handler.wait_for(3)  # the sender still hears of it
    assert dsn_recipients(second_bounce.content) == [(f"rfc822; {gone}", "failed", "5.1.1")]
    assert sink.handler.rcpts == [A, gone, C, SENDER, SENDER]  # gone@ was never asked again
    assert (await delivery_pass(relay, second_notice.id, FINAL)).status is MessageStatus.SENT


async def test_552_at_end_of_data_fails_every_recipient_accepted_at_rcpt(
    tmp_path: Path, make_sink: SinkFactory, start_relay: StartRelay
) -> None:
    small = await make_sink(
        replies={
            "rcpt": {B: "451 4.7.1 try later"},
            "data": "552 5.3.4 Message too big for this mailbox",
        }
    )
    backup = await make_sink()
    upstreams = [smtp_upstream("small", small.port), smtp_upstream("backup", backup.port)]
    relay = await start_relay(plaintext_listener(base_config(tmp_path, upstreams)))
    records = Records(relay)

    message_id = await submit(relay, [A, B, C], message_to(A, B, C))

    detail = await delivery_pass(relay, message_id, FINAL)
    assert detail.status is MessageStatus.PARTIAL
    assert states_of(detail) == {
        A: (RecipientStatus.FAILED, "small", 552),
        B: (RecipientStatus.SENT, "backup", 250),
        C: (RecipientStatus.FAILED, "small", 552),
    }
    assert attempts_of(detail) == [
        ("small", "failed", (A, C), "data: 552 5.3.4 Message too big for this mailbox"),
        ("small", "retry", (B,), "rcpt: 451 4.7.1 try later"),
        ("backup", "sent", (B,), ACCEPTED),
    ]
    assert [m.rcpt_tos for m in backup.messages] == [[B]]
    assert small.messages == []
    [record] = records.of(message_id)
    assert record.suppress == ()  # 5.3.4 is about the message, not the address
    [notice] = record.notices
    assert dsn_recipients(notice.content) == [
        (f"rfc822; {A}", "failed", "5.3.4"),
        (f"rfc822; {C}", "failed", "5.3.4"),
    ]

    # The DSN meets the same 552 and fails; nobody gets a DSN about a DSN.
    notice_detail = await delivery_pass(relay, notice.id, FINAL)
    assert notice_detail.status is MessageStatus.FAILED
    assert [r.notices for r in records.of(notice.id)] == [()]


async def test_certificate_name_mismatch_is_accepted_when_verification_is_off(
    tmp_path: Path,
    serve_sink: ServeSink,
    make_sink: SinkFactory,
    cert_files: tuple[Path, Path, Path],
    start_relay: StartRelay,
) -> None:
    sink = await serve_sink(host="127.0.0.2", starttls=True)
    backup = await make_sink()
    mismatch = smtp_upstream(
        "mismatch", sink.port, host="127.0.0.2", tls="starttls", ca_file=str(cert_files[2]),
        verify_tls=False,
    )  # fmt: skip
    upstreams = [mismatch, smtp_upstream("backup", backup.port)]
    relay = await start_relay(plaintext_listener(base_config(tmp_path, upstreams)))

    message_id = await submit(relay, [A], message_to(A))

    detail = await delivery_pass(relay, message_id, FINAL)
    assert [m.rcpt_tos for m in sink.handler.messages] == [[A]]
    assert attempts_of(detail) == [("mismatch", "sent", (A,), ACCEPTED)]
    assert backup.messages == []


async def test_auth_failures_open_the_circuit_and_later_messages_skip_the_upstream(
    tmp_path: Path,
    serve_sink: ServeSink,
    make_sink: SinkFactory,
    cert_files: tuple[Path, Path, Path],
    start_relay: StartRelay,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.delivery_controller")
    refusing = await serve_sink(starttls=True, auth=("user", "right"))
    backup = await make_sink()
    wrong = smtp_upstream(
        "wrong", refusing.port, host="localhost", tls="starttls", ca_file=str(cert_files[2]),
        username="user", password="wrong",
    )  # fmt: skip
    config = base_config(
        tmp_path,
        [wrong, smtp_upstream("backup", backup.port)],
        health={"failure_threshold": 2, "cooldown_seconds": 600, "check_interval_seconds": 0},
    )
    relay = await start_relay(plaintext_listener(config))
    circuits = relay.app.health.circuits
    refused = "auth: 535 5.7.8 Authentication credentials invalid"

    for count in (1, 2):
        message_id = await submit(relay, [A], message_to(A))
        detail = await delivery_pass(relay, message_id, FINAL)
        assert attempts_of(detail) == [
            ("wrong", "retry", (A,), refused),
            ("backup", "sent", (A,), ACCEPTED),
        ]
        assert circuits["wrong"].failures == count
    assert circuits["wrong"].state is CircuitState.OPEN
    assert circuits["wrong"].last_error == refused
    connections = refusing.handler.ehlo_count

    for _ in range(2):
        message_id = await submit(relay, [A], message_to(A))
        detail = await delivery_pass(relay, message_id, FINAL)
        assert attempts_of(detail) == [("backup", "sent", (A,), ACCEPTED)]
    assert refusing.handler.ehlo_count == connections  # not even a connection
    assert len(backup.messages) == 4
    skipped = f"skipped wrong: circuit open after 2 failures (last: {refused})"
    assert sum(skipped in r.getMessage() for r in caplog.records) == 2


async def advance_to_next_pass(
    relay: RunningRelay, clock: FakeClock, seconds: float, message_id: str
) -> MessageDetail:
    """Move the fake clock on and wait for the delivery pass that this makes due."""
    done = asyncio.Event()

    def on_recorded(event: object) -> None:
        if isinstance(event, DeliveryRecord) and event.message_id == message_id:
            done.set()

    relay.app.events.subscribe(on_recorded)
    try:
        relay.advance(clock, seconds)
        await asyncio.wait_for(done.wait(), timeout=10)
    finally:
        relay.app.events.unsubscribe(on_recorded)
    return await message_detail(relay, message_id)


async def test_open_circuit_on_the_only_upstream_is_the_reason_a_message_waits(
    tmp_path: Path,
    serve_sink: ServeSink,
    cert_files: tuple[Path, Path, Path],
    start_relay: StartRelay,
) -> None:
    refusing = await serve_sink(starttls=True, auth=("user", "right"))
    wrong = smtp_upstream(
        "wrong", refusing.port, host="localhost", tls="starttls", ca_file=str(cert_files[2]),
        username="user", password="wrong",
    )  # fmt: skip
    config = base_config(
        tmp_path,
        [wrong],
        health={"failure_threshold": 2, "cooldown_seconds": 600, "check_interval_seconds": 0},
    )
    clock = FakeClock()
    relay = await start_relay(plaintext_listener(config), clock)
    refused = "auth: 535 5.7.8 Authentication credentials invalid"

    message_id = await submit(relay, [A], message_to(A))

    detail = await delivery_pass(relay, message_id, {MessageStatus.DEFERRED})
    assert detail.last_error == refused
    detail = await advance_to_next_pass(relay, clock, 2, message_id)
    assert (detail.attempt_count, detail.last_error) == (2, refused)
    assert relay.app.health.circuits["wrong"].state is CircuitState.OPEN
    connections = refusing.handler.ehlo_count

    # Nothing to try: the pass records the reason, does not count, and waits for the cooldown.
    detail = await advance_to_next_pass(relay, clock, 2, message_id)
    assert detail.status is MessageStatus.DEFERRED
    assert states_of(detail) == {A: (RecipientStatus.PENDING, None, None)}
    assert detail.last_error == (
        f"no upstream available (wrong: circuit open after 2 failures (last: {refused}))"
    )
    assert (len(detail.attempts), detail.attempt_count) == (2, 2)
    assert refusing.handler.ehlo_count == connections

    # After the cooldown one probe goes out; it fails, so the circuit opens again.
    detail = await advance_to_next_pass(relay, clock, 600, message_id)
    assert attempts_of(detail)[2:] == [("wrong", "retry", (A,), refused)]
    assert refusing.handler.ehlo_count > connections
    assert relay.app.health.circuits["wrong"].state is CircuitState.OPEN
    assert refusing.handler.messages == []
