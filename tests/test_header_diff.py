"""The header diff and the stats helpers: pure, no event loop."""

from __future__ import annotations

import pytest

from relay.core.header_diff import HeaderChange, header_block, header_diff
from relay.core.stats import percentile, success_rate

ORIGINAL = (
    b"From: Shop <orders@shop.example.com>\r\n"
    b"To: a@example.org\r\n"
    b"Bcc: boss@shop.example.com\r\n"
    b"Subject: Your order\r\n"
    b"Message-ID: <1@shop.example.com>\r\n"
)
SENT = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n"
    b"\tb=abc\r\n"
    b"Received: from shop (127.0.0.1) by relay.test\r\n"
    b"From: Sales Team <sales@example.com>\r\n"
    b"To: a@example.org\r\n"
    b"Subject: Your order\r\n"
    b"Message-ID: <1@shop.example.com>\r\n"
    b"\r\n"
    b"Body: not a header\r\n"
)


def test_relay_rewrite() -> None:
    assert header_diff(ORIGINAL, SENT) == [
        HeaderChange("DKIM-Signature", "added", (), ("v=1; a=rsa-sha256; d=example.com;\tb=abc",)),
        HeaderChange("Received", "added", (), ("from shop (127.0.0.1) by relay.test",)),
        HeaderChange(
            "From",
            "changed",
            ("Shop <orders@shop.example.com>",),
            ("Sales Team <sales@example.com>",),
        ),
        HeaderChange("Bcc", "removed", ("boss@shop.example.com",), ()),
    ]


def test_identical_blocks_have_no_changes() -> None:
    assert header_diff(ORIGINAL, ORIGINAL) == []
    assert header_diff(b"", b"") == []


def test_names_compare_case_insensitively_and_keep_their_first_spelling() -> None:
    assert header_diff(b"SUBJECT: hi\r\n", b"Subject: hi\r\n") == []
    assert header_diff(b"SUBJECT: hi\r\n", b"subject: ho\r\n") == [
        HeaderChange("subject", "changed", ("hi",), ("ho",))
    ]
    assert header_diff(b"X-A: 1\r\nx-a: 2\r\n", b"") == [
        HeaderChange("X-A", "removed", ("1", "2"), ())
    ]


@pytest.mark.parametrize(
    ("original", "sent"),
    [
        (b"Subject: a long\r\n subject\r\n", b"Subject: a long subject\r\n"),
        (b"Subject: a long\n subject\n", b"Subject: a long subject"),
        (b"Subject:   padded  \r\n", b"Subject: padded"),
        (b"Subject : obsolete space\r\n", b"Subject: obsolete space\r\n"),
        (b"Subject:\r\n folded at once\r\n", b"Subject: folded at once\r\n"),
    ],
    ids=["crlf-fold", "lf-fold", "stripped", "space-before-colon", "empty-first-line"],
)
def test_unfolded_and_stripped_values_compare_equal(original: bytes, sent: bytes) -> None:
    assert header_diff(original, sent) == []


def test_fold_whitespace_is_kept() -> None:
    [change] = header_diff(b"X: a\r\n\t\tb\r\n", b"X: a b\r\n")
    assert change.before == ("a\t\tb",)


def test_repeated_fields_compare_as_ordered_lists() -> None:
    original = b"Received: one\r\nReceived: two\r\n"
    assert header_diff(original, b"Received: zero\r\n" + original) == [
        HeaderChange("Received", "changed", ("one", "two"), ("zero", "one", "two"))
    ]
    assert header_diff(original, b"Received: two\r\nReceived: one\r\n") == [
        HeaderChange("Received", "changed", ("one", "two"), ("two", "one"))
    ]
    # Other fields between the repeats do not matter; only each name's own order does.
    assert header_diff(original, b"Received: one\r\nX: 1\r\nReceived: two\r\n") == [
        HeaderChange("X", "added", (), ("1",))
    ]


def test_order_is_sent_first_then_removed_in_original_order() -> None:
    original = b"A: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n"
    sent = b"D: 2\r\nE: 1\r\nB: 2\r\n"
    assert [(c.name, c.change) for c in header_diff(original, sent)] == [
        ("D", "changed"),
        ("E", "added"),
        ("B", "changed"),
        ("A", "removed"),
        ("C", "removed"),
    ]


@pytest.mark.parametrize(
    "garbage",
    [
        b"no colon here\r\n",
        b": no name\r\n",
        b"Bad Name: space in the name\r\n",
        b"\r\n",
        b"\x00\xff\xfe\r\n",
        b"\r\r\n",  # a line that is a lone CR
    ],
)
def test_malformed_lines_are_skipped(garbage: bytes) -> None:
    assert header_diff(garbage + b"Subject: hi\r\n", b"Subject: hi\r\n") == []
    assert header_diff(b"Subject: hi\r\n" + garbage, b"Subject: hi\r\n") == []


def test_continuation_with_no_field_before_it_is_skipped() -> None:
    assert header_diff(b" orphan\r\n\tline\r\nSubject: hi\r\n", b"Subject: hi\r\n") == []


def test_continuation_after_a_malformed_line_is_not_attached() -> None:
    original = b"Subject: hi\r\nnonsense\r\n more\r\n"
    assert header_diff(original, b"Subject: hi\r\n") == []


def test_undecodable_bytes_are_replaced() -> None:
    [change] = header_diff(b"Subject: caf\xe9\r\n", b"Subject: caf\xc3\xa9\r\n")
    assert change == HeaderChange("Subject", "changed", ("caf\ufffd",), ("café",))


def test_non_ascii_field_names_are_skipped() -> None:
    assert header_diff(b"Subj\xc3\xa9ct: x\r\n", b"") == []


@pytest.mark.parametrize(
    ("message", "block"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore", b"A: 1\r\nB: 2"),
        (b"A: 1\nB: 2\n\nbody\n\nmore", b"A: 1\nB: 2"),
        (b"A: 1\r\nB: 2\r\n", b"A: 1\r\nB: 2\r\n"),
        (b"", b""),
        (b"\r\n\r\nbody", b""),
        (b"A: 1\n\nbody\r\n\r\n", b"A: 1"),  # whichever empty line comes first
    ],
)
def test_header_block(message: bytes, block: bytes) -> None:
    assert header_block(message) == block


def test_body_of_sent_is_ignored() -> None:
    assert header_diff(b"A: 1\r\n", b"A: 1\r\n\r\nB: 2\r\n") == []
    assert header_diff(b"A: 1\n", b"A: 1\n\nB: 2\n") == []


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.95, None),
        ([3.0], 0.95, 3.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 0.0, 1.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 0.5, 3.0),
        ([5.0, 1.0, 4.0, 2.0, 3.0], 1.0, 5.0),
        ([float(i) for i in range(1, 21)], 0.95, 19.0),  # rank ceil(19.0) = 19
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([float(i) for i in range(1, 101)], 0.07, 7.0),  # 0.07 * 100 is 7.000000000000001
        ([float(i) for i in range(1, 11)], 0.95, 10.0),  # rank ceil(9.5) = 10
    ],
)
def test_percentile_nearest_rank(values: list[float], fraction: float, expected: float) -> None:
    assert percentile(values, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_percentile_refuses_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1.0], fraction)


@pytest.mark.parametrize(
    ("good", "bad", "expected"),
    [(0, 0, None), (3, 0, 1.0), (0, 4, 0.0), (1, 2, 0.3333), (2, 1, 0.6667)],
)
def test_success_rate(good: int, bad: int, expected: float | None) -> None:
    assert success_rate(good, bad) == expected
