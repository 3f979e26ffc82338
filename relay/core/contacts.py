"""A site's contacts: what a valid contact is, and how an import changes a stored one.

Pure: the admin API's JSON objects and the rows of a CSV import are checked
here, one at a time, into ``Fields`` (what the caller set; ``None`` = not
given), and ``merged`` computes the stored values from the contact there
before (if any). An import never takes anything away: empty CSV cells and
absent keys leave a field as it is, tags are added to the contact's, attributes
are merged key by key, and ``unsubscribed`` may only be set (only PATCH
re-subscribes someone; relay/contact_controller.py). Emails are lower-cased.

Bounds (so one contact stays small and a 100,000-row import bounded):
names and company 200 characters, 50 tags of 64 characters, 50 attributes
(keys 64 characters, text values 1,000, all keys and values 8,192 together),
no control characters anywhere. Tags may not hold ``;``, ``|`` or ``,``: in a
CSV ``tags`` cell, ``;`` or ``|`` separate them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.core.addresses import control_character, is_address

MAX_EMAIL_CHARS = 254  # RFC 5321 4.5.3.1.3's path less its brackets, as is_address
MAX_TEXT_CHARS = 200  # first_name, last_name, company
MAX_TAGS, MAX_TAG_CHARS = 50, 64  # contact_tags.tag is String(64)
MAX_ATTRIBUTES, MAX_KEY_CHARS, MAX_VALUE_CHARS = 50, 64, 1000
MAX_ATTRIBUTE_CHARS = 8192  # every key and text value of one contact together
MAX_WHOLE = 2**53  # integers beyond this lose digits in JSON readers (JavaScript's numbers)
NAMES = ("first_name", "last_name", "company")
# Kept by the relay: ignored in a POST (a GET's object may be sent back), refused by PATCH.
READ_ONLY = ("last_email_sent", "email_count", "unsubscribed_at", "created_at", "updated_at")
TAG_SEPARATORS = re.compile(r"[;|]")
_TAG_FORBIDDEN = re.compile(r"[;|,]")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0", "")

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Fields:
    """What one POST object or CSV row sets; None: not given, the stored value stays."""

    email: str  # lower case
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    attributes: Mapping[str, Scalar] = field(default_factory=dict)  # merged into the stored
    tags: tuple[str, ...] = ()  # added to the stored
    unsubscribed: bool = False  # True: mark unsubscribed; never re-subscribes


@dataclass(frozen=True)
class Stored:
    """The values of a stored contact that an import may change."""

    first_name: str
    last_name: str
    company: str
    attributes: Mapping[str, Scalar]
    tags: tuple[str, ...]
    unsubscribed: bool
    unsubscribed_at: float | None
    created_at: float


@dataclass(frozen=True)
class Patch:
    """A PATCH: the fields given, replacing (tags and attributes whole)."""

    values: Mapping[str, Any]  # column name -> new value; unsubscribed as a bool


# -- checks of one value


def check_email(value: Any) -> str | None:
    """The lower-cased address, or None when it is not one."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value.lower() if is_address(value) else None


def _text_problem(name: str, value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return f"{name}: must be a text"
    if len(value) > limit:
        return f"{name}: at most {limit} characters"
    if control_character(value):
        return f"{name}: no control characters"
    return None


def check_tags(value: Any) -> tuple[str, ...] | str:
    """The tags, in order without repeats, or the problem."""
    if not isinstance(value, list | tuple):
        return "tags: must be a list of texts"
    tags: dict[str, None] = {}
    for tag in value:
        if not isinstance(tag, str) or not tag.strip():
            return "tags: each must be a non-empty text"
        tag = tag.strip()
        if len(tag) > MAX_TAG_CHARS or control_character(tag):
            return f"tags: each at most {MAX_TAG_CHARS} characters, no control characters"
        if _TAG_FORBIDDEN.search(tag):
            return "tags: no ';', '|' or ',' in a tag"
        tags[tag] = None
    if len(tags) > MAX_TAGS:
        return f"tags: at most {MAX_TAGS}"
    return tuple(tags)


def check_attributes(value: Any) -> dict[str, Scalar] | str:
    """A JSON object of scalars (text, number, true/false, null) within the bounds, or why not."""
    if not isinstance(value, Mapping):
        return "attributes: must be an object"
    if len(value) > MAX_ATTRIBUTES:
        return f"attributes: at most {MAX_ATTRIBUTES} keys"
    chars = 0
    for key, item in value.items():
        if not key or len(key) > MAX_KEY_CHARS or control_character(key):
            return f"attributes: keys of 1 to {MAX_KEY_CHARS} characters, no control characters"
        problem = _scalar_problem(key, item)
        if problem:
            return problem
        chars += len(key) + (len(item) if isinstance(item, str) else 0)
    if chars > MAX_ATTRIBUTE_CHARS:
        return f"attributes: at most {MAX_ATTRIBUTE_CHARS} characters of keys and texts"
    return dict(value)


def _scalar_problem(key: str, item: Any) -> str | None:
    if isinstance(item, str):
        problem = _text_problem(f"attributes.{key[:64]}", item, MAX_VALUE_CHARS)
        return problem
    if isinstance(item, bool) or item is None:
        return None
    if isinstance(item, int):
        return None if abs(item) <= MAX_WHOLE else f"attributes.{key}: a number out of range"
    if isinstance(item, float):
        return None if math.isfinite(item) else f"attributes.{key}: a finite number"
    return f"attributes.{key}: a text, number, true, false or null (no lists or objects)"


# -- a POST object


def check_contact(body: Any) -> Fields | list[str]:
    """One contact of a POST (alone or in ``contacts``), or its problems."""
    if not isinstance(body, Mapping):
        return ["a contact must be an object"]
    problems = [
        f"{key}: unknown key"
        for key in body
        if key not in ("email", *NAMES, "attributes", "tags", "unsubscribed", *READ_ONLY)
    ]
    email = check_email(body.get("email"))
    if email is None:
        problems.append("email: required, an email address")
    names: dict[str, str] = {}
    for name in NAMES:
        if body.get(name) is not None:
            problem = _text_problem(name, body[name], MAX_TEXT_CHARS)
            if problem:
                problems.append(problem)
            else:
                names[name] = body[name].strip()
    attributes = check_attributes(body.get("attributes", {}))
    if isinstance(attributes, str):
        problems.append(attributes)
    tags = check_tags(body.get("tags", []))
    if isinstance(tags, str):
        problems.append(tags)
    unsubscribed = body.get("unsubscribed", False)
    if not isinstance(unsubscribed, bool):
        problems.append("unsubscribed: true or false (false changes nothing here; PATCH it)")
    if problems:
        return problems
    assert email is not None and not isinstance(attributes, str) and not isinstance(tags, str)
    return Fields(email, **names, attributes=attributes, tags=tags, unsubscribed=unsubscribed)


def check_patch(body: Mapping[str, Any], email: str) -> Patch | list[str]:
    """A PATCH of the contact ``email``: its values, or its problems."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in body.items():
        checked, problem = _patched(key, value, email)
        if problem:
            problems.append(problem)
        elif key != "email":
            values[key] = checked
    return problems or Patch(values)


def _patched(key: str, value: Any, email: str) -> tuple[Any, str | None]:
    """One PATCH key's new value and None, or None and the problem."""
    if key in NAMES:
        problem = _text_problem(key, value, MAX_TEXT_CHARS)
        return (None, problem) if problem else (value.strip(), None)
    if key in ("attributes", "tags"):
        checked = check_attributes(value) if key == "attributes" else check_tags(value)
        return (None, checked) if isinstance(checked, str) else (checked, None)
    if key == "unsubscribed":
        return (value, None) if isinstance(value, bool) else (None, "unsubscribed: true or false")
    if key == "email":
        if isinstance(value, str) and value.strip().lower() == email:
            return email, None
        return None, "email: cannot change; delete the contact and add the new one"
    if key in READ_ONLY:
        return None, f"{key}: read-only (the relay keeps it)"
    return None, f"{key}: unknown key"


# -- CSV rows


@dataclass(frozen=True)
class Header:
    """Which CSV column is which: the known columns' positions, the rest are attributes."""

    email: int
    names: tuple[tuple[str, int], ...]  # (first_name | last_name | company, position)
    tags: int | None
    unsubscribed: int | None
    attributes: tuple[tuple[str, int], ...]  # (key as in the header, position)
    width: int


def _column(name: str) -> str:
    """A header cell as a known column's name: "First Name" and "first-name" are first_name."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def check_header(cells: Sequence[str]) -> Header | list[str]:
    """The header row: an ``email`` column is required; names are matched without regard to
    letter case, spaces or dashes; read-only columns are ignored; others are attributes."""
    known: dict[str, int] = {}
    attributes: list[tuple[str, int]] = []
    problems: list[str] = []
    for position, cell in enumerate(cells):
        column = _column(cell)
        if column in ("email", *NAMES, "tags", "unsubscribed", *READ_ONLY):
            if column in known:
                problems.append(f"header: column {column!r} twice")
            known[column] = position
        elif cell.strip():
            key = cell.strip()
            if len(key) > MAX_KEY_CHARS or control_character(key):
                problems.append(f"header: column {key[:MAX_KEY_CHARS]!r}: at most 64 characters")
            elif key in dict(attributes):
                problems.append(f"header: column {key!r} twice")
            attributes.append((key, position))
    if "email" not in known:
        problems.append("header: an 'email' column is required")
    if len(attributes) > MAX_ATTRIBUTES:
        problems.append(f"header: at most {MAX_ATTRIBUTES} attribute columns")
    if problems:
        return problems
    return Header(
        known["email"],
        tuple((n, known[n]) for n in NAMES if n in known),
        known.get("tags"),
        known.get("unsubscribed"),
        tuple(attributes),
        len(cells),
    )


def check_row(header: Header, cells: Sequence[str]) -> Fields | str:
    """One CSV row: an empty cell sets nothing. Its ``Fields``, or the problem."""
    if len(cells) > header.width:
        return f"{len(cells)} cells, the header has {header.width}"
    cells = [*cells, *[""] * (header.width - len(cells))]  # short rows: trailing cells empty
    email = check_email(cells[header.email])
    if email is None:
        given = cells[header.email].strip()
        return "email: missing" if not given else "email: not an email address"
    names: dict[str, str] = {}
    for name, position in header.names:
        value = cells[position].strip()
        if value:
            problem = _text_problem(name, value, MAX_TEXT_CHARS)
            if problem:
                return problem
            names[name] = value
    tags: tuple[str, ...] = ()
    if header.tags is not None and cells[header.tags].strip():
        parts = [t for t in TAG_SEPARATORS.split(cells[header.tags]) if t.strip()]
        checked = check_tags(parts)
        if isinstance(checked, str):
            return checked
        tags = checked
    unsubscribed = False
    if header.unsubscribed is not None:
        flag = cells[header.unsubscribed].strip().lower()
        if flag not in _TRUE + _FALSE:
            return "unsubscribed: true/false, yes/no or 1/0"
        unsubscribed = flag in _TRUE
    attributes = check_attributes({k: cells[p] for k, p in header.attributes if cells[p]})
    if isinstance(attributes, str):
        return attributes
    return Fields(email, **names, attributes=attributes, tags=tags, unsubscribed=unsubscribed)


# -- what an import stores


def combined(first: Fields, then: Fields) -> Fields:
    """Two imports of one email in one batch as one (the later one's values win)."""
    return Fields(
        first.email,
        then.first_name if then.first_name is not None else first.first_name,
        then.last_name if then.last_name is not None else first.last_name,
        then.company if then.company is not None else first.company,
        {**first.attributes, **then.attributes},
        tuple(dict.fromkeys((*first.tags, *then.tags))),
        first.unsubscribed or then.unsubscribed,
    )


def merged(before: Stored | None, given: Fields, now: float) -> Stored | str:
    """The contact after the import of ``given``, or why it cannot be (too many tags or
    attributes once added to the stored ones)."""
    if before is None:  # ``given`` is within the bounds already
        before = Stored("", "", "", {}, (), False, None, now)
        tags, attributes = given.tags, given.attributes
    else:
        tags = tuple(dict.fromkeys((*before.tags, *given.tags)))
        if len(tags) > MAX_TAGS:
            return f"tags: at most {MAX_TAGS}, with the {len(before.tags)} the contact has"
        checked = check_attributes({**before.attributes, **given.attributes})
        if isinstance(checked, str):
            return f"{checked}, with the ones the contact has"
        attributes = checked
    unsubscribed = before.unsubscribed or given.unsubscribed
    return Stored(
        given.first_name if given.first_name is not None else before.first_name,
        given.last_name if given.last_name is not None else before.last_name,
        given.company if given.company is not None else before.company,
        attributes,
        tags,
        unsubscribed,
        before.unsubscribed_at if before.unsubscribed else (now if unsubscribed else None),
        before.created_at,
    )
