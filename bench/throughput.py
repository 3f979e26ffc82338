"""A first throughput figure: N messages over K sessions, client -> relay -> sink.

    python bench/throughput.py [--messages 2000] [--sessions 10] [--size 2048] [--dkim]

Starts a recording sink (aiosmtpd) in this process, `relay serve` as a
subprocess on a trusted loopback listener (no TLS, no AUTH: the same job a
plain Postfix relay does), sends N messages over K reused connections, and
reports messages per second until the sink has them all, plus accept
latency (final dot to 250). Bounded in count and time; loopback only.
The Postfix comparison and the full workload matrix belong to bench/ proper.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import yaml
from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.core import dkim

TIME_LIMIT_SECONDS = 300


class CountingSink:
    def __init__(self) -> None:
        self.count = 0
        self.done = asyncio.Event()
        self.target = 0

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.count += 1
        if self.count >= self.target:
            self.done.set()
        return "250 OK"


def relay_config(directory: Path, port: int, sink_port: int, dkim_key: bool) -> dict[str, Any]:
    trusted = {"tls": "none", "auth": "none", "trusted_networks": ["127.0.0.0/8"]}
    upstream = {"kind": "smtp", "host": "127.0.0.1", "port": sink_port, "tls": "none"}
    domains = []
    if dkim_key:  # the site's From domain signs with RSA-2048
        key_file = directory / "example.com.bench.pem"
        key_file.write_bytes(dkim.private_pem(dkim.generate(dkim.Algorithm.RSA)))
        domains = [
            {
                "name": "example.com",
                "dkim": {"selector": "bench", "private_key_file": str(key_file)},
            }
        ]
    return {
        "server": {"hostname": "relay.bench", "data_dir": str(directory / "data")},
        "dns": {"verify_interval_seconds": 0},
        "domains": domains,
        "listeners": [{"name": "bench", "host": "127.0.0.1", "port": port, **trusted}],
        "admin": {"host": "127.0.0.1", "port": 0},
        "upstreams": [{"name": "sink", "max_connections": 8, **upstream}],
        "sites": [
            {"id": "bench", "senders": ["*@bench.example.com"], "from": {"email": "s@example.com"}}
        ],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_relay(config_path: Path, port: int) -> asyncio.subprocess.Process:
    command = [sys.executable, "-m", "relay.cli", "serve", "-c", str(config_path)]
    process = await asyncio.create_subprocess_exec(*command, "--log-level", "WARNING")
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return process
    process.kill()
    raise SystemExit("relay did not start")


async def session(port: int, count: int, body: bytes, latencies: list[float]) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as client:
        for _ in range(count):
            started = time.perf_counter()
            await client.sendmail("app@bench.example.com", ["rcpt@example.org"], body)
            latencies.append(time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dkim", action="store_true", help="sign every message (RSA-2048)")
    args = parser.parse_args()

    sink = CountingSink()
    sink.target = args.messages
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(sink, hostname="sink.bench"), "127.0.0.1", 0
    )
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        port, sink_port = free_port(), server.sockets[0].getsockname()[1]
        config_path.write_text(yaml.safe_dump(relay_config(Path(tmp), port, sink_port, args.dkim)))
        process = await start_relay(config_path, port)
        headers = (
            b"From: <app@bench.example.com>\r\nTo: <rcpt@example.org>\r\nSubject: bench\r\n\r\n"
        )
        body = headers + (b"x" * 76 + b"\r\n") * max(1, (args.size - len(headers)) // 78)
        latencies: list[float] = []
        per_session = args.messages // args.sessions
        sink.target = per_session * args.sessions
        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(
                *(session(port, per_session, body, latencies) for _ in range(args.sessions))
            ),
            TIME_LIMIT_SECONDS,
        )
        accepted = time.perf_counter() - started
        await asyncio.wait_for(sink.done.wait(), TIME_LIMIT_SECONDS)
        elapsed = time.perf_counter() - started
        process.terminate()
        await process.wait()
    server.close()
    latencies.sort()
    print(
        f"{sink.target} messages of {len(body)} bytes over {args.sessions} sessions: "
        f"{sink.target / elapsed:.0f} msg/s end to end "
        f"({sink.target / accepted:.0f} msg/s accepted); "
        f"accept latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
