"""`relay dkim keygen` and `relay dns verify`: a domain's key and its DNS, for humans."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pwd
import shutil
import sys
import textwrap
from pathlib import Path

from relay.config import Config
from relay.core import dkim
from relay.core.domain_checks import Check, Status, passed
from relay.domain_verifier import DnsLookup, Verification, verify
from relay.secret_box import SecretKeyError, load_or_create_key

DEFAULT_KEY_DIR = Path("data/dkim")


def keygen(domain: str, selector: str, out: Path | None, algorithm: str, owner: str | None) -> int:
    domain = domain.lower()
    if not dkim.is_selector(selector):
        print(f"not a DKIM selector: {selector!r} (letters, digits, '-')", file=sys.stderr)
        return 1
    directory = out or DEFAULT_KEY_DIR
    path = directory / f"{domain}.{selector}.pem"
    key = dkim.generate(dkim.Algorithm(algorithm))
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"{path} exists; pick another selector (keys are never overwritten)", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"cannot write {path}: {error.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as file:
        file.write(dkim.private_pem(key))
    if owner is not None:
        try:
            user = pwd.getpwnam(owner)
        except KeyError:
            print(f"no such user {owner!r}; {path} stays owned by you", file=sys.stderr)
            return 1
        shutil.chown(path, user.pw_uid, user.pw_gid)
    kind = "Ed25519" if algorithm == "ed25519" else "RSA-2048"
    print(f"Wrote {path} ({kind}, readable only by its owner).\n")
    print("Publish this DNS record:")
    print(dkim.zone_line(domain, selector, dkim.txt_record(key)))
    print("\nThen add the key to the config, or to an existing domain's dkim.next for a rotation:")
    print(
        textwrap.dedent(f"""\
        domains:
          - name: {domain}
            dkim:
              selector: {selector}
              private_key_file: {path}""")
    )
    return 0


def dns_verify(config: Config, domain: str) -> int:
    try:
        secret = load_or_create_key(config.server.secret_key_file)
    except SecretKeyError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 1
    result = asyncio.run(
        verify(domain, config.directory(), secret, DnsLookup(config.dns), dt.date.today())
    )
    print(format_verification(result))
    return 0 if passed(result.checks) else 1


def format_verification(v: Verification) -> str:
    lines = [f"DNS of {v.domain}", ""]
    width = max(len(c.name) for c in v.checks)
    for c in v.checks:
        mark = "" if c.required else " (optional)"
        lines.append(f"  {c.name:<{width}}  {c.status.value.upper():<4}  {c.detail}{mark}")
        lines.append(f"  {'':<{width}}        found: {_short(c.found)}")
    publish = [c.publish for c in v.checks if c.publish and c.status is not Status.PASS]
    if publish:
        lines += ["", "Publish:", *(f"  {record}" for record in publish)]
    if v.preflights:
        lines += ["", "Preflight (will mail pass DMARC?):"]
        for p in v.preflights:
            lines.append(f"  {p.site} via {p.upstream}: {p.status.value.upper()}  {p.detail}")
            lines.append(f"      SPF:  {p.spf}")
            lines.append(f"      DKIM: {p.dkim}")
    verdict = "all required checks pass" if passed(v.checks) else _failures(v.checks)
    lines += ["", f"{v.domain}: {verdict}"]
    return "\n".join(lines)


def _failures(checks: list[Check]) -> str:
    failed = [c.name for c in checks if c.required and c.status is Status.FAIL]
    return f"{len(failed)} required check(s) fail: {', '.join(failed)}"


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
