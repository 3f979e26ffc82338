"""`relay serve` as the benchmark runs it, with the same interface as PostfixInstance.

The same job as the Postfix instance: a trusted loopback listener (plain), or
STARTTLS + AUTH with one site credential; every message relayed to the sink;
the durable SQLite queue (fsync before 250); optional DKIM signing.

Connection limits match the Postfix instance's, so every workload measures
what it says rather than a 421: ``limits.max_connections`` is its smtpd
process limit (1,200: the 1,000 idle connections fit, also when the workers
share it out and the kernel spreads them unevenly); the plain listener's
loopback is a trusted network, exempt from ``max_connections_per_ip`` as
``mynetworks`` is from Postfix's per-client limit; with STARTTLS + AUTH
loopback is untrusted, and Postfix's instance exempts it from its per-client
limits (``smtpd_client_event_limit_exceptions``), so the relay's
``max_connections_per_ip`` is raised to the same 1,200, as an operator whose
one busy web server sends everything would. The AUTH throttle counts only
failures, and the bench sends none.

With ``http`` set (an HTTP workload) it also has the public listener (``http:``)
on a free loopback port, the site an API key (``API_KEY``) and a ``form:`` to
the sink's recipient, with no minimum fill time and a per-address rate far
above what the bench sends, so the HTTP workloads measure throughput, not the
form's limit (every post still spends a fresh token).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.sink import free_port
from relay.core import dkim
from relay.core.passwords import hash_password
from relay.core.tokens import hash_token

SENDER_DOMAIN = "bench.example.com"
ADMIN_TOKEN = "bench-admin-token-0123456789"  # noqa: S105 - a throwaway instance's
API_KEY = "bench-api-key-0123456789abcdef"  # the site's key for the send API (throwaway)
SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXMh"  # noqa: S105 - throwaway
RECIPIENT = "rcpt@example.org"  # the load generators' recipient, and the form's


@dataclass
class RelayInstance:
    root: Path
    port: int
    sink_port: int
    tls: tuple[Path, Path] | None = None  # (cert chain, key): STARTTLS + AUTH
    users: dict[str, str] | None = None
    sign: bool = False  # DKIM-sign every message (RSA-2048)
    workers: int = 1  # server.workers: CPU and memory then count the supervisor and its workers
    max_sessions: int = 1200  # as PostfixInstance.max_sessions (the 1,000 idle connections fit)
    http: bool = False  # the public HTTP listener, an API key and a form (HTTP workloads)
    more_sites: tuple[str, ...] = ()  # sites <name> sending as *@<name>.example.com
    more_upstreams: tuple[str, ...] = ()  # upstreams after "sink", to the same sink
    retention: dict[str, float] | None = None  # the config's retention section, else defaults
    webhook_url: str | None = None  # a webhook endpoint taking every event (loopback allowed)

    def __post_init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.admin_port = free_port()
        self.http_port = free_port() if self.http else 0

    def config(self) -> dict[str, Any]:
        listener: dict[str, Any] = {"name": "bench", "host": "127.0.0.1", "port": self.port}
        if self.users:
            assert self.tls is not None, "AUTH needs TLS"
            listener.update(tls="starttls", cert_file=str(self.tls[0]), key_file=str(self.tls[1]))
        else:
            listener.update(tls="none", auth="none", trusted_networks=["127.0.0.0/8"])
        domains = []
        if self.sign:
            key_file = self.root / "bench.pem"
            key_file.write_bytes(dkim.private_pem(dkim.generate(dkim.Algorithm.RSA)))
            selector = {"selector": "bench", "private_key_file": str(key_file)}
            domains = [{"name": SENDER_DOMAIN, "dkim": selector}]
        site: dict[str, Any] = {
            "id": "bench",
            "senders": [f"*@{SENDER_DOMAIN}"],
            "from": {"email": f"app@{SENDER_DOMAIN}"},
            "credentials": [
                {"username": name, "password_hash": hash_password(password)}
                for name, password in (self.users or {}).items()
            ],
        }
        config: dict[str, Any] = {
            "server": {
                "hostname": "relay.bench",
                "data_dir": str(self.root / "data"),
                "workers": self.workers,
            },
            "listeners": [listener],
            "admin": {
                "host": "127.0.0.1",
                "port": self.admin_port,
                "tokens": [{"name": "bench", "token": ADMIN_TOKEN}],
            },
            "health": {"check_interval_seconds": 0},
            "dns": {"verify_interval_seconds": 0},
            "limits": {
                "max_message_bytes": 64 * 1024 * 1024,
                "max_connections": self.max_sessions,
                # only the AUTH listener's untrusted loopback is counted (see the docstring)
                "max_connections_per_ip": self.max_sessions,
            },
            "upstreams": [
                {
                    "name": name,
                    "host": "127.0.0.1",
                    "port": self.sink_port,
                    "tls": "none",
                    "max_connections": 20,  # Postfix's default destination concurrency
                }
                for name in ("sink", *self.more_upstreams)
            ],
            "domains": domains,
            "sites": [site, *(_site(name) for name in self.more_sites)],
        }
        if self.retention is not None:
            config["retention"] = self.retention
        if self.webhook_url is not None:
            config["events"] = {"allow_private_targets": True}
            config["webhooks"] = [{"name": "bench", "url": self.webhook_url, "secret": SECRET}]
        if self.http:
            config["http"] = {"host": "127.0.0.1", "port": self.http_port}
            site["api_keys"] = [{"name": "bench", "key_hash": hash_token(API_KEY)}]
            site["form"] = {
                "to": [RECIPIENT],
                "reply_to_field": "email",
                "min_fill_seconds": 0,  # the bench posts at once; a person takes seconds
                "rate_per_minute_per_ip": 1_000_000,  # every post comes from 127.0.0.1
            }
        return config

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(self.config()))
        with open(self.root / "relay.log", "wb") as log:  # the process has its own copy
            self._process = subprocess.Popen(  # noqa: S603
                [
                    *(sys.executable, "-m", "relay.cli", "serve", "-c", str(path)),
                    *("--log-level", "WARNING"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"relay exited: {(self.root / 'relay.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(3) == b"220" and self._http_ready():
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("relay did not start within 60 s")

    def _http_ready(self) -> bool:
        """The public listener answers (or there is none)."""
        if not self.http:
            return True
        url = f"http://127.0.0.1:{self.http_port}/healthz"
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)

    def flush(self) -> None:
        """POST /api/v1/queue/flush: try every waiting message now (the sink is back)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/api/v1/queue/flush",
            method="POST",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            answer.read()

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def pids(self) -> list[int]:
        """The relay's process and its children (the workers, with ``workers`` above 1)."""
        if self._process is None or self._process.poll() is not None:
            return []
        return [self._process.pid, *children(self._process.pid)]

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids())

    def pss_bytes(self) -> int:
        return sum(process_pss_bytes(pid) for pid in self.pids())


def _site(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "senders": [f"*@{name}.example.com"],
        "from": {"email": f"noreply@{name}.example.com"},
    }


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def process_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process, in seconds (0 when it is gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data[data.rfind(")") + 2 :].split()
    ticks = sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_pss_bytes(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0
