"""`relay serve` as a real process: durability across SIGKILL, SIGTERM, SIGHUP, startup errors."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import SITE_PASSWORD, base_config, smtp_upstream, write_config

READY = re.compile(r"relay ready: SMTP \[(\d+)")


class RelayProcess:
    """`relay serve` in a subprocess; stderr is drained by a thread and searched for readiness."""

    def __init__(self, config_path: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(config_path), *args],
            cwd=config_path.parent,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if match := READY.search(line):
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # exited

    def wait_ready(self) -> int:
        assert self._ready.wait(30), "relay did not start"
        assert self.port is not None, "".join(self.lines)
        return self.port

    def log_has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(30)
        self._reader.join(10)
        assert self.process.stderr is not None
        self.process.stderr.close()
        return code


def plaintext_config(tmp_path: Path, upstream_port: int) -> dict[str, Any]:
    config = base_config(tmp_path, [smtp_upstream("sink", upstream_port)])
    config["listeners"][0].update(tls="none", allow_plaintext_auth=True)
    # The upstream is down while mail queues, so its circuit opens: let it probe again soon.
    config["health"] = {"cooldown_seconds": 1}
    return config


def send(port: int, subject: str, username: str = "shop", password: str = SITE_PASSWORD) -> str:
    body = f"From: <a@shop.example.com>\r\nTo: b@example.org\r\nSubject: {subject}\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.login(username, password)
        client.mail("a@shop.example.com")
        client.rcpt("b@example.org")
        code, reply = client.data(body.encode())
    assert code == 250, reply
    return reply.decode()


@pytest.fixture
def relays() -> Any:
    started: list[RelayProcess] = []

    def start(config_path: Path, *args: str) -> RelayProcess:
        relay = RelayProcess(config_path, *args)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop(signal.SIGKILL)


async def test_sigkill_after_250_loses_nothing(
    tmp_path: Path, make_sink, closed_port: int, relays
) -> None:
    config_path = write_config(tmp_path, plaintext_config(tmp_path, closed_port))
    first = relays(config_path)
    port = await asyncio.to_thread(first.wait_ready)
    subjects = [f"durable {i}" for i in range(25)]
    for subject in subjects:  # the upstream is down: every message waits in the queue
        await asyncio.to_thread(send, port, subject)
    first.process.kill()  # right after the last 250
    first.process.wait(10)

    sink = await make_sink(port=closed_port)
    second = relays(config_path)
    await asyncio.to_thread(second.wait_ready)

    received = await sink.handler.wait_for(len(subjects), seconds=30)
    got = sorted(m.content.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in received)
    assert got == sorted(subjects)
    assert await asyncio.to_thread(second.stop) == 0


def test_sigterm_stops_cleanly_and_sighup_reloads(tmp_path: Path, closed_port: int, relays) -> None:
    config = plaintext_config(tmp_path, closed_port)
    config_path = write_config(tmp_path, config)
    relay = relays(config_path)
    port = relay.wait_ready()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        send(port, "before reload", username="newsite")

    # A broken file is refused and the running configuration stays.
    config_path.write_text("sites: [unclosed\n")
    relay.process.send_signal(signal.SIGHUP)
    send(port, "still running")  # the old credential still works

    config["sites"][0]["credentials"].append(
        {
            "username": "newsite",
            "password_hash": config["sites"][0]["credentials"][0]["password_hash"],
        }
    )
    config_path.write_text(yaml.safe_dump(config))
    relay.process.send_signal(signal.SIGHUP)
    for _ in range(50):  # SIGHUP is asynchronous: the reload line says it is done
        if relay.log_has("reloaded"):
            break
        threading.Event().wait(0.1)
    send(port, "after reload", username="newsite")
    assert relay.log_has("reload refused")

    assert relay.stop(signal.SIGTERM) == 0
    assert relay.log_has("stopped")


def test_port_in_use_is_one_clear_line(tmp_path: Path, closed_port: int) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = plaintext_config(tmp_path, closed_port)
        config["listeners"][0]["port"] = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(write_config(tmp_path, config))],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert "listener submission: cannot listen on 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_example_runs_as_is(tmp_path: Path) -> None:
    """README's first command on a fresh directory: the example config starts and stops."""
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = yaml.safe_load(example.read_text())
    config["listeners"][0]["port"] = 0  # the one change: the test may not own port 2525
    config["admin"]["port"] = 0
    config["http"]["port"] = 0
    relay = RelayProcess(write_config(tmp_path, config))
    try:
        port = relay.wait_ready()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.starttls()
            client.login("product-page-1", "dev-password")
        assert (tmp_path / "data" / "dev-cert.pem").exists()
        open_dashboard_with_the_printed_link(relay)
    finally:
        assert relay.stop() == 0
    assert os.path.exists(tmp_path / "data" / "relay.db")


def open_dashboard_with_the_printed_link(relay: RelayProcess) -> None:
    """No admin tokens in the example: the printed one-time link logs a browser in, once."""
    link = re.compile(r"open http://127\.0\.0\.1:(\d+)(/login/link\?t=\S+) within")
    deadline = time.monotonic() + 10
    while not (found := [m for line in relay.lines if (m := link.search(line))]):
        assert time.monotonic() < deadline, "".join(relay.lines)
        time.sleep(0.05)
    admin_port, path = int(found[0].group(1)), found[0].group(2)
    connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=30)
    connection.request("GET", path)
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 303 and answer.getheader("Location") == "/"
    cookie = answer.getheader("Set-Cookie", "").split(";")[0]
    connection.request("GET", "/", headers={"Cookie": cookie})
    page = connection.getresponse()
    assert page.status == 200 and "local" in page.read().decode()
    connection.request("GET", path)  # the same link again
    again = connection.getresponse()
    again.read()
    assert again.status == 403
    connection.close()


def test_the_data_directory_and_store_are_private_whatever_the_umask(
    tmp_path: Path, closed_port: int
) -> None:
    """Outside systemd (umask 022) the data dir was 755 and relay.db, -wal, -shm 644."""
    config = plaintext_config(tmp_path, closed_port)
    config["listeners"][0].update(tls="starttls")  # the development certificate and its key
    data = Path(config["server"]["data_dir"])
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # as an operator's mkdir made it
    previous = os.umask(0o022)
    try:
        relay = RelayProcess(write_config(tmp_path, config))
    finally:
        os.umask(previous)
    try:
        port = relay.wait_ready()
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.starttls()
            client.login("shop", SITE_PASSWORD)
        modes = {path.name: oct(path.stat().st_mode & 0o777) for path in [data, *data.iterdir()]}
    finally:
        assert relay.stop() == 0
    assert modes == {
        "data": "0o700",
        "relay.db": "0o600",
        "relay.db-wal": "0o600",
        "relay.db-shm": "0o600",
        "relay.db.migrate.lock": "0o600",  # nodes starting together migrate in turn
        "relay.db.write.lock": "0o600",  # workers' writers take turns
        "secret.key": "0o600",
        "dev-cert.pem": "0o600",
        "dev-key.pem": "0o600",
    }
