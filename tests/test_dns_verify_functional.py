"""`relay dns verify` against a real DNS server on loopback: each test publishes its own zone.

The relay's config points `dns.nameservers` at the zone; the domain under test is
example.com, its site "shop" sends as sales@example.com through upstream "ses", which
declares `spf_include: amazonses.com`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from relay.cli import main
from relay.config import load_config
from relay.core import dkim
from relay.core.domain_checks import Check, Status, ownership_token, passed
from relay.domain_verifier import DnsLookup, Verification, verify
from tests.conftest import base_config, smtp_upstream, write_config
from tests.dns_zone import Zone

RELAY = Path(sys.executable).with_name("relay")  # the console script of this venv
DOMAIN = "example.com"
SECRET = b"test-installation-secret"
TOKEN = ownership_token(SECRET, DOMAIN)  # what the verifier expects at the apex
TODAY = dt.date(2026, 6, 1)
SES = smtp_upstream("ses", 2525, spf_include="amazonses.com")  # never connected to
MAILGUN = smtp_upstream("mailgun", 2526, spf_include="mailgun.org")
GOOD_SPF = "v=spf1 include:amazonses.com ~all"
GOOD_DMARC = "v=DMARC1; p=reject; rua=mailto:dmarc@example.com"
SES_SPF = "v=spf1 ip4:199.255.192.0/22 ip4:199.127.232.0/22 ip6:2a01:111:f400::/48 -all"


def good_zone(
    zone: Zone,
    key: dkim.PrivateKey | None,
    token: str | None = None,
    *,
    domain: str = DOMAIN,
    spf: str | list[str] | None = GOOD_SPF,
    dmarc: str | list[str] | None = GOOD_DMARC,
    mx: bool = True,
) -> None:
    """Everything a correct sending domain publishes; pass None to leave a record out."""
    for value in [spf] if isinstance(spf, str) else spf or []:
        zone.txt(domain, value)
    if token is not None:
        zone.txt(domain, f"relay-verification={token}")
    zone.txt("amazonses.com", SES_SPF)
    zone.txt("mailgun.org", "v=spf1 ip4:198.61.254.0/23 -all")
    if key is not None:
        zone.txt(f"relay1._domainkey.{domain}", dkim.txt_record(key))
    for value in [dmarc] if isinstance(dmarc, str) else dmarc or []:
        zone.txt(f"_dmarc.{domain}", value)
    if mx:
        zone.mx(domain, f"mx.{domain}")


def make_key(
    tmp_path: Path, name: str, algorithm: dkim.Algorithm = dkim.Algorithm.ED25519
) -> tuple[dkim.PrivateKey, str]:
    key = dkim.generate(algorithm)
    path = tmp_path / f"{name}.pem"
    path.write_bytes(dkim.private_pem(key))
    return key, str(path)


def relay_config(
    tmp_path: Path,
    zone: Zone,
    *,
    upstreams: list[dict[str, Any]] | None = None,
    dkim_config: dict[str, Any] | None = None,
    site: dict[str, Any] | None = None,
    extra_sites: list[dict[str, Any]] | None = None,
    domain: str = DOMAIN,
    dns: dict[str, Any] | None = None,
) -> Path:
    config = base_config(
        tmp_path,
        upstreams or [SES],
        dns=dns or {"nameservers": [zone.nameserver], "timeout_seconds": 2},
    )
    config["sites"][0].update(site or {})
    config["sites"] += extra_sites or []
    if dkim_config is not None:
        config["domains"] = [{"name": domain, "dkim": dkim_config}]
    return write_config(tmp_path, config)


async def verify_domain(path: Path, domain: str = DOMAIN, today: dt.date = TODAY) -> Verification:
    config = load_config(path)
    async with asyncio.timeout(20):
        return await verify(domain, config.directory(), SECRET, DnsLookup(config.dns), today)


def check(v: Verification, name: str) -> Check:
    found = [c for c in v.checks if c.name == name]
    assert found, f"no check {name!r} in {[c.name for c in v.checks]}"
    return found[0]


def txt_line(name: str, value: str) -> str:
    return f'{name}. 3600 IN TXT "{value}"'


@pytest.fixture
def key(tmp_path: Path) -> tuple[dkim.PrivateKey, str]:
    """The active DKIM key (Ed25519, selector relay1) and its file."""
    return make_key(tmp_path, "relay1")


def active(key_file: str, **more: Any) -> dict[str, Any]:
    return {"selector": "relay1", "private_key_file": key_file, **more}


# -- A correct domain


async def test_a_correct_domain_passes_every_check(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN)
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    assert {c.name: c.status for c in v.checks} == {
        "ownership": Status.PASS,
        "spf example.com": Status.PASS,
        "dkim relay1 (active)": Status.PASS,
        "dmarc": Status.PASS,
        "alignment": Status.PASS,
        "mx": Status.PASS,
    }
    assert passed(v.checks)
    assert "authorises ses" in check(v, "spf example.com").detail
    assert "1/10 lookups" in check(v, "spf example.com").detail
    assert all(c.publish is None for c in v.checks)
    [flight] = v.preflights
    assert (flight.site, flight.upstream, flight.status) == ("shop", "ses", Status.PASS)
    assert "DKIM and by SPF" in flight.detail


def test_the_cli_creates_the_secret_key_and_exits_0_once_its_token_is_published(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str], capsys: Any
) -> None:
    good_zone(dns_zone, key[0])  # everything but the ownership token
    path = relay_config(tmp_path, dns_zone, dkim_config=active(key[1]))
    secret_file = tmp_path / "data" / "secret.key"
    assert not secret_file.exists()

    assert main(["dns", "verify", DOMAIN, "-c", str(path)]) == 1
    first = capsys.readouterr().out
    assert secret_file.stat().st_mode & 0o777 == 0o600
    token = ownership_token(secret_file.read_bytes().strip(), DOMAIN)
    assert "Publish:" in first
    assert txt_line(DOMAIN, f"relay-verification={token}") in first
    assert "1 required check(s) fail: ownership" in first

    dns_zone.txt(DOMAIN, f"relay-verification={token}")
    assert main(["dns", "verify", DOMAIN, "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "example.com: all required checks pass" in out
    assert "FAIL" not in out
    assert "Publish:" not in out
    assert "shop via ses: PASS" in out


def test_the_cli_as_a_subprocess(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    secret = Fernet.generate_key()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret.key").write_bytes(secret + b"\n")
    good_zone(dns_zone, key[0], ownership_token(secret, DOMAIN))
    path = relay_config(tmp_path, dns_zone, dkim_config=active(key[1]))

    result = subprocess.run(
        [RELAY, "dns", "verify", DOMAIN, "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "example.com: all required checks pass" in result.stdout
    for name in ("ownership", "spf example.com", "dkim relay1 (active)", "dmarc", "alignment"):
        assert re.search(rf"^ +{re.escape(name)} +PASS ", result.stdout, re.MULTILINE), name
    assert result.stderr == ""


def test_the_cli_exits_2_for_a_bad_config(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("upstreams: 12\n")
    assert main(["dns", "verify", DOMAIN, "-c", str(path)]) == 2
    assert "upstreams" in capsys.readouterr().err


# -- SPF


async def test_a_missing_spf_record_fails_with_the_record_to_publish(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN, spf=None)
    v = await verify_domain(relay_config(tmp_path, dns_zone, upstreams=[SES, MAILGUN]))

    spf = check(v, "spf example.com")
    assert (spf.status, spf.required, spf.found) == (Status.FAIL, True, "(no SPF record)")
    assert spf.publish == txt_line(DOMAIN, "v=spf1 include:amazonses.com include:mailgun.org ~all")
    assert not passed(v.checks)


async def test_two_spf_records_fail_and_say_merge(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, TOKEN, spf=[GOOD_SPF, "v=spf1 mx -all"])
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "2 SPF records" in spf.detail and "merge" in spf.detail
    assert GOOD_SPF in spf.found and "v=spf1 mx -all" in spf.found


def lookup_chain(zone: Zone, last_level_lookups: int) -> None:
    """example.com (2 lookups) -> level1 (3) -> level2 (n): 5 + n in all."""
    zone.txt(DOMAIN, "v=spf1 include:amazonses.com include:level1.example.net ~all")
    zone.txt(
        "level1.example.net",
        "v=spf1 a:h1.example.net mx:h2.example.net include:level2.example.net -all",
    )
    names = " ".join(f"a:host{i}.example.net" for i in range(last_level_lookups))
    zone.txt("level2.example.net", f"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 {names} -all")


async def test_exactly_ten_lookups_through_nested_includes_pass(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN, spf=None)
    lookup_chain(dns_zone, 5)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.PASS, spf.detail
    assert "10/10 lookups" in spf.detail


async def test_eleven_lookups_through_nested_includes_fail_with_the_count(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN, spf=None)
    lookup_chain(dns_zone, 6)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "11 DNS lookups" in spf.detail and "limit of 10" in spf.detail


async def test_a_domain_included_twice_counts_its_lookups_twice(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN, spf=None)
    dns_zone.txt(
        DOMAIN, "v=spf1 include:amazonses.com include:x.example.net include:y.example.net ~all"
    )
    dns_zone.txt("x.example.net", "v=spf1 include:shared.example.net -all")
    dns_zone.txt("y.example.net", "v=spf1 include:shared.example.net -all")
    dns_zone.txt(
        "shared.example.net", "v=spf1 a:h1.example.net a:h2.example.net mx mx:h3.example.net -all"
    )
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "13 DNS lookups" in spf.detail


def include_loop(zone: Zone) -> None:
    zone.txt(DOMAIN, "v=spf1 include:amazonses.com include:loop.example.net ~all")
    zone.txt("loop.example.net", "v=spf1 include:example.com -all")


async def test_an_include_loop_terminates(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, TOKEN, spf=None)
    include_loop(dns_zone)
    started = time.monotonic()
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    assert time.monotonic() - started < 10
    check(v, "spf example.com")
    spf_queries = [q for q in dns_zone.queries if q == ("example.com", "TXT")]
    assert len(spf_queries) <= 3  # the apex, the SPF walk, the loop followed once


async def test_an_include_loop_is_reported(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, TOKEN, spf=None)
    include_loop(dns_zone)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    assert check(v, "spf example.com").status is Status.FAIL


@pytest.mark.parametrize("nospf_txt", [None, "google-site-verification=abc123"])
async def test_an_include_of_a_domain_without_spf_is_a_permerror(
    tmp_path: Path, dns_zone: Zone, nospf_txt: str | None
) -> None:
    good_zone(
        dns_zone, None, TOKEN, spf="v=spf1 include:amazonses.com include:nospf.example.net ~all"
    )
    if nospf_txt is not None:
        dns_zone.txt("nospf.example.net", nospf_txt)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "nospf.example.net (included) has no SPF record: permerror" in spf.detail


async def test_an_included_domain_with_two_spf_records_is_a_permerror(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(
        dns_zone, None, TOKEN, spf="v=spf1 include:amazonses.com include:two.example.net ~all"
    )
    dns_zone.txt("two.example.net", "v=spf1 -all", "v=spf1 mx -all")
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "two.example.net (included) has 2 SPF records" in spf.detail


async def test_more_than_two_void_lookups_fail(tmp_path: Path, dns_zone: Zone) -> None:
    includes = " ".join(f"include:gone{i}.example.net" for i in range(3))
    good_zone(dns_zone, None, TOKEN, spf=f"v=spf1 include:amazonses.com {includes} ~all")
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "3 lookups found nothing" in spf.detail
    assert "limit is 2" in spf.detail


async def test_spf_that_misses_an_upstreams_include_names_the_upstream(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN, spf="v=spf1 mx include:amazonses.com -all")
    v = await verify_domain(relay_config(tmp_path, dns_zone, upstreams=[SES, MAILGUN]))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "does not authorise upstream mailgun (needs include:mailgun.org)" in spf.detail
    assert "upstream ses" not in spf.detail
    assert spf.publish == txt_line(
        DOMAIN, "v=spf1 mx include:amazonses.com include:mailgun.org -all"
    )


async def test_an_upstream_without_spf_include_cannot_be_checked(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN)
    upstreams = [SES, smtp_upstream("own", 2527)]
    v = await verify_domain(relay_config(tmp_path, dns_zone, upstreams=upstreams))

    spf = check(v, "spf example.com")
    assert (spf.status, spf.required) == (Status.WARN, True)
    assert "cannot check own" in spf.detail
    assert "authorises ses" in spf.detail
    assert passed(v.checks)


@pytest.mark.parametrize("all_term", ["+all", "all"])
async def test_pass_all_fails(tmp_path: Path, dns_zone: Zone, all_term: str) -> None:
    good_zone(dns_zone, None, TOKEN, spf=f"v=spf1 include:amazonses.com {all_term}")
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "+all" in spf.detail


async def test_spf_without_all_warns(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, TOKEN, spf="v=spf1 include:amazonses.com")
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.WARN
    assert "no 'all' term" in spf.detail


async def test_spf_through_a_redirect_reaches_the_upstream(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, TOKEN, spf="v=spf1 redirect=_spf.example.com")
    dns_zone.txt("_spf.example.com", GOOD_SPF)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.PASS, spf.detail
    assert "2/10 lookups" in spf.detail


async def test_a_redirect_after_all_does_not_authorise(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, TOKEN, spf="v=spf1 mx -all redirect=_spf.example.com")
    dns_zone.txt("_spf.example.com", GOOD_SPF)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    spf = check(v, "spf example.com")
    assert spf.status is Status.FAIL
    assert "does not authorise upstream ses" in spf.detail


async def test_an_include_written_with_a_trailing_dot_counts(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN, spf="v=spf1 include:amazonses.com. ~all")
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    assert check(v, "spf example.com").status is Status.PASS


# -- DKIM


async def test_a_missing_active_key_fails_with_the_exact_record(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, None, TOKEN)
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    c = check(v, "dkim relay1 (active)")
    assert (c.status, c.required, c.found) == (Status.FAIL, True, "(nothing)")
    assert c.publish == dkim.zone_line(DOMAIN, "relay1", dkim.txt_record(key[0]))
    assert not passed(v.checks)


async def test_another_public_key_fails(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    other = dkim.generate(dkim.Algorithm.ED25519)
    good_zone(dns_zone, other, TOKEN)
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    c = check(v, "dkim relay1 (active)")
    assert c.status is Status.FAIL
    assert "p= is not our public key" in c.detail
    assert c.publish == dkim.zone_line(DOMAIN, "relay1", dkim.txt_record(key[0]))


async def test_a_revoked_key_record_fails(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, None, TOKEN)
    dns_zone.txt("relay1._domainkey.example.com", "v=DKIM1; k=ed25519; p=")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    c = check(v, "dkim relay1 (active)")
    assert c.status is Status.FAIL
    assert "revoked" in c.detail


async def test_an_ed25519_key_published_without_k_fails(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, None, TOKEN)
    p = dkim.txt_record(key[0]).partition("p=")[2]
    dns_zone.txt("relay1._domainkey.example.com", f"v=DKIM1; p={p}")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    c = check(v, "dkim relay1 (active)")
    assert c.status is Status.FAIL
    assert "k=rsa but the key is ed25519" in c.detail


async def test_two_key_records_for_a_selector_fail(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN)
    dns_zone.txt("relay1._domainkey.example.com", "v=DKIM1; k=ed25519; p=AAAA")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    c = check(v, "dkim relay1 (active)")
    assert c.status is Status.FAIL
    assert "more than one TXT record" in c.detail


async def test_an_unpublished_next_key_warns_and_is_not_required(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    next_key, next_file = make_key(tmp_path, "relay2")
    good_zone(dns_zone, key[0], TOKEN)
    dkim_config = active(key[1], next={"selector": "relay2", "private_key_file": next_file})
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=dkim_config))

    c = check(v, "dkim relay2 (next)")
    assert (c.status, c.required) == (Status.WARN, False)
    assert "not published yet" in c.detail
    assert c.publish == dkim.zone_line(DOMAIN, "relay2", dkim.txt_record(next_key))
    assert passed(v.checks)


async def test_a_published_next_key_is_ready(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    next_key, next_file = make_key(tmp_path, "relay2")
    good_zone(dns_zone, key[0], TOKEN)
    dns_zone.txt("relay2._domainkey.example.com", dkim.txt_record(next_key))
    dkim_config = active(key[1], next={"selector": "relay2", "private_key_file": next_file})
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=dkim_config))

    c = check(v, "dkim relay2 (next)")
    assert c.status is Status.PASS
    assert "ready" in c.detail


async def test_a_retired_key_removed_before_its_date_warns(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    old_key, old_file = make_key(tmp_path, "old1")
    good_zone(dns_zone, key[0], TOKEN)
    retired = [{"selector": "old1", "private_key_file": old_file, "until": "2026-06-30"}]
    v = await verify_domain(
        relay_config(tmp_path, dns_zone, dkim_config=active(key[1], retired=retired))
    )

    c = check(v, "dkim old1 (retired)")
    assert (c.status, c.required) == (Status.WARN, False)
    assert "removed too early" in c.detail and "2026-06-30" in c.detail
    assert c.publish == dkim.zone_line(DOMAIN, "old1", dkim.txt_record(old_key))
    assert passed(v.checks)


async def test_a_retired_key_still_published_within_its_date_passes(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    old_key, old_file = make_key(tmp_path, "old1")
    good_zone(dns_zone, key[0], TOKEN)
    dns_zone.txt("old1._domainkey.example.com", dkim.txt_record(old_key))
    retired = [{"selector": "old1", "private_key_file": old_file, "until": "2026-06-30"}]
    v = await verify_domain(
        relay_config(tmp_path, dns_zone, dkim_config=active(key[1], retired=retired))
    )

    assert check(v, "dkim old1 (retired)").status is Status.PASS


@pytest.mark.parametrize(("published", "status"), [(True, Status.WARN), (False, Status.PASS)])
async def test_a_retired_key_past_its_date_should_be_removed(
    tmp_path: Path,
    dns_zone: Zone,
    key: tuple[dkim.PrivateKey, str],
    published: bool,
    status: Status,
) -> None:
    good_zone(dns_zone, key[0], TOKEN)
    if published:
        dns_zone.txt("old1._domainkey.example.com", "v=DKIM1; k=rsa; p=MIIBIjANBgkq")
    retired = [{"selector": "old1", "until": "2026-05-01"}]  # the key file is gone
    v = await verify_domain(
        relay_config(tmp_path, dns_zone, dkim_config=active(key[1], retired=retired))
    )

    c = check(v, "dkim old1 (retired)")
    assert (c.status, c.required) == (status, False)
    assert "retired since 2026-05-01" in c.detail and "remove" in c.detail


async def test_a_domain_without_a_key_warns_that_mail_is_not_signed(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    c = check(v, "dkim")
    assert (c.status, c.required) == (Status.WARN, False)
    assert "relay dkim keygen example.com" in c.detail


async def test_a_long_rsa_key_record_is_read_across_its_strings(
    tmp_path: Path, dns_zone: Zone
) -> None:
    rsa_key, rsa_file = make_key(tmp_path, "rsa", dkim.Algorithm.RSA)
    record = dkim.txt_record(rsa_key)
    assert len(record) > 255  # two character-strings in DNS
    good_zone(dns_zone, None, TOKEN)
    path = relay_config(tmp_path, dns_zone, dkim_config=active(rsa_file))

    missing = check(await verify_domain(path), "dkim relay1 (active)")
    assert missing.publish == dkim.zone_line(DOMAIN, "relay1", record)
    assert missing.publish is not None and '" "' in missing.publish

    dns_zone.txt("relay1._domainkey.example.com", record)
    c = check(await verify_domain(path), "dkim relay1 (active)")
    assert c.status is Status.PASS, c.detail
    assert c.found == record


# -- DMARC


async def test_a_missing_dmarc_record_fails_with_a_record_to_start_with(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN, dmarc=None)
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    dmarc = check(v, "dmarc")
    assert (dmarc.status, dmarc.required) == (Status.FAIL, True)
    assert "no DMARC record" in dmarc.detail
    assert dmarc.publish == txt_line(
        "_dmarc.example.com", "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"
    )
    assert check(v, "alignment").status is Status.WARN
    assert not passed(v.checks)


async def test_two_dmarc_records_fail(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN, dmarc=[GOOD_DMARC, "v=DMARC1; p=none"])
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    dmarc = check(v, "dmarc")
    assert dmarc.status is Status.FAIL
    assert "more than one DMARC record" in dmarc.detail


async def test_a_broken_dmarc_record_fails_naming_the_tag(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN, dmarc="v=DMARC1; p=block")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    dmarc = check(v, "dmarc")
    assert dmarc.status is Status.FAIL
    assert "p=block" in dmarc.detail


async def test_dmarc_p_none_warns_but_passes(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN, dmarc="v=DMARC1; p=none")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    dmarc = check(v, "dmarc")
    assert (dmarc.status, dmarc.required) == (Status.WARN, True)
    assert "monitoring only" in dmarc.detail
    assert passed(v.checks)


@pytest.mark.parametrize("policy", ["quarantine", "reject"])
async def test_an_enforcing_dmarc_policy_passes(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str], policy: str
) -> None:
    good_zone(dns_zone, key[0], TOKEN, dmarc=f"v=DMARC1; p={policy}")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    dmarc = check(v, "dmarc")
    assert dmarc.status is Status.PASS
    assert dmarc.detail == f"p={policy}"


SUB = "sub.example.com"


def subdomain_config(tmp_path: Path, zone: Zone) -> Path:
    good_zone(zone, None, ownership_token(SECRET, SUB), domain=SUB, dmarc=None)
    return relay_config(tmp_path, zone, site={"from": {"email": f"news@{SUB}"}}, domain=SUB)


async def test_dmarc_is_inherited_from_the_organizational_domain(
    tmp_path: Path, dns_zone: Zone
) -> None:
    path = subdomain_config(tmp_path, dns_zone)
    dns_zone.txt("_dmarc.example.com", GOOD_DMARC)
    v = await verify_domain(path, SUB)

    dmarc = check(v, "dmarc")
    assert dmarc.status is Status.PASS
    assert "inherited from _dmarc.example.com" in dmarc.detail
    asked = [name for name, kind in dns_zone.queries if name.startswith("_dmarc.")]
    assert asked == ["_dmarc.sub.example.com", "_dmarc.example.com"]
    assert check(v, "spf sub.example.com").status is Status.PASS
    assert check(v, "alignment").status is Status.PASS
    assert passed(v.checks)


async def test_an_inherited_dmarc_record_applies_its_subdomain_policy(
    tmp_path: Path, dns_zone: Zone
) -> None:
    path = subdomain_config(tmp_path, dns_zone)
    dns_zone.txt("_dmarc.example.com", "v=DMARC1; p=reject; sp=none")
    v = await verify_domain(path, SUB)

    dmarc = check(v, "dmarc")
    assert dmarc.status is Status.WARN
    assert "none" in dmarc.detail


async def test_a_non_dmarc_txt_at_the_subdomain_does_not_stop_the_fallback(
    tmp_path: Path, dns_zone: Zone
) -> None:
    path = subdomain_config(tmp_path, dns_zone)
    dns_zone.txt("_dmarc.sub.example.com", "some-other-verification=1")
    dns_zone.txt("_dmarc.example.com", GOOD_DMARC)
    v = await verify_domain(path, SUB)

    assert check(v, "dmarc").status is Status.PASS


# -- Alignment (RFC 7489 3.1)


def bounce_zone(zone: Zone, bounce_domain: str, dmarc: str = GOOD_DMARC) -> None:
    good_zone(zone, None, TOKEN, dmarc=dmarc)
    zone.txt(bounce_domain, GOOD_SPF)


async def test_a_bounce_domain_of_another_organization_without_dkim_cannot_align(
    tmp_path: Path, dns_zone: Zone
) -> None:
    bounce_zone(dns_zone, "example.net")
    path = relay_config(tmp_path, dns_zone, site={"bounce_address": "bounces@example.net"})
    v = await verify_domain(path)

    assert check(v, "spf example.net").status is Status.PASS
    alignment = check(v, "alignment")
    assert (alignment.status, alignment.required) == (Status.FAIL, True)
    assert "SPF example.net not aligned (relaxed)" in alignment.detail
    assert "DMARC cannot pass" in alignment.detail
    assert not passed(v.checks)


async def test_a_bounce_subdomain_aligns_when_relaxed(tmp_path: Path, dns_zone: Zone) -> None:
    bounce_zone(dns_zone, "mail.example.com")
    path = relay_config(tmp_path, dns_zone, site={"bounce_address": "bounces@mail.example.com"})
    v = await verify_domain(path)

    alignment = check(v, "alignment")
    assert alignment.status is Status.PASS
    assert "SPF mail.example.com aligned (relaxed)" in alignment.detail
    assert "spf example.com" not in [c.name for c in v.checks]  # the envelope is checked
    assert check(v, "spf mail.example.com").status is Status.PASS


async def test_a_bounce_subdomain_does_not_align_when_strict(
    tmp_path: Path, dns_zone: Zone
) -> None:
    bounce_zone(dns_zone, "mail.example.com", dmarc="v=DMARC1; p=reject; aspf=s")
    path = relay_config(tmp_path, dns_zone, site={"bounce_address": "bounces@mail.example.com"})
    v = await verify_domain(path)

    alignment = check(v, "alignment")
    assert alignment.status is Status.FAIL
    assert "SPF mail.example.com not aligned (strict)" in alignment.detail
    assert alignment.found == "adkim=r aspf=s"


async def test_dkim_aligns_when_the_bounce_domain_does_not(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    bounce_zone(dns_zone, "example.net")
    dns_zone.txt("relay1._domainkey.example.com", dkim.txt_record(key[0]))
    path = relay_config(
        tmp_path,
        dns_zone,
        site={"bounce_address": "bounces@example.net"},
        dkim_config=active(key[1]),
    )
    v = await verify_domain(path)

    alignment = check(v, "alignment")
    assert alignment.status is Status.PASS
    assert "DKIM d=example.com aligned" in alignment.detail


async def test_one_misaligned_site_fails_alignment(tmp_path: Path, dns_zone: Zone) -> None:
    bounce_zone(dns_zone, "example.net")
    second = {
        "id": "blog",
        "name": "Blog",
        "credentials": [],
        "from": {"email": "blog@example.com"},
        "bounce_address": "bounces@example.net",
        "upstreams": ["ses"],
    }
    v = await verify_domain(relay_config(tmp_path, dns_zone, extra_sites=[second]))

    assert {f.site: f.status for f in v.preflights} == {"shop": Status.PASS, "blog": Status.FAIL}
    assert check(v, "alignment").status is Status.FAIL


# -- Ownership and MX


async def test_a_missing_ownership_token_fails_with_the_record(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, None)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    c = check(v, "ownership")
    assert (c.status, c.required) == (Status.FAIL, True)
    assert "no verification token" in c.detail
    assert c.publish == txt_line(DOMAIN, f"relay-verification={TOKEN}")


async def test_another_installations_token_fails(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, ownership_token(b"another-relay", DOMAIN))
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    c = check(v, "ownership")
    assert c.status is Status.FAIL
    assert "another relay's token" in c.detail
    assert c.publish == txt_line(DOMAIN, f"relay-verification={TOKEN}")


async def test_a_missing_mx_warns_and_is_not_required(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN, mx=False)
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    mx = check(v, "mx")
    assert (mx.status, mx.required) == (Status.WARN, False)
    assert "no MX" in mx.detail
    assert passed(v.checks)


# -- Lookups that fail


@pytest.mark.parametrize(
    "name", ["_dmarc.example.com", "amazonses.com", "relay1._domainkey.example.com", DOMAIN]
)
async def test_servfail_is_a_failed_dns_check_not_a_crash(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str], name: str
) -> None:
    good_zone(dns_zone, key[0], TOKEN)
    dns_zone.servfail.add(name)
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    errors = [c for c in v.checks if c.name == "dns"]
    assert errors
    assert all(c.status is Status.FAIL and c.required for c in errors)
    assert any(c.found == name and "SERVFAIL" in c.detail for c in errors)
    assert not passed(v.checks)


async def test_a_failed_lookup_does_not_ask_to_publish_a_record(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN)  # p=reject is published
    dns_zone.servfail.add("_dmarc.example.com")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    dmarc = check(v, "dmarc")
    assert "no DMARC record" not in dmarc.detail
    assert dmarc.publish is None


def test_an_unreachable_nameserver_fails_cleanly_within_the_timeout(
    tmp_path: Path, dns_zone: Zone, closed_port: int, capsys: Any
) -> None:
    dns = {"nameservers": [f"127.0.0.1:{closed_port}"], "timeout_seconds": 1}
    path = relay_config(tmp_path, dns_zone, dns=dns)

    started = time.monotonic()
    code = main(["dns", "verify", DOMAIN, "-c", str(path)])
    elapsed = time.monotonic() - started

    out = capsys.readouterr().out
    assert code == 1
    assert elapsed < 10
    assert "no answer within the timeout" in out
    assert "example.com: " in out and "required check(s) fail" in out and "dns" in out
    assert dns_zone.queries == []


# -- Preflight: will mail from this site through this upstream pass DMARC?


async def test_preflight_passes_by_dkim_only_when_spf_lacks_the_include(
    tmp_path: Path, dns_zone: Zone, key: tuple[dkim.PrivateKey, str]
) -> None:
    good_zone(dns_zone, key[0], TOKEN, spf="v=spf1 mx ~all")
    v = await verify_domain(relay_config(tmp_path, dns_zone, dkim_config=active(key[1])))

    [flight] = v.preflights
    assert flight.status is Status.PASS
    assert "by DKIM only" in flight.detail
    assert "does not include amazonses.com" in flight.spf
    assert "key published" in flight.dkim


async def test_preflight_passes_by_spf_only_without_a_dkim_key(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN)
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    [flight] = v.preflights
    assert flight.status is Status.PASS
    assert "by SPF only" in flight.detail
    assert "authorises ses" in flight.spf
    assert "no DKIM key" in flight.dkim


async def test_preflight_fails_when_neither_spf_nor_dkim_aligns(
    tmp_path: Path, dns_zone: Zone
) -> None:
    good_zone(dns_zone, None, TOKEN, spf="v=spf1 mx ~all")
    v = await verify_domain(relay_config(tmp_path, dns_zone))

    [flight] = v.preflights
    assert flight.status is Status.FAIL
    assert "neither SPF nor DKIM aligns" in flight.detail
    assert "p=reject" in flight.detail


async def test_preflight_of_a_file_upstream_warns(tmp_path: Path, dns_zone: Zone) -> None:
    good_zone(dns_zone, None, TOKEN)
    archive = {"name": "archive", "kind": "file", "path": str(tmp_path / "archive")}
    v = await verify_domain(relay_config(tmp_path, dns_zone, upstreams=[SES, archive]))

    flights = {f.upstream: f for f in v.preflights}
    assert flights["ses"].status is Status.PASS
    assert flights["archive"].status is Status.WARN
    assert "file upstream" in flights["archive"].detail
    assert check(v, "spf example.com").status is Status.PASS  # a file upstream needs no SPF
