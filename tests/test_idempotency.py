"""Idempotency-Key rules: which keys are taken, what a repeat gets, what a request's digest is."""

from __future__ import annotations

import pytest

from relay.core.idempotency import (
    InProgress,
    OtherRequest,
    Replay,
    key_problem,
    multipart_digest,
    repeat,
    stored_answer,
)


@pytest.mark.parametrize(
    ("key", "ok"),
    [("a", True), ("order-1234 / retry", True), ("~" * 255, True), ("", False),
     ("x" * 256, False), ("tab\t", False), ("naïve", False), ("line\n", False)],
)  # fmt: skip
def test_keys_are_1_to_255_printable_ascii(key: str, ok: bool) -> None:
    assert (key_problem(key) is None) is ok


def test_a_repeat_gets_the_answer_or_in_progress_or_other_request() -> None:
    answer = stored_answer(202, {"id": "m1", "status": "queued"})
    assert repeat("h", "h", answer) == Replay(202, {"id": "m1", "status": "queued"})
    assert repeat("h", "h", None) == InProgress()
    assert repeat("h", "other", answer) == OtherRequest()
    assert repeat("h", "other", None) == OtherRequest()


def test_multipart_digest_ignores_the_boundary_and_tells_parts_apart() -> None:
    parts = [("message", None, "application/json", b"{}"), ("file", "a.pdf", None, b"%PDF")]
    assert multipart_digest(parts) == multipart_digest(list(parts))
    shifted = [("message", None, "application/json", b"{}f"), ("ile", "a.pdf", None, b"%PDF")]
    assert multipart_digest(shifted) != multipart_digest(parts)
    assert multipart_digest([("f", "", None, b"")]) != multipart_digest([("f", None, None, b"")])
