"""Our fast relaxed body canonicalization gives exactly dkimpy's output."""

from __future__ import annotations

import random

import pytest
from dkim.canonicalization import CanonicalizationPolicy

from relay.core.dkim import relaxed_body

DKIMPY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
PIECES = [b" ", b"\t", b"  ", b"\r\n", b"\r\n\r\n", b"a", b"word", b"\r", b"\n", b"\xc3\xa9"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"\r\n\r\n\r\n",
        b"Hello world\r\n",
        b"Hello  world \t\r\n\r\n\r\n",
        b"\tindented\r\n  twice\r\n",
        b"no final line end",
        b"trailing space at the end ",
    ],
)
def test_known_bodies(body: bytes) -> None:
    assert relaxed_body(body) == DKIMPY.canonicalize_body(body)


def test_random_bodies() -> None:
    rng = random.Random(6376)  # noqa: S311 -- reproducible test inputs
    for _ in range(20_000):
        body = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        assert relaxed_body(body) == DKIMPY.canonicalize_body(body), body
