"""relay/core/contacts.py: what a contact may hold, CSV headers and rows, and what an import
does to a stored contact."""

from __future__ import annotations

from typing import Any

import pytest

from relay.core.contacts import (
    Fields,
    Header,
    Patch,
    Stored,
    check_attributes,
    check_contact,
    check_header,
    check_patch,
    check_row,
    check_tags,
    combined,
    merged,
)

HEADER = ["Email", "First Name", "last-name", "company", "tags", "unsubscribed", "Plan", "id"]


def header() -> Header:
    checked = check_header(HEADER)
    assert isinstance(checked, Header)
    return checked


def test_header_names_known_columns_and_the_rest_are_attributes() -> None:
    h = header()
    assert (h.email, h.tags, h.unsubscribed, h.width) == (0, 4, 5, 8)
    assert h.names == (("first_name", 1), ("last_name", 2), ("company", 3))
    assert h.attributes == (("Plan", 6), ("id", 7))


@pytest.mark.parametrize(
    ("cells", "problem"),
    [
        (["name"], "header: an 'email' column is required"),
        (["email", "EMAIL"], "header: column 'email' twice"),
        (["email", "x", "x"], "header: column 'x' twice"),
        (["email", "k" * 65], "header: column '" + "k" * 64 + "': at most 64 characters"),
        (["email", *(f"a{n}" for n in range(51))], "header: at most 50 attribute columns"),
    ],
)
def test_header_problems(cells: list[str], problem: str) -> None:
    checked = check_header(cells)
    assert isinstance(checked, list) and problem in checked


def test_read_only_columns_are_ignored() -> None:
    h = check_header(["email", "email_count", "last_email_sent"])
    assert isinstance(h, Header) and h.attributes == ()
    assert check_row(h, ["a@x.co", "9", "yesterday"]) == Fields("a@x.co")


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (
            [" A@X.co ", " Ann ", "", "Co", "vip; news|vip", "yes", "gold", ""],
            Fields(
                "a@x.co", "Ann", None, "Co", {"Plan": "gold"}, ("vip", "news"), unsubscribed=True
            ),
        ),
        (["a@x.co"], Fields("a@x.co")),  # short rows: the other cells are empty
        (["a@x.co", "", "", "", "", "No", "", ""], Fields("a@x.co")),
        (["", "Ann"], "email: missing"),
        (["a@", "Ann"], "email: not an email address"),
        (["a@x.co", "x" * 201], "first_name: at most 200 characters"),
        (["a@x.co", "A\u0085B"], "first_name: no control characters"),  # C1: NEL
        (["a@x.co", "", "", "", "a,b"], "tags: no ';', '|' or ',' in a tag"),
        (["a@x.co", "", "", "", ";".join(f"t{n}" for n in range(51))], "tags: at most 50"),
        (["a@x.co", "", "", "", "", "maybe"], "unsubscribed: true/false, yes/no or 1/0"),
        (["a@x.co", "", "", "", "", "", "v" * 1001], "attributes.Plan: at most 1000 characters"),
        (["a@x.co", *[""] * 8], "9 cells, the header has 8"),
    ],
)
def test_rows(cells: list[str], expected: Fields | str) -> None:
    assert check_row(header(), cells) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"a": [1]}, "attributes.a: a text, number, true, false or null (no lists or objects)"),
        ({"a": float("nan")}, "attributes.a: a finite number"),
        ({"a": 2**60}, "attributes.a: a number out of range"),
        ({"": 1}, "attributes: keys of 1 to 64 characters, no control characters"),
        ({f"k{n}": 1 for n in range(51)}, "attributes: at most 50 keys"),
        ({f"k{n}": "v" * 900 for n in range(10)}, "attributes: at most 8192 characters"),
        ([], "attributes: must be an object"),
    ],
)
def test_attribute_problems(value: Any, problem: str) -> None:
    checked = check_attributes(value)
    assert isinstance(checked, str) and checked.startswith(problem)


def test_attributes_and_tags_that_pass() -> None:
    assert check_attributes({"n": 1, "f": 1.5, "b": True, "z": None, "s": "t"}) == {
        "n": 1,
        "f": 1.5,
        "b": True,
        "z": None,
        "s": "t",
    }
    assert check_tags([" a ", "b", "a"]) == ("a", "b")
    assert check_tags(["", "b"]) == "tags: each must be a non-empty text"


def test_a_post_object() -> None:
    body = {"email": "B@x.co", "first_name": "B", "tags": ["t"], "email_count": 3}
    assert check_contact(body) == Fields("b@x.co", "B", tags=("t",))
    assert check_contact({"email": "b@x.co", "colour": 1, "unsubscribed": "no"}) == [
        "colour: unknown key",
        "unsubscribed: true or false (false changes nothing here; PATCH it)",
    ]
    assert check_contact([]) == ["a contact must be an object"]


def test_a_patch() -> None:
    assert check_patch({"company": " C ", "tags": [], "unsubscribed": False}, "a@x.co") == Patch(
        {"company": "C", "tags": (), "unsubscribed": False}
    )
    assert check_patch({"email": "A@X.CO"}, "a@x.co") == Patch({})
    assert check_patch({"created_at": 1, "unsubscribed": 1}, "a@x.co") == [
        "created_at: read-only (the relay keeps it)",
        "unsubscribed: true or false",
    ]


BEFORE = Stored("Ann", "Lee", "Co", {"a": 1, "b": 2}, ("x",), False, None, 100.0)


def test_an_import_adds_and_never_takes_away() -> None:
    given = Fields("a@x.co", None, "Li", None, {"b": 3, "c": 4}, ("y", "x"))
    assert merged(BEFORE, given, 200.0) == Stored(
        "Ann", "Li", "Co", {"a": 1, "b": 3, "c": 4}, ("x", "y"), False, None, 100.0
    )
    unsubscribed = merged(BEFORE, Fields("a@x.co", unsubscribed=True), 200.0)
    assert isinstance(unsubscribed, Stored)
    assert (unsubscribed.unsubscribed, unsubscribed.unsubscribed_at) == (True, 200.0)
    # Once unsubscribed, an import leaves it so, and its time.
    again = merged(unsubscribed, Fields("a@x.co"), 300.0)
    assert isinstance(again, Stored)
    assert (again.unsubscribed, again.unsubscribed_at) == (True, 200.0)


def test_a_new_contact_and_the_bounds_once_merged() -> None:
    new = merged(None, Fields("a@x.co", "A", tags=("t",)), 50.0)
    assert new == Stored("A", "", "", {}, ("t",), False, None, 50.0)
    many = tuple(f"t{n}" for n in range(50))
    full = Stored("", "", "", {}, many, False, None, 1.0)
    assert isinstance(merged(full, Fields("a@x.co", tags=("t0",)), 2.0), Stored)  # has it
    assert merged(full, Fields("a@x.co", tags=("new",)), 2.0) == (
        "tags: at most 50, with the 50 the contact has"
    )


def test_one_email_twice_in_a_batch() -> None:
    first = Fields("a@x.co", "A", None, None, {"k": 1}, ("x",), unsubscribed=True)
    then = Fields("a@x.co", "B", "L", None, {"k": 2, "m": 3}, ("y",))
    assert combined(first, then) == Fields(
        "a@x.co", "B", "L", None, {"k": 2, "m": 3}, ("x", "y"), unsubscribed=True
    )
