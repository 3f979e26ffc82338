"""The send API's ``Idempotency-Key``: which keys are acceptable, and what a repeat gets.

A key is 1 to 255 printable ASCII characters (the header's value as sent).
A request is known by a digest of what it asks: the raw body of a JSON
request; for a multipart one, its parts' names, filenames, types and bytes
(a client picks a new boundary for every attempt, so the raw bytes of the
same request differ). The first request under a key claims it; a later one
under the same key, while the claim lives (24 h), gets: the first answer
again when it asks the same thing and that answer is known; "in progress"
while the first has no answer yet; "another request" when it asks something
else. A claim without an answer older than ``ABANDONED_SECONDS`` belonged to a
request that died with its node and may be claimed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_KEY_CHARS = 255
KEEP_SECONDS = 24 * 3600.0  # how long a key's first answer is given again
# Far beyond any request's life (a 40 MB body, DKIM, the store's commit): a claim this old
# without an answer was left by a crash. Taking it over may send twice, never loses a send.
ABANDONED_SECONDS = 300.0


def key_problem(key: str) -> str | None:
    """What is wrong with an Idempotency-Key header's value, or None."""
    if not 0 < len(key) <= MAX_KEY_CHARS:
        return f"Idempotency-Key: 1 to {MAX_KEY_CHARS} characters"
    if not all(" " <= c <= "~" for c in key):
        return "Idempotency-Key: printable ASCII characters only"
    return None


def json_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def multipart_digest(parts: Iterable[tuple[str, str | None, str | None, bytes]]) -> str:
    """The digest of (name, filename, content type, bytes) parts, in order; lengths prefixed,
    so no two different lists of parts give the same input to the hash."""
    digest = hashlib.sha256(b"multipart\0")
    for part in parts:
        for value in part:
            data = value if isinstance(value, bytes) else (value or "").encode("utf-8", "replace")
            digest.update(b"-" if value is None else b"+")
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Claimed:
    """The key is this request's: go on, then record the answer (or give the key back)."""


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class InProgress:
    """The same request is running elsewhere (another connection or node): retry later."""


@dataclass(frozen=True)
class OtherRequest:
    """The key was used for a different request."""


Claim = Claimed | Replay | InProgress | OtherRequest


def repeat(body_hash: str, stored_hash: str, answer: Any) -> Replay | InProgress | OtherRequest:
    """What a request gets when its key is held by a claim (``answer``: the stored answer)."""
    if stored_hash != body_hash:
        return OtherRequest()
    if isinstance(answer, dict) and isinstance(answer.get("status"), int):
        body = answer.get("body")
        return Replay(answer["status"], body if isinstance(body, dict) else {})
    return InProgress()


def stored_answer(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """The answer as kept for replays (read back by ``repeat``)."""
    return {"status": status, "body": body}
