"""The fingerprint that tells an SMTP client's retry from new mail (pure)."""

from __future__ import annotations

from relay.core.fingerprint import fingerprint

CONTENT = b"From: a@shop.example.com\r\nMessage-ID: <1@shop>\r\n\r\nhello\r\n"
BASE = ("shop", b"<1@shop>", "a@shop.example.com", ("x@example.org", "y@example.org"), CONTENT)


def test_the_same_transaction_has_the_same_fingerprint_of_64_hex_digits() -> None:
    first = fingerprint(*BASE)
    assert first is not None and len(first) == 64 and int(first, 16) >= 0
    assert fingerprint(*BASE) == first


def test_recipients_in_another_order_or_case_are_the_same_transaction() -> None:
    assert fingerprint(
        "shop", b"<1@shop>", "a@shop.example.com", ("Y@Example.org", "x@example.org"), CONTENT
    ) == fingerprint(*BASE)


def test_each_part_changes_it() -> None:
    site, mid, sender, rcpts, content = BASE
    others = [
        ("blog", mid, sender, rcpts, content),
        (site, b"<2@shop>", sender, rcpts, content),
        (site, mid, "b@shop.example.com", rcpts, content),
        (site, mid, sender, ("x@example.org",), content),  # a split by recipient
        (site, mid, sender, ("x@example.org", "z@example.org"), content),
        (site, mid, sender, rcpts, content + b"more\r\n"),
        (site, mid, sender, rcpts, content.replace(b"From:", b"Sender:")),
    ]
    prints = {fingerprint(*o) for o in others}
    assert fingerprint(*BASE) not in prints and len(prints) == len(others)


def test_parts_do_not_run_into_each_other() -> None:
    assert fingerprint("shop", b"<1@shop>", "ab", (), b"") != fingerprint(
        "shop", b"<1@shop>a", "b", (), b""
    )


def test_a_message_without_a_message_id_has_none() -> None:
    site, _, sender, rcpts, content = BASE
    assert fingerprint(site, None, sender, rcpts, content) is None
    assert fingerprint(site, b"", sender, rcpts, content) is None
