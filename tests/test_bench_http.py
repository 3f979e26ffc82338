"""The benchmark's relay-only workloads, tiny: every message sent reaches the sink.

Runs what ``python -m bench`` runs for "HTTP send API", "form posts" and
"webhooks" (a real `relay serve`, the sink and webhook receiver processes, the
load generator in its own process), with 20 messages from 5 clients, against
the relay only (no Postfix, no root).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.relay_instance import RelayInstance
from bench.run import EVENTS_PER_MESSAGE, Workload, measure
from bench.sink import Sink, free_port
from bench.webhook_sink import WebhookSink

MESSAGES = 20


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink(free_port())
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def hooks() -> Iterator[WebhookSink]:
    hooks = WebhookSink(free_port())
    hooks.start()
    try:
        yield hooks
    finally:
        hooks.stop()


@pytest.mark.parametrize("kind", ["send", "form"])
def test_every_http_message_reaches_the_sink(
    tmp_path: Path, sink: Sink, hooks: WebhookSink, kind: str
) -> None:
    relay = RelayInstance(tmp_path / "relay", free_port(), sink.port, http=True)
    relay.start()
    try:
        m = measure(relay, sink, Workload(f"2 KB, {kind}", 2048, 5, MESSAGES, http=kind), hooks)
    finally:
        relay.stop()
    assert m.problems == []
    assert m.delivered == MESSAGES
    assert m.rate > 0 and 0 < m.p50 <= m.p99


def test_every_event_of_every_message_reaches_the_webhook(
    tmp_path: Path, sink: Sink, hooks: WebhookSink
) -> None:
    relay = RelayInstance(tmp_path / "relay", free_port(), sink.port, webhook_url=hooks.url)
    relay.start()
    try:
        m = measure(
            relay, sink, Workload("2 KB, webhooks", 2048, 5, MESSAGES, webhooks=True), hooks
        )
    finally:
        relay.stop()
    assert m.problems == []
    assert m.delivered == MESSAGES and hooks.count == EVENTS_PER_MESSAGE * MESSAGES
