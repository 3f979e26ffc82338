"""A campaign to N contacts into the sink, and transactional mail sent meanwhile.

    python -m bench --campaign [--contacts 100000] [--transactional 2000] [--workers N]

One `relay serve` (SQLite, one worker) and the sink. Its steps, each timed:
the contacts imported as one streamed CSV (``POST /api/v1/sites/bench/contacts``,
with the relay's peak PSS before and during the import); transactional mail
alone (2 KB over SMTP, 10 sessions: accept p50 and p99); then a campaign to
every contact (a template with the contact's name, one 10 KB attachment) is
started, and once it is under way the same transactional load runs again
beside it. The campaign's generation rate (``queued_count``) and delivery rate
(``sent_count``) come from ``GET /api/v1/campaigns/{id}``, polled every
second until it completes. The figure that matters is the ratio of the
transactional p99 with the campaign to without.

Needs no root (no Postfix). Loopback only; every wait is bounded. Prints a
table; writes no file.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import Load, LoadResult, run_in_process
from bench.peak import PeakPss
from bench.relay_instance import ADMIN_TOKEN, SENDER_DOMAIN, RelayInstance
from bench.sink import Sink, free_port

CAMPAIGN_LIMIT = 3_600.0  # seconds the campaign may take before the run gives up
IMPORT_TIMEOUT = 1_800.0
POLL_SECONDS = 1.0
ATTACHMENT = bytes(range(256)) * 40  # 10 KB, every byte value


@dataclass
class Figures:
    contacts: int = 0
    import_seconds: float = 0.0
    import_answer: dict[str, Any] = field(default_factory=dict)
    pss_before_import: int = 0
    pss_peak_import: int = 0
    alone: tuple[float, float] = (0.0, 0.0)  # transactional accept p50, p99 (seconds)
    beside: tuple[float, float] = (0.0, 0.0)  # the same while the campaign runs
    generation_rate: float = 0.0  # contacts reached (a message generated, or skipped) a second
    delivery_rate: float = 0.0  # campaign messages sent a second
    campaign_seconds: float = 0.0
    final: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def csv_rows(count: int) -> Iterator[bytes]:
    yield b"email,first_name,last_name,company,tags,plan\r\n"
    for n in range(count):
        row = f"contact{n}@example.org,First{n},Last{n},Company {n % 97},bench;news,p{n % 3}\r\n"
        yield row.encode()


def chunks(rows: Iterator[bytes], size: int = 64 * 1024) -> Iterator[bytes]:
    buffer = bytearray()
    for row in rows:
        buffer += row
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


class Admin:
    def __init__(self, port: int) -> None:
        self._port = port

    def call(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=timeout)
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        payload: Any = None
        if isinstance(body, Iterator):
            headers["Content-Type"] = "text/csv"
            headers["Transfer-Encoding"] = "chunked"
            payload = body
        elif body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(body).encode()
        try:
            connection.request(
                method,
                path,
                body=payload,
                headers=headers,
                encode_chunked=isinstance(body, Iterator),
            )
            answer = connection.getresponse()
            text = answer.read()
        finally:
            connection.close()
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {text[:500]!r}")
        return json.loads(text) if text else None


def transactional(relay: RelayInstance, messages: int) -> LoadResult:
    load = Load(relay.port, 10, messages, 2048, sender=f"app@{SENDER_DOMAIN}", time_limit=600)
    return run_in_process(load)


def percentiles(result: LoadResult) -> tuple[float, float]:
    latencies = sorted(result.latencies)
    if not latencies:
        return 0.0, 0.0
    return statistics.median(latencies), latencies[max(int(len(latencies) * 0.99) - 1, 0)]


def run(contacts: int, messages: int, workers: int) -> Figures:
    f = Figures(contacts=contacts)
    with tempfile.TemporaryDirectory(prefix="relay-bench-campaign-") as tmp:
        sink = Sink(free_port())
        sink.start()
        relay = RelayInstance(Path(tmp), free_port(), sink.port, workers=workers, http=True)
        relay.start()
        admin = Admin(relay.admin_port)
        try:
            f.pss_before_import = relay.pss_bytes()
            began = time.monotonic()
            with PeakPss(relay) as pss:
                f.import_answer = admin.call(
                    "POST",
                    "/api/v1/sites/bench/contacts",
                    chunks(csv_rows(contacts)),
                    timeout=IMPORT_TIMEOUT,
                )
            f.import_seconds = time.monotonic() - began
            f.pss_peak_import = pss.peak
            alone = transactional(relay, messages)
            f.alone = percentiles(alone)
            campaign(admin, relay, messages, f)
        finally:
            relay.stop()
            sink.stop()
    return f


def campaign(admin: Admin, relay: RelayInstance, messages: int, f: Figures) -> None:
    created = admin.call(
        "POST",
        "/api/v1/campaigns",
        {
            "site": "bench",
            "name": "bench welcome",
            "subject": "Welcome {{ first_name }}!",
            "text": "Hello {{ first_name }} {{ last_name }} of {{ company }} ({{ plan }}).\n",
            "html": "<p>Hello {{ first_name }} {{ last_name }} of {{ company }}.</p>",
            "attachments": [
                {
                    "filename": "welcome.bin",
                    "content_type": "application/octet-stream",
                    "content": base64.b64encode(ATTACHMENT).decode(),
                }
            ],
            "audience": "all",
        },
    )
    path = f"/api/v1/campaigns/{created['id']}"
    admin.call("POST", f"{path}/start")
    started = time.monotonic()
    state = admin.call("GET", path)
    while state["sent_count"] < min(1_000, f.contacts // 10):  # under way
        if time.monotonic() - started > CAMPAIGN_LIMIT:
            break
        time.sleep(0.2)
        state = admin.call("GET", path)
    beside = transactional(relay, messages)
    f.beside = percentiles(beside)
    generated_after = 0.0  # seconds from start until every contact was reached
    while state["status"] in ("in_progress", "scheduled"):
        if time.monotonic() - started > CAMPAIGN_LIMIT:
            f.problems.append(f"the campaign did not finish within {CAMPAIGN_LIMIT:.0f} s")
            break
        if not generated_after and reached(state) >= state["total_contacts"]:
            generated_after = time.monotonic() - started
        time.sleep(POLL_SECONDS)
        state = admin.call("GET", path)
    f.campaign_seconds = time.monotonic() - started
    f.final = state
    f.generation_rate = reached(state) / max(generated_after or f.campaign_seconds, 1e-9)
    f.delivery_rate = state["sent_count"] / max(f.campaign_seconds, 1e-9)
    if state["status"] != "completed":
        f.problems.append(f"campaign status {state['status']}")
    for name, result in (("alone", None), ("beside", beside)):
        if result is not None and result.sent < messages:
            f.problems.append(f"transactional {name}: {result.sent} of {messages} accepted")


def reached(state: dict[str, Any]) -> int:
    """Contacts the campaign has generated a message for, or skipped."""
    return sum(state[k] for k in ("queued_count", "sent_count", "failed_count", "skipped_count"))


def render(f: Figures) -> str:
    ms = 1000.0
    ratio = f.beside[1] / f.alone[1] if f.alone[1] else 0.0
    rows = [
        (
            "contacts imported (streamed CSV)",
            f"{f.contacts:,} in {f.import_seconds:.1f} s "
            f"({f.contacts / max(f.import_seconds, 1e-9):,.0f} rows/s)",
        ),
        (
            "import answer",
            json.dumps({k: v for k, v in f.import_answer.items() if k != "problems"}),
        ),
        (
            "relay PSS before import / peak during",
            f"{f.pss_before_import / 2**20:.0f} MB / {f.pss_peak_import / 2**20:.0f} MB",
        ),
        ("campaign: generation rate", f"{f.generation_rate:,.0f} msg/s"),
        (
            "campaign: delivered",
            f"{f.final.get('sent_count', 0):,} in {f.campaign_seconds:.0f} s "
            f"({f.delivery_rate:,.0f} msg/s)",
        ),
        (
            "campaign: final counts",
            json.dumps(
                {
                    k: f.final.get(k)
                    for k in (
                        "status",
                        "total_contacts",
                        "sent_count",
                        "failed_count",
                        "skipped_count",
                    )
                }
            ),
        ),
        (
            "transactional accept p50 / p99, alone",
            f"{f.alone[0] * ms:.1f} / {f.alone[1] * ms:.1f} ms",
        ),
        (
            "transactional accept p50 / p99, beside the campaign",
            f"{f.beside[0] * ms:.1f} / {f.beside[1] * ms:.1f} ms (p99 ratio {ratio:.2f})",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines += [f"PROBLEM: {p}" for p in f.problems]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("campaign (--campaign)")
    group.add_argument(
        "--campaign",
        action="store_true",
        help="a campaign to --contacts contacts (not in the default run)",
    )
    group.add_argument("--contacts", type=int, default=100_000, metavar="N")
    group.add_argument("--transactional", type=int, default=2_000, metavar="N")


def main(args: argparse.Namespace) -> int:
    figures = run(args.contacts, args.transactional, args.workers[0])
    print(render(figures), flush=True)
    return 1 if figures.problems else 0
