"""Import a CSV of N contacts (100,000: about 8 MB) through the admin API, and say what it cost.

    python -m bench.contacts_import [--rows 100000] [--tracemalloc] [--store URL]

A relay runs in this process (SQLite in a temporary directory unless
``--store`` names another database), the CSV is written to a file first and
then posted from it in 64 KiB pieces as ``curl --data-binary @file`` would.
The file is imported twice: the first time adds every contact, the second
updates every one (the stored contact is read, merged and written back).
Reported for each: wall time and rows per second, the process's CPU time
(the client's share included: it only reads the file), the import's answer, the process's
peak RSS growth during the import, the event loop's longest stall (a 10 ms
ticker's worst lateness: what other admin, SMTP and HTTP work waited), and,
with ``--tracemalloc`` (slower), the peak of Python allocations during the
import above what was allocated before. Then a few list requests are timed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from relay.app import RelayApp
from relay.config import load_config

# List requests timed after the imports: the first and a deep page, a tag, a search.
LISTS = ("page_size=50", "page=1999&page_size=50", "tag=group3", "q=user99999&unsubscribed=false")
TOKEN = "bench-token-0123456789abcdef"  # noqa: S105 -- a throwaway relay's admin token


def write_csv(path: Path, rows: int) -> int:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,first_name,last_name,company,tags,plan,city\r\n")
        for n in range(rows):
            out.write(
                f"user{n}@example{n % 97}.com,First{n},Last{n},Company {n % 1000},"
                f"all;group{n % 10},plan{n % 3},City {n % 50}\r\n"
            )
    return path.stat().st_size


async def chunks(path: Path, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(size):
            yield chunk


def config(directory: Path, store: str | None) -> Path:
    data = directory / "data"
    body: dict[str, Any] = {
        "server": {"hostname": "relay.bench", "data_dir": str(data)},
        "store": {"url": store or f"sqlite+aiosqlite:///{data / 'relay.db'}"},
        "listeners": [
            {
                "name": "trusted",
                "host": "127.0.0.1",
                "port": 0,
                "tls": "none",
                "auth": "none",
                "trusted_networks": ["127.0.0.1/32"],
            }
        ],
        "admin": {"host": "127.0.0.1", "port": 0, "tokens": [{"name": "b", "token": TOKEN}]},
        "dns": {"verify_interval_seconds": 0},
        "health": {"check_interval_seconds": 0},
        "upstreams": [{"name": "sink", "host": "127.0.0.1", "port": 9, "tls": "none"}],
        "sites": [
            {"id": "shop", "from": {"email": "news@shop.example.com"}, "upstreams": ["sink"]}
        ],
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


async def ticker(stalls: list[float], rss: list[int]) -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        stalls.append(time.perf_counter() - start - 0.01)
        rss.append(rss_kib())


def rss_kib() -> int:
    """The process's resident set now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run(rows: int, trace: bool, store: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        csv_path = directory / "contacts.csv"
        size = write_csv(csv_path, rows)
        app = RelayApp(load_config(config(directory, store)))
        await app.start()
        try:
            url = f"http://127.0.0.1:{app.admin_port}/api/v1/sites/shop/contacts"
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}
            async with aiohttp.ClientSession() as http:
                for _ in ("add", "update"):
                    await import_once(http, url, headers, csv_path, rows, trace)
                for query in LISTS:
                    started = time.perf_counter()
                    async with http.get(f"{url}?{query}", headers=headers) as reply:
                        total = (await reply.json())["total"]
                    took = (time.perf_counter() - started) * 1000
                    print(f"GET ?{query}: total {total}, {took:.0f} ms")
        finally:
            await app.stop()
    print(f"rows {rows}, CSV {size / 1e6:.1f} MB")


async def import_once(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    csv_path: Path,
    rows: int,
    trace: bool,
) -> None:
    stalls: list[float] = []
    rss: list[int] = []
    rss_before = rss_kib()
    if trace:
        tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0] if trace else 0
    tick = asyncio.create_task(ticker(stalls, rss))
    cpu_before, started = cpu_seconds(), time.perf_counter()
    async with http.post(url, data=chunks(csv_path), headers=headers) as reply:
        answer = await reply.json()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    tick.cancel()
    traced_peak = tracemalloc.get_traced_memory()[1] - traced_before if trace else 0
    if trace:
        tracemalloc.stop()
    rss_growth = max(rss, default=rss_before) - rss_before
    print(
        f"status {reply.status}: added {answer['added']}, updated {answer['updated']}, "
        f"rejected {answer['rejected']}"
    )
    print(f"  time {elapsed:.2f} s ({rows / elapsed:,.0f} rows/s), CPU {cpu:.2f} s")
    print(f"  peak RSS growth (sampled every 10 ms): {rss_growth / 1024:.1f} MiB")
    print(f"  event loop's longest stall: {max(stalls, default=0) * 1000:.0f} ms")
    if trace:
        print(f"  tracemalloc peak above the start: {traced_peak / 2**20:.1f} MiB")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--store", help="a store URL (default: SQLite in a temporary directory)")
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.tracemalloc, args.store))


if __name__ == "__main__":
    main()
