"""Run every workload against Postfix and against the relay, alternating, and print the ratios.

    python -m bench [--quick] [--repetitions 3] [--only NAME ...] [--workers 1 2]
                    [--results bench/RESULTS.md]
    python -m bench --store-scale [--messages N] [--store-cache [DIR]]  (see store_scale.py)
    python -m bench --campaign [--contacts N] [--transactional N]  (see campaign.py)

Per run: a fresh server (own directory, own queue), the sink in its own
process, the load generator in its own process. The relay runs once per
``--workers`` value, each a row of its own with its ratios to Postfix.
End-to-end rate = messages / (first connection -> the sink has them all).
CPU is the server's user+system time over the run (the relay's supervisor
and workers together), also per message delivered; PSS its peak proportional
memory, sampled every 200 ms. Loopback only; every run is bounded in count
and time. Needs root (Postfix).

The HTTP workloads (the send API, form posts) run on the relay only: Postfix
has no HTTP ingress. Their ratios compare with the same system's
``SMTP_BASELINE`` row (STARTTLS + AUTH), the SMTP way an app would send instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trustme

from bench import campaign, postfix, store_scale
from bench.loadgen import (
    HttpLoad,
    Load,
    LoadResult,
    idle_in_process,
    run_in_process,
    run_smtp_source,
)
from bench.peak import PeakPss
from bench.relay_instance import API_KEY, SENDER_DOMAIN, RelayInstance
from bench.sink import Sink, free_port
from bench.webhook_sink import WebhookSink

USERS = {"bench": "bench-password-0123"}
RUN_TIME_LIMIT = 600.0
BACKLOG_SETTLE = 3.0  # seconds between the last 250 and the sink coming back
EMPTY_QUEUE = "2 KB, 50 sessions"  # the rate a backlog drain is compared with
SMTP_BASELINE = "2 KB, 50 sessions, STARTTLS+AUTH"  # what the HTTP workloads are compared with
EVENTS_PER_MESSAGE = 2  # message.accepted, message.delivered


class Server(Protocol):
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def cpu_seconds(self) -> float: ...
    def pss_bytes(self) -> int: ...
    def flush(self) -> None: ...


@dataclass(frozen=True)
class Workload:
    name: str
    size: int = 2048
    sessions: int = 10
    messages: int = 10_000
    secure: bool = False  # STARTTLS + AUTH
    sign: bool = False  # the relay DKIM-signs (Postfix does the plain job)
    idle: int = 0  # connections held open instead of sending
    backlog: bool = False  # queued while the sink is down, then drained once it is back
    smtp_source: bool = False  # Postfix's smtp-source drives it instead of our generator
    reconnect: bool = False  # a new connection per message, as PHPMailer and WordPress send
    http: str = ""  # "send" (the send API) or "form" (token, then post): HTTP clients, relay only
    webhooks: bool = False  # a webhook takes every event (2 a message), relay only

    @property
    def relay_only(self) -> bool:
        return bool(self.http) or self.webhooks

    @property
    def baseline(self) -> str:
        """The row its ratios are to: Postfix's of the same workload, or the relay's own."""
        if self.http:
            return SMTP_BASELINE
        return EMPTY_QUEUE if self.webhooks else self.name


@dataclass(frozen=True)
class System:
    """One server setup measured on every workload: Postfix, or the relay with N workers."""

    kind: str  # "postfix" or "relay"
    workers: int = 1

    @property
    def label(self) -> str:
        return "Postfix" if self.kind == "postfix" else f"relay w{self.workers}"


POSTFIX = System("postfix")


def workloads(quick: bool) -> list[Workload]:
    scale = 5 if quick else 1
    found = [
        Workload(f"{size // 1024} KB, {sessions} sessions", size, sessions, count // scale)
        for size, count in ((2048, 10_000), (51_200, 4_000))
        for sessions in (10, 50, 100)
    ]
    found += [
        Workload("2 KB, 50 sessions, STARTTLS+AUTH", 2048, 50, 10_000 // scale, secure=True),
        Workload("2 KB, 50 sessions, DKIM (relay signs)", 2048, 50, 10_000 // scale, sign=True),
        Workload("2 KB, 50 sessions, smtp-source", 2048, 50, 10_000 // scale, smtp_source=True),
    ]
    found += [
        Workload(
            f"2 KB, new connection per message, 10 sessions{suffix}",
            2048,
            10,
            5_000 // scale,
            secure=secure,
            reconnect=True,
        )
        for suffix, secure in (("", False), (", STARTTLS+AUTH", True))
    ]
    found += [
        Workload(f"2 KB, {label}, {clients} clients", 2048, clients, 5_000 // scale, http=kind)
        for label, kind in (("HTTP send API", "send"), ("form posts", "form"))
        for clients in (10, 50)
    ]
    found += [
        Workload(
            "2 KB, 50 sessions, webhooks (every event)", 2048, 50, 10_000 // scale, webhooks=True
        ),
        Workload("2 KB backlog drain", 2048, 50, 100_000 // scale, backlog=True),
        Workload("1,000 idle connections", idle=1000),
    ]
    return found


@dataclass
class Measure:
    rate: float = 0.0  # messages per second, end to end
    p50: float = 0.0  # accept latency, seconds
    p99: float = 0.0
    cpu: float = 0.0  # server CPU seconds over the run
    pss: int = 0  # peak bytes
    delivered: int = 0  # messages the sink got
    problems: list[str] = field(default_factory=list)


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def measure(server: Server, sink: Sink, w: Workload, hooks: WebhookSink) -> Measure:
    if w.idle:
        return measure_idle(server, w)
    load: Load | HttpLoad
    if w.http:
        assert isinstance(server, RelayInstance) and server.http, "HTTP is the relay's"
        load = HttpLoad(
            server.http_port,
            w.sessions,
            w.messages,
            w.size,
            w.http,
            api_key=API_KEY,
            time_limit=RUN_TIME_LIMIT,
        )
    else:
        load = Load(
            server.port,
            w.sessions,
            w.messages,
            w.size,
            starttls=w.secure,
            auth=next(iter(USERS.items())) if w.secure else None,
            sender=f"app@{SENDER_DOMAIN}",
            time_limit=RUN_TIME_LIMIT,
            reconnect=w.reconnect,
        )
    sink.reset()
    hooks.reset()
    cpu_before = server.cpu_seconds()
    with PeakPss(server) as pss:
        if w.backlog:
            assert isinstance(load, Load)
            result, started = queue_backlog(server, sink, load)
        else:
            if w.smtp_source:
                assert isinstance(load, Load)
                result = run_smtp_source(load)
            else:
                result = run_in_process(load)
            started = result.started
        delivered = wait_until(lambda: sink.count >= result.sent, RUN_TIME_LIMIT)
        events = EVENTS_PER_MESSAGE * result.sent if w.webhooks else 0
        notified = wait_until(lambda: hooks.count >= events, RUN_TIME_LIMIT)
        finished = time.time()
    m = Measure(cpu=server.cpu_seconds() - cpu_before, pss=pss.peak, delivered=sink.count)
    m.problems += result.refused[:3]
    if result.sent < w.messages:
        m.problems.append(f"only {result.sent} of {w.messages} accepted")
    if not delivered:
        m.problems.append(f"the sink got {sink.count} of {result.sent}")
    if not notified:
        m.problems.append(f"the webhook got {hooks.count} of {events} events")
    m.rate = sink.count / max(finished - started, 1e-9)
    m.p50, m.p99 = _percentiles(result)
    return m


def queue_backlog(server: Server, sink: Sink, load: Load) -> tuple[LoadResult, float]:
    """Queue the load while the sink is down, bring the sink back, flush; returns when."""
    sink.stop()
    try:
        result = run_in_process(load)
        time.sleep(BACKLOG_SETTLE)  # the last messages' first try fails too
    finally:
        sink.reset()
        sink.start()
    started = time.time()
    server.flush()
    return result, started


def measure_idle(server: Server, w: Workload) -> Measure:
    process, opened = idle_in_process(server.port, w.idle, seconds=120)
    try:
        ok = wait_until(lambda: opened.value >= w.idle, 120)
        time.sleep(1)  # let every session settle after its EHLO
        m = Measure(pss=server.pss_bytes())
        if not ok:
            m.problems.append(f"only {opened.value} of {w.idle} connections opened")
        return m
    finally:
        process.terminate()
        process.join(10)


def _percentiles(result: LoadResult) -> tuple[float, float]:
    latencies = sorted(result.latencies)
    if not latencies:
        return 0.0, 0.0
    return statistics.median(latencies), latencies[max(int(len(latencies) * 0.99) - 1, 0)]


def make_server(
    system: System,
    root: Path,
    sink_port: int,
    w: Workload,
    tls: tuple[Path, Path],
    webhook_url: str,
) -> Server:
    port = free_port()
    users = USERS if w.secure else None
    if system.kind == "postfix":
        return postfix.PostfixInstance(
            root, port, sink_port, tls=tls if w.secure else None, users=users
        )
    return RelayInstance(
        root,
        port,
        sink_port,
        tls=tls if w.secure else None,
        users=users,
        sign=w.sign,
        workers=system.workers,
        http=bool(w.http),
        webhook_url=webhook_url if w.webhooks else None,
    )


def systems(kinds: list[str], workers: list[int]) -> list[System]:
    """Postfix once, the relay once per worker count, in the order given."""
    found: list[System] = []
    for kind in kinds:
        found += [POSTFIX] if kind == "postfix" else [System("relay", n) for n in workers]
    return list(dict.fromkeys(found))


def certificate(directory: Path) -> tuple[Path, Path]:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    chain, key = directory / "bench.pem", directory / "bench.key"
    issued.private_key_and_cert_chain_pem.write_to_path(str(chain))
    issued.private_key_pem.write_to_path(str(key))
    return chain, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the messages")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="workload names containing these words")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    parser.add_argument(
        "--systems", nargs="+", default=["postfix", "relay"], choices=["postfix", "relay"]
    )
    parser.add_argument(
        "--workers",
        nargs="+",
        type=int,
        default=[1],
        metavar="N",
        help="the relay's server.workers; one row per value (default 1)",
    )
    store_scale.add_arguments(parser)
    campaign.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.store_scale:
        return store_scale.main(args)  # the relay alone: no Postfix, no root
    if args.campaign:
        return campaign.main(args)  # the relay alone too
    if any(n < 1 for n in args.workers):
        parser.error("--workers takes counts of 1 or more")
    if os.geteuid() != 0:
        print("the benchmark runs Postfix, which needs root", flush=True)
        return 2
    postfix.ensure_installed()
    chosen = [
        w for w in workloads(args.quick) if not args.only or any(o in w.name for o in args.only)
    ]
    measured = systems(args.systems, args.workers)
    results: dict[tuple[str, System], list[Measure]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        base = Path(tmp)
        tls = certificate(base)
        sink = Sink(free_port())
        sink.start()
        hooks = WebhookSink(free_port())
        hooks.start()
        try:
            for repetition in range(args.repetitions):
                order = measured if repetition % 2 == 0 else measured[::-1]
                for w in chosen:
                    for system in order:
                        if w.relay_only and system == POSTFIX:
                            continue  # Postfix has no HTTP ingress, no webhooks
                        name = f"{system.kind}-w{system.workers}-{repetition}-{chosen.index(w)}"
                        server = make_server(system, base / name, sink.port, w, tls, hooks.url)
                        server.start()
                        try:
                            m = measure(server, sink, w, hooks)
                        finally:
                            server.stop()
                        results.setdefault((w.name, system), []).append(m)
                        step = f"[{repetition + 1}/{args.repetitions}] {system.label:9} {w.name}"
                        print(f"{step}: {_line(w, m)}", flush=True)
        finally:
            sink.stop()
            hooks.stop()
    table = render(chosen, measured, results)
    print("\n" + table)
    write_results(args, table)
    return 0


def _line(w: Workload, m: Measure) -> str:
    if w.idle:
        text = f"PSS {m.pss / 2**20:.0f} MB"
    else:
        text = (
            f"{m.rate:.0f} msg/s, p50 {m.p50 * 1000:.1f} ms, p99 {m.p99 * 1000:.1f} ms, "
            f"CPU {m.cpu:.1f} s ({_per_message(m.cpu, m.delivered)} ms/msg), "
            f"PSS {m.pss / 2**20:.0f} MB"
        )
    return text + (f"  PROBLEMS: {'; '.join(m.problems)}" if m.problems else "")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _per_message(cpu: float, delivered: int) -> str:
    return f"{cpu * 1000 / delivered:.2f}" if delivered else "-"


def render(
    chosen: list[Workload],
    measured: list[System],
    results: dict[tuple[str, System], list[Measure]],
) -> str:
    """One row per workload and system; ratios are to Postfix's row of the same workload.

    An HTTP workload has no Postfix row: its ratios are to the same system's
    SMTP_BASELINE row, as the line under the table says.
    """
    rows = [
        "| workload | system | msg/s | ratio | p50 ms | p99 ms | p99 ratio "
        "| CPU s | CPU ms/msg | PSS MB | PSS ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in chosen:
        for i, system in enumerate(s for s in measured if (w.name, s) in results):
            base_system = system if w.relay_only else POSTFIX
            base = _medians(results.get((w.baseline, base_system), []))
            med = _medians(results[(w.name, system)])
            versus = system != POSTFIX and bool(base["pss"])
            name = w.name if i == 0 else ""
            pss = f"{med['pss'] / 2**20:.0f} | {_ratio(med['pss'], base['pss']) if versus else ''}"
            if w.idle:
                rows.append(f"| {name} | {system.label} | | | | | | | | {pss} |")
                continue
            rate, p99 = _ratio(med["rate"], base["rate"]), _ratio(med["p99"], base["p99"])
            per_message = _per_message(med["cpu"], round(med["delivered"]))
            rows.append(
                f"| {name} | {system.label} | {med['rate']:.0f} | {rate if versus else ''} "
                f"| {med['p50'] * 1000:.1f} | {med['p99'] * 1000:.1f} | {p99 if versus else ''} "
                f"| {med['cpu']:.1f} | {per_message} | {pss} |"
            )
    notes = _http_note(chosen) + _webhooks_note(chosen)
    return "\n".join(rows + _drain_shares(chosen, measured, results) + notes)


def _medians(measures: list[Measure]) -> dict[str, float]:
    keys = ("rate", "p50", "p99", "cpu", "pss", "delivered")
    return {key: _median([getattr(m, key) for m in measures]) for key in keys}


def _drain_shares(
    chosen: list[Workload],
    measured: list[System],
    results: dict[tuple[str, System], list[Measure]],
) -> list[str]:
    """The backlog's drain rate as a share of the same system's empty-queue rate."""
    lines = []
    for w in (w for w in chosen if w.backlog):
        shares = []
        for system in measured:
            drain = _median([m.rate for m in results.get((w.name, system), [])])
            empty = _median([m.rate for m in results.get((EMPTY_QUEUE, system), [])])
            if drain and empty:
                shares.append(f"{system.label} {drain / empty:.0%}")
        if shares:
            lines.append(
                f"\n{w.name}: msg/s is the rate once the sink is back and the queue is flushed; "
                f"as a share of the empty-queue rate ({EMPTY_QUEUE}): {', '.join(shares)}."
            )
    return lines


def _http_note(chosen: list[Workload]) -> list[str]:
    if not any(w.http for w in chosen):
        return []
    return [
        "\nHTTP send API, form posts: the relay only (Postfix has no HTTP ingress); their "
        f"ratios are to the same system's {SMTP_BASELINE} row. Plain HTTP on loopback, "
        "keep-alive. Latency is request sent to 202 read; a form post's includes fetching "
        "its token (GET /api/form-token), as a page does before each post."
    ]


def _webhooks_note(chosen: list[Workload]) -> list[str]:
    if not any(w.webhooks for w in chosen):
        return []
    return [
        f"\nWebhooks: the relay only; its ratios are to the same system's {EMPTY_QUEUE} row. "
        "One endpoint on loopback takes every event (message.accepted and message.delivered: "
        "two a message, written with the message and its delivery, signed and POSTed); "
        "msg/s counts until the last event arrived."
    ]


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "-"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024**2
    version = subprocess.run(
        ["/usr/sbin/postconf", "-h", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}, Postfix {version}"
    )


def write_results(args: argparse.Namespace, table: str) -> None:
    command = "python -m bench" + (" --quick" if args.quick else "")
    if args.workers != [1]:
        command += " --workers " + " ".join(str(n) for n in args.workers)
    text = (
        f"# Benchmark results\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, `{command}`, "
        f"{args.repetitions} repetitions alternating Postfix and the relay; medians.\n\n"
        f"Machine: {machine()}. Load generator and sink run on the same cores.\n\n"
        f"One row per system: Postfix, and the relay with `server.workers` N (relay wN; "
        f"its CPU and memory count the supervisor and every worker). CPU ms/msg is the "
        f"server's CPU time per message delivered. Ratios are relay / Postfix on the same "
        f"workload: above 1 is better for msg/s, below 1 is better for latency and memory."
        f"\n\n{table}\n"
    )
    args.results.write_text(text)
