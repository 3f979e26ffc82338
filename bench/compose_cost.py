"""CPU cost of building one message from HTTP input (relay/core/compose.py), per message.

    python -m bench.compose_cost [--rounds 7] [--count 2000]

Builds each kind of message ``count`` times per round and prints the median
over ``rounds`` of the time per message, in microseconds: the send API's
2 KB text message (what ``python -m bench`` posts), a landing-page form's
inquiry of the same size (text and HTML), and a message with a non-ASCII
subject and display name, HTML and two attachments. One process, one core;
on a shared machine the figures move by 10-20 %: compare runs made together.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from bench.loadgen import text_body
from relay.core.compose import compose, compose_inquiry
from relay.core.model import Site
from relay.core.send_request import Attachment, SendRequest

NOW = 1_767_225_600.0
ID = "0123456789abcdef0123456789abcdef@relay.bench"
SITE = Site(id="bench", name="bench", from_email="app@bench.example.com")
TEXT = text_body(2048 - 120)  # as the load generator's send API body

SEND = SendRequest(
    from_email="app@bench.example.com", to=("rcpt@example.org",), subject="bench", text=TEXT
)
RICH = SendRequest(
    from_email="app@bench.example.com",
    from_name="Zoë's Shop, Inc.",
    to=("ann@example.net", "bob@example.net"),
    cc=("carol@example.net",),
    reply_to="help@bench.example.com",
    subject="Grüße: your order ☃ has shipped",
    text="Hällo Ann,\n\nyour order has shipped.\n" * 20,
    html="<p>Hällo Ann,</p><p>your order has shipped.</p>\n" * 20,
    attachments=(
        Attachment("invoice \u2013 2026.pdf", bytes(range(256)) * 8, "application/pdf"),
        Attachment("logo.png", b"\x89PNG\r\n\x1a\n" * 64, "image/png"),
    ),
    headers=(("X-Campaign", "spring"),),
)
FIELDS = {"name": "Ada", "email": "ada@example.org", "message": TEXT}

KINDS: dict[str, Callable[[], object]] = {
    "send API 2 KB text": lambda: compose(SEND, message_id=ID, now=NOW),
    "form inquiry 2 KB": lambda: compose_inquiry(
        FIELDS,
        site=SITE,
        to=("rcpt@example.org",),
        reply_to="ada@example.org",
        message_id=ID,
        now=NOW,
        page="bench",
    ),
    "non-ASCII, HTML, 2 attachments": lambda: compose(RICH, message_id=ID, now=NOW),
}


def per_message_us(build: Callable[[], object], count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        build()
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=2000, help="messages per round")
    args = parser.parse_args()
    print(f"{'message':34} {'median us':>10} {'min us':>8}  (CPU per message)")
    for name, build in KINDS.items():
        build()  # imports and caches warmed
        times = [per_message_us(build, args.count) for _ in range(args.rounds)]
        print(f"{name:34} {statistics.median(times):>10.0f} {min(times):>8.0f}")


if __name__ == "__main__":
    main()
