"""Retention's pure parts (cutoffs, what is kept of a message, what to vacuum) and its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import ConfigError, load_config
from relay.core.retention import (
    KEEP_HEADER_BYTES,
    RetentionPolicy,
    kept_headers,
    pages_to_vacuum,
)
from tests.conftest import base_config, smtp_upstream


def test_cutoffs_take_fractions_of_hours_and_days() -> None:
    policy = RetentionPolicy(content_hours=0.5, log_days=1.5, audit_days=2, stats_days=0.25)
    cut = policy.cutoffs(1_000_000.0)
    assert cut.content == 1_000_000.0 - 1800
    assert cut.log == 1_000_000.0 - 129_600
    assert cut.audit == 1_000_000.0 - 172_800
    assert cut.stats_minute == (1_000_000 - 21_600) // 60 * 60  # a minute's first second


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        (b"Subject: a\r\nFrom: b\r\n\r\nbody\r\n", b"Subject: a\r\nFrom: b"),
        (b"Subject: a\n\nbody\n", b"Subject: a"),
        (b"Subject: a\r\n\r\n\r\nbody", b"Subject: a"),
        (b"Subject: only a header\r\n", b"Subject: only a header\r\n"),  # no body: all of it
        (b"", b""),
    ],
)
def test_the_header_block_is_kept(content: bytes, kept: bytes) -> None:
    assert kept_headers(content[:KEEP_HEADER_BYTES], len(content)) == kept


def test_a_header_block_longer_than_what_is_read_is_cut_after_a_whole_line() -> None:
    line = b"X-Long: " + b"a" * 90 + b"\r\n"
    content = line * 1000 + b"\r\nbody"
    prefix = content[:KEEP_HEADER_BYTES]
    kept = kept_headers(prefix, len(content))
    assert kept.endswith(b"a" * 90) and len(kept) <= KEEP_HEADER_BYTES
    assert kept.count(b"\r\n") == len(kept) // len(line)


@pytest.mark.parametrize(
    ("pages", "free", "most", "expected"),
    [
        (1000, 50, 2000, 0),  # under a tenth: kept for the next inserts
        (1000, 600, 2000, 500),
        (100_000, 60_000, 2000, 2000),  # at most ``most`` per transaction
        (0, 0, 2000, 0),
    ],
)
def test_vacuum_leaves_a_tenth_of_the_file_free(
    pages: int, free: int, most: int, expected: int
) -> None:
    assert pages_to_vacuum(pages, free, most) == expected


def load(tmp_path: Path, retention: Any) -> Any:
    config = base_config(tmp_path, [smtp_upstream("main", 2525)], retention=retention)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def test_retention_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    assert config.retention.policy == RetentionPolicy(168, 30, 365, 400)
    assert config.retention.interval_seconds == 60


def test_retention_takes_fractions(tmp_path: Path) -> None:
    config = load(tmp_path, {"content_hours": 0.001, "log_days": 0.5, "interval_seconds": 0.2})
    assert config.retention.policy.content_hours == 0.001
    assert config.retention.policy.log_days == 0.5
    assert config.retention.interval_seconds == 0.2


def test_retention_problems_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load(
            tmp_path,
            {
                "content_hours": 0,
                "log_days": "a week",
                "audit_days": -1,
                "stats_days": float("nan"),
                "interval_seconds": True,
                "keep": 1,
            },
        )
    assert sorted(raised.value.problems) == [
        "retention.audit_days: must be a positive number",
        "retention.content_hours: must be a positive number",
        "retention.interval_seconds: must be a positive number",
        "retention.keep: unknown key",
        "retention.log_days: must be a positive number",
        "retention.stats_days: must be a finite positive number",
    ]
