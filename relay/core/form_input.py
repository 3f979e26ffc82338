"""A form submission: its checked fields, the visitor's reply-to, and whether a bot sent it.

Decides which submissions are bots (the honeypot field filled, or absent when
the form names one: DESIGN, public HTTP ingress) and which are invalid (a
required field empty, a value not a string or too long, a bad reply-to
address). A bot's submission is answered as if it were queued, so its other
problems are not looked at. Guarantees: the cleaned fields are strings with
names free of control characters, in the order received; the reply-to is an
address the message builder can write into a header; the cost is linear in
the submission's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from relay.core.send_request import address_problem, shown, text_problem

MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class FormInput:
    fields: Mapping[str, str]  # without the honeypot; in the order received
    reply_to: str | None
    is_bot: bool = False


def check_form(
    fields: Mapping[str, object],
    *,
    required: tuple[str, ...],
    reply_to_field: str | None,
    honeypot_field: str | None,
    max_field_chars: int,
    max_fields: int,
) -> FormInput | list[str]:
    """The cleaned submission, or every problem as ``"formData.<name>: <what>"``."""
    if _is_bot(fields, honeypot_field):
        return FormInput(fields=MappingProxyType({}), reply_to=None, is_bot=True)
    if len(fields) > max_fields:  # refused before a look at each: no cost beyond the cap
        return [f"formData: too many fields ({len(fields)}; at most {max_fields})"]
    problems: list[str] = []
    cleaned: dict[str, str] = {}
    for name, value in fields.items():
        path = f"formData.{shown(name)}"
        if not isinstance(name, str) or not name:
            problems.append(f"{path}: a field name must be a non-empty string")
        elif problem := text_problem(name, header=True, limit=MAX_NAME_CHARS):
            problems.append(f"{path}: the field's name is {problem}")
        elif not isinstance(value, str):
            problems.append(f"{path}: must be a string")
        elif problem := text_problem(value, header=False, limit=max_field_chars):
            problems.append(f"{path}: {problem}")
        elif name != honeypot_field:
            cleaned[name] = value
    for name in required:
        if name not in fields:
            problems.append(f"formData.{name}: is required")
        elif isinstance(fields[name], str) and not str(fields[name]).strip():
            problems.append(f"formData.{name}: must not be empty")
    reply_to = _reply_to(cleaned, reply_to_field, problems)
    if problems:
        return problems
    return FormInput(fields=MappingProxyType(cleaned), reply_to=reply_to)


def _is_bot(fields: Mapping[str, object], honeypot_field: str | None) -> bool:
    """Honeypot filled (with anything) or absent; a person's browser sends it empty."""
    if honeypot_field is None:
        return False
    return fields.get(honeypot_field) != ""


def _reply_to(cleaned: dict[str, str], field: str | None, problems: list[str]) -> str | None:
    address = cleaned.get(field, "").strip() if field is not None else ""
    if not address:
        return None
    if problem := address_problem(address):
        problems.append(f"formData.{field}: {problem}")
        return None
    return address
