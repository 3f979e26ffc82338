"""The YAML reader's one tool: a section that records every problem with its path.

Accessors never raise: a wrong value is a problem (``"sites[1].from.email: not
an email address"``) and a default, so one read of the file reports every
problem at once. ``finish`` reports the keys nobody read.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from relay.core.addresses import control_character, is_address
from relay.core.model import AuthMode, MessageClass, Secret, Strategy, TlsMode, UpstreamKind

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
E = TypeVar("E", TlsMode, AuthMode, UpstreamKind, Strategy, MessageClass)
MISSING: Any = object()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Section:
    """One mapping of the YAML with its path; accessors record problems instead of raising."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.ok = isinstance(data, dict)
        if not self.ok and data is not None:  # None: missing, already reported as required
            self.problem("must be a mapping of keys to values")
        self._data: dict[str, Any] = data if isinstance(data, dict) else {}
        self._used: set[str] = set()

    def child(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def problem(self, message: str, key: str | None = None) -> None:
        where = self.child(key) if key is not None else (self.path or "(top level)")
        self.problems.append(f"{where}: {message}")

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str, default: Any = MISSING) -> Any:
        self._used.add(key)
        if key not in self._data or self._data[key] is None:
            if default is MISSING:
                self.problem("is required", key)
            return None if default is MISSING else default
        return self._data[key]

    def text(self, key: str, default: Any = MISSING) -> Any:
        value = self.raw(key, default)
        if value is None or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.problem("must be a string", key)
            return None
        value = str(value)
        if "\r" in value or "\n" in value:
            self.problem("must be a single line", key)
            return None
        return value

    def integer(self, key: str, default: Any = MISSING, minimum: int = 0) -> Any:
        value = self.raw(key, default)
        if value is None or value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem("must be a whole number", key)
            return None
        if value < minimum:
            self.problem(f"must be at least {minimum}", key)
            return None
        return value

    def number(self, key: str, default: float) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.problem("must be a positive number", key)
            return default
        return float(value)

    def cost(self, key: str) -> float | None:
        value = self.raw(key, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.problem("must be a number, 0 or more", key)
            return None
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.problem("must be true or false", key)
            return default
        return value

    def choice(self, key: str, enum: type[E], default: E) -> E:
        value = self.raw(key, default)
        try:
            return enum(value)
        except ValueError:
            allowed = " | ".join(e.value for e in enum)
            self.problem(f"must be one of {allowed} (got {value!r})", key)
            return default

    def items(self, key: str) -> Iterator[tuple[int, Any]]:
        value = self.raw(key, [])
        if not isinstance(value, list):
            self.problem("must be a list", key)
            return
        yield from enumerate(value)

    def section(self, key: str, required: bool = False) -> Section:
        return Section(self.raw(key, MISSING if required else {}), self.child(key), self.problems)

    def secret(self, key: str, required: bool = False) -> Secret | None:
        """``key`` inline, ``key_env: VAR`` or ``key_file: PATH``; exactly one of them."""
        given = [k for k in (key, f"{key}_env", f"{key}_file") if self.has(k)]
        self._used.update({key, f"{key}_env", f"{key}_file"})
        if len(given) > 1:
            self.problem(f"give only one of {', '.join(given)}", key)
            return None
        if not given:
            if required:
                self.problem(f"is required (as {key}, {key}_env or {key}_file)", key)
            return None
        source = given[0]
        value = self._data[source]
        if not isinstance(value, str) or not value:
            self.problem("must be a non-empty string", source)
            return None
        if source.endswith("_env"):
            if value not in os.environ:
                self.problem(f"environment variable {value} is not set", source)
                return None
            return Secret(os.environ[value])
        if source.endswith("_file"):
            try:
                return Secret(Path(value).read_text(encoding="utf-8").strip())
            except OSError as error:
                self.problem(f"cannot read {value} ({error.strerror})", source)
                return None
        return Secret(value)

    def finish(self) -> None:
        for key in self._data:
            if key not in self._used:
                self.problem("unknown key", str(key))


def check_unique(
    s: Section, key: str, index: int, value: str | None, seen: set[str], what: str
) -> None:
    if value is None:
        return
    if value in seen:
        s.problem(f"duplicate {what} {value!r}", f"{key}[{index}]")
    seen.add(value)


def read_name(s: Section, key: str) -> str | None:
    value: str | None = s.text(key)
    if value is not None and not _NAME.match(value):
        s.problem("use letters, digits, '.', '_' or '-' (at most 64)", key)
        return None
    return value


def read_address(s: Section, key: str, default: Any = MISSING) -> str | None:
    value: str | None = s.text(key, default)
    if value is not None and not is_address(value):
        s.problem("not an email address", key)
        return None
    return value


def read_display_name(s: Section, key: str) -> str | None:
    """A display name for the From header: one line without control characters."""
    value: str | None = s.text(key, None)
    found = control_character(value) if value is not None else None
    if found is not None:
        s.problem(f"must not contain control characters (found U+{ord(found):04X})", key)
        return None
    return value


def read_existing_file(s: Section, key: str) -> Path | None:
    value = s.text(key, None)
    if value is None:
        return None
    if not Path(value).is_file():
        s.problem(f"file not found: {value}", key)
    return Path(value)


def read_networks(s: Section, key: str) -> tuple[IpNetwork, ...]:
    """A list of CIDRs (a bare address is its own /32 or /128)."""
    networks = []
    for j, cidr in s.items(key):
        try:
            networks.append(ipaddress.ip_network(str(cidr), strict=False))
        except ValueError:
            s.problem(f"not a network (CIDR): {cidr!r}", f"{key}[{j}]")
    return tuple(networks)
