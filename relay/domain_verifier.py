"""Fetching a domain's DNS (dnspython's async resolver) for the pure checks.

Nameservers come from ``dns.nameservers`` (tests point them at a loopback
server), else from the system's resolv.conf. Answers are never cached: a
check must see what DNS says now.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from relay.config import DnsConfig, nameserver_address
from relay.core.directory import Directory
from relay.core.dns_records import (
    MAX_SPF_LOOKUPS,
    is_dmarc,
    is_spf,
    organizational_domain,
    parse_spf,
)
from relay.core.domain_checks import (
    Check,
    DomainDns,
    Plan,
    Preflight,
    SpfWalk,
    evaluate,
    plan,
    preflight,
    route_candidates,
)

MAX_SPF_DEPTH = 10  # includes of includes; deeper is a loop or abuse


class DnsError(Exception):
    """A lookup that got no answer (timeout, SERVFAIL): not the same as "no record"."""


class DnsLookup:
    def __init__(self, config: DnsConfig) -> None:
        if config.nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [_nameserver(n) for n in config.nameservers]
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:  # every query will say so
                self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.lifetime = config.timeout_seconds
        self._resolver.cache = None

    async def txt(self, name: str) -> list[str]:
        answer = await self._query(name, dns.rdatatype.TXT)
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def mx(self, name: str) -> list[str]:
        answer = await self._query(name, dns.rdatatype.MX)
        return [f"{r.preference} {r.exchange.to_text(omit_final_dot=True)}" for r in answer]

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[Any]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DnsError(f"{name} {rdtype.name}: no answer within the timeout") from None
        except dns.resolver.NoNameservers:
            raise DnsError(f"{name} {rdtype.name}: every nameserver failed (SERVFAIL)") from None
        except dns.exception.DNSException as error:
            raise DnsError(f"{name} {rdtype.name}: {error}") from None
        return list(answer)


def _nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    address = nameserver_address(text)
    assert address is not None, text  # the config checked it
    return dns.nameserver.Do53Nameserver(*address)


async def walk_spf(domain: str, txt: Callable[[str], Awaitable[list[str]]]) -> SpfWalk:
    """The SPF record of ``domain`` and everything it includes, lookups counted (RFC 7208 4.6.4)."""
    records = tuple(t for t in await txt(domain) if is_spf(t))
    if len(records) != 1:
        return SpfWalk(domain, records)
    lookups, void, reached, problems = 0, 0, set[str](), list[str]()

    async def follow(text: str, path: tuple[str, ...]) -> None:
        """Every include is evaluated (and counted) each time it is reached, as receivers do."""
        nonlocal lookups, void
        record = parse_spf(text)
        lookups += record.lookups
        targets = [*record.includes, *([record.redirect] if record.redirect else [])]
        for target in targets:
            if "%" in target:  # macros are expanded per message; nothing to follow here
                continue
            if target in path:
                problems.append(f"include loop {' -> '.join((*path, target))}: permerror")
                continue
            if len(path) > MAX_SPF_DEPTH or lookups > 2 * MAX_SPF_LOOKUPS:
                problems.append(f"stopped at {target}: includes nest too deep")
                return
            reached.add(target)
            answers = await txt(target)
            found = [t for t in answers if is_spf(t)]
            if not answers:
                void += 1
            if not found:
                problems.append(f"{target} (included) has no SPF record: permerror")
            elif len(found) > 1:
                problems.append(f"{target} (included) has {len(found)} SPF records: permerror")
            else:
                problems.extend(f"{target}: {p}" for p in parse_spf(found[0]).problems)
                await follow(found[0], (*path, target))

    await follow(records[0], (domain,))
    return SpfWalk(domain, records, lookups, void, frozenset(reached), tuple(problems))


async def fetch(p: Plan, lookup: DnsLookup) -> DomainDns:
    """Every record the plan needs, fetched concurrently; failed lookups are listed as errors."""
    errors: dict[str, str] = {}  # by name: a failed lookup is not a missing record

    async def txt(name: str) -> list[str]:
        try:
            return await lookup.txt(name)
        except DnsError as error:
            errors[name] = str(error)
            return []

    async def mx(name: str) -> list[str]:
        try:
            return await lookup.mx(name)
        except DnsError as error:
            errors[f"{name} MX"] = str(error)
            return []

    selectors = [k.selector for k in p.key_states]
    envelope = list(p.envelope_domains)
    (apex, dmarc, *keys), mx_hosts, walks = await asyncio.gather(
        asyncio.gather(
            txt(p.domain),
            txt(f"_dmarc.{p.domain}"),
            *(txt(f"{s}._domainkey.{p.domain}") for s in selectors),
        ),
        mx(p.domain),
        asyncio.gather(*(walk_spf(d, txt) for d in envelope)),
    )
    dmarc_domain = f"_dmarc.{p.domain}"
    org = organizational_domain(p.domain)
    if not any(is_dmarc(t) for t in dmarc) and org != p.domain and dmarc_domain not in errors:
        # RFC 7489 6.6.3: no DMARC record at the domain itself: ask the organizational domain
        dmarc_domain = f"_dmarc.{org}"
        dmarc = await txt(dmarc_domain)
    return DomainDns(
        domain=p.domain,
        apex_txt=tuple(apex),
        dkim_txt={s: tuple(t) for s, t in zip(selectors, keys, strict=True)},
        dmarc_txt=tuple(dmarc),
        dmarc_domain=dmarc_domain,
        mx=tuple(mx_hosts),
        spf={d: w for d, w in zip(envelope, walks, strict=True)},
        errors=errors,
    )


@dataclass(frozen=True)
class Verification:
    domain: str
    checks: list[Check]
    preflights: list[Preflight]


async def verify(
    name: str, directory: Directory, secret: bytes, lookup: DnsLookup, today: dt.date
) -> Verification:
    """All checks of one domain, and the preflight of every (site, upstream) pair sending as it."""
    p = plan(name, directory, secret)
    found = await fetch(p, lookup)
    sites = [s for s in directory.sites if s.from_email.lower().endswith("@" + p.domain)]
    preflights = [preflight(s, u, p, found) for s in sites for u in route_candidates(s, directory)]
    return Verification(p.domain, evaluate(p, found, today), preflights)
