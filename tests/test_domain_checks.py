"""The pure half of the domain checks: SPF, DKIM key and DMARC records, alignment, the plan.

No DNS and no event loop: text in, parsed record out (RFC 7208, RFC 6376, RFC 7489).
"""

from __future__ import annotations

import datetime as dt

import pytest

from relay.core.directory import Directory
from relay.core.dns_records import (
    Alignment,
    aligned,
    is_dmarc,
    is_spf,
    organizational_domain,
    parse_dkim_key,
    parse_dmarc,
    parse_spf,
    tags,
)
from relay.core.domain_checks import (
    Check,
    DomainDns,
    SpfWalk,
    Status,
    evaluate,
    ownership_token,
    passed,
    plan,
)
from relay.core.model import Site, Upstream, UpstreamKind

# -- SPF: recognising and parsing a record


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=spf1 -all", True),
        ("v=spf1", True),
        ("V=SPF1 include:amazonses.com ~all", True),  # RFC 7208 4.5: case-insensitive
        ("v=spf10 -all", False),  # a different version, not SPF 1
        ("v=spf1-all", False),
        ("google-site-verification=abc", False),
        ("v=DMARC1; p=none", False),
    ],
)
def test_is_spf(text: str, expected: bool) -> None:
    assert is_spf(text) is expected


@pytest.mark.parametrize(
    ("word", "qualifier"),
    [("mx", "+"), ("+mx", "+"), ("-mx", "-"), ("~mx", "~"), ("?mx", "?")],
)
def test_a_mechanism_without_qualifier_is_pass_and_each_qualifier_is_kept(
    word: str, qualifier: str
) -> None:
    [term] = parse_spf(f"v=spf1 {word}").terms
    assert (term.qualifier, term.name, term.value) == (qualifier, "mx", "")


def test_ip4_and_ip6_keep_their_address_and_prefix() -> None:
    record = parse_spf("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ip4:198.51.100.7 -all")
    assert [(t.name, t.value) for t in record.terms] == [
        ("ip4", "192.0.2.0/24"),
        ("ip6", "2001:db8::/32"),
        ("ip4", "198.51.100.7"),
        ("all", ""),
    ]
    assert record.problems == ()


def test_an_unknown_mechanism_is_a_problem_and_is_dropped() -> None:
    record = parse_spf("v=spf1 include:amazonses.com allow:192.0.2.1 -all")
    assert any("unknown mechanism" in p and "allow:192.0.2.1" in p for p in record.problems)
    assert [t.name for t in record.terms] == ["include", "all"]


def test_an_include_without_a_domain_is_a_problem() -> None:
    record = parse_spf("v=spf1 include: -all")
    assert any("include needs a domain" in p for p in record.problems)
    assert record.includes == ()


def test_redirect_is_a_modifier_read_in_lower_case() -> None:
    record = parse_spf("v=spf1 redirect=_SPF.Example.COM")
    assert record.redirect == "_spf.example.com"
    assert record.all is None
    assert record.problems == ()


def test_redirect_without_a_domain_is_a_problem() -> None:
    assert any("redirect= needs a domain" in p for p in parse_spf("v=spf1 redirect=").problems)


def test_exp_is_a_modifier_that_causes_no_lookup_at_check_time() -> None:
    record = parse_spf("v=spf1 mx exp=explain._spf.example.com -all")
    assert [(t.name, t.value) for t in record.terms if t.name == "exp"] == [
        ("exp", "explain._spf.example.com")
    ]
    assert record.lookups == 1  # mx only: exp= is fetched only to explain a fail
    assert record.problems == ()


def test_mechanism_names_are_case_insensitive_and_include_domains_lower_cased() -> None:
    record = parse_spf("v=spf1 INCLUDE:AmazonSES.com MX ~ALL")
    assert record.includes == ("amazonses.com",)
    assert record.all is not None and record.all.qualifier == "~"
    assert [t.name for t in record.terms] == ["include", "mx", "all"]


def test_all_is_the_first_all_term() -> None:
    record = parse_spf("v=spf1 ip4:192.0.2.1 ?all")
    assert record.all is not None
    assert record.all.qualifier == "?"
    assert parse_spf("v=spf1 ip4:192.0.2.1").all is None


def test_ip4_without_an_address_is_a_problem() -> None:
    assert parse_spf("v=spf1 ip4: -all").problems


def test_redirect_twice_is_a_problem() -> None:
    assert parse_spf("v=spf1 redirect=a.example.net redirect=b.example.net").problems


# -- SPF: lookups counted per RFC 7208 4.6.4


@pytest.mark.parametrize(
    ("text", "lookups"),
    [
        ("v=spf1 -all", 0),
        ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all", 0),  # addresses: no DNS
        ("v=spf1 include:a.example.net -all", 1),
        ("v=spf1 a mx ptr exists:x.example.net -all", 4),
        ("v=spf1 a:mail.example.com mx:example.com/24 -all", 2),
        ("v=spf1 ip4:192.0.2.1 redirect=_spf.example.net", 1),
        ("v=spf1 include:a.example.net include:b.example.net ip4:192.0.2.1 ~all", 2),
        ("v=spf1 mx exp=explain.example.net -all", 1),  # exp= is not counted
    ],
)
def test_lookups_count_only_the_dns_querying_terms(text: str, lookups: int) -> None:
    assert parse_spf(text).lookups == lookups


# -- SPF: adding the includes an upstream needs


def test_with_includes_goes_before_all() -> None:
    record = parse_spf("v=spf1 mx include:amazonses.com -all")
    assert (
        record.with_includes(["mailgun.org", "sendgrid.net"])
        == "v=spf1 mx include:amazonses.com include:mailgun.org include:sendgrid.net -all"
    )


def test_with_includes_goes_before_redirect_and_adds_no_all() -> None:
    record = parse_spf("v=spf1 ip4:192.0.2.1 redirect=_spf.example.com")
    assert (
        record.with_includes(["amazonses.com"])
        == "v=spf1 ip4:192.0.2.1 include:amazonses.com redirect=_spf.example.com"
    )


def test_with_includes_adds_softfail_all_when_the_record_has_none() -> None:
    record = parse_spf("v=spf1 mx")
    assert record.with_includes(["amazonses.com"]) == "v=spf1 mx include:amazonses.com ~all"


def test_with_includes_keeps_qualifiers_and_addresses() -> None:
    record = parse_spf("v=spf1 ?a -ptr ip6:2001:db8::/32 ~all")
    assert (
        record.with_includes(["amazonses.com"])
        == "v=spf1 ?a -ptr ip6:2001:db8::/32 include:amazonses.com ~all"
    )


def test_with_includes_keeps_a_cidr_length_without_a_domain() -> None:
    record = parse_spf("v=spf1 a/24 mx/28 -all")
    assert record.with_includes(["amazonses.com"]) == (
        "v=spf1 a/24 mx/28 include:amazonses.com -all"
    )


def test_with_includes_keeps_an_unknown_modifier() -> None:
    record = parse_spf("v=spf1 mx foo=bar -all")
    assert record.problems == ()
    assert record.with_includes(["amazonses.com"]) == (
        "v=spf1 mx foo=bar include:amazonses.com -all"
    )


# -- tag lists (DKIM, DMARC)


def test_tags_are_lower_case_names_with_whitespace_removed_from_values() -> None:
    assert tags("v=DKIM1; K=rsa;\tp=MIIB AQAB \r\n CDEF ;") == {
        "v": "DKIM1",
        "k": "rsa",
        "p": "MIIBAQABCDEF",
    }


def test_the_first_of_a_repeated_tag_wins() -> None:
    assert tags("p=reject; p=none")["p"] == "reject"


# -- DKIM key records (RFC 6376 3.6.1)


def test_a_dkim_key_record_defaults_to_rsa() -> None:
    record = parse_dkim_key("v=DKIM1; p=MIIBIjANBgkq")
    assert (record.key_type, record.public_key, record.problems) == ("rsa", "MIIBIjANBgkq", ())


def test_the_dkim_key_type_is_read_case_insensitively() -> None:
    assert parse_dkim_key("v=DKIM1; k=Ed25519; p=abc=").key_type == "ed25519"


def test_a_dkim_key_record_without_p_is_a_problem() -> None:
    record = parse_dkim_key("v=DKIM1; k=rsa")
    assert any("no p=" in p for p in record.problems)


def test_an_empty_p_is_a_revoked_key_not_a_syntax_problem() -> None:
    record = parse_dkim_key("v=DKIM1; k=rsa; p=")
    assert record.public_key == ""
    assert record.problems == ()


def test_a_dkim_key_record_of_another_version_is_a_problem() -> None:
    record = parse_dkim_key("v=DKIM2; p=abc")
    assert any("v=DKIM2" in p and "DKIM1" in p for p in record.problems)


def test_v_is_optional_in_a_dkim_key_record() -> None:
    assert parse_dkim_key("k=rsa; p=abc").problems == ()


# -- DMARC records (RFC 7489 6.3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v=DMARC1; p=none", True),
        ("v=DMARC1;p=reject", True),
        ("v=spf1 -all", False),
        ("p=reject; v=DMARC1", False),
    ],
)
def test_is_dmarc(text: str, expected: bool) -> None:
    assert is_dmarc(text) is expected


@pytest.mark.parametrize("policy", ["none", "quarantine", "reject"])
def test_each_dmarc_policy_is_read(policy: str) -> None:
    record = parse_dmarc(f"v=DMARC1; p={policy}; rua=mailto:d@example.com")
    assert record.policy == policy
    assert record.problems == ()


def test_dmarc_alignment_defaults_to_relaxed() -> None:
    record = parse_dmarc("v=DMARC1; p=reject")
    assert (record.dkim_alignment, record.spf_alignment) == (Alignment.RELAXED, Alignment.RELAXED)


@pytest.mark.parametrize(
    ("text", "adkim", "aspf"),
    [
        ("v=DMARC1; p=reject; adkim=s", Alignment.STRICT, Alignment.RELAXED),
        ("v=DMARC1; p=reject; aspf=s", Alignment.RELAXED, Alignment.STRICT),
        ("v=DMARC1; p=reject; adkim=s; aspf=s", Alignment.STRICT, Alignment.STRICT),
        ("v=DMARC1; p=reject; adkim=r; aspf=r", Alignment.RELAXED, Alignment.RELAXED),
        ("v=DMARC1; p=reject; ADKIM=S", Alignment.STRICT, Alignment.RELAXED),
    ],
)
def test_dmarc_alignment_modes(text: str, adkim: Alignment, aspf: Alignment) -> None:
    record = parse_dmarc(text)
    assert (record.dkim_alignment, record.spf_alignment) == (adkim, aspf)
    assert record.problems == ()


def test_a_dmarc_record_without_p_is_a_problem() -> None:
    record = parse_dmarc("v=DMARC1; rua=mailto:d@example.com")
    assert any("p=(missing)" in p for p in record.problems)


def test_an_unknown_dmarc_policy_is_a_problem() -> None:
    record = parse_dmarc("v=DMARC1; p=block")
    assert any("p=block" in p for p in record.problems)


@pytest.mark.parametrize(
    ("text", "named"),
    [("v=DMARC1; p=reject; adkim=x; aspf=s", "adkim=x"), ("v=DMARC1; p=reject; aspf=y", "aspf=y")],
)
def test_a_bad_alignment_value_is_a_problem_and_counts_as_relaxed(text: str, named: str) -> None:
    record = parse_dmarc(text)
    assert [p for p in record.problems if named in p and "must be r or s" in p]
    assert record.dkim_alignment is Alignment.RELAXED


@pytest.mark.parametrize("text", ["p=reject; v=DMARC1", "v=dmarc1; p=reject", "p=reject"])
def test_a_dmarc_record_must_start_with_v_dmarc1(text: str) -> None:
    assert any("v=DMARC1" in p for p in parse_dmarc(text).problems)


# -- Organizational domains and alignment (RFC 7489 3.1, 3.2)


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("a.b.c.example.com", "example.com"),
        ("mail.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("Mail.Example.COM.", "example.com"),
        ("shop.alice.github.io", "alice.github.io"),  # the private part of the list
    ],
)
def test_organizational_domain_follows_the_public_suffix_list(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(
    ("a", "b", "relaxed", "strict"),
    [
        ("example.com", "example.com", True, True),
        ("sub.example.com", "example.com", True, False),
        ("bounce.example.com", "news.example.com", True, False),
        ("mail.example.co.uk", "example.co.uk", True, False),
        ("example.co.uk", "other.co.uk", False, False),  # co.uk is a public suffix
        ("example.com", "example.net", False, False),
        ("example.com.evil.net", "example.com", False, False),
        ("alice.github.io", "bob.github.io", False, False),
        ("EXAMPLE.com.", "example.COM", True, True),
    ],
)
def test_alignment(a: str, b: str, relaxed: bool, strict: bool) -> None:
    assert aligned(a, b, Alignment.RELAXED) is relaxed
    assert aligned(a, b, Alignment.STRICT) is strict


# -- The plan: which envelope domains and upstream includes the configuration expects


def smtp(name: str, *includes: str, active: bool = True) -> Upstream:
    return Upstream(name, UpstreamKind.SMTP, "127.0.0.1", 25, spf_include=includes, active=active)


def site(
    site_id: str, from_email: str, *, bounce: str | None = None, upstreams: tuple[str, ...] = ()
) -> Site:
    return Site(site_id, site_id, from_email, bounce_address=bounce, upstreams=upstreams)


SECRET = b"an-installation-secret"


def test_a_site_routes_through_its_own_upstream_list() -> None:
    directory = Directory.of(
        [site("shop", "sales@example.com", upstreams=("ses",))],
        [],
        [smtp("ses", "amazonses.com"), smtp("mailgun", "mailgun.org")],
        [],
    )
    assert plan("example.com", directory, SECRET).envelope_domains == {
        "example.com": {"ses": ("amazonses.com",)}
    }


def test_a_site_without_a_list_routes_through_every_active_smtp_upstream() -> None:
    directory = Directory.of(
        [site("shop", "sales@example.com")],
        [],
        [
            smtp("ses", "amazonses.com"),
            smtp("old", "old.example.net", active=False),
            Upstream("archive", UpstreamKind.FILE, path="/tmp/archive"),  # noqa: S108 -- never written
        ],
        [],
    )
    assert plan("example.com", directory, SECRET).envelope_domains == {
        "example.com": {"ses": ("amazonses.com",)}
    }


def test_the_envelope_domain_is_the_bounce_address_domain() -> None:
    directory = Directory.of(
        [site("shop", "sales@example.com", bounce="bounces@mail.example.com", upstreams=("ses",))],
        [],
        [smtp("ses", "amazonses.com")],
        [],
    )
    p = plan("Example.COM", directory, SECRET)
    assert p.domain == "example.com"
    assert p.envelope_domains == {"mail.example.com": {"ses": ("amazonses.com",)}}


def test_sites_of_other_domains_are_not_in_the_plan_and_a_domain_without_sites_checks_itself() -> (
    None
):
    directory = Directory.of(
        [site("shop", "sales@example.com")], [], [smtp("ses", "amazonses.com")], []
    )
    p = plan("example.org", directory, SECRET)
    assert p.envelope_domains == {"example.org": {}}
    assert p.key_states == ()
    assert not p.has_signing_key


def test_the_ownership_token_is_stable_per_secret_and_domain() -> None:
    token = ownership_token(SECRET, "example.com")
    assert token == ownership_token(SECRET, "example.com")
    assert len(token) == 32 and int(token, 16) >= 0
    assert token != ownership_token(SECRET, "example.org")
    assert token != ownership_token(b"another-installation", "example.com")
    assert plan("example.com", Directory.of([], [], [], []), SECRET).ownership_token == token


# -- evaluate and passed, on hand-made DNS answers


def test_passed_ignores_optional_checks_and_warnings() -> None:
    checks = [
        Check("dmarc", Status.WARN, True, "", ""),
        Check("mx", Status.WARN, False, "", ""),
        Check("dkim next", Status.FAIL, False, "", ""),
    ]
    assert passed(checks)
    assert not passed([*checks, Check("spf example.com", Status.FAIL, True, "", "")])


def test_evaluate_names_every_check() -> None:
    directory = Directory.of(
        [site("shop", "sales@example.com")], [], [smtp("ses", "amazonses.com")], []
    )
    p = plan("example.com", directory, SECRET)
    dns = DomainDns(
        "example.com",
        spf={"example.com": SpfWalk("example.com", ())},
        errors={"_dmarc.example.com": "_dmarc.example.com TXT: no answer within the timeout"},
    )
    checks = evaluate(p, dns, dt.date(2026, 6, 1))
    assert [c.name for c in checks] == [
        "ownership",
        "spf example.com",
        "dkim",
        "dmarc",
        "alignment",
        "mx",
        "dns",
    ]
    assert not passed(checks)
