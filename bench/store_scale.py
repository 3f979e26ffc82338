"""The store at scale: the dashboard's admin reads on a store of N messages, and what they cost.

    python -m bench --store-scale [--messages 1000000] [--store-cache [DIR]]
                                  [--reads 5] [--accept-seconds 10]

A store of N messages (``store_fill``: filled through the store layer, kept
in ``--store-cache`` between runs), then a real `relay serve` on it (its own
copy, so the cached one never changes), and over HTTP with the admin token,
each read ``--reads`` times (median and max): the statistics of the last 24 h
(all, and one upstream's) and of 30 days, the first page of the message list
with no filter and with each filter, page 4,000, and one message in full. The
windows are anchored at the store's reference time (when it was filled), so a
cached store reads the same rows on any day. While the reads run a poller in
its own process asks the admin listener's ``/healthz`` every 10 ms: its max
and p99 overall, and per read the slowest answer to a poll sent while that
read ran (a read that holds the event loop shows there, and every SMTP
session waits as long). Then accept
throughput: 2 KB x 10 sessions for ``--accept-seconds`` on the full store
and on an empty one, alternating, three times; the ratio of the medians is
full / empty.

Needs no root (no Postfix). Loopback only; every wait is bounded. Prints a
table with the goals of issue 20 beside each figure; writes no file.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import multiprocessing.synchronize
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import Load, run_in_process
from bench.relay_instance import ADMIN_TOKEN, RelayInstance
from bench.sink import Sink, free_port
from bench.store_fill import MATCH_WORD, NO_MATCH, SITES, UPSTREAMS, Filled, filled_store

GOAL_READ_MS = 100.0  # stats and the first page of any filter
GOAL_HEALTHZ_MS = 20.0  # no /healthz answer slower while the reads run
GOAL_ACCEPT = 0.90  # accept throughput on the full store, as a share of the empty one's
POLL_SECONDS = 0.010
POLL_LIMIT = 3_600.0  # the poller stops by itself after this long
READ_TIMEOUT = 300.0
DAY = 86_400.0
ACCEPT_ROUNDS = 3  # alternating; the median of three outvotes one disturbed round
DEFAULT_CACHE = Path.home() / ".cache" / "relay-bench"


@dataclass(frozen=True)
class Read:
    label: str
    path: str
    goal_ms: float | None  # None: the issue sets none


@dataclass
class Timed:
    read: Read
    seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    matched: int | None = None  # a listing's "total": how many messages the filter matches
    spans: list[tuple[float, float]] = field(default_factory=list)  # time.monotonic() from, to


@dataclass(frozen=True)
class Accept:
    full: float  # msg/s, median of the rounds
    empty: float
    problems: tuple[str, ...]


def reads(store: Filled) -> list[Read]:
    """What the dashboard reads, with windows anchored at the store's reference time."""
    end = store.reference_time
    window = f"since={end - DAY:.0f}&until={end:.0f}"
    month = f"since={end - 30 * DAY - 60:.0f}&until={end:.0f}"  # every message
    hour_a_week_ago = f"since={end - 7 * DAY:.0f}&until={end - 7 * DAY + 3600:.0f}"
    upstream, site = UPSTREAMS[0], SITES[4]
    listing = "/api/v1/messages"
    first = [
        ("no filter", ""),
        ("status=sent", "status=sent"),
        ("status=failed", "status=failed"),
        (f"site={site}", f"site={site}"),
        (f"upstream={UPSTREAMS[2]}", f"upstream={UPSTREAMS[2]}"),
        ("recipient=<an address>", f"recipient={store.recipient}"),
        (f"q={MATCH_WORD} (matches)", f"q={MATCH_WORD}"),
        ("q=<no match>", f"q={NO_MATCH}"),
        ("since/until (an hour, a week ago)", hour_a_week_ago),
    ]
    return [
        Read("GET /api/v1/stats (24 h)", f"/api/v1/stats?{window}", GOAL_READ_MS),
        Read("GET /api/v1/stats (30 days)", f"/api/v1/stats?{month}", GOAL_READ_MS),
        Read(
            f"GET /api/v1/upstreams/{upstream}/stats (24 h)",
            f"/api/v1/upstreams/{upstream}/stats?{window}",
            GOAL_READ_MS,
        ),
        *(
            Read(f"messages, first page, {label}", f"{listing}?{query}".rstrip("?"), GOAL_READ_MS)
            for label, query in first
        ),
        Read("messages, page 4,000 (no filter)", f"{listing}?page=4000", None),
        Read("GET /api/v1/messages/{id}", f"{listing}/{store.sample_id}", None),
    ]


def time_reads(
    port: int, chosen: list[Read], repetitions: int, say: Callable[[str], None] = print
) -> list[Timed]:
    """Each read ``repetitions`` times, round after round, on one keep-alive connection."""
    timed = [Timed(r) for r in chosen]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        for round_ in range(repetitions):
            began = time.monotonic()
            for t in timed:
                start = time.monotonic()
                connection.request("GET", t.read.path, headers=headers)
                answer = connection.getresponse()
                body = answer.read()
                end = time.monotonic()
                t.seconds.append(end - start)
                t.spans.append((start, end))
                if answer.status != 200 and len(t.problems) < 3:
                    t.problems.append(f"{answer.status} {body[:200].decode(errors='replace')}")
                elif answer.status == 200:
                    found = json.loads(body)  # a whole answer, not a truncated one
                    if isinstance(found, dict) and isinstance(found.get("total"), int):
                        t.matched = found["total"]
            say(f"reads: round {round_ + 1}/{repetitions} in {time.monotonic() - began:.1f} s")
    finally:
        connection.close()
    return timed


def _poll(port: int, stop: multiprocessing.synchronize.Event, out: Any) -> None:
    """GET /healthz every POLL_SECONDS until ``stop``; puts (time.monotonic() sent, seconds)."""
    samples: list[tuple[float, float]] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    deadline = time.monotonic() + POLL_LIMIT
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()  # the same clock in every process
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            elapsed = time.monotonic() - start
            samples.append((start, elapsed))
            stop.wait(max(POLL_SECONDS - elapsed, 0.0))
    finally:
        connection.close()
        out.put(samples)


class Poller:
    """/healthz asked every 10 ms by a process of its own while the block runs."""

    def __init__(self, port: int) -> None:
        self.samples: list[tuple[float, float]] = []  # (when sent, seconds)
        self._stop = multiprocessing.Event()
        self._out: Any = multiprocessing.Queue()
        self._process = multiprocessing.Process(
            target=_poll, args=(port, self._stop, self._out), daemon=True
        )

    def __enter__(self) -> Poller:
        self._process.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.samples = self._out.get(timeout=120)
        self._process.join(10)


def accept_rate(relay: RelayInstance, sink: Sink, seconds: float) -> tuple[float, list[str]]:
    """2 KB x 10 sessions for ``seconds``: accepted messages per second (and problems)."""
    sink.reset()
    load = Load(relay.port, 10, 10_000_000, 2048, time_limit=seconds)
    result = run_in_process(load)
    rate = result.sent / max(result.finished - result.started, 1e-9)
    problems = result.refused[:3]
    if not _wait_until(lambda: sink.count >= result.sent, 120):
        problems.append(f"the sink got {sink.count} of {result.sent}")
    return rate, problems


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _relay(root: Path, sink: Sink) -> RelayInstance:
    return RelayInstance(
        root,
        free_port(),
        sink.port,
        more_sites=tuple(s for s in SITES if s != "bench"),
        more_upstreams=tuple(u for u in UPSTREAMS if u != "sink"),
        # The filled month is kept whole: housekeeping catching up on 30 days at once would
        # measure a one-off backlog, not the steady state in which it deletes what arrives.
        retention={"content_hours": 100_000, "log_days": 10_000},
    )


def run(
    messages: int,
    cache: Path | None,
    repetitions: int,
    accept_seconds: float,
    say: Callable[[str], None] = print,
) -> str:
    """The whole measurement; returns the table (also said)."""
    with tempfile.TemporaryDirectory(prefix="relay-store-scale-") as tmp:
        base = Path(tmp)
        full_root = base / "full"
        store_file = full_root / "data" / "relay.db"
        store_file.parent.mkdir(parents=True, mode=0o700)
        store = filled_store(messages, None if cache else store_file, cache, say)
        size = store.path.stat().st_size
        if cache is not None:
            started = time.monotonic()
            shutil.copyfile(store.path, store_file)
            say(f"store: copied for this run in {time.monotonic() - started:.0f} s")
        sink = Sink(free_port())
        sink.start()
        full = _relay(full_root, sink)
        empty = _relay(base / "empty", sink)
        try:
            say("relay: starting on the full store")
            full.start()
            chosen = reads(store)
            say(f"reads: {len(chosen)} reads x {repetitions}, /healthz polled every 10 ms")
            with Poller(full.admin_port) as poller:
                timed = time_reads(full.admin_port, chosen, repetitions, say)
            empty.start()
            rates: dict[str, list[float]] = {"full": [], "empty": []}
            problems: list[str] = []
            for round_ in range(ACCEPT_ROUNDS):
                for name, relay in (("full", full), ("empty", empty)):
                    rate, found = accept_rate(relay, sink, accept_seconds)
                    rates[name].append(rate)
                    problems += [f"{name}: {p}" for p in found]
                    say(f"accept [{round_ + 1}/{ACCEPT_ROUNDS}] {name} store: {rate:.0f} msg/s")
        finally:
            full.stop()
            empty.stop()
            sink.stop()
        accept = Accept(
            statistics.median(rates["full"]), statistics.median(rates["empty"]), tuple(problems)
        )
    table = render(store, size, timed, poller.samples, accept, accept_seconds)
    say("\n" + table)
    return table


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _verdict(value: float, goal: float | None) -> str:
    if goal is None:
        return ""
    return "yes" if value < goal else "**no**"


def render(
    store: Filled,
    size: int,
    timed: list[Timed],
    healthz: list[tuple[float, float]],
    accept: Accept,
    accept_seconds: float,
) -> str:
    made = (
        "reused from the cache"
        if store.reused
        else f"filled in {store.fill_seconds:.0f} s ({store.messages / store.fill_seconds:,.0f}/s)"
    )
    lines = [
        f"Store: {store.messages:,} messages, {store.recipients:,} recipients, "
        f"{store.attempts:,} attempts; {size / 2**20:,.0f} MiB, "
        f"{size / max(store.messages, 1):,.0f} bytes/message; {made}; "
        f"schema {store.revision}; rollups {'rebuilt' if store.rollups else 'absent'}.",
        f"Each read {len(timed[0].seconds) if timed else 0} times (median, max); windows end "
        "at the store's reference time. Noisy: 2 shared cores, client and relay on the same.",
        "",
        "| measure | matches | goal | median | max | /healthz max | meets goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in timed:
        goal = f"< {t.read.goal_ms:.0f} ms" if t.read.goal_ms else "-"
        median, worst = statistics.median(t.seconds), max(t.seconds)
        verdict = _verdict(median * 1000, t.read.goal_ms)
        note = f" PROBLEMS: {'; '.join(t.problems)}" if t.problems else ""
        matched = f"{t.matched:,}" if t.matched is not None else ""
        lines.append(
            f"| {t.read.label} | {matched} | {goal} | {_ms(median)} | {_ms(worst)} "
            f"| {_ms(_worst_during(healthz, t.spans))} | {verdict}{note} |"
        )
    ordered = sorted(seconds for _, seconds in healthz) or [0.0]
    p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)]
    lines.append(
        f"| /healthz every 10 ms during the reads ({len(healthz):,} answers, p99 {_ms(p99)}) "
        f"| | max < {GOAL_HEALTHZ_MS:.0f} ms | {_ms(statistics.median(ordered))} "
        f"| {_ms(ordered[-1])} | | {_verdict(ordered[-1] * 1000, GOAL_HEALTHZ_MS)} |"
    )
    ratio = accept.full / accept.empty if accept.empty else 0.0
    note = f" PROBLEMS: {'; '.join(accept.problems[:3])}" if accept.problems else ""
    lines.append(
        f"| accept, 2 KB x 10 sessions, {accept_seconds:.0f} s: full store / empty "
        f"({accept.full:.0f} / {accept.empty:.0f} msg/s) | | >= {GOAL_ACCEPT:.2f} "
        f"| {ratio:.2f} | | | {'yes' if ratio >= GOAL_ACCEPT else '**no**'}{note} |"
    )
    return "\n".join(lines)


def _worst_during(healthz: list[tuple[float, float]], spans: list[tuple[float, float]]) -> float:
    """The slowest /healthz answer asked while one of these spans ran.

    By when it was asked: a stall that began in the read before, and outlasted it,
    is that read's.
    """
    return max(
        (seconds for sent, seconds in healthz if any(start <= sent < end for start, end in spans)),
        default=0.0,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("store scale (--store-scale)")
    group.add_argument(
        "--store-scale",
        action="store_true",
        help="admin reads on a store of --messages messages (not in the default run)",
    )
    group.add_argument("--messages", type=int, default=1_000_000, metavar="N")
    group.add_argument(
        "--store-cache",
        type=Path,
        nargs="?",
        const=DEFAULT_CACHE,
        metavar="DIR",
        help=f"keep the filled store here and use it again (default {DEFAULT_CACHE})",
    )
    group.add_argument("--reads", type=int, default=5, metavar="N", help="times each read")
    group.add_argument("--accept-seconds", type=float, default=10.0, metavar="S")


def main(args: argparse.Namespace) -> int:
    if args.messages < 1 or args.reads < 1 or args.accept_seconds <= 0:
        print("--messages, --reads and --accept-seconds must be positive", flush=True)
        return 2

    def say(text: str) -> None:
        print(text, flush=True)

    run(args.messages, args.store_cache, args.reads, args.accept_seconds, say)
    return 0
