"""Address syntax (RFC 5321 4.1.2, RFC 6531 3.3) and control characters in display names."""

from __future__ import annotations

import pytest

from relay.core.addresses import control_character, is_address
from relay.core.headers import format_address, make_field

VALID = [
    pytest.param("a@example.com", id="plain"),
    pytest.param("first.last+tag@mail.example.co.uk", id="dots-and-plus"),
    pytest.param("a@[192.0.2.1]", id="address-literal"),
    pytest.param('"a b"@example.com', id="quoted-space"),
    pytest.param('"a\\"b"@example.com', id="quoted-pair-quote"),
    pytest.param('"a\\\\b"@example.com', id="quoted-pair-backslash"),
    pytest.param('"a\\ b"@example.com', id="quoted-pair-space"),
    pytest.param('"jürgen"@example.com', id="quoted-utf8"),
    pytest.param('"\U0001f600"@example.com', id="quoted-astral"),
    pytest.param('"\u00a0"@example.com', id="quoted-no-break-space"),
]

INVALID = [
    pytest.param("", id="empty"),
    pytest.param("a", id="no-at"),
    pytest.param("a b@example.com", id="space"),
    pytest.param("a@b@example.com", id="two-ats"),
    pytest.param("@relay.test:a@example.com", id="source-route"),
    pytest.param("a%b@example.com", id="percent-hack"),
    pytest.param("b!a@example.com", id="bang-path"),
    pytest.param("a@localhost", id="no-dot"),
    pytest.param('"a"b"@example.com', id="bare-quote"),
    pytest.param('""@example.com', id="empty-quoted"),
    pytest.param("x" * 250 + "@example.com", id="too-long"),
    pytest.param("jürgen@example.com", id="utf8-unquoted"),
    pytest.param("a@example.com\r\nRCPT TO:<b@example.com>", id="crlf-after"),
    # Control characters: C0 (NUL, TAB, ESC, CR, LF), DEL and C1, quoted or not, escaped or not.
    *(
        pytest.param(f'"a{char}b"@example.com', id=f"quoted-U+{ord(char):04X}")
        for char in "\x00\x01\t\n\r\x1b\x1f\x7f\x80\x85\x9f"
    ),
    *(
        pytest.param(f'"a\\{char}b"@example.com', id=f"quoted-pair-U+{ord(char):04X}")
        for char in "\x00\x01\t\x7f\x85"
    ),
    pytest.param("a\x00b@example.com", id="unquoted-NUL"),
    pytest.param("a@exa\x00mple.com", id="domain-NUL"),
    pytest.param('"\udc80"@example.com', id="lone-surrogate"),
    pytest.param('"a\\é"@example.com', id="quoted-pair-utf8"),
]


@pytest.mark.parametrize("address", VALID)
def test_valid_addresses(address: str) -> None:
    assert is_address(address)


@pytest.mark.parametrize("address", INVALID)
def test_invalid_addresses(address: str) -> None:
    assert not is_address(address)


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Sales Team", None),
        ("Ünïcødé Shop — 東京", None),
        ("", None),
        ("Sales\x00Team", "\x00"),
        ("Sales\tTeam", "\t"),
        ("a\r\nBcc: x@example.com", "\r"),
        ("\x1b[31mred", "\x1b"),
        ("del\x7f", "\x7f"),
        ("nel\x85", "\x85"),
        ("csi\x9b", "\x9b"),
        ("first \x01 then \x02", "\x01"),
    ],
)
def test_control_character(text: str, found: str | None) -> None:
    assert control_character(text) == found


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Sales Team", "Sales Team <sales@example.com>"),
        ('Sales "Team"', '"Sales \\"Team\\"" <sales@example.com>'),
        ("Jürgen", "=?utf-8?q?J=C3=BCrgen?= <sales@example.com>"),
    ],
)
def test_a_name_without_controls_makes_one_from_line(name: str, expected: str) -> None:
    """What config admits (no controls) gives one printable From line."""
    assert control_character(name) is None
    field = make_field("From", format_address("sales@example.com", name))
    assert field.raw == f"From: {expected}\r\n".encode()
    assert field.raw.isascii()
    assert control_character(field.raw[:-2].decode()) is None


def test_make_field_refuses_line_breaks() -> None:
    with pytest.raises(ValueError, match="line break"):
        make_field("From", format_address("sales@example.com", "a\r\nBcc: x@example.com"))
