"""Form submissions: cleaned fields, the visitor's reply-to, bots told apart."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from relay.core.form_input import FormInput, check_form


def check(fields: Mapping[str, object], **changes: object) -> FormInput | list[str]:
    settings: dict[str, object] = {
        "required": ("email", "message"),
        "reply_to_field": "email",
        "honeypot_field": "website",
        "max_field_chars": 100,
        "max_fields": 6,
    }
    return check_form(fields, **{**settings, **changes})  # type: ignore[arg-type]


GOOD = {"name": "Ann", "email": " ann@example.net ", "website": "", "message": "Hi\r\nthere"}


def test_a_good_submission() -> None:
    found = check(GOOD)
    assert isinstance(found, FormInput) and not found.is_bot
    assert list(found.fields.items()) == [
        ("name", "Ann"),
        ("email", " ann@example.net "),
        ("message", "Hi\r\nthere"),
    ]
    assert found.reply_to == "ann@example.net"


@pytest.mark.parametrize(
    "fields",
    [
        {**GOOD, "website": "https://spam.example"},
        {**GOOD, "website": " "},
        {**GOOD, "website": ["x"]},
        {**GOOD, "website": None},
        {key: value for key, value in GOOD.items() if key != "website"},
        {"website": "x", "email": "not an address", "extra": [1]},  # invalid too: still a bot
    ],
)
def test_bots(fields: dict[str, object]) -> None:
    assert check(fields) == FormInput(fields={}, reply_to=None, is_bot=True)


def test_no_honeypot_configured() -> None:
    found = check({"email": "a@example.net", "message": "m"}, honeypot_field=None)
    assert isinstance(found, FormInput) and not found.is_bot


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"message": None}, "formData.message: must be a string"),
        ({"message": 5}, "formData.message: must be a string"),
        ({"message": ["a", "b"]}, "formData.message: must be a string"),
        ({"message": {"a": 1}}, "formData.message: must be a string"),
        ({"message": "   "}, "formData.message: must not be empty"),
        ({"message": "x" * 101}, "formData.message: longer than 100 characters"),
        ({"message": "a\0b"}, "formData.message: contains a control character (U+0000)"),
        ({"message": "\udc80"}, "formData.message: not valid Unicode"),
        ({"email": "nobody"}, "formData.email: not an email address"),
        ({"email": "a@example.net\r\nBcc: x@evil.test"}, "formData.email: not an email address"),
        ({"email": "=?utf-8?q?=0A?=@example.net"}, "formData.email: not an email address"),
        ({"email": '"ü"@example.net'}, "formData.email: non-ASCII addresses are not supported"),
        ({"na\nme": "x"}, "formData.'na\\nme': the field's name is contains a control character"),
        ({"": "x"}, "formData.: a field name must be a non-empty string"),
        ({"n" * 101: "x"}, "formData.'nnnnnnnn"),
        ({"extra": "1", "more": "2", "third": "3"}, "formData: too many fields (7; at most 6)"),
    ],
)
def test_problems(fields: dict[str, object], expected: str) -> None:
    found = check({**GOOD, **fields})
    assert isinstance(found, list) and any(p.startswith(expected) for p in found), found


def test_required_fields_missing() -> None:
    assert check({"website": ""}) == [
        "formData.email: is required",
        "formData.message: is required",
    ]


def test_reply_to_optional_when_not_required() -> None:
    found = check({"website": "", "message": "m"}, required=("message",))
    assert isinstance(found, FormInput) and found.reply_to is None


def test_fields_named_like_headers_are_only_fields() -> None:
    found = check({**GOOD, "bcc": "x@evil.test", "to": "y@evil.test"})
    assert isinstance(found, FormInput)
    assert found.fields["bcc"] == "x@evil.test" and found.reply_to == "ann@example.net"


def test_too_many_fields_cost_no_more_than_the_cap() -> None:
    fields = {f"f{i}": [i] for i in range(100_000)}
    fields["website"] = ""  # type: ignore[assignment]
    assert check(fields) == ["formData: too many fields (100001; at most 6)"]
