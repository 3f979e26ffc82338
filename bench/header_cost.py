"""Cost of each header pass on hostile header blocks: one field folded into many lines.

    python -m bench.header_cost [--sizes 260,520,1024] [--rounds 3]

For each size (KB of `` x\\r\\n`` continuation lines in one field, and of
encoded words in a folded Subject) prints the best of ``rounds`` runs, in
milliseconds, of every pass the relay makes over a header block: the split,
the rewrite of the ingress, the admin API's header diff, the DKIM signature,
the decoded Subject and the DSN's copy of the header block. A linear pass
doubles its time when the size doubles; a quadratic one quadruples it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from relay.core import dkim, dsn, headers
from relay.core.header_diff import header_diff
from relay.core.model import ReplyTo, Site

NOW = 1_700_000_000.0
SITE = Site(
    id="shop",
    name="Shop",
    from_email="sales@example.com",
    from_name="Sales",
    reply_to=ReplyTo.ORIGINAL,
)


def folded(size: int) -> bytes:
    """A message with one field folded into size/4 lines of `` x``."""
    head = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\nX-Folded: start\r\n"
    return head + b" x\r\n" * (size // 4) + b"\r\nbody\r\n"


def encoded_subject(size: int) -> bytes:
    """A message whose Subject is size bytes of folded RFC 2047 encoded words."""
    word = b" =?utf-8?q?caf=C3=A9?=\r\n"
    head = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n"
    return head + word * (size // len(word)) + b"\r\nbody\r\n"


def rewrite(content: bytes) -> tuple[bytes, headers.Fields]:
    """The ingress's rewrite chain (as IngressController._prepare builds it)."""
    received = headers.received_field(
        helo="client.example",
        client_ip="192.0.2.7",
        hostname="relay.test",
        protocol="ESMTPSA",
        message_id="01hf7ysj000000000000000000",
        now=NOW,
    )
    return headers.rewrite(
        content,
        [
            headers.RemoveBcc(),
            headers.RemoveField("X-Relay-Class"),
            headers.RewriteFrom(SITE),
            headers.AddMissing("01hf7ysj000000000000000000", "relay.test", NOW),
            headers.PrependReceived(received),
        ],
    )


def subject_field(content: bytes) -> headers.HeaderField:
    fields, _ = headers.split_message(content)
    subject = headers.first(fields, "subject")
    assert subject is not None
    return subject


def best_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="260,520,1024", help="KB, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    key = dkim.SigningKey("example.com", "relay1", dkim.generate(dkim.Algorithm.RSA))
    passes = ["split", "rewrite", "header_diff", "dkim.sign", "decoded_text", "dsn block"]
    print(f"{'KB':>6}  " + "  ".join(f"{p:>12}" for p in passes) + "  (ms, best of rounds)")
    for kb in (int(s) for s in args.sizes.split(",")):
        message = folded(kb * 1024)
        sent, original = rewrite(message)
        original_block = b"".join(f.raw for f in original)
        subject = subject_field(encoded_subject(kb * 1024))
        runs: list[Callable[[], object]] = [
            lambda m=message: headers.split_message(m),
            lambda m=message: rewrite(m),
            lambda o=original_block, s=sent: header_diff(o, s),
            lambda s=sent: dkim.sign(s, key, NOW),
            lambda f=subject: headers.decoded_text(f.value),
            lambda m=message: dsn._header_block(m),
        ]
        times = [best_ms(run, args.rounds) for run in runs]
        print(f"{kb:>6}  " + "  ".join(f"{t:>12.1f}" for t in times))


if __name__ == "__main__":
    main()
