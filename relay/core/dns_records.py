"""Parsing the TXT records a sending domain publishes: SPF, DKIM keys, DMARC.

Pure: text in, parsed record (with the problems found) out. Fetching and the
recursive SPF walk live in ``relay.domain_verifier``.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

MAX_SPF_LOOKUPS = 10  # RFC 7208 4.6.4
MAX_SPF_VOID_LOOKUPS = 2
SPF_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})
_SPF_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_SPF_TERM = re.compile(r"^([+\-~?]?)([a-z0-9]+)(?:[:/=](.*))?$", re.IGNORECASE)


def is_spf(text: str) -> bool:
    return text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")


@dataclass(frozen=True)
class SpfTerm:
    qualifier: str  # "+", "-", "~", "?" ("" for modifiers)
    name: str  # mechanism or modifier name, lower case
    value: str  # after ":" "=" or "/"; "" when absent
    text: str  # as written, so a suggested record keeps what the owner wrote

    @property
    def domain(self) -> str:
        """The target of include/exists/redirect, without a final dot."""
        return self.value.lower().rstrip(".")


@dataclass(frozen=True)
class SpfRecord:
    terms: tuple[SpfTerm, ...]
    problems: tuple[str, ...]

    @property
    def lookups(self) -> int:
        """DNS lookups this record itself causes (includes' own ones not counted)."""
        return sum(1 for t in self.terms if t.name in SPF_LOOKUP_TERMS)

    @property
    def includes(self) -> tuple[str, ...]:
        return tuple(t.domain for t in self.terms if t.name == "include")

    @property
    def redirect(self) -> str | None:
        """Receivers ignore a redirect in a record that has an ``all`` (RFC 7208 6.1)."""
        if self.all is not None:
            return None
        return next((t.domain for t in self.terms if t.name == "redirect"), None)

    @property
    def all(self) -> SpfTerm | None:
        return next((t for t in self.terms if t.name == "all"), None)

    def with_includes(self, missing: list[str]) -> str:
        """This record with ``include:`` terms added before ``all`` (or a redirect)."""
        added = [SpfTerm("+", "include", d, f"include:{d}") for d in missing]
        terms = list(self.terms)
        at = next((i for i, t in enumerate(terms) if t.name in ("all", "redirect")), len(terms))
        terms[at:at] = added
        if not any(t.name in ("all", "redirect") for t in terms):
            terms.append(SpfTerm("~", "all", "", "~all"))
        return " ".join(["v=spf1", *(t.text for t in terms)])


def parse_spf(text: str) -> SpfRecord:
    terms: list[SpfTerm] = []
    problems: list[str] = []
    for word in text.split()[1:]:
        match = _SPF_TERM.match(word)
        if match is None:
            problems.append(f"unreadable term {word!r}")
            continue
        qualifier, name, value = match.group(1), match.group(2).lower(), match.group(3) or ""
        if "=" in word and name not in _SPF_MECHANISMS:
            if name in ("redirect", "exp") and not value:
                problems.append(f"{name}= needs a domain")
            if name in ("redirect", "exp") and any(t.name == name for t in terms):
                problems.append(f"{name}= appears twice")
            terms.append(SpfTerm("", name, value, word))
            continue
        if name not in _SPF_MECHANISMS:
            problems.append(f"unknown mechanism {word!r}")
            continue
        if name in ("include", "exists", "ip4", "ip6") and not value:
            problems.append(f"{name} needs {'an address' if name[:2] == 'ip' else 'a domain'}")
            continue
        terms.append(SpfTerm(qualifier or "+", name, value, word))
    return SpfRecord(tuple(terms), tuple(problems))


def tags(text: str) -> dict[str, str]:
    """``k=v; k=v`` tag lists (DKIM, DMARC); whitespace inside values is dropped."""
    found: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            found.setdefault(name.strip().lower(), "".join(value.split()))
    return found


@dataclass(frozen=True)
class DkimKeyRecord:
    key_type: str  # k=, "rsa" by default
    public_key: str  # p=, "" when revoked
    problems: tuple[str, ...]


def parse_dkim_key(text: str) -> DkimKeyRecord:
    t = tags(text)
    problems = []
    if "v" in t and t["v"] != "DKIM1":
        problems.append(f"v={t['v']} (must be DKIM1)")
    if "p" not in t:
        problems.append("no p= tag (the public key)")
    return DkimKeyRecord(t.get("k", "rsa").lower(), t.get("p", ""), tuple(problems))


class Alignment(enum.StrEnum):
    RELAXED = "r"
    STRICT = "s"


@dataclass(frozen=True)
class DmarcRecord:
    policy: str  # none | quarantine | reject
    subdomain_policy: str  # sp=, the policy for subdomains; p= when absent
    dkim_alignment: Alignment
    spf_alignment: Alignment
    problems: tuple[str, ...]


_POLICIES = ("none", "quarantine", "reject")


def is_dmarc(text: str) -> bool:
    return text.replace(" ", "").lower().startswith("v=dmarc1")


def parse_dmarc(text: str) -> DmarcRecord:
    t = tags(text)
    problems = []
    if not text.lstrip().startswith("v=DMARC1"):
        problems.append("must start with v=DMARC1")
    policy = t.get("p", "").lower()
    if policy not in _POLICIES:
        problems.append(f"p={policy or '(missing)'} (must be none, quarantine or reject)")
    subdomain_policy = t.get("sp", policy).lower()
    if subdomain_policy not in _POLICIES:
        problems.append(f"sp={subdomain_policy} (must be none, quarantine or reject)")
        subdomain_policy = policy
    modes = {}
    for tag in ("adkim", "aspf"):
        value = t.get(tag, "r").lower()
        if value not in ("r", "s"):
            problems.append(f"{tag}={value} (must be r or s)")
            value = "r"
        modes[tag] = Alignment(value)
    return DmarcRecord(policy, subdomain_policy, modes["adkim"], modes["aspf"], tuple(problems))


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package; never fetched


def organizational_domain(domain: str) -> str:
    """example.co.uk for mail.example.co.uk (RFC 7489 3.2, by the Public Suffix List)."""
    domain = domain.lower().rstrip(".")
    return _public_suffixes().privatesuffix(domain) or domain


def aligned(a: str, b: str, mode: Alignment) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode is Alignment.STRICT:
        return a == b
    return organizational_domain(a) == organizational_domain(b)
