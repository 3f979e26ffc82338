"""What makes an SMTP message a client's retry of one we accepted already.

A client that lost our 250 (a timeout, a dropped connection) sends the same
transaction again: the same site, Message-ID, envelope sender, recipients and
content. The fingerprint names that transaction; the store keeps it for the
duplicate window (``relay.queue_database``), so a retry is answered with the
first message's id instead of being queued twice. The same Message-ID to
other recipients (a client splitting a message by recipient) is another
fingerprint, and a message without a Message-ID has none: the relay adds one,
so its retries cannot be told from new mail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def fingerprint(
    site_id: str,
    message_id: bytes | None,
    sender: str,
    recipients: Iterable[str],
    content: bytes,
) -> str | None:
    """64 hex digits naming the transaction, or None when the client sent no Message-ID.

    ``message_id``: the field's value as the client wrote it; ``content``: the message as
    the client sent it (its header block and body, before any rewrite). Recipients are
    compared without case or order: a retry may list them otherwise.
    """
    if not message_id:
        return None
    digest = hashlib.sha256()
    # Each part length-prefixed: no two different transactions hash the same bytes.
    for part in (
        site_id.encode(),
        message_id,
        sender.encode("utf-8", "surrogateescape"),
        "\n".join(sorted({r.lower() for r in recipients})).encode("utf-8", "surrogateescape"),
        hashlib.sha256(content).digest(),
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
