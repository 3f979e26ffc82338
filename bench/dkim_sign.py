"""Cost of one DKIM signature per message: dkimpy alone vs relay's signer (dkimpy + OpenSSL).

    python bench/dkim_sign.py [--rounds 200]

Prints the median milliseconds per message for 2 KB and 50 KB messages.
"""

from __future__ import annotations

import argparse
import statistics
import time

import dkim as dkimpy

from relay.core import dkim


def message(size: int) -> bytes:
    head = (
        b"From: Sales Team <sales@example.com>\r\nTo: customer@example.net\r\n"
        b"Subject: Your order\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        b"Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    line = b"Thank you for your order; it ships tomorrow from our warehouse.\r\n"
    return head + line * (size // len(line))


def median_ms(sign: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        sign()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rsa = dkim.generate(dkim.Algorithm.RSA)
    ed = dkim.generate(dkim.Algorithm.ED25519)
    rsa_key = dkim.SigningKey("example.com", "relay1", rsa)
    ed_key = dkim.SigningKey("example.com", "relay2", ed)
    pem = dkim.private_pem(rsa)
    print(f"{'message':>8}  {'dkimpy RSA':>11}  {'relay RSA':>10}  {'relay Ed25519':>13}  (ms)")
    for size in (2_000, 50_000):
        m = message(size)
        pure = median_ms(
            lambda m=m: dkimpy.sign(
                m, b"relay1", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed")
            ),
            max(args.rounds // 10, 5),
        )
        ours = median_ms(lambda m=m: dkim.sign(m, rsa_key, time.time()), args.rounds)
        fast = median_ms(lambda m=m: dkim.sign(m, ed_key, time.time()), args.rounds)
        print(f"{size // 1000:>6} KB  {pure:>11.2f}  {ours:>10.2f}  {fast:>13.2f}")


if __name__ == "__main__":
    main()
