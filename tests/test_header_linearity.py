"""Every pass over a header block is linear in its size: no message can stall the relay.

A field folded into N lines once cost N squared in each pass (5.5 s for 1 MB).
Each test times a pass on a header of N and of 4N continuation lines: a
linear pass takes about 4 times as long, a quadratic one 16 times. The bound
(8) is far from both, and each time is the best of several runs of CPU time,
so a busy machine does not make the test fail. The real numbers come from
``python -m bench.header_cost``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from relay.core import dkim, headers
from relay.core.header_diff import header_diff
from relay.core.model import ReplyTo, Site

LINES = 32_768  # of " x\r\n": 128 KB, and 512 KB for 4 times as many
RATIO = 8
NOW = 1_700_000_000.0
SITE = Site(id="shop", name="Shop", from_email="sales@example.com", reply_to=ReplyTo.ORIGINAL)
KEY = dkim.SigningKey("example.com", "relay1", dkim.generate(dkim.Algorithm.ED25519))


def folded(lines: int) -> bytes:
    head = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\nX-Folded: start\r\n"
    return head + b" x\r\n" * lines + b"\r\nbody\r\n"


def folded_subject(lines: int) -> bytes:
    return b"Subject: =?utf-8?q?caf=C3=A9?=\r\n" + b" =?utf-8?q?x?=\r\n" * lines + b"\r\nbody\r\n"


def many_fields(lines: int) -> bytes:
    """Signed fields by the thousand: the DKIM h= list grows with them."""
    return b"From: a@example.com\r\n" + b"To: b@c.d\r\n" * (lines // 4) + b"\r\nbody\r\n"


def rewrite(content: bytes) -> bytes:
    out, _ = headers.rewrite(
        content,
        [
            headers.StripSpaceBeforeColon(),
            headers.RemoveBcc(),
            headers.RewriteFrom(SITE),
            headers.AddMissing("01hf7ysj000000000000000000", "relay.test", NOW),
        ],
    )
    return out


def diff(content: bytes) -> Callable[[], object]:
    sent = rewrite(content)
    return lambda: header_diff(content, sent)


def decoded_subject(content: bytes) -> Callable[[], object]:
    fields, _ = headers.split_message(content)
    subject = headers.first(fields, "subject")
    assert subject is not None
    return lambda: headers.decoded_text(subject.value)


def value(content: bytes) -> Callable[[], object]:
    fields, _ = headers.split_message(content)
    return lambda: fields[-1].value


# Each pass: (message of n lines, the work to time for that message).
PASSES: dict[str, tuple[Callable[[int], bytes], Callable[[bytes], Callable[[], object]]]] = {
    "split_message": (folded, lambda m: lambda: headers.split_message(m)),
    "value": (folded, value),
    "rewrite": (folded, lambda m: lambda: rewrite(m)),
    "header_diff": (folded, diff),
    "dkim.sign": (folded, lambda m: lambda: dkim.sign(m, KEY, NOW)),
    "dkim.sign many fields": (many_fields, lambda m: lambda: dkim.sign(m, KEY, NOW)),
    "decoded_text": (folded_subject, decoded_subject),
    "header_block_fits": (
        lambda n: folded(n).replace(b"\r\n\r\n", b"\r\n"),  # no empty line: the slow path
        lambda m: lambda: headers.header_block_fits(m, len(m) - 10),
    ),
}


def cpu_seconds(work: Callable[[], object], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize("name", list(PASSES))
def test_four_times_the_lines_cost_less_than_eight_times_the_time(name: str) -> None:
    message, prepare = PASSES[name]
    small = cpu_seconds(prepare(message(LINES)))
    large = cpu_seconds(prepare(message(4 * LINES)))
    print(f"{name}: {small * 1000:.1f} ms -> {large * 1000:.1f} ms")
    assert large < RATIO * max(small, 0.001), f"{name}: {small:.4f} s -> {large:.4f} s"
