"""The message an operator sends through one upstream to check it end to end."""

from __future__ import annotations

import email.utils

from relay.core.headers import join_message, make_field


def probe_message(
    sender: str, recipient: str, upstream: str, hostname: str, message_id: str, now: float
) -> bytes:
    """A short plain-text message; the addresses are already validated (no CR/LF)."""
    fields = [
        make_field("From", sender),
        make_field("To", recipient),
        make_field("Subject", f"relay test message through upstream {upstream}"),
        make_field("Date", email.utils.formatdate(now)),
        make_field("Message-ID", f"<{message_id}@{hostname}>"),
        make_field("MIME-Version", "1.0"),
        make_field("Content-Type", "text/plain; charset=utf-8"),
    ]
    body = (
        f"This message was sent by the relay {hostname} through the upstream {upstream}\r\n"
        f"at the request of an operator, to check that it delivers.\r\n"
    )
    return join_message(fields, body.encode())
