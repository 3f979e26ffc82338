"""`relay serve` with `workers: 2` as real processes on one SQLite file.

Both workers take connections and every message lands once; SIGHUP reaches
both; SIGTERM in the middle of sending stops both with status 0 and loses
nothing answered 250; a worker killed with SIGKILL is started again while mail
keeps flowing; /metrics on the one admin port counts both workers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SITE_PASSWORD, Received, write_config
from tests.test_process_functional import RelayProcess, plaintext_config

ADMIN = re.compile(r"relay ready: SMTP \[\d+.*\], admin [^ ]+:(\d+), 2 workers")
QUEUED = re.compile(r" (worker-\d) relay\.ingress_controller: message \S+ site shop: queued")
WORKER_READY = re.compile(r"worker (\d) of 2 ready \(pid (\d+)\)")
BODY = "From: <a@shop.example.com>\r\nTo: b@example.org\r\nSubject: {}\r\n\r\nhi\r\n"


@pytest.fixture
def relays() -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(config_path: Path, *args: str) -> RelayProcess:
        started.append(RelayProcess(config_path, *args))
        return started[-1]

    yield start
    for relay in started:  # a failed test leaves none behind (the workers follow)
        relay.stop(signal.SIGKILL)


def two_workers(tmp_path: Path, upstream_port: int) -> Path:
    config = plaintext_config(tmp_path, upstream_port)
    config["server"]["workers"] = 2
    return write_config(tmp_path, config)


async def send_on_one_connection(
    port: int, subjects: list[str], username: str = "shop"
) -> list[str]:
    """Send each subject as a message on one connection; the subjects answered 250."""
    answered = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as client:
        await client.login(username, SITE_PASSWORD)
        for subject in subjects:
            await client.sendmail(
                "a@shop.example.com", ["b@example.org"], BODY.format(subject).encode()
            )
            answered.append(subject)
    return answered


async def send_all(
    port: int, subjects: list[str], connections: int, username: str = "shop"
) -> list[str]:
    shares = [subjects[i::connections] for i in range(connections)]
    done = await asyncio.gather(*(send_on_one_connection(port, s, username) for s in shares))
    return [subject for answered in done for subject in answered]


def subject_of(message: Received) -> str:
    return message.content.split(b"Subject: ")[1].split(b"\r\n")[0].decode()


async def each_arrives(sink: Any, subjects: list[str], seconds: float = 60) -> None:
    """Every subject reaches the sink, at least once: until the lease owner is one process,
    not the host name, a starting worker also frees the other's leases, and a message the
    other is delivering may go twice."""
    async with asyncio.timeout(seconds):
        while not set(subjects) <= {subject_of(m) for m in sink.messages}:
            sink.handler.arrived.clear()
            await sink.handler.arrived.wait()


def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        threading.Event().wait(0.05)


def admin_port(relay: RelayProcess) -> int:
    found = [int(m.group(1)) for line in relay.lines if (m := ADMIN.search(line))]
    assert found, "".join(relay.lines)
    return found[0]


def worker_pids(relay: RelayProcess) -> dict[str, int]:
    """The newest pid each worker said it was ready with."""
    return {m.group(1): int(m.group(2)) for line in relay.lines if (m := WORKER_READY.search(line))}


def queued_by(lines: list[str]) -> Counter[str]:
    return Counter(m.group(1) for line in lines if (m := QUEUED.search(line)))


async def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) on /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_both_workers_take_connections_and_each_message_lands_once(
    tmp_path: Path, make_sink, relays
) -> None:
    sink = await make_sink()
    relay = relays(two_workers(tmp_path, sink.port))
    port = await asyncio.to_thread(relay.wait_ready)
    subjects = [f"message {i}" for i in range(200)]

    assert sorted(await send_all(port, subjects, connections=20)) == sorted(subjects)
    await sink.handler.wait_for(200, seconds=60)

    admin = admin_port(relay)
    for _ in range(100):  # the workers count a delivery just after the sink's 250
        if await metric(admin, "relay_deliveries_total", outcome="sent") >= 200:
            break
        await asyncio.sleep(0.05)
    assert sorted(subject_of(m) for m in sink.messages) == sorted(subjects)  # each once
    by_worker = queued_by(relay.lines)
    assert set(by_worker) == {"worker-1", "worker-2"}, by_worker
    assert sum(by_worker.values()) == 200
    assert await metric(admin, "relay_messages_accepted_total") == 200
    assert await metric(admin, "relay_deliveries_total", outcome="sent") == 200
    assert not relay.log_has("database is locked")  # the writers wait for each other
    assert await asyncio.to_thread(relay.stop) == 0


async def test_sighup_reaches_every_worker(tmp_path: Path, closed_port: int, relays) -> None:
    config = plaintext_config(tmp_path, closed_port)
    config["server"]["workers"] = 2
    path = write_config(tmp_path, config)
    relay = relays(path)
    port = await asyncio.to_thread(relay.wait_ready)
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await send_on_one_connection(port, ["before"], username="newsite")

    shop = config["sites"][0]
    shop["credentials"].append(
        {"username": "newsite", "password_hash": shop["credentials"][0]["password_hash"]}
    )
    path.write_text(yaml.safe_dump(config))
    relay.process.send_signal(signal.SIGHUP)
    reloaded = re.compile(r" (worker-\d) relay\.app: reloaded ")
    await asyncio.to_thread(
        wait_until,
        lambda: (
            {m.group(1) for line in relay.lines if (m := reloaded.search(line))}
            == {"worker-1", "worker-2"}
        ),
    )
    since = len(relay.lines)

    subjects = [f"after {i}" for i in range(20)]
    assert len(await send_all(port, subjects, connections=20, username="newsite")) == 20
    assert set(queued_by(relay.lines[since:])) == {"worker-1", "worker-2"}
    assert await asyncio.to_thread(relay.stop) == 0


async def test_sigterm_while_sending_exits_0_and_loses_nothing_answered_250(
    tmp_path: Path, make_sink, closed_port: int, relays
) -> None:
    path = two_workers(tmp_path, closed_port)  # the upstream is down: everything stays queued
    relay = relays(path)
    port = await asyncio.to_thread(relay.wait_ready)
    answered: list[str] = []
    enough = asyncio.Event()

    async def sender(number: int) -> None:
        for connection in range(5):  # bounded: at most 5 x 20 messages per sender
            subjects = [f"s{number} c{connection} m{i}" for i in range(20)]
            try:
                async with aiosmtplib.SMTP(
                    hostname="127.0.0.1", port=port, start_tls=False, timeout=30
                ) as client:
                    await client.login("shop", SITE_PASSWORD)
                    for subject in subjects:
                        body = BODY.format(subject).encode()
                        await client.sendmail("a@shop.example.com", ["b@example.org"], body)
                        answered.append(subject)
                        if len(answered) >= 60:
                            enough.set()
            except (aiosmtplib.SMTPException, OSError):
                return  # the relay is stopping: refused, 421, or closed

    senders = [asyncio.create_task(sender(n)) for n in range(8)]
    await asyncio.wait_for(enough.wait(), 60)
    code = await asyncio.to_thread(relay.stop, signal.SIGTERM)
    await asyncio.gather(*senders)
    assert code == 0, "".join(relay.lines[-30:])
    assert relay.log_has("supervisor relay.supervisor: stopped")
    assert {"worker-1", "worker-2"} <= set(queued_by(relay.lines))

    sink = await make_sink(port=closed_port)
    again = relays(path)
    await asyncio.to_thread(again.wait_ready)
    await each_arrives(sink, answered)
    assert await asyncio.to_thread(again.stop) == 0


async def test_a_worker_killed_with_sigkill_is_started_again(
    tmp_path: Path, make_sink, relays
) -> None:
    sink = await make_sink()
    config = plaintext_config(tmp_path, sink.port)  # workers: 1 in the file, 2 on the command line
    relay = relays(write_config(tmp_path, config), "--workers", "2")
    port = await asyncio.to_thread(relay.wait_ready)
    first = [f"first {i}" for i in range(10)]
    await send_all(port, first, connections=10)
    await sink.handler.wait_for(10, seconds=30)
    killed = worker_pids(relay)["1"]

    os.kill(killed, signal.SIGKILL)
    # At once: connections the kernel gives the dead worker's socket wait for its replacement.
    then = [f"then {i}" for i in range(40)]
    assert sorted(await send_all(port, then, connections=20)) == sorted(then)
    await asyncio.to_thread(wait_until, lambda: worker_pids(relay)["1"] != killed)
    assert relay.log_has(f"worker 1 (pid {killed}) was killed by SIGKILL; starting it again")

    await each_arrives(sink, first + then)
    assert await metric(admin_port(relay), "relay_messages_accepted_total") == 50  # the dead too
    assert await asyncio.to_thread(relay.stop) == 0


def test_a_worker_that_keeps_dying_at_once_stops_the_relay(
    tmp_path: Path, closed_port: int, relays: Any
) -> None:
    """Started again after 1, 2, 4 and 8 s; the fifth quick death in a row ends it (~20 s)."""
    relay = relays(two_workers(tmp_path, closed_port))
    relay.wait_ready()
    killed: set[int] = set()
    deadline = time.monotonic() + 90
    while relay.process.poll() is None and time.monotonic() < deadline:
        pid = worker_pids(relay)["1"]
        if pid not in killed:  # each new worker 1 as soon as it says it is ready
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        threading.Event().wait(0.05)
    assert relay.stop() == 1
    assert len(killed) == 5
    assert relay.log_has("starting it again in 8 s")
    assert relay.log_has(
        "worker 1 was killed by SIGKILL within 10 s of its start 5 times in a row: giving up"
    )
    assert relay.log_has("worker-2 relay.app: stopped")


def test_a_port_another_relay_holds_is_one_clear_line(tmp_path: Path, closed_port: int) -> None:
    """SO_REUSEPORT would share the port with a relay already there: the supervisor refuses."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        config = plaintext_config(tmp_path, closed_port)
        config["listeners"][0]["port"] = other.getsockname()[1]
        config["server"]["workers"] = 2
        result = subprocess.run(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(write_config(tmp_path, config))],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert "relay: listener submission: cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_1_on_the_command_line_wins(tmp_path: Path, closed_port: int, relays: Any) -> None:
    relay = relays(two_workers(tmp_path, closed_port), "--workers", "1")
    relay.wait_ready()
    assert not relay.log_has("supervisor")
    assert relay.stop() == 0
