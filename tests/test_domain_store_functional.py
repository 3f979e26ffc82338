"""Domains kept in the store (the admin API's): sealed DKIM keys that sign real mail.

Keys go in through ``relay.domain_database`` (the HTTP part comes later), the
relay re-reads them with ``load_store()``, and what reaches the sink
is checked by an independent verifier (dkimpy) whose only DNS is the selector
records the test hands it. The domain monitor stays off: no DNS traffic at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import dkim as dkimpy
import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from relay.app import RelayApp, StartupError
from relay.config import load_config
from relay.core import dkim
from relay.core.dkim import Algorithm
from relay.core.domains import KeyState
from relay.domain_database import (
    DomainConflict,
    activate_key,
    add_domain,
    add_key,
    delete_domain,
)
from tests.conftest import RunningRelay, Sink, base_config, smtp_upstream, write_config
from tests.test_delivery_functional import plaintext_listener, submit

DOMAIN = "example.com"  # the site's from.email domain (sales@example.com)
NOW = 1_800_000_000.0
RETIRE_UNTIL = dt.date(2027, 3, 1)
MESSAGE = b"From: <orders@shop.example.com>\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


# -- Helpers


@cache
def private_key(name: str, algorithm: Algorithm = Algorithm.RSA) -> dkim.PrivateKey:
    """One key per name for the whole run (RSA-2048 generation is the slow part)."""
    return dkim.generate(algorithm)


def relay_config(tmp_path: Path, sink: Sink, closed_port: int, **overrides: Any) -> dict[str, Any]:
    """The site "shop" (From: sales@example.com) relaying to the sink.

    The domain monitor is off (interval 0) and its resolver is a closed loopback port,
    so the store's domains never cause DNS traffic off the machine.
    """
    dns = {
        "nameservers": [f"127.0.0.1:{closed_port}"],
        "timeout_seconds": 1,
        "verify_interval_seconds": 0,
    }
    config = base_config(tmp_path, [smtp_upstream("sink", sink.port)], dns=dns, **overrides)
    return plaintext_listener(config)


def file_domain(tmp_path: Path, name: str, selector: str, key: dkim.PrivateKey) -> dict[str, Any]:
    """A ``domains:`` entry of the YAML file, with its key written next to the config."""
    key_file = tmp_path / f"{name}.{selector}.pem"
    key_file.write_bytes(dkim.private_pem(key))
    return {"name": name, "dkim": {"selector": selector, "private_key_file": str(key_file)}}


async def store_domain(app: RelayApp, name: str = DOMAIN) -> None:
    async with app.engine.begin() as connection:
        await add_domain(connection, name, NOW)


async def store_key(
    app: RelayApp,
    selector: str,
    key: dkim.PrivateKey,
    state: KeyState = KeyState.ACTIVE,
    domain: str = DOMAIN,
) -> None:
    async with app.engine.begin() as connection:
        await add_key(connection, app.secrets, domain, selector, key, state, NOW)


async def activate(app: RelayApp, selector: str, domain: str = DOMAIN) -> None:
    async with app.engine.begin() as connection:
        await activate_key(connection, domain, selector, RETIRE_UNTIL, NOW)


async def relay_message(relay: RunningRelay, sink: Sink) -> bytes:
    """Send one message through the relay; the bytes the sink received."""
    count = len(sink.messages)
    await submit(relay, ["a@example.org"], MESSAGE)
    received = await sink.handler.wait_for(count + 1)
    return received[count].content


def signature_tags(content: bytes) -> dict[str, str] | None:
    """The tags of the message's DKIM-Signature (whitespace removed), or None if unsigned."""
    fields = email.message_from_bytes(content).get_all("DKIM-Signature") or []
    if not fields:
        return None
    assert len(fields) == 1, fields
    value = re.sub(r"\s+", "", str(fields[0]))
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def selector_of(content: bytes) -> str | None:
    """The s= of the message's DKIM signature, or None if unsigned."""
    tags = signature_tags(content)
    return tags["s"] if tags else None


def verifies(content: bytes, published: dict[str, dkim.PrivateKey]) -> bool:
    """dkimpy's verdict when DNS holds exactly ``selector -> key`` records for example.com."""
    records = {
        f"{selector}._domainkey.{DOMAIN}": dkim.txt_record(key).encode()
        for selector, key in published.items()
    }

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().lower().rstrip("."))

    return bool(dkimpy.verify(content, dnsfunc=dnsfunc))


def pem_body_lines(key: dkim.PrivateKey) -> list[bytes]:
    """The base64 lines between the PEM's BEGIN and END lines."""
    return [line for line in dkim.private_pem(key).splitlines() if not line.startswith(b"-----")]


async def stored_rows(app: RelayApp, sql: str) -> list[Any]:
    """A plain SQL select on the store, bypassing relay.domain_database."""
    async with app.engine.connect() as connection:
        return list(await connection.execute(sa.text(sql)))


async def run_serve(config_path: Path, cwd: Path) -> tuple[int, str]:
    """`relay serve` as a real process that is expected to exit: (exit status, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay.cli", "serve", "-c", str(config_path),
        cwd=cwd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


@pytest.fixture
async def sink(make_sink) -> Sink:
    return await make_sink()


@pytest.fixture
async def relay(tmp_path: Path, sink: Sink, closed_port: int, start_relay) -> RunningRelay:
    """A running relay whose YAML file has no domains (everything comes from the store)."""
    return await start_relay(relay_config(tmp_path, sink, closed_port))


# -- Signing with a store key


async def test_store_rsa_key_signs_mail_after_load(relay: RunningRelay, sink: Sink) -> None:
    key = private_key("store1")
    await store_domain(relay.app)
    await store_key(relay.app, "store1", key)

    await relay.app.load_store()
    content = await relay_message(relay, sink)

    tags = signature_tags(content)
    assert tags is not None
    assert (tags["d"], tags["s"], tags["a"]) == (DOMAIN, "store1", "rsa-sha256")
    assert verifies(content, {"store1": key})
    assert b"From: Sales Team <sales@example.com>" in content  # signed after the rewrite


async def test_store_key_does_not_sign_before_load(relay: RunningRelay, sink: Sink) -> None:
    """The live directory changes only when the store is re-read."""
    await store_domain(relay.app)
    await store_key(relay.app, "store1", private_key("store1"))

    content = await relay_message(relay, sink)

    assert signature_tags(content) is None
    assert relay.app.directory().domain(DOMAIN) is None


async def test_store_ed25519_key_signs_and_verifies(relay: RunningRelay, sink: Sink) -> None:
    key = private_key("ed1", Algorithm.ED25519)
    await store_domain(relay.app)
    await store_key(relay.app, "ed1", key)

    await relay.app.load_store()
    content = await relay_message(relay, sink)

    tags = signature_tags(content)
    assert tags is not None
    assert (tags["d"], tags["s"], tags["a"]) == (DOMAIN, "ed1", "ed25519-sha256")
    assert verifies(content, {"ed1": key})


async def test_store_domain_is_listed_as_not_managed_by_file(relay: RunningRelay) -> None:
    await store_domain(relay.app)
    await store_key(relay.app, "store1", private_key("store1"))
    await store_key(relay.app, "store2", private_key("store2"), KeyState.NEXT)

    await relay.app.load_store()

    domain = relay.app.directory().domain(DOMAIN)
    assert domain is not None and not domain.managed_by_file
    assert [(k.selector, k.state) for k in domain.keys] == [
        ("store1", KeyState.ACTIVE),
        ("store2", KeyState.NEXT),
    ]
    assert domain.keys[0].public_key == dkim.public_key_text(private_key("store1"))


# -- At rest


async def test_private_key_is_sealed_at_rest(tmp_path: Path, relay: RunningRelay) -> None:
    key = private_key("store1")
    await store_domain(relay.app)
    await store_key(relay.app, "store1", key)

    [(sealed,)] = await stored_rows(relay.app, "SELECT private_key_sealed FROM dkim_keys")

    sealed = bytes(sealed)
    assert b"PRIVATE KEY" not in sealed
    body = pem_body_lines(key)
    assert b"".join(body) not in sealed
    assert not any(line in sealed for line in body)
    assert dkim.private_pem(key) not in sealed
    assert relay.app.secrets.open(sealed) == dkim.private_pem(key)  # and yet it is the key


async def test_secret_key_file_is_mode_0600(tmp_path: Path, relay: RunningRelay) -> None:
    secret_file = tmp_path / "data" / "secret.key"
    assert relay.app.config.server.secret_key_file == secret_file
    assert secret_file.stat().st_mode & 0o777 == 0o600
    Fernet(secret_file.read_bytes().strip())  # a valid Fernet key


# -- Restart


async def test_restart_still_signs_with_the_store_key(
    tmp_path: Path, sink: Sink, closed_port: int, start_relay
) -> None:
    key = private_key("store1")
    config = relay_config(tmp_path, sink, closed_port)
    first = await start_relay(config)
    await store_domain(first.app)
    await store_key(first.app, "store1", key)
    await first.app.stop()

    second = await start_relay(config)  # start() reads the store; no explicit load
    content = await relay_message(second, sink)

    tags = signature_tags(content)
    assert tags is not None and (tags["d"], tags["s"]) == (DOMAIN, "store1")
    assert verifies(content, {"store1": key})


# -- Rotation


async def test_rotation_signs_with_the_new_selector_and_retires_the_old(
    relay: RunningRelay, sink: Sink
) -> None:
    old, new = private_key("store1"), private_key("store2")
    await store_domain(relay.app)
    await store_key(relay.app, "store1", old)
    await store_key(relay.app, "store2", new, KeyState.NEXT)
    await relay.app.load_store()
    before = await relay_message(relay, sink)

    await activate(relay.app, "store2")
    await relay.app.load_store()
    after = await relay_message(relay, sink)

    assert selector_of(before) == "store1"
    assert selector_of(after) == "store2"
    assert verifies(after, {"store2": new})
    assert not verifies(after, {"store2": old})  # really the new key, not a renamed old one
    assert verifies(before, {"store1": old})  # mail already sent still verifies
    domain = relay.app.directory().domain(DOMAIN)
    assert domain is not None
    assert {k.selector: (k.state, k.retire_until) for k in domain.keys} == {
        "store1": (KeyState.RETIRED, RETIRE_UNTIL),
        "store2": (KeyState.ACTIVE, None),
    }


@pytest.mark.parametrize(
    ("selector", "says"),
    [
        ("missing9", "no selector 'missing9'"),
        ("store2", "selector 'store2' is already active"),
        ("store1", "selector 'store1' is retired"),
    ],
    ids=["unknown", "active", "retired"],
)
async def test_activation_refused_names_the_selector(
    relay: RunningRelay, selector: str, says: str
) -> None:
    await store_domain(relay.app)
    await store_key(relay.app, "store1", private_key("store1"))
    await store_key(relay.app, "store2", private_key("store2"), KeyState.NEXT)
    await activate(relay.app, "store2")  # store1 retired, store2 active

    with pytest.raises(DomainConflict, match=re.escape(says)):
        await activate(relay.app, selector)

    rows = await stored_rows(relay.app, "SELECT selector, state FROM dkim_keys ORDER BY selector")
    assert [tuple(r) for r in rows] == [("store1", "retired"), ("store2", "active")]


# -- The YAML file and the store


async def test_file_domain_wins_a_name_clash(
    tmp_path: Path, sink: Sink, closed_port: int, start_relay
) -> None:
    file_key = private_key("file1")
    config = relay_config(
        tmp_path, sink, closed_port, domains=[file_domain(tmp_path, DOMAIN, "file1", file_key)]
    )
    relay = await start_relay(config)
    await store_domain(relay.app)
    await store_key(relay.app, "store1", private_key("store1"))

    await relay.app.load_store()
    content = await relay_message(relay, sink)

    tags = signature_tags(content)
    assert tags is not None and (tags["d"], tags["s"]) == (DOMAIN, "file1")
    assert verifies(content, {"file1": file_key})
    domain = relay.app.directory().domain(DOMAIN)
    assert domain is not None and domain.managed_by_file
    assert [k.selector for k in domain.keys] == ["file1"]


async def test_reload_keeps_store_only_domains_signing(
    tmp_path: Path, sink: Sink, closed_port: int, start_relay
) -> None:
    config = relay_config(tmp_path, sink, closed_port)
    relay = await start_relay(config)
    key = private_key("store1")
    await store_domain(relay.app)
    await store_key(relay.app, "store1", key)
    await relay.app.load_store()
    config["domains"] = [file_domain(tmp_path, "other.example", "file1", private_key("file1"))]
    write_config(tmp_path, config)

    assert relay.app.reload().problems == []
    content = await relay_message(relay, sink)

    assert relay.app.directory().domain("other.example") is not None  # the reload took effect
    tags = signature_tags(content)
    assert tags is not None and (tags["d"], tags["s"]) == (DOMAIN, "store1")
    assert verifies(content, {"store1": key})


async def test_reload_adding_the_domain_to_the_file_takes_over_and_removing_gives_back(
    tmp_path: Path, sink: Sink, closed_port: int, start_relay
) -> None:
    config = relay_config(tmp_path, sink, closed_port)
    relay = await start_relay(config)
    await store_domain(relay.app)
    await store_key(relay.app, "store1", private_key("store1"))
    await relay.app.load_store()

    config["domains"] = [file_domain(tmp_path, DOMAIN, "file1", private_key("file1"))]
    write_config(tmp_path, config)
    assert relay.app.reload().problems == []
    with_file = await relay_message(relay, sink)
    config["domains"] = []
    write_config(tmp_path, config)
    assert relay.app.reload().problems == []
    without_file = await relay_message(relay, sink)

    assert selector_of(with_file) == "file1"
    assert verifies(with_file, {"file1": private_key("file1")})
    assert selector_of(without_file) == "store1"
    assert verifies(without_file, {"store1": private_key("store1")})


# -- The secret key file


async def test_wrong_secret_key_is_a_startup_error_without_key_material(
    tmp_path: Path, sink: Sink, closed_port: int, start_relay
) -> None:
    key = private_key("store1")
    config = relay_config(tmp_path, sink, closed_port)
    first = await start_relay(config)
    await store_domain(first.app)
    await store_key(first.app, "store1", key)
    await first.app.stop()
    secret_file = tmp_path / "data" / "secret.key"
    old_secret = secret_file.read_bytes().strip()
    new_secret = Fernet.generate_key()
    secret_file.write_bytes(new_secret + b"\n")

    app = RelayApp(load_config(write_config(tmp_path, config)))  # a valid key: accepted here
    try:
        with pytest.raises(StartupError) as raised:
            await app.start()
    finally:
        await app.stop()

    message = str(raised.value)
    assert "does not decrypt" in message
    assert "\n" not in message
    for material in [old_secret, new_secret, *pem_body_lines(key), b"PRIVATE KEY"]:
        assert material.decode() not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.slow
async def test_wrong_secret_key_makes_serve_exit_with_one_line(
    tmp_path: Path, sink: Sink, closed_port: int, start_relay
) -> None:
    config = relay_config(tmp_path, sink, closed_port)
    first = await start_relay(config)
    await store_domain(first.app)
    await store_key(first.app, "store1", private_key("store1"))
    await first.app.stop()
    (tmp_path / "data" / "secret.key").write_bytes(Fernet.generate_key() + b"\n")

    returncode, stderr = await run_serve(write_config(tmp_path, config), tmp_path)

    assert returncode == 1
    assert "Traceback" not in stderr
    assert "relay: a stored secret does not decrypt" in stderr
    assert "PRIVATE KEY" not in stderr


async def test_garbage_secret_key_file_is_a_startup_error_naming_the_file(
    tmp_path: Path, sink: Sink, closed_port: int
) -> None:
    secret_file = tmp_path / "data" / "secret.key"
    secret_file.parent.mkdir()
    secret_file.write_bytes(b"this is not a fernet key\n")
    path = write_config(tmp_path, relay_config(tmp_path, sink, closed_port))

    with pytest.raises(StartupError) as raised:
        RelayApp(load_config(path))

    assert str(secret_file) in str(raised.value)
    assert "not a Fernet key" in str(raised.value)
    assert secret_file.read_bytes() == b"this is not a fernet key\n"  # never overwritten


# -- Deleting


async def test_delete_domain_removes_it_and_its_keys(relay: RunningRelay, sink: Sink) -> None:
    await store_domain(relay.app)
    await store_key(relay.app, "store1", private_key("store1"))
    await store_key(relay.app, "store2", private_key("store2"), KeyState.NEXT)
    await relay.app.load_store()
    assert signature_tags(await relay_message(relay, sink)) is not None

    async with relay.app.engine.begin() as connection:
        first = await delete_domain(connection, DOMAIN)
    async with relay.app.engine.begin() as connection:
        second = await delete_domain(connection, DOMAIN)
    await relay.app.load_store()
    content = await relay_message(relay, sink)

    assert (first, second) == (True, False)
    assert await stored_rows(relay.app, "SELECT name FROM domains") == []
    assert await stored_rows(relay.app, "SELECT selector FROM dkim_keys") == []
    assert relay.app.directory().domain(DOMAIN) is None
    assert signature_tags(content) is None


async def test_domain_names_are_case_insensitive_in_the_store(
    relay: RunningRelay, sink: Sink
) -> None:
    key = private_key("store1")
    await store_domain(relay.app, "Example.COM")
    await store_key(relay.app, "store1", key, domain="EXAMPLE.com")

    await relay.app.load_store()
    content = await relay_message(relay, sink)

    tags = signature_tags(content)
    assert tags is not None and (tags["d"], tags["s"]) == (DOMAIN, "store1")
    assert verifies(content, {"store1": key})
    async with relay.app.engine.begin() as connection:
        assert await delete_domain(connection, "eXample.Com")


@pytest.mark.parametrize(
    ("selector", "state", "expected"),
    [
        pytest.param("store2", KeyState.ACTIVE, "has an active key", id="second-active"),
        pytest.param("store1", KeyState.NEXT, "'store1' exists", id="same-selector"),
    ],
)
async def test_add_key_refuses_what_would_break_rotation(
    relay: RunningRelay, selector: str, state: KeyState, expected: str
) -> None:
    await store_domain(relay.app)
    await store_key(relay.app, "store1", private_key("one"))
    with pytest.raises(DomainConflict, match=expected):
        await store_key(relay.app, selector, private_key("two"), state)


async def test_add_key_for_an_unknown_domain_is_a_conflict(relay: RunningRelay) -> None:
    with pytest.raises(DomainConflict, match=r"no domain 'nowhere\.example'"):
        await store_key(relay.app, "s1", private_key("one"), domain="nowhere.example")
