"""DKIM end to end: a real relay signs, a real sink receives, real verifiers ask a real DNS server.

The keys are published on the loopback DNS server (tests/dns_zone.py) and the
relay's ``dns.nameservers`` point at it. Each received message is checked by two
independent verifiers: dkimpy (its DNS through dnspython) and Perl's Mail::DKIM
(its DNS through Net::DNS), both asking that server. Mail::DKIM 1.20230212 does
not verify Ed25519, so Ed25519 is checked with dkimpy only.

Also the `relay dkim keygen` and `relay check-config` commands.
"""

from __future__ import annotations

import asyncio
import re
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import dkim as dkimpy
import dns.resolver
import pytest
import yaml

from relay import cli
from relay.core import dkim
from relay.core.dkim import Algorithm
from tests.conftest import RunningRelay, Sink, base_config, smtp_upstream, write_config
from tests.dns_zone import Zone
from tests.test_delivery_functional import SENDER, plaintext_listener, submit

RELAY = Path(sys.executable).with_name("relay")  # the console script of this venv
SUBPROCESS_SECONDS = 60

MESSAGE = (
    f"From: Order Desk <{SENDER}>\r\n"
    "To: a@example.org\r\n"
    "Subject: Order 42 shipped\r\n"
    "\r\n"
    "Your parcel ships tomorrow.\r\n"
).encode()

MakeSink = Callable[..., Awaitable[Sink]]
StartRelay = Callable[..., Awaitable[RunningRelay]]
Verify = Callable[[bytes], Awaitable[str]]

# -- Verifiers.


def loopback_txt(zone: Zone) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc`` that asks the loopback server (and nothing else) via dnspython."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = zone.port

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=min(timeout, 5))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(b"".join(record.strings) for record in answer)

    return dnsfunc


def dkimpy_result(message: bytes, zone: Zone) -> str:
    return "pass" if dkimpy.verify(message, dnsfunc=loopback_txt(zone)) else "fail"


MAIL_DKIM_SCRIPT = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Net::DNS;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 1,
    udp_timeout => 5, tcp_timeout => 5, retry => 1));
binmode STDIN;
my $dkim = Mail::DKIM::Verifier->new();
while (<STDIN>) { $dkim->PRINT($_); }
$dkim->CLOSE;
print $dkim->result, "\n", $dkim->result_detail, "\n";
"""


@cache
def have_mail_dkim() -> bool:
    try:
        check = ["perl", "-MMail::DKIM::Verifier", "-MNet::DNS", "-e1"]
        return subprocess.run(check, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def mail_dkim_result(message: bytes, zone: Zone) -> str:
    """Mail::DKIM's result: pass, fail, invalid, none, temperror..."""
    done = subprocess.run(
        ["perl", "-e", MAIL_DKIM_SCRIPT, str(zone.port)],
        input=message,
        capture_output=True,
        timeout=SUBPROCESS_SECONDS,
        check=True,
    )
    return done.stdout.decode().splitlines()[0]


@pytest.fixture(params=["dkimpy", "mail-dkim"])
def verify(request: pytest.FixtureRequest, dns_zone: Zone) -> Verify:
    """verify(message) -> "pass" | "fail" | ...: each verifier in turn, off the event loop."""
    if request.param == "mail-dkim" and not have_mail_dkim():
        pytest.skip("Perl Mail::DKIM is not installed (apt-get install libmail-dkim-perl)")
    check = dkimpy_result if request.param == "dkimpy" else mail_dkim_result

    async def run(message: bytes) -> str:
        return await asyncio.to_thread(check, message, dns_zone)

    return run


async def dkimpy_verdict(message: bytes, zone: Zone) -> str:
    return await asyncio.to_thread(dkimpy_result, message, zone)


# -- Keys, config and messages.


@cache
def private_key(label: str, algorithm: Algorithm = Algorithm.RSA) -> dkim.PrivateKey:
    """One key per label for the run: RSA-2048 generation is the slow part."""
    return dkim.generate(algorithm)


def key_file(tmp_path: Path, label: str, algorithm: Algorithm = Algorithm.RSA) -> str:
    path = tmp_path / f"{label}.pem"
    path.write_bytes(dkim.private_pem(private_key(label, algorithm)))
    return str(path)


def publish(zone: Zone, domain: str, selector: str, label: str, algorithm: Algorithm) -> None:
    zone.txt(f"{selector}._domainkey.{domain}", dkim.txt_record(private_key(label, algorithm)))


def signing_domain(
    tmp_path: Path,
    zone: Zone,
    name: str = "example.com",
    selector: str = "relay1",
    algorithm: Algorithm = Algorithm.RSA,
) -> dict[str, Any]:
    """A ``domains`` entry whose key is written to tmp_path and published in the zone."""
    label = f"{name}.{selector}.{algorithm.value}"
    publish(zone, name, selector, label, algorithm)
    return {
        "name": name,
        "dkim": {"selector": selector, "private_key_file": key_file(tmp_path, label, algorithm)},
    }


def relay_config(
    tmp_path: Path, sink: Sink, zone: Zone, domains: list[dict[str, Any]]
) -> dict[str, Any]:
    config = base_config(
        tmp_path,
        [smtp_upstream("sink", sink.port)],
        # Signing needs no DNS; the checks of the domains would only add queries and warnings.
        dns={"nameservers": [zone.nameserver], "timeout_seconds": 2, "verify_interval_seconds": 0},
        domains=domains,
    )
    return plaintext_listener(config)


async def relay_one(relay: RunningRelay, sink: Sink, content: bytes = MESSAGE) -> bytes:
    """Submit a message and return it as the sink received it."""
    before = len(sink.messages)
    await submit(relay, ["a@example.org"], content)
    received = await sink.handler.wait_for(before + 1)
    return received[before].content


def signature_tags(message: bytes) -> dict[str, str]:
    """The tags of the only DKIM-Signature in the message's header, whitespace removed."""
    header = message.partition(b"\r\n\r\n")[0]  # a DSN quotes the original's header below
    field = rb"^DKIM-Signature:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)"
    fields = re.findall(field, header, re.MULTILINE)
    assert len(fields) == 1, fields
    pairs = (p.split("=", 1) for p in fields[0].decode().split(";") if p.strip())
    return {name.strip(): re.sub(r"\s", "", value) for name, value in pairs}


def replace_once(message: bytes, old: bytes, new: bytes) -> bytes:
    assert message.count(old) == 1, old
    return message.replace(old, new)


@pytest.fixture
async def signing_relay(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, dns_zone: Zone
) -> tuple[RunningRelay, Sink]:
    """A relay whose site (from sales@example.com) signs with example.com's RSA key relay1."""
    sink = await make_sink()
    domains = [signing_domain(tmp_path, dns_zone)]
    relay = await start_relay(relay_config(tmp_path, sink, dns_zone, domains))
    return relay, sink


# -- Relayed messages verify; changes after signing break them.


async def test_relayed_message_verifies(
    signing_relay: tuple[RunningRelay, Sink], verify: Verify
) -> None:
    received = await relay_one(*signing_relay)

    assert await verify(received) == "pass"
    found = signature_tags(received)
    assert (found["d"], found["s"], found["a"]) == ("example.com", "relay1", "rsa-sha256")


async def test_subject_changed_after_delivery_fails(
    signing_relay: tuple[RunningRelay, Sink], verify: Verify
) -> None:
    received = await relay_one(*signing_relay)

    tampered = replace_once(received, b"Subject: Order 42", b"Subject: Order 43")

    assert await verify(tampered) == "fail"


async def test_body_changed_after_delivery_fails(
    signing_relay: tuple[RunningRelay, Sink], verify: Verify
) -> None:
    received = await relay_one(*signing_relay)

    tampered = replace_once(received, b"ships tomorrow", b"ships today")

    assert await verify(tampered) == "fail"


async def test_signature_covers_the_rewritten_from(
    signing_relay: tuple[RunningRelay, Sink], dns_zone: Zone
) -> None:
    """The relay signs after replacing From: putting the client's From back breaks it."""
    received = await relay_one(*signing_relay)

    assert b"\r\nFrom: Sales Team <sales@example.com>\r\n" in received
    assert f"\r\nReply-To: Order Desk <{SENDER}>\r\n".encode() in received
    assert signature_tags(received)["h"].split(":")[:2] == ["from", "from"]
    assert await dkimpy_verdict(received, dns_zone) == "pass"
    original = replace_once(
        received, b"From: Sales Team <sales@example.com>", f"From: <{SENDER}>".encode()
    )
    assert await dkimpy_verdict(original, dns_zone) == "fail"


async def test_site_whose_from_domain_has_no_key_is_not_signed(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, dns_zone: Zone
) -> None:
    sink = await make_sink()
    domains = [signing_domain(tmp_path, dns_zone, name="example.net")]  # not the site's domain
    relay = await start_relay(relay_config(tmp_path, sink, dns_zone, domains))

    received = await relay_one(relay, sink)

    assert b"DKIM-Signature" not in received
    assert b"\r\nFrom: Sales Team <sales@example.com>\r\n" in received


async def test_ed25519_domain_verifies_with_dkimpy(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, dns_zone: Zone
) -> None:
    sink = await make_sink()
    domains = [signing_domain(tmp_path, dns_zone, selector="ed1", algorithm=Algorithm.ED25519)]
    relay = await start_relay(relay_config(tmp_path, sink, dns_zone, domains))

    received = await relay_one(relay, sink)

    assert signature_tags(received)["a"] == "ed25519-sha256"
    assert await dkimpy_verdict(received, dns_zone) == "pass"
    tampered = replace_once(received, b"ships tomorrow", b"ships today")
    assert await dkimpy_verdict(tampered, dns_zone) == "fail"


async def test_fifty_kilobyte_message_with_long_lines_verifies(
    signing_relay: tuple[RunningRelay, Sink], verify: Verify
) -> None:
    """Long text lines and base64 blocks like an attachment's."""
    long_line = b"word " * 190 + b"end\r\n"  # 953 bytes, under SMTP's 1000
    base64_block = (
        b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n"
    ) * 60
    body = (long_line * 20 + b"--attachment--\r\n" + base64_block) * 3
    content = b"From: <orders@shop.example.com>\r\nTo: a@example.org\r\nSubject: Invoice\r\n\r\n"
    content += body
    assert len(content) > 50_000

    received = await relay_one(*signing_relay, content)

    assert received.endswith(body)
    assert await verify(received) == "pass"


async def test_typical_mime_message_verifies(
    signing_relay: tuple[RunningRelay, Sink], verify: Verify
) -> None:
    content = (
        f"From: Order Desk <{SENDER}>\r\n"
        "To: a@example.org\r\n"
        "Subject: Order 42 shipped\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Your parcel ships tomorrow.\r\n"
    ).encode()

    received = await relay_one(*signing_relay, content)

    assert await verify(received) == "pass"


# -- DSNs.


async def test_dsn_is_signed_with_the_site_domains_key(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, dns_zone: Zone, verify: Verify
) -> None:
    sink = await make_sink(replies={"rcpt": {"gone@example.org": "550 5.1.1 no such user"}})
    domains = [signing_domain(tmp_path, dns_zone)]
    relay = await start_relay(relay_config(tmp_path, sink, dns_zone, domains))

    await submit(relay, ["gone@example.org"], MESSAGE)

    [dsn] = await sink.handler.wait_for(1)
    assert (dsn.mail_from, dsn.rcpt_tos) == ("<>", [SENDER])
    assert b"\r\nSubject: Undelivered Mail Returned to Sender\r\n" in dsn.content
    assert signature_tags(dsn.content)["d"] == "example.com"
    assert await verify(dsn.content) == "pass"


async def test_dsn_from_a_bounce_address_is_signed_with_that_domains_key(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, dns_zone: Zone
) -> None:
    sink = await make_sink(replies={"rcpt": {"gone@example.org": "550 5.1.1 no such user"}})
    domains = [
        signing_domain(tmp_path, dns_zone),
        signing_domain(tmp_path, dns_zone, name="bounce.example.com", selector="b1"),
    ]
    config = relay_config(tmp_path, sink, dns_zone, domains)
    config["sites"][0]["bounce_address"] = "bounces@bounce.example.com"
    relay = await start_relay(config)

    await submit(relay, ["gone@example.org"], MESSAGE)

    [dsn] = await sink.handler.wait_for(1)
    assert b"<bounces@bounce.example.com>" in dsn.content.partition(b"\r\n\r\n")[0]
    found = signature_tags(dsn.content)
    assert (found["d"], found["s"]) == ("bounce.example.com", "b1")
    assert await dkimpy_verdict(dsn.content, dns_zone) == "pass"


# -- Rotation by reload.


async def test_reload_to_a_new_selector_signs_new_mail_with_it(
    tmp_path: Path, make_sink: MakeSink, start_relay: StartRelay, dns_zone: Zone, verify: Verify
) -> None:
    sink = await make_sink()
    config = relay_config(tmp_path, sink, dns_zone, [signing_domain(tmp_path, dns_zone)])
    relay = await start_relay(config)
    before = await relay_one(relay, sink)

    config["domains"] = [signing_domain(tmp_path, dns_zone, selector="relay2")]
    write_config(tmp_path, config)
    assert relay.app.reload().problems == []
    after = await relay_one(relay, sink)

    assert signature_tags(before)["s"] == "relay1"
    assert signature_tags(after)["s"] == "relay2"
    assert await verify(after) == "pass"
    assert await verify(before) == "pass"  # relay1's record is still published


# -- `relay dkim keygen` and `relay check-config`.


def run_relay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RELAY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_SECONDS,
        stdin=subprocess.DEVNULL,
    )


def zone_line_of(output: str) -> str:
    [line] = [line for line in output.splitlines() if " IN TXT " in line]
    return line


def joined_record(zone_line: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', zone_line))


def test_keygen_writes_a_private_file_and_never_overwrites_it(tmp_path: Path) -> None:
    first = run_relay("dkim", "keygen", "example.com", "--selector", "relay1", cwd=tmp_path)

    path = tmp_path / "data" / "dkim" / "example.com.relay1.pem"  # the default directory
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    written = path.read_bytes()
    assert dkim.algorithm_of(dkim.load_private_key(written)) is Algorithm.RSA
    assert "relay1._domainkey.example.com. 3600 IN TXT" in first.stdout

    second = run_relay("dkim", "keygen", "example.com", "--selector", "relay1", cwd=tmp_path)

    assert second.returncode == 1
    assert f"{Path('data/dkim/example.com.relay1.pem')} exists" in second.stderr
    assert second.stdout == ""
    assert path.read_bytes() == written
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_keygen_zone_line_is_the_record_that_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dns_zone: Zone
) -> None:
    status = cli.main(
        ["dkim", "keygen", "Example.COM", "--selector", "s2026", "--out", str(tmp_path)]
    )

    output = capsys.readouterr().out
    assert status == 0
    key = dkim.load_private_key((tmp_path / "example.com.s2026.pem").read_bytes())
    line = zone_line_of(output)
    assert line.startswith("s2026._domainkey.example.com. 3600 IN TXT ")
    record = joined_record(line)
    assert record == dkim.txt_record(key)
    dns_zone.txt("s2026._domainkey.example.com", record)
    message = dkim.sign(MESSAGE, dkim.SigningKey("example.com", "s2026", key), time.time())
    assert await dkimpy_verdict(message, dns_zone) == "pass"


def test_keygen_ed25519_prints_an_ed25519_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(
        ["dkim", "keygen", "example.com", "--selector", "ed1", "--out", str(tmp_path),
         "--algorithm", "ed25519"]
    )  # fmt: skip

    output = capsys.readouterr().out
    assert status == 0
    key = dkim.load_private_key((tmp_path / "example.com.ed1.pem").read_bytes())
    assert dkim.algorithm_of(key) is Algorithm.ED25519
    record = joined_record(zone_line_of(output))
    assert record.startswith("v=DKIM1; k=ed25519; p=")
    assert record == dkim.txt_record(key)


def test_keygen_refuses_a_bad_selector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(
        ["dkim", "keygen", "example.com", "--selector", "a_b", "--out", str(tmp_path)]
    )

    assert status == 1
    assert "not a DKIM selector: 'a_b'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_keygen_yaml_snippet_completes_a_valid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys"
    cli.main(["dkim", "keygen", "example.com", "--selector", "relay1", "--out", str(out)])
    snippet = capsys.readouterr().out.split("dkim.next for a rotation:\n", 1)[1]
    config = base_config(tmp_path, [smtp_upstream("sink", 2525)], **yaml.safe_load(snippet))
    path = write_config(tmp_path, config)

    status = cli.main(["check-config", "-c", str(path)])

    assert config["domains"][0]["dkim"]["private_key_file"] == str(out / "example.com.relay1.pem")
    assert status == 0, capsys.readouterr().err


def test_check_config_names_a_key_file_that_is_not_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "example.com.relay1.pem"
    garbage.write_text(
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n"
    )
    domain = {
        "name": "example.com",
        "dkim": {"selector": "relay1", "private_key_file": str(garbage)},
    }
    path = write_config(
        tmp_path, base_config(tmp_path, [smtp_upstream("sink", 2525)], domains=[domain])
    )

    status = cli.main(["check-config", "-c", str(path)])

    assert status == 2
    assert capsys.readouterr().err.splitlines() == [
        f"domains[0].dkim.private_key_file: {garbage}: "
        "not a PEM private key (or it needs a passphrase)"
    ]
