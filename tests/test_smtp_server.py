"""The DATA line-length check of the SMTP server (relay.smtp_server.has_line_over)."""

from __future__ import annotations

import random

import pytest

from relay.smtp_server import has_line_over


def split_answer(content: bytes, most: int) -> bool:
    return max(map(len, content.split(b"\r\n")), default=0) > most


@pytest.mark.parametrize(
    ("content", "most", "over"),
    [
        (b"", 3, False),
        (b"abc\r\n", 3, False),
        (b"abcd\r\n", 3, True),
        (b"abc", 3, False),  # a last line without CRLF counts as a line too
        (b"abcd", 3, True),
        (b"ab\r\nabc\r\nabcd\r\n", 3, True),
        (b"abc\r\r\n", 3, True),  # a bare CR is a byte of its line
        (b"x" * 998 + b"\r\n", 998, False),
        (b"x" * 999 + b"\r\n" + b"y\r\n", 998, True),
    ],
)
def test_lines_over_the_limit(content: bytes, most: int, over: bool) -> None:
    assert has_line_over(content, most) is over
    assert split_answer(content, most) is over


def test_same_answer_as_splitting_on_random_content() -> None:
    rng = random.Random(13)  # noqa: S311 -- reproducible test inputs
    for _ in range(20_000):
        content = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randint(0, 60)))
        most = rng.randint(0, 8)
        assert has_line_over(content, most) is split_answer(content, most), (content, most)
