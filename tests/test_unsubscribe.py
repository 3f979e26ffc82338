"""The one-click unsubscribe token and headers (relay/core/unsubscribe.py): no I/O."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import re
from urllib.parse import urlsplit

import pytest

from relay.core.form_token import derive_key
from relay.core.outbound_events import EventType
from relay.core.unsubscribe import (
    ONE_CLICK,
    Unsubscribe,
    headers,
    issue,
    masked,
    read,
    unsubscribed_event,
)

KEY = derive_key(b"server secret", b"unsubscribe")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_round_trip() -> None:
    for campaign, contact in [("c1", 0), ("cmp_2026-12", 42), ("x" * 32, 2**63 - 1)]:
        token = issue(KEY, campaign, contact)
        assert read(KEY, token) == Unsubscribe(campaign, contact)
        assert set(token) <= set(ALPHABET)  # safe in a URL path as it is
        assert len(token) <= 76


def test_the_purpose_separates_keys() -> None:
    """A form token's key (same secret, other purpose) signs nothing that unsubscribes."""
    token = issue(derive_key(b"server secret", b"form-token"), "c1", 7)
    assert read(KEY, token) is None
    assert read(derive_key(b"another secret", b"unsubscribe"), issue(KEY, "c1", 7)) is None


def test_every_altered_character_is_refused() -> None:
    token = issue(KEY, "spring-sale", 1234)
    for i, char in enumerate(token):
        for other in {ALPHABET[(ALPHABET.index(char) + 1) % 64], "A", "_"} - {char}:
            altered = token[:i] + other + token[i + 1 :]
            assert read(KEY, altered) is None, (i, other)
    assert read(KEY, token[:-1]) is None
    assert read(KEY, token + "A") is None
    assert read(KEY, token + "AAAA") is None


def test_a_forged_body_with_a_made_up_tag_is_refused() -> None:
    body = bytes([1]) + (99).to_bytes(8, "big") + b"c1"
    forged = base64.urlsafe_b64encode(body + bytes(16)).rstrip(b"=").decode()
    assert read(KEY, forged) is None


def test_a_non_canonical_encoding_of_a_good_token_is_refused() -> None:
    """The last character's unused bits changed: the same bytes, another string."""
    token = issue(KEY, "cmp1", 5)  # 29 bytes: the last character has 2 unused bits
    assert len(token) % 4 == 3
    other = token[:-1] + ALPHABET[ALPHABET.index(token[-1]) ^ 1]

    def decode(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    assert decode(other) == decode(token)
    assert read(KEY, token) is not None
    assert read(KEY, other) is None
    assert read(KEY, token + "=") is None  # padding is not part of a token either


@pytest.mark.parametrize(
    "token",
    ["", "x", "not base64!", "AAAA", "A" * 76, "é" * 10, "../../etc", "A" * 10_000_000, "\x00" * 4],
)
def test_garbage_is_refused_without_raising(token: str) -> None:
    assert read(KEY, token) is None


def test_input_longer_than_any_token_is_refused_before_decoding() -> None:
    longest = issue(KEY, "x" * 32, 2**63 - 1)
    assert read(KEY, longest) is not None
    # Valid base64 a character longer than any token: refused by its length alone.
    assert read(KEY, longest + "A") is None
    assert read(KEY, "A" * 50_000_000) is None


@pytest.mark.parametrize(
    ("campaign", "contact"),
    [("", 1), ("x" * 33, 1), ("has space", 1), ("é", 1), ("c1", -1), ("c1", 2**63)],
)
def test_issue_refuses_what_no_token_can_carry(campaign: str, contact: int) -> None:
    with pytest.raises(ValueError):
        issue(KEY, campaign, contact)


def test_headers_follow_rfc_8058_and_rfc_2369() -> None:
    token = issue(KEY, "spring-sale", 77)
    plain = headers(token, base_url="https://relay.example.com/", mailto=None)
    assert plain == [
        ("List-Unsubscribe", f"<https://relay.example.com/u/{token}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    assert ONE_CLICK == "List-Unsubscribe=One-Click"

    both = dict(headers(token, base_url="https://x.example/relay", mailto="unsub@example.com"))
    # RFC 2369 section 2: each URL in angle brackets, comma separated, in order of preference
    # (the https link first: RFC 8058 section 3.1 names it the one a one-click POST goes to).
    links = re.findall(r"<([^<>]*)>", both["List-Unsubscribe"])
    assert both["List-Unsubscribe"] == ", ".join(f"<{link}>" for link in links)
    assert links == [
        f"https://x.example/relay/u/{token}",
        f"mailto:unsub@example.com?subject=unsubscribe%20{token}",
    ]
    # The link's path gives the token back, and a mail parser reads the headers unchanged.
    assert read(KEY, urlsplit(links[0]).path.rsplit("/", 1)[1]) == Unsubscribe("spring-sale", 77)
    raw = "".join(f"{name}: {value}\r\n" for name, value in both.items()) + "\r\nhi\r\n"
    parsed = email.message_from_string(raw, policy=email.policy.default)
    assert str(parsed["List-Unsubscribe"]) == both["List-Unsubscribe"]
    assert str(parsed["List-Unsubscribe-Post"]) == ONE_CLICK


def test_the_event_names_the_recipient_the_campaign_and_the_message() -> None:
    event = unsubscribed_event(
        1_800_000_000.0,
        bytes(10),
        site="shop",
        recipient="kim@example.org",
        campaign_id="spring-sale",
        message_id="01abc",
    )
    body = json.loads(event.body())
    assert body["type"] == EventType.UNSUBSCRIBED == "message.unsubscribed"
    assert body["data"] == {
        "message_id": "01abc",
        "site": "shop",
        "recipient": "kim@example.org",
        "campaign_id": "spring-sale",
    }
    assert body["id"].startswith("evt_") and body["timestamp"] == "2027-01-15T08:00:00.000Z"
    no_message = unsubscribed_event(
        1.0, bytes(10), site="shop", recipient="a@b.c", campaign_id="c", message_id=None
    )
    assert "message_id" not in no_message.data


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("kim.lee@example.org", "k***@example.org"),
        ("a@example.org", "a***@example.org"),
        ('"a@b"@example.org', '"***@example.org'),
        ("no-at-sign", "***"),
        ("@example.org", "***"),
    ],
)
def test_the_page_shows_a_masked_address(address: str, shown: str) -> None:
    assert masked(address) == shown
