"""Several `relay serve` processes on one store: leases, claims, a node killed mid-delivery.

Real processes, real SMTP on loopback, the real PostgreSQL at 127.0.0.1:5432
in a throwaway database (skipped with the reason when there is none), a real
SQLite file. Every message carries a unique Subject and the sink counts them.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import sqlalchemy as sa

from relay.store import create_engine, migrate
from relay.tables import messages
from tests.conftest import SITE_PASSWORD, Sink, base_config, smtp_upstream, write_config
from tests.postgres import throwaway_database
from tests.test_process_functional import RelayProcess

REPO = Path(__file__).resolve().parent.parent
NODE = re.compile(r"\bnode (\S+:\d+:[0-9a-f]{8})$")
LEASE_SECONDS = 30  # the shortest delivery.lease_seconds the config allows


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A throwaway database, migrated (nodes that start together do not race to create it)."""
    async with throwaway_database("relay_nodes") as url:
        engine = create_engine(url)
        await migrate(engine)
        await engine.dispose()
        yield url


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Start `relay serve` processes of this tree (they run in their config's directory)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    started: list[RelayProcess] = []

    def start(config_path: Path) -> RelayProcess:
        relay = RelayProcess(config_path)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop(signal.SIGKILL)


@pytest.fixture
async def stalled_port() -> AsyncIterator[int]:
    """An upstream that takes the connection and never greets: a delivery to it hangs."""
    held: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


def node_config(directory: Path, store_url: str, upstream_port: int, **delivery: Any) -> Path:
    directory.mkdir(exist_ok=True)
    config = base_config(directory, [smtp_upstream("sink", upstream_port)])
    config["store"] = {"url": store_url}
    config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
    config["delivery"].update(delivery)
    return write_config(directory, config)


def owner_of(node: RelayProcess) -> str:
    found = [m.group(1) for line in node.lines if (m := NODE.search(line.rstrip()))]
    assert len(found) == 1, "".join(node.lines)
    return found[0]


async def send(port: int, subjects: list[str]) -> None:
    """One session, its messages one after another; each must be answered 250."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60)
    async with client:
        await client.login("shop", SITE_PASSWORD)
        for subject in subjects:
            body = f"From: <a@shop.example.com>\r\nTo: b@example.org\r\nSubject: {subject}\r\n"
            body += "\r\nhi\r\n"
            # Anything but 250 raises; refused recipients come back in the first value.
            refused, _ = await client.sendmail("a@shop.example.com", ["b@example.org"], body)
            assert not refused, refused


async def send_all(port: int, subjects: list[str], sessions: int) -> None:
    await asyncio.gather(*(send(port, subjects[i::sessions]) for i in range(sessions)))


def subjects_at(sink: Sink) -> Counter[str]:
    return Counter(
        m.content.split(b"\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in sink.messages
    )


async def leases(store_url: str) -> dict[str, tuple[str | None, float | None]]:
    engine = create_engine(store_url)
    try:
        async with engine.connect() as c:
            query = sa.select(messages.c.subject, messages.c.lease_owner, messages.c.leased_until)
            return {
                row.subject: (row.lease_owner, row.leased_until) for row in await c.execute(query)
            }
    finally:
        await engine.dispose()


async def test_two_nodes_deliver_every_message_exactly_once(
    tmp_path: Path, postgres_url: str, make_sink, nodes
) -> None:
    sink = await make_sink()
    # Few delivery slots: most mail goes through the queue, so both nodes claim all along.
    a = nodes(node_config(tmp_path / "a", postgres_url, sink.port, concurrency=8))
    b = nodes(node_config(tmp_path / "b", postgres_url, sink.port, concurrency=8))
    ports = await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
    assert owner_of(a) != owner_of(b)  # one config's host name, two owners

    subjects = [f"once {i:04}" for i in range(2000)]
    async with asyncio.timeout(180):
        await asyncio.gather(
            send_all(ports[0], subjects[0::2], sessions=20),
            send_all(ports[1], subjects[1::2], sessions=20),
        )
    await sink.handler.wait_for(len(subjects), 180)
    await asyncio.sleep(2)  # a message delivered twice would arrive about now
    got = subjects_at(sink)
    assert sorted(got) == subjects
    assert {s: n for s, n in got.items() if n != 1} == {}
    assert await asyncio.to_thread(a.stop) == 0
    assert await asyncio.to_thread(b.stop) == 0


async def test_a_killed_nodes_leases_expire_and_the_other_delivers(
    tmp_path: Path, postgres_url: str, make_sink, stalled_port: int, nodes
) -> None:
    sink = await make_sink()
    a = nodes(node_config(tmp_path / "a", postgres_url, stalled_port, lease_seconds=LEASE_SECONDS))
    port_a = await asyncio.to_thread(a.wait_ready)
    subjects = [f"stuck {i:02}" for i in range(40)]
    await send_all(port_a, subjects, sessions=4)  # 250 each; a's deliveries hang upstream

    # Another node on this machine starts while a is alive: a's leases are not its to free.
    b = nodes(node_config(tmp_path / "b", postgres_url, sink.port, lease_seconds=LEASE_SECONDS))
    await asyncio.to_thread(b.wait_ready)
    held = await leases(postgres_url)
    assert {owner for owner, _ in held.values()} == {owner_of(a)}
    assert not b.log_has("released")

    a.process.kill()  # mid-delivery, holding every lease
    await asyncio.to_thread(a.process.wait, 10)
    expiry = min(until for _, until in held.values() if until is not None)
    await sink.handler.wait_for(len(subjects), LEASE_SECONDS + 30)
    assert time.time() >= expiry  # b waited for the leases, it did not take them
    await asyncio.sleep(1)
    assert subjects_at(sink) == Counter(subjects)
    assert await asyncio.to_thread(b.stop) == 0


async def test_a_restarted_process_frees_its_dead_incarnations_leases_at_once(
    tmp_path: Path, make_sink, stalled_port: int, nodes
) -> None:
    """SQLite, one machine: the pid is gone, so nobody waits for delivery.lease_seconds (600)."""
    store_url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'relay.db'}"
    config_path = node_config(tmp_path, store_url, stalled_port)
    first = nodes(config_path)
    port = await asyncio.to_thread(first.wait_ready)
    subjects = [f"restart {i:02}" for i in range(20)]
    await send_all(port, subjects, sessions=4)
    dead = owner_of(first)
    assert {owner for owner, _ in (await leases(store_url)).values()} == {dead}
    first.process.kill()
    await asyncio.to_thread(first.process.wait, 10)

    sink = await make_sink()
    config_path = node_config(tmp_path, store_url, sink.port)  # the upstream is back
    second = nodes(config_path)
    await asyncio.to_thread(second.wait_ready)
    await sink.handler.wait_for(len(subjects), 30)  # well before 600 s
    assert subjects_at(sink) == Counter(subjects)
    assert second.log_has(f"released {len(subjects)} leases of {dead} (that process is gone)")
    assert await asyncio.to_thread(second.stop) == 0
