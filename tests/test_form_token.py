import random

import pytest

from relay.core.form_token import Refusal, TokenOk, TokenRefused, check, derive_key, issue

KEY = derive_key(b"server secret", b"form-token")
NONCE = bytes(range(16))
ISSUED = 1_700_000_000


def _check(token: str | None, *, site: str = "product-page-1", now: float = ISSUED + 10) -> object:
    return check(KEY, token, site, now, min_age_seconds=3, max_age_seconds=3600)


def test_round_trip_gives_the_nonce_and_time() -> None:
    token = issue(KEY, "product-page-1", ISSUED, NONCE)
    assert _check(token) == TokenOk(nonce=NONCE.hex(), issued_at=ISSUED)
    assert len(token) < 100
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_keys_differ_by_purpose_and_secret() -> None:
    assert derive_key(b"s", b"form-token") != derive_key(b"s", b"other")
    assert derive_key(b"s", b"form-token") != derive_key(b"t", b"form-token")
    assert len(derive_key(b"", b"")) == 32


@pytest.mark.parametrize("token", [None, ""])
def test_missing(token: str | None) -> None:
    assert _check(token) == TokenRefused(Refusal.MISSING)


@pytest.mark.parametrize(
    "token",
    ["x", "not base64!", "AAAA", "A" * 40, "é" * 10, "A" * 10_000_000, "AAAAA", "AA==", " " * 5],
)
def test_malformed(token: str) -> None:
    assert _check(token) == TokenRefused(Refusal.MALFORMED)


def test_other_version_is_malformed() -> None:
    token = issue(KEY, "product-page-1", ISSUED, NONCE)
    assert token[0] == "A"  # version 1 starts with six zero bits
    assert _check("B" + token[1:]) == TokenRefused(Refusal.MALFORMED)


def test_another_key_is_forged() -> None:
    token = issue(derive_key(b"another secret", b"form-token"), "product-page-1", ISSUED, NONCE)
    assert _check(token) == TokenRefused(Refusal.FORGED)


def test_another_sites_token_is_other_site() -> None:
    token = issue(KEY, "product-page-2", ISSUED, NONCE)
    assert _check(token) == TokenRefused(Refusal.OTHER_SITE)
    assert isinstance(_check(token, site="product-page-2"), TokenOk)
    assert _check(token, site="\ud800\x00") == TokenRefused(Refusal.OTHER_SITE)


def test_age_boundaries_are_exact() -> None:
    token = issue(KEY, "product-page-1", ISSUED, NONCE)
    assert _check(token, now=ISSUED + 2.9) == TokenRefused(Refusal.TOO_YOUNG)
    assert isinstance(_check(token, now=ISSUED + 3), TokenOk)
    assert isinstance(_check(token, now=ISSUED + 3600), TokenOk)
    assert _check(token, now=ISSUED + 3601) == TokenRefused(Refusal.EXPIRED)
    assert _check(token, now=ISSUED - 60) == TokenRefused(Refusal.TOO_YOUNG)


def test_a_flipped_bit_anywhere_is_refused() -> None:
    token = issue(KEY, "product-page-1", ISSUED, NONCE)
    for position in range(len(token)):
        for bit in range(8):
            flipped = chr(ord(token[position]) ^ (1 << bit))
            result = _check(token[:position] + flipped + token[position + 1 :])
            assert result in (TokenRefused(Refusal.FORGED), TokenRefused(Refusal.MALFORMED))


def test_truncated_or_extended_tokens_are_refused() -> None:
    token = issue(KEY, "product-page-1", ISSUED, NONCE)
    for end in range(1, len(token)):
        assert isinstance(_check(token[:end]), TokenRefused)
    assert isinstance(_check(token + "A"), TokenRefused)


def test_random_strings_never_raise() -> None:
    rng = random.Random(15)  # noqa: S311 - reproducible garbage, not a secret
    alphabets = [
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        "".join(map(chr, range(0x20, 0x7F))),
        "\x00\r\n=+/é€\U0001f600\ud800",
    ]
    for _ in range(3000):
        alphabet = rng.choice(alphabets)
        garbage = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))
        assert isinstance(_check(garbage), TokenRefused)


def test_issue_refuses_a_bad_nonce_or_site() -> None:
    with pytest.raises(ValueError):
        issue(KEY, "product-page-1", ISSUED, b"short")
    with pytest.raises(ValueError):
        issue(KEY, "", ISSUED, NONCE)
