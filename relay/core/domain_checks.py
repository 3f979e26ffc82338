"""Is a sending domain's DNS right for the mail this relay sends? Pure checks.

``plan`` reads the directory: which envelope domains the domain's sites use
and which upstreams they route through (each upstream declares the SPF
include it needs). The adapter fetches what the plan names into ``DomainDns``;
``evaluate`` turns that into checks, each pass / warn / fail with what was
found and the exact record to publish, and ``preflight`` answers "will mail
from this site through this upstream pass DMARC?".
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from relay.core.addresses import domain_of
from relay.core.directory import Directory
from relay.core.dkim import key_record, txt_line, zone_line
from relay.core.dns_records import (
    MAX_SPF_LOOKUPS,
    MAX_SPF_VOID_LOOKUPS,
    Alignment,
    DmarcRecord,
    aligned,
    is_dmarc,
    organizational_domain,
    parse_dkim_key,
    parse_dmarc,
    parse_spf,
)
from relay.core.domains import Domain, DomainKey, KeyState
from relay.core.model import Site, Upstream, UpstreamKind

OWNERSHIP_PREFIX = "relay-verification="


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 -- a check's status, not a password
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str  # "ownership", "spf example.com", "dkim relay1", "dmarc", "alignment", "mx"
    status: Status
    required: bool  # a failing required check makes `relay dns verify` exit non-zero
    found: str  # what DNS holds, as text
    detail: str  # what is right or wrong, for a human
    publish: str | None = None  # the exact record to publish (zone-file line), when one is due


@dataclass(frozen=True)
class Plan:
    """What this relay's configuration expects of one domain's DNS."""

    domain: str
    key_states: tuple[DomainKey, ...]
    has_signing_key: bool
    ownership_token: str
    # envelope (bounce) domain -> upstream name -> the includes that upstream needs
    envelope_domains: Mapping[str, Mapping[str, tuple[str, ...]]]


@dataclass(frozen=True)
class SpfWalk:
    """One envelope domain's SPF, followed through includes and redirects."""

    domain: str
    records: tuple[str, ...]  # the v=spf1 TXT records at the domain itself
    lookups: int = 0  # DNS-querying terms, counted recursively (limit 10)
    void_lookups: int = 0  # includes/redirects that found nothing (limit 2)
    reached: frozenset[str] = frozenset()  # every domain included or redirected to
    problems: tuple[str, ...] = ()  # found below the top record


@dataclass(frozen=True)
class DomainDns:
    """The records ``plan`` asked for, as DNS answered."""

    domain: str
    apex_txt: tuple[str, ...] = ()
    dkim_txt: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # by selector
    dmarc_txt: tuple[str, ...] = ()
    dmarc_domain: str = ""  # where the DMARC record was looked up last (org-domain fallback)
    mx: tuple[str, ...] = ()
    spf: Mapping[str, SpfWalk] = field(default_factory=dict)  # by envelope domain
    errors: Mapping[str, str] = field(default_factory=dict)  # failed lookups by name


def ownership_token(secret: bytes, domain: str) -> str:
    """Stable per installation and domain: nobody can publish it without asking us."""
    digest = hmac.new(secret, f"domain-ownership:{domain}".encode(), hashlib.sha256)
    return digest.hexdigest()[:32]


def route_candidates(site: Site, directory: Directory) -> tuple[Upstream, ...]:
    """Upstreams a site's mail may leave through: its own list, else every active one."""
    if site.upstreams:
        found = (directory.upstream(name) for name in site.upstreams)
        return tuple(u for u in found if u is not None)
    return tuple(u for u in directory.upstreams if u.active)


def plan(name: str, directory: Directory, secret: bytes) -> Plan:
    name = name.lower()
    domain = directory.domain(name) or Domain(name)
    envelope: dict[str, dict[str, tuple[str, ...]]] = {}
    for site in directory.sites:
        from_domain, bounce_domain = domain_of(site.from_email), domain_of(site.envelope_sender)
        if name not in (from_domain, bounce_domain):
            continue
        needs = envelope.setdefault(bounce_domain, {})
        for upstream in route_candidates(site, directory):
            if upstream.kind is UpstreamKind.SMTP:
                needs[upstream.name] = upstream.spf_include
    return Plan(
        name,
        domain.keys,
        domain.signing_key is not None,
        ownership_token(secret, name),
        envelope or {name: {}},
    )


def evaluate(p: Plan, dns: DomainDns, today: dt.date) -> list[Check]:
    checks = [ownership_check(p, dns)]
    checks += [
        spf_check(domain, needs, dns.spf[domain], dns.errors)
        for domain, needs in p.envelope_domains.items()
    ]
    checks += dkim_checks(p, dns, today)
    dmarc_check_, dmarc = dmarc_check(p.domain, dns)
    checks.append(dmarc_check_)
    checks.append(alignment_check(p, dmarc))
    checks.append(mx_check(dns))
    checks += [Check("dns", Status.FAIL, True, name, error) for name, error in dns.errors.items()]
    return checks


def records_to_publish(p: Plan, today: dt.date) -> list[Check]:
    """What the domain needs in DNS when nothing is published yet: each check's record."""
    empty = DomainDns(p.domain, spf={d: SpfWalk(d, ()) for d in p.envelope_domains})
    return [c for c in evaluate(p, empty, today) if c.publish is not None]


def _unanswered(name: str, errors: Mapping[str, str]) -> Check | None:
    """A lookup that failed says nothing about the record: no advice to publish a second one."""
    if name not in errors:
        return None
    return Check("", Status.FAIL, True, "(no answer)", f"could not look up {name}: {errors[name]}")


def passed(checks: list[Check]) -> bool:
    return all(c.status is not Status.FAIL for c in checks if c.required)


RETIRE_AFTER_DAYS = 7  # a retired key stays published this long by default: mail in flight


def unconfirmed_key(checks: list[Check] | None, selector: str) -> str | None:
    """Why ``selector`` should not start signing yet: the last checks (None: never checked)
    did not find its DKIM record published and matching. None when they did."""
    for c in checks or []:
        if c.name.startswith(f"dkim {selector} (") and c.status is Status.PASS:
            return None
    return (
        f"the DNS record of selector {selector!r} is not confirmed published and matching: "
        "verify the domain until its check passes, or activate with force"
    )


def _found(values: tuple[str, ...] | list[str]) -> str:
    return " | ".join(values) if values else "(nothing)"


def ownership_check(p: Plan, dns: DomainDns) -> Check:
    expected = OWNERSHIP_PREFIX + p.ownership_token
    tokens = [t for t in dns.apex_txt if t.startswith(OWNERSHIP_PREFIX)]
    publish = txt_line(p.domain, expected)
    if (failed := _unanswered(p.domain, dns.errors)) is not None:
        return replace(failed, name="ownership")
    if expected in tokens:
        return Check(
            "ownership", Status.PASS, True, expected, "the verification token is published"
        )
    detail = "another relay's token, not ours" if tokens else "no verification token"
    return Check("ownership", Status.FAIL, True, _found(tokens), detail, publish)


def spf_check(
    domain: str,
    needs: Mapping[str, tuple[str, ...]],
    walk: SpfWalk,
    errors: Mapping[str, str],
) -> Check:
    name = f"spf {domain}"
    wanted = sorted({i for includes in needs.values() for i in includes})
    if not walk.records and (failed := _unanswered(domain, errors)) is not None:
        return replace(failed, name=name)
    if not walk.records:
        suggested = " ".join(["v=spf1", *(f"include:{i}" for i in wanted), "~all"])
        record_line = txt_line(domain, suggested)
        return Check(name, Status.FAIL, True, "(no SPF record)", "no SPF record", record_line)
    if len(walk.records) > 1:
        return Check(
            name,
            Status.FAIL,
            True,
            _found(walk.records),
            f"{len(walk.records)} SPF records, a permerror for receivers: merge them into one",
        )
    record = parse_spf(walk.records[0])
    problems = list(record.problems) + list(walk.problems)
    missing = [i for i in wanted if i not in walk.reached]
    unknown = sorted(u for u, includes in needs.items() if not includes)
    publish = txt_line(domain, record.with_includes(missing)) if missing else None
    if walk.lookups > MAX_SPF_LOOKUPS:
        problems.append(
            f"{walk.lookups} DNS lookups through includes, over the limit of {MAX_SPF_LOOKUPS}: "
            "permerror"
        )
    if walk.void_lookups > MAX_SPF_VOID_LOOKUPS:
        problems.append(
            f"{walk.void_lookups} lookups found nothing (the limit is {MAX_SPF_VOID_LOOKUPS})"
        )
    all_term = record.all
    if all_term is not None and all_term.qualifier == "+":
        problems.append("+all authorises every server on the Internet")
    for upstream, includes in sorted(needs.items()):
        absent = [i for i in includes if i not in walk.reached]
        if absent:
            needed = ", ".join(f"include:{i}" for i in absent)
            problems.append(f"does not authorise upstream {upstream} (needs {needed})")
    if problems:
        return Check(name, Status.FAIL, True, walk.records[0], "; ".join(problems), publish)
    notes = [f"{walk.lookups}/{MAX_SPF_LOOKUPS} lookups"]
    authorised = sorted(u for u, includes in needs.items() if includes)
    if authorised:
        notes.append("authorises " + ", ".join(authorised))
    status = Status.PASS
    if unknown:
        status = Status.WARN
        notes.append(f"cannot check {', '.join(unknown)}: no spf_include declared")
    if all_term is None and record.redirect is None:
        status = Status.WARN
        notes.append("no 'all' term: unlisted servers get neutral")
    return Check(name, status, True, walk.records[0], "; ".join(notes))


def dkim_checks(p: Plan, dns: DomainDns, today: dt.date) -> list[Check]:
    if not p.key_states:
        return [
            Check(
                "dkim",
                Status.WARN,
                False,
                "(no key configured)",
                f"not signed: run `relay dkim keygen {p.domain} --selector SEL` and add the key",
            )
        ]
    checks = []
    for key in p.key_states:
        failed = _unanswered(f"{key.selector}._domainkey.{p.domain}", dns.errors)
        checks.append(
            replace(
                failed,
                name=f"dkim {key.selector} ({key.state.value})",
                required=key.state is KeyState.ACTIVE,
            )
            if failed is not None
            else _dkim_check(p.domain, key, dns.dkim_txt.get(key.selector, ()), today)
        )
    return checks


def _dkim_check(domain: str, key: DomainKey, txts: tuple[str, ...], today: dt.date) -> Check:
    name = f"dkim {key.selector} ({key.state.value})"
    required = key.state is KeyState.ACTIVE
    publish = (
        zone_line(domain, key.selector, key_record(key.algorithm, key.public_key))
        if key.public_key
        else None
    )
    retired_over = key.retire_until is not None and today > key.retire_until
    if retired_over:
        detail = f"retired since {key.retire_until}: remove the record and this entry"
        return Check(name, Status.WARN if txts else Status.PASS, False, _found(txts), detail)
    if not txts:
        detail = {
            KeyState.ACTIVE: "no key record: signatures cannot be verified",
            KeyState.NEXT: "not published yet: publish it and wait for DNS before activating",
            KeyState.RETIRED: f"removed too early: keep it until {key.retire_until}",
        }[key.state]
        return Check(
            name, Status.FAIL if required else Status.WARN, required, "(nothing)", detail, publish
        )
    if len(txts) > 1:
        return Check(name, Status.FAIL, required, _found(txts), "more than one TXT record", publish)
    record = parse_dkim_key(txts[0])
    problems = list(record.problems)
    if record.key_type != key.algorithm.value:
        problems.append(f"k={record.key_type} but the key is {key.algorithm.value}")
    if key.public_key is not None and record.public_key != key.public_key:
        problems.append(
            "p= is not our public key" if record.public_key else "p= is empty (revoked)"
        )
    if problems:
        status = Status.FAIL if required else Status.WARN
        return Check(name, status, required, txts[0], "; ".join(problems), publish)
    detail = {
        KeyState.ACTIVE: "matches the signing key",
        KeyState.NEXT: "published and matching: ready to become active",
        KeyState.RETIRED: f"still published for mail in flight; may go after {key.retire_until}",
    }[key.state]
    return Check(name, Status.PASS, required, txts[0], detail)


def dmarc_check(domain: str, dns: DomainDns) -> tuple[Check, DmarcRecord | None]:
    if (failed := _unanswered(dns.dmarc_domain, dns.errors)) is not None:
        return replace(failed, name="dmarc"), None
    records = [t for t in dns.dmarc_txt if is_dmarc(t)]
    owner = f"_dmarc.{organizational_domain(domain)}"
    publish = txt_line(
        owner, f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{organizational_domain(domain)}"
    )
    if not records:
        detail = (
            "no DMARC record (Gmail and Yahoo require one from bulk senders); start with p=none"
        )
        return Check("dmarc", Status.FAIL, True, "(nothing)", detail, publish), None
    if len(records) > 1:
        return Check(
            "dmarc", Status.FAIL, True, _found(records), "more than one DMARC record", publish
        ), None
    record = parse_dmarc(records[0])
    inherited = dns.dmarc_domain != f"_dmarc.{domain}"
    where = f" (inherited from {dns.dmarc_domain})" if inherited else ""
    if inherited:  # a subdomain gets the organizational domain's sp= (RFC 7489 6.3)
        record = replace(record, policy=record.subdomain_policy)
    if record.problems:
        return Check(
            "dmarc", Status.FAIL, True, records[0], "; ".join(record.problems), publish
        ), None
    if record.policy == "none":
        detail = f"policy none: monitoring only, failing mail is still delivered{where}"
        return Check("dmarc", Status.WARN, True, records[0], detail), record
    return Check("dmarc", Status.PASS, True, records[0], f"p={record.policy}{where}"), record


def alignment_check(p: Plan, dmarc: DmarcRecord | None) -> Check:
    """From domain vs envelope domain (SPF) and vs DKIM d= (always the From domain here)."""
    if dmarc is None:
        return Check(
            "alignment", Status.WARN, False, "(no DMARC record)", "nothing to align with yet"
        )
    parts, ok = [], True
    if p.has_signing_key:
        parts.append(f"DKIM d={p.domain} aligned ({_mode(dmarc.dkim_alignment)})")
    for bounce in p.envelope_domains:
        if aligned(bounce, p.domain, dmarc.spf_alignment):
            parts.append(f"SPF {bounce} aligned ({_mode(dmarc.spf_alignment)})")
        else:  # every site's mail must pass: one misaligned bounce domain needs DKIM
            ok = ok and p.has_signing_key
            parts.append(f"SPF {bounce} not aligned ({_mode(dmarc.spf_alignment)})")
    found = f"adkim={dmarc.dkim_alignment.value} aspf={dmarc.spf_alignment.value}"
    if not ok:
        return Check(
            "alignment", Status.FAIL, True, found, "; ".join(parts) + ": DMARC cannot pass"
        )
    return Check("alignment", Status.PASS, True, found, "; ".join(parts))


def _mode(mode: Alignment) -> str:
    return "strict" if mode is Alignment.STRICT else "relaxed"


def mx_check(dns: DomainDns) -> Check:
    if dns.mx:
        return Check(
            "mx", Status.PASS, False, ", ".join(dns.mx), "replies and bounces can reach the domain"
        )
    return Check(
        "mx", Status.WARN, False, "(nothing)", "no MX: replies to this domain cannot be delivered"
    )


@dataclass(frozen=True)
class Preflight:
    site: str
    upstream: str
    status: Status
    spf: str  # why the SPF path passes DMARC, or why not
    dkim: str  # the same for DKIM
    detail: str


def preflight(site: Site, upstream: Upstream, p: Plan, dns: DomainDns) -> Preflight:
    """Will mail from ``site`` sent through ``upstream`` pass DMARC? (SPF- or DKIM-aligned.)"""
    from_domain, bounce = domain_of(site.from_email), domain_of(site.envelope_sender)
    if upstream.kind is UpstreamKind.FILE:
        return Preflight(
            site.id,
            upstream.name,
            Status.WARN,
            "-",
            "-",
            "a file upstream: mail stays on this machine",
        )
    dmarc_check_, dmarc = dmarc_check(from_domain, dns)
    dkim_ok, dkim_why = _dkim_path(p, dns, dmarc)
    spf_ok, spf_why = _spf_path(upstream, from_domain, bounce, dns, dmarc)
    if dmarc is None:
        detail = f"no usable DMARC record for {from_domain}: {dmarc_check_.detail}"
        status = Status.WARN if (dkim_ok or spf_ok) else Status.FAIL
    elif dkim_ok and spf_ok:
        status, detail = Status.PASS, "passes DMARC by DKIM and by SPF"
    elif dkim_ok or spf_ok:
        status = Status.PASS
        detail = f"passes DMARC by {'DKIM' if dkim_ok else 'SPF'} only"
    else:
        status, detail = Status.FAIL, f"fails DMARC (p={dmarc.policy}): neither SPF nor DKIM aligns"
    return Preflight(site.id, upstream.name, status, spf_why, dkim_why, detail)


def _dkim_path(p: Plan, dns: DomainDns, dmarc: DmarcRecord | None) -> tuple[bool, str]:
    active = next((k for k in p.key_states if k.state is KeyState.ACTIVE), None)
    if active is None or not p.has_signing_key:
        return False, f"not signed: {p.domain} has no DKIM key"
    check = _dkim_check(p.domain, active, dns.dkim_txt.get(active.selector, ()), dt.date.min)
    if check.status is not Status.PASS:
        return False, f"signed d={p.domain} s={active.selector}, but {check.detail}"
    return True, f"signed d={p.domain} s={active.selector}, key published"


def _spf_path(
    upstream: Upstream, from_domain: str, bounce: str, dns: DomainDns, dmarc: DmarcRecord | None
) -> tuple[bool, str]:
    walk = dns.spf.get(bounce)
    if walk is None or len(walk.records) != 1:
        return False, f"envelope {bounce} has no single SPF record"
    if walk.lookups > MAX_SPF_LOOKUPS or walk.problems or parse_spf(walk.records[0]).problems:
        return False, f"SPF of {bounce} is broken (permerror)"
    if not upstream.spf_include:
        return False, f"upstream {upstream.name} declares no spf_include: cannot tell"
    absent = [i for i in upstream.spf_include if i not in walk.reached]
    if absent:
        return False, f"SPF of {bounce} does not include {', '.join(absent)}"
    if dmarc is not None and not aligned(bounce, from_domain, dmarc.spf_alignment):
        return (
            False,
            f"SPF passes for {bounce}, not aligned with {from_domain} "
            f"({_mode(dmarc.spf_alignment)})",
        )
    return True, f"SPF of {bounce} authorises {upstream.name}, aligned with {from_domain}"
