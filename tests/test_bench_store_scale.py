"""The store-scale benchmark, tiny: 2,000 messages, every read answered, the table's shape.

Runs what ``python -m bench --store-scale`` runs (the filler, a real `relay
serve` on the filled store, the reads over HTTP with the /healthz poller, the
accept load on the full and an empty store), with 2 reads each and 1 s of
load. Also: a cached store is used again instead of filled again, a stale one removed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.run import main
from bench.store_fill import Filled, cached_name, filled_store
from bench.store_scale import Read, _worst_during, reads

MESSAGES = 2_000


def test_store_scale_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--store-scale", "--messages", str(MESSAGES), "--reads", "2"]
    code = main([*argv, "--accept-seconds", "1", "--store-cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / cached_name(MESSAGES)).exists()
    assert f"Store: {MESSAGES:,} messages" in out
    assert "rollups " in out
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]  # after the header
    labels = [r.label for r in reads(_facts(tmp_path))]
    assert len(rows) == len(labels) + 2  # every read, then /healthz and accept
    for row, label in zip(rows, labels, strict=False):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == label
        assert "PROBLEMS" not in row
        assert all(re.fullmatch(r"\d+\.\d ms", cell) for cell in cells[3:6])
        assert cells[6] in ("yes", "**no**", "")
    assert re.search(r"\| /healthz every 10 ms during the reads \([\d,]+ answers, p99 ", out)
    accept = re.search(
        r"full store / empty \((\d+) / (\d+) msg/s\) \| \| >= 0\.90 \| (\d+\.\d\d)", out
    )
    assert accept and int(accept[1]) > 0 and int(accept[2]) > 0
    first_page = next(r for r in rows if "first page, no filter" in r)
    assert f"| {MESSAGES:,} |" in first_page  # the listing's total: every message


def _facts(cache: Path) -> Filled:
    return filled_store(MESSAGES, None, cache, say=lambda _: None)


def test_a_cached_store_is_used_again(tmp_path: Path) -> None:
    said: list[str] = []
    stale = tmp_path / f"store-{MESSAGES}-r0001-f1.db"  # an older schema's
    stale.write_bytes(b"")
    first = filled_store(MESSAGES, None, tmp_path, say=said.append)
    assert not stale.exists()
    again = filled_store(MESSAGES, None, tmp_path, say=said.append)
    assert not first.reused and again.reused
    assert again.path == first.path and again.sample_id == first.sample_id
    assert again.reference_time == first.reference_time
    assert any("reusing" in line for line in said)
    assert [p.name for p in tmp_path.iterdir() if "filling" in p.name] == []
    assert all(isinstance(r, Read) and r.path.startswith("/api/v1/") for r in reads(again))


def test_a_stall_is_the_read_it_was_asked_in() -> None:
    polls = [(0.0, 0.001), (1.0, 5.0), (6.5, 0.002)]  # (sent, seconds): a 5 s stall from 1.0
    assert _worst_during(polls, [(0.5, 6.0)]) == 5.0
    assert _worst_during(polls, [(6.0, 7.0)]) == 0.002  # the stall outlasted its read
    assert _worst_during(polls, [(8.0, 9.0)]) == 0.0
