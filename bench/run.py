"""Run every workload against Postfix and against the relay, alternating, and print the ratios.

    python -m bench [--quick] [--repetitions 3] [--only NAME ...] [--results bench/RESULTS.md]

Per run: a fresh server (own directory, own queue), the sink in its own
process, the load generator in its own process. End-to-end rate = messages /
(first connection -> the sink has them all). CPU is the server's user+system
time over the run; PSS its peak proportional memory, sampled every 200 ms.
Loopback only; every run is bounded in count and time. Needs root (Postfix).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trustme

from bench import postfix
from bench.loadgen import Load, LoadResult, idle_in_process, run_in_process, run_smtp_source
from bench.relay_instance import SENDER_DOMAIN, RelayInstance
from bench.sink import Sink, free_port

USERS = {"bench": "bench-password-0123"}
RUN_TIME_LIMIT = 600.0
BACKLOG_SETTLE = 3.0  # seconds between the last 250 and the sink coming back
EMPTY_QUEUE = "2 KB, 50 sessions"  # the rate a backlog drain is compared with


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
    problems: list[str] = field(default_factory=list)


class PeakPss:
    """Samples a server's PSS in a thread while a run lasts."""

    def __init__(self, server: Server) -> None:
        self.peak = 0
        self._server = server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        self.peak = max(self.peak, self._server.pss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def measure(server: Server, sink: Sink, w: Workload) -> Measure:
    if w.idle:
        return measure_idle(server, w)
    load = Load(
        server.port,
        w.sessions,
        w.messages,
        w.size,
        starttls=w.secure,
        auth=next(iter(USERS.items())) if w.secure else None,
        sender=f"app@{SENDER_DOMAIN}",
        time_limit=RUN_TIME_LIMIT,
    )
    sink.reset()
    cpu_before = server.cpu_seconds()
    with PeakPss(server) as pss:
        if w.backlog:
            result, started = queue_backlog(server, sink, load)
        else:
            result = run_smtp_source(load) if w.smtp_source else run_in_process(load)
            started = result.started
        delivered = wait_until(lambda: sink.count >= result.sent, RUN_TIME_LIMIT)
        finished = time.time()
    m = Measure(cpu=server.cpu_seconds() - cpu_before, pss=pss.peak)
    m.problems += result.refused[:3]
    if result.sent < w.messages:
        m.problems.append(f"only {result.sent} of {w.messages} accepted")
    if not delivered:
        m.problems.append(f"the sink got {sink.count} of {result.sent}")
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
    kind: str, root: Path, sink_port: int, w: Workload, tls: tuple[Path, Path]
) -> Server:
    port = free_port()
    users = USERS if w.secure else None
    if kind == "postfix":
        return postfix.PostfixInstance(
            root, port, sink_port, tls=tls if w.secure else None, users=users
        )
    return RelayInstance(
        root, port, sink_port, tls=tls if w.secure else None, users=users, sign=w.sign
    )


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
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark runs Postfix, which needs root", flush=True)
        return 2
    postfix.ensure_installed()
    chosen = [
        w for w in workloads(args.quick) if not args.only or any(o in w.name for o in args.only)
    ]
    results: dict[tuple[str, str], list[Measure]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        base = Path(tmp)
        tls = certificate(base)
        sink = Sink(free_port())
        sink.start()
        try:
            for repetition in range(args.repetitions):
                order = args.systems if repetition % 2 == 0 else args.systems[::-1]
                for w in chosen:
                    for kind in order:
                        root = base / f"{kind}-{repetition}-{chosen.index(w)}"
                        server = make_server(kind, root, sink.port, w, tls)
                        server.start()
                        try:
                            m = measure(server, sink, w)
                        finally:
                            server.stop()
                        results.setdefault((w.name, kind), []).append(m)
                        step = f"[{repetition + 1}/{args.repetitions}] {kind:7} {w.name}"
                        print(f"{step}: {_line(w, m)}", flush=True)
        finally:
            sink.stop()
    table = render(chosen, results)
    print("\n" + table)
    write_results(args, table)
    return 0


def _line(w: Workload, m: Measure) -> str:
    if w.idle:
        text = f"PSS {m.pss / 2**20:.0f} MB"
    else:
        text = (
            f"{m.rate:.0f} msg/s, p50 {m.p50 * 1000:.1f} ms, p99 {m.p99 * 1000:.1f} ms, "
            f"CPU {m.cpu:.1f} s, PSS {m.pss / 2**20:.0f} MB"
        )
    return text + (f"  PROBLEMS: {'; '.join(m.problems)}" if m.problems else "")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def render(chosen: list[Workload], results: dict[tuple[str, str], list[Measure]]) -> str:
    rows = [
        "| workload | msg/s Postfix | msg/s relay | ratio | p50 ms P / R | p99 ms P / R "
        "| p99 ratio | CPU s P / R | PSS MB P / R | PSS ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in chosen:
        p, r = results.get((w.name, "postfix"), []), results.get((w.name, "relay"), [])
        med = {
            key: (_median([getattr(x, key) for x in p]), _median([getattr(x, key) for x in r]))
            for key in ("rate", "p50", "p99", "cpu", "pss")
        }
        pss_p, pss_r = med["pss"]
        pss = f"{pss_p / 2**20:.0f} / {pss_r / 2**20:.0f} | {_ratio(pss_r, pss_p)}"
        if w.idle:
            rows.append(f"| {w.name} | | | | | | | | {pss} |")
            continue
        rate_p, rate_r = med["rate"]
        p50_p, p50_r = med["p50"]
        p99_p, p99_r = med["p99"]
        cpu_p, cpu_r = med["cpu"]
        rows.append(
            f"| {w.name} | {rate_p:.0f} | {rate_r:.0f} | {_ratio(rate_r, rate_p)} "
            f"| {p50_p * 1000:.1f} / {p50_r * 1000:.1f} | {p99_p * 1000:.1f} / {p99_r * 1000:.1f} "
            f"| {_ratio(p99_r, p99_p)} | {cpu_p:.1f} / {cpu_r:.1f} | {pss} |"
        )
    return "\n".join(rows + _drain_shares(chosen, results))


def _drain_shares(
    chosen: list[Workload], results: dict[tuple[str, str], list[Measure]]
) -> list[str]:
    """The backlog's drain rate as a share of the same system's empty-queue rate."""
    lines = []
    for w in (w for w in chosen if w.backlog):
        shares = []
        for kind in ("postfix", "relay"):
            drain = _median([m.rate for m in results.get((w.name, kind), [])])
            empty = _median([m.rate for m in results.get((EMPTY_QUEUE, kind), [])])
            if drain and empty:
                shares.append(f"{kind} {drain / empty:.0%}")
        if shares:
            lines.append(
                f"\n{w.name}: msg/s is the rate once the sink is back and the queue is flushed; "
                f"as a share of the empty-queue rate ({EMPTY_QUEUE}): {', '.join(shares)}."
            )
    return lines


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
    text = (
        f"# Benchmark results\n\n{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, `{command}`, "
        f"{args.repetitions} repetitions alternating Postfix and the relay; medians.\n\n"
        f"Machine: {machine()}. Load generator and sink run on the same cores.\n\n"
        f"Ratios are relay / Postfix: above 1 is better for msg/s, below 1 is better "
        f"for latency and memory.\n\n{table}\n"
    )
    args.results.write_text(text)
