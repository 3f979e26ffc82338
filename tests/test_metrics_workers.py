"""/metrics with workers: the values of every worker's files, read while workers start and die."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import MULTIPROCESS_DIR, Metrics


def counter_file(directory: Path, pid: int, value: float) -> None:
    """A worker's counter file as prometheus-client writes it."""
    key = json.dumps(
        ("relay_messages_accepted", "relay_messages_accepted_total", {"site": "shop"}, "Accepted."),
        sort_keys=True,
    )
    values = MmapedDict(str(directory / f"counter_{pid}.db"))
    values.write_value(key, value, 0.0)
    values.close()


def accepted(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "relay_messages_accepted_total"
    )


def test_a_file_a_starting_worker_has_not_sized_yet_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter_file(tmp_path, 101, 3)
    counter_file(tmp_path, 102, 4)  # a dead worker's counts stay
    (tmp_path / "histogram_103.db").touch()  # opened by worker 103, not yet sized
    (tmp_path / "gauge_livemax_103.db").write_bytes(b"\0\0")  # cut short
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    assert accepted(Metrics().render().decode()) == 7


def test_a_sized_file_without_values_yet_adds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter_file(tmp_path, 101, 3)
    (tmp_path / "counter_103.db").write_bytes(bytes(1 << 16))  # sized, header not yet written
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    assert accepted(Metrics().render().decode()) == 3
