"""Ingress policy: which site a transaction belongs to, and which addresses and contents pass."""

from __future__ import annotations

import pytest

from relay.core.directory import Directory
from relay.core.model import Site
from relay.core.policy import (
    ACCEPT,
    AUTH_REQUIRED,
    BARE_LINE_ENDING,
    NULL_SENDER,
    Reject,
    SessionFacts,
    TempFail,
    check_content,
    check_header_size,
    check_recipient,
    check_sender_syntax,
    identify_site,
)

# Patterns are stored lower case, as the config parser stores them.
SHOP = Site(id="shop", name="Shop", from_email="sales@example.com", senders=("*@shop.example.com",))
OPEN = Site(id="open", name="Open", from_email="info@example.org")
BLOG = Site(
    id="blog",
    name="Blog",
    from_email="blog@example.net",
    senders=("news@blog.example.net", "*@shop.example.com", "alerts-?@*.example.net"),
)
DIRECTORY = Directory.of([SHOP, OPEN, BLOG], [], [])


# -- identify_site


@pytest.mark.parametrize(
    ("site_id", "trusted", "sender", "expected"),
    [
        pytest.param("open", False, "anyone@anywhere.test", "open", id="auth-no-senders-any"),
        pytest.param("open", False, NULL_SENDER, "open", id="auth-no-senders-null"),
        pytest.param("shop", False, "alice@shop.example.com", "shop", id="auth-sender-matches"),
        pytest.param("shop", False, "Alice@SHOP.Example.COM", "shop", id="auth-match-any-case"),
        pytest.param("shop", True, "alice@shop.example.com", "shop", id="auth-on-trusted"),
        pytest.param("blog", False, "NEWS@blog.example.net", "blog", id="auth-exact-pattern"),
        pytest.param("blog", False, "alerts-7@eu.example.net", "blog", id="auth-question-mark"),
        pytest.param(None, True, "alice@shop.example.com", "shop", id="trusted-first-site-wins"),
        pytest.param(None, True, "Bob@Shop.Example.Com", "shop", id="trusted-any-case"),
        pytest.param(None, True, "news@BLOG.example.net", "blog", id="trusted-by-sender"),
    ],
)
def test_identify_site_finds_the_site(
    site_id: str | None, trusted: bool, sender: str, expected: str
) -> None:
    result = identify_site(SessionFacts(site_id, trusted), sender, DIRECTORY)
    assert isinstance(result, Site)
    assert result.id == expected


@pytest.mark.parametrize(
    ("site_id", "trusted", "sender", "text_part"),
    [
        pytest.param("shop", False, "alice@evil.test", "not allowed for site shop", id="auth"),
        pytest.param(
            "shop", True, "alice@evil.test", "not allowed for site shop", id="auth-on-trusted"
        ),
        pytest.param(
            "shop", False, "alice@shop.example.com.evil.test", "not allowed", id="suffix-trick"
        ),
        pytest.param(
            "blog", False, "alerts-12@eu.example.net", "not allowed", id="question-mark-is-one"
        ),
        pytest.param(None, True, "x@unknown.test", "belongs to no site", id="trusted-unknown"),
        pytest.param(None, True, NULL_SENDER, "belongs to no site", id="trusted-null-sender"),
    ],
)
def test_identify_site_refuses_senders_outside_the_site(
    site_id: str | None, trusted: bool, sender: str, text_part: str
) -> None:
    result = identify_site(SessionFacts(site_id, trusted), sender, DIRECTORY)
    assert isinstance(result, Reject)
    assert result.reply.code == 550
    assert result.reply.enhanced == "5.7.1"
    assert text_part in result.reply.text
    assert sender in result.reply.text


@pytest.mark.parametrize(
    "sender",
    [
        "alice@shop.example.com",  # would match a site on a trusted network
        "news@blog.example.net",
        "x@unknown.test",
        NULL_SENDER,
        "",
        "not an address",
        "postmaster",
    ],
)
def test_untrusted_unauthenticated_session_always_gets_530(sender: str) -> None:
    result = identify_site(SessionFacts(None, False), sender, DIRECTORY)
    assert result == AUTH_REQUIRED
    assert isinstance(result, Reject)
    assert result.reply.code == 530
    assert result.reply.enhanced == "5.7.0"


def test_credential_of_a_removed_site_gets_530() -> None:
    result = identify_site(SessionFacts("gone", True), "alice@shop.example.com", DIRECTORY)
    assert result == AUTH_REQUIRED


def test_empty_directory_never_relays() -> None:
    empty = Directory.of([], [], [])
    for facts in (SessionFacts(None, False), SessionFacts(None, True), SessionFacts("x", False)):
        assert isinstance(identify_site(facts, "alice@shop.example.com", empty), Reject)


# -- check_recipient


@pytest.mark.parametrize(
    ("accepted_so_far", "max_recipients"),
    [(0, 1), (0, 100), (99, 100), (4, 5)],
)
def test_recipient_below_the_limit_is_accepted(accepted_so_far: int, max_recipients: int) -> None:
    assert check_recipient("bob@example.com", accepted_so_far, max_recipients) == ACCEPT


@pytest.mark.parametrize(
    ("accepted_so_far", "max_recipients"),
    [(1, 1), (100, 100), (101, 100), (5, 5)],
)
def test_recipient_at_the_limit_gets_452(accepted_so_far: int, max_recipients: int) -> None:
    result = check_recipient("bob@example.com", accepted_so_far, max_recipients)
    assert isinstance(result, TempFail)
    assert result.reply.code == 452
    assert result.reply.enhanced == "4.5.3"
    assert f"at most {max_recipients}" in result.reply.text


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.com",
        "Bob.Smith+tag@Example.COM",
        "o'brien@example.co.uk",
        '"bob smith"@example.com',
        "bob@[192.0.2.1]",
        "x@xn--bcher-kva.example",
    ],
)
def test_valid_recipients_are_accepted(address: str) -> None:
    assert check_recipient(address, 0, 100) == ACCEPT


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("bob%other.test@example.com", id="percent-hack"),
        pytest.param("other.test!bob@example.com", id="bang-path"),
        pytest.param("bob@example.com!other", id="bang-in-domain"),
        pytest.param("@relay.test:bob@example.com", id="source-route"),
        pytest.param("bob", id="no-domain"),
        pytest.param("bob@", id="empty-domain"),
        pytest.param("@example.com", id="empty-local-part"),
        pytest.param("bob@localhost", id="single-label-domain"),
        pytest.param("bob smith@example.com", id="space-in-local-part"),
        pytest.param("bob@exa mple.com", id="space-in-domain"),
        pytest.param(" bob@example.com", id="leading-space"),
        pytest.param("bob@example.com ", id="trailing-space"),
        pytest.param("bob@example.com\n", id="trailing-lf"),
        pytest.param("bob@example.com\r\n", id="trailing-crlf"),
        pytest.param("bob@example.com\r\nRCPT TO:<x@y.test>", id="command-injection"),
        pytest.param("bob@@example.com", id="two-ats"),
        pytest.param("<bob@example.com>", id="angle-brackets"),
        pytest.param("", id="empty"),
        pytest.param("a" * 250 + "@example.com", id="too-long"),
        pytest.param('"bob\x00 smith"@example.com', id="nul-in-quoted-local-part"),
        pytest.param('"bob\x01"@example.com', id="soh-in-quoted-local-part"),
        pytest.param('"bob \x1b[2J"@example.com', id="escape-in-quoted-local-part"),
        pytest.param('"bob\x7f"@example.com', id="del-in-quoted-local-part"),
        pytest.param('"bob\x85"@example.com', id="c1-in-quoted-local-part"),
    ],
)
def test_invalid_recipients_get_553(address: str) -> None:
    result = check_recipient(address, 0, 100)
    assert isinstance(result, Reject)
    assert result.reply.code == 553
    assert result.reply.enhanced == "5.1.3"
    # The reply quotes the address as printable ASCII: no control goes back to the client.
    assert result.reply.render().isascii() and result.reply.render().isprintable()


# -- check_sender_syntax


@pytest.mark.parametrize(
    "sender", [NULL_SENDER, "alice@shop.example.com", "Alice+x@Shop.Example.Com"]
)
def test_sender_syntax_accepts_addresses_and_the_null_sender(sender: str) -> None:
    assert check_sender_syntax(sender) == ACCEPT


@pytest.mark.parametrize(
    "sender",
    [
        "",
        "alice",
        "alice@",
        "alice%evil.test@shop.example.com",
        "evil!alice@shop.example.com",
        "alice @shop.example.com",
        "alice@shop.example.com\n",
        "<alice@shop.example.com>",
        "<<>>",
        '"alice\x00 x"@shop.example.com',
        '"alice\x7f"@shop.example.com',
    ],
)
def test_sender_syntax_rejects_non_addresses_with_553(sender: str) -> None:
    result = check_sender_syntax(sender)
    assert isinstance(result, Reject)
    assert result.reply.code == 553
    assert result.reply.enhanced == "5.1.7"
    assert result.reply.render().isascii() and result.reply.render().isprintable()


# -- check_content


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"Subject: x\r\n\r\nbody\r\n", id="crlf"),
        pytest.param(b"Subject: x\r\n\r\n", id="no-body"),
        pytest.param(b"Subject: x\r\n\r\nno final line break", id="no-final-eol"),
        pytest.param(b"Subject: x\r\n\r\n\r\n\r\nblank lines\r\n", id="blank-lines"),
        pytest.param(b"Subject: caf\xc3\xa9\r\n\r\n\x80\xff\r\n", id="8bit"),
        pytest.param(b"", id="empty"),
    ],
)
def test_content_with_crlf_line_ends_is_accepted(content: bytes) -> None:
    assert check_content(content, 1024) == ACCEPT


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"Subject: x\n\nbody\n", id="all-bare-lf"),
        pytest.param(b"Subject: x\r\n\r\nline one\nline two\r\n", id="bare-lf-in-body"),
        pytest.param(b"Subject: x\r\n\r\nbody\n", id="bare-lf-at-end"),
        pytest.param(b"Subject: x\r\n\r\nbody\n.\r\nsmuggled\r\n", id="smuggling-lf-dot"),
        pytest.param(b"Subject: x\r\n\r\nbody\r\n.\nsmuggled\r\n", id="smuggling-dot-lf"),
        pytest.param(b"Subject: x\r\n\r\nline one\rline two\r\n", id="bare-cr-in-body"),
        pytest.param(b"Subject: x\r\n\r\nbody\r", id="bare-cr-at-end"),
        pytest.param(b"Subject: x\r\r\n\r\nbody\r\n", id="cr-cr-lf"),
        pytest.param(b"Subject: x\n\r\n\r\nbody\r\n", id="lf-cr-lf"),
        pytest.param(b"\n", id="only-lf"),
        pytest.param(b"\r", id="only-cr"),
    ],
)
def test_bare_cr_or_lf_is_rejected(content: bytes) -> None:
    result = check_content(content, 1024)
    assert result == BARE_LINE_ENDING
    assert isinstance(result, Reject)
    assert result.reply.code == 554


@pytest.mark.parametrize(
    ("size", "max_bytes", "accepted"),
    [(1023, 1024, True), (1024, 1024, True), (1025, 1024, False), (10_000, 1024, False)],
)
def test_size_limit(size: int, max_bytes: int, accepted: bool) -> None:
    content = b"Subject: x\r\n\r\n" + b"a" * (size - 14)
    assert len(content) == size
    result = check_content(content, max_bytes)
    if accepted:
        assert result == ACCEPT
    else:
        assert isinstance(result, Reject)
        assert result.reply.code == 552
        assert result.reply.enhanced == "5.3.4"
        assert str(max_bytes) in result.reply.text


def test_only_crlf_agrees_with_the_look_around_rule_on_random_bytes() -> None:
    """The counting check equals the definition: no CR without LF after, no LF without CR."""
    import random
    import re

    from relay.core.policy import has_only_crlf

    bare = re.compile(rb"\r(?!\n)|(?<!\r)\n")
    rng = random.Random(5)  # noqa: S311 (test data)
    for _ in range(20_000):
        text = bytes(rng.choice(b"a.\r\n") for _ in range(rng.randint(0, 10)))
        assert has_only_crlf(text) == (bare.search(text) is None), text


# -- check_header_size


@pytest.mark.parametrize(
    ("content", "accepted"),
    [
        pytest.param(b"Subject: " + b"x" * 89 + b"\r\n\r\nbody" * 1000, True, id="at-the-limit"),
        pytest.param(b"Subject: " + b"x" * 90 + b"\r\n\r\nbody", False, id="one-byte-over"),
        pytest.param(b"Subject: x\r\n" + b" folded\r\n" * 20 + b"\r\n", False, id="folded"),
        pytest.param(b"\r\n" + b"Subject: x\r\n" * 20, True, id="no-header-at-all"),
        pytest.param(b"Subject: x\r\n" * 20, False, id="no-empty-line"),
    ],
)
def test_header_size_limit(content: bytes, accepted: bool) -> None:
    result = check_header_size(content, 100)
    if accepted:
        assert result == ACCEPT
    else:
        assert isinstance(result, Reject)
        assert result.reply.render() == "552 5.3.4 Header block too big (at most 100 bytes)"
