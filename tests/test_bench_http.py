"""The benchmark's HTTP workloads, tiny: every message sent reaches the sink.

Runs what ``python -m bench`` runs for "HTTP send API" and "form posts" (a
real `relay serve` with its public listener, the sink process, the HTTP load
generator in its own process), with 20 messages from 5 clients, against the
relay only (no Postfix, no root).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.relay_instance import RelayInstance
from bench.run import Workload, measure
from bench.sink import Sink, free_port

MESSAGES = 20


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink(free_port())
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.mark.parametrize("kind", ["send", "form"])
def test_every_http_message_reaches_the_sink(tmp_path: Path, sink: Sink, kind: str) -> None:
    relay = RelayInstance(tmp_path / "relay", free_port(), sink.port, http=True)
    relay.start()
    try:
        m = measure(relay, sink, Workload(f"2 KB, {kind}", 2048, 5, MESSAGES, http=kind))
    finally:
        relay.stop()
    assert m.problems == []
    assert m.delivered == MESSAGES
    assert m.rate > 0 and 0 < m.p50 <= m.p99
