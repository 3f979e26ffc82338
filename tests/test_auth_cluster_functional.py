"""AUTH failures are counted by every node: two nodes on one store share one throttle.

Two in-process relays on one SQLite file, and on a throwaway PostgreSQL
database (skipped with the reason when there is none); real SMTP sessions
over STARTTLS on loopback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import sqlalchemy as sa

from relay.app import RelayApp
from relay.tables import auth_failures
from tests.conftest import SITE_PASSWORD
from tests.test_smtp_security_functional import auth_code, client, plain_blob, tls_config
from tests.two_nodes import start_node, store_url

__all__ = ["start_node", "store_url"]  # fixtures


async def two_nodes(
    tmp_path: Path, make_sink: Any, cert_files: Any, start_node: Any, store_url: str
) -> tuple[RelayApp, RelayApp]:
    sink = await make_sink()
    config = tls_config(tmp_path, sink, cert_files, auth_max_failures=3)
    return await start_node("a", config), await start_node("b", config)


def port(app: RelayApp) -> int:
    return app.listeners.ports[0]


async def failures_of(app: RelayApp, key: str) -> int:
    async with app.engine.connect() as connection:
        query = sa.select(sa.func.count()).where(auth_failures.c.key == key)
        return int(await connection.scalar(query) or 0)


async def test_failures_on_two_nodes_block_the_address_on_both(
    tmp_path: Path, make_sink, cert_files, client_tls, start_node, store_url: str
) -> None:
    a, b = await two_nodes(tmp_path, make_sink, cert_files, start_node, store_url)
    attacker = "127.0.0.5"
    assert await auth_code(port(a), client_tls, "shop", "guess 1", attacker) == 535
    assert await auth_code(port(a), client_tls, "shop", "guess 2", attacker) == 535
    assert await auth_code(port(b), client_tls, "shop", "guess 3", attacker) == 535
    # The third failure was on B; A learns it from the store.
    assert await auth_code(port(a), client_tls, "shop", SITE_PASSWORD, attacker) == 454
    assert await auth_code(port(b), client_tls, "shop", SITE_PASSWORD, attacker) == 454
    # The username's owner, from its own address, gets in on both.
    assert await auth_code(port(b), client_tls, "shop", SITE_PASSWORD, "127.0.0.6") == 235
    assert await auth_code(port(a), client_tls, "shop", SITE_PASSWORD, "127.0.0.7") == 235
    # The success forgot the username's failures; the address keeps its three, no more.
    assert await failures_of(a, "user:shop") == 0
    assert await failures_of(a, "ip:127.0.0.5") == 3


async def test_parallel_guesses_split_over_two_nodes_get_at_most_the_limit_of_535(
    tmp_path: Path, make_sink, cert_files, client_tls, start_node, store_url: str
) -> None:
    a, b = await two_nodes(tmp_path, make_sink, cert_files, start_node, store_url)
    attacker = "127.0.0.8"
    nodes = [a, b] * 5
    sessions = [client(port(node), client_tls, source=attacker) for node in nodes]
    smtps: list[aiosmtplib.SMTP] = [await session.__aenter__() for session in sessions]
    try:
        replies = await asyncio.gather(
            *(
                # Distinct usernames: no username line orders them, only the store does.
                smtp.execute_command(b"AUTH", b"PLAIN", plain_blob(f"user{i}", "guess"))
                for i, smtp in enumerate(smtps)
            )
        )
    finally:
        for session in sessions:
            await session.__aexit__(None, None, None)
    codes = [reply.code for reply in replies]
    assert codes.count(535) <= 3, codes
    assert set(codes) <= {535, 454}, codes
    assert await failures_of(a, "ip:127.0.0.8") <= 3
    assert await auth_code(port(b), client_tls, "shop", SITE_PASSWORD, attacker) == 454


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_old_failures_leave_the_store(
    tmp_path: Path, make_sink, cert_files, client_tls, start_node, store_url: str
) -> None:
    a, b = await two_nodes(tmp_path, make_sink, cert_files, start_node, store_url)
    assert await auth_code(port(a), client_tls, "nobody", "guess", "127.0.0.9") == 535
    assert await failures_of(a, "ip:127.0.0.9") == 1
    for node in (a, b):  # every failure is out of the window now
        node.housekeeping._auth_window = 0.0
    # Housekeeping removes them: whichever node holds its lease (the other one skips).
    done = [await node.housekeeping.run_once() for node in (a, b)]
    assert [d is None for d in done].count(True) == 1, done
    gone = [
        node.metrics.registry.get_sample_value(
            "relay_retention_deleted_total", {"kind": "auth_failures"}
        )
        or 0
        for node in (a, b)
    ]
    assert sum(gone) == 2, gone  # the address's and the username's, once
    assert await failures_of(a, "ip:127.0.0.9") + await failures_of(a, "user:nobody") == 0


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_identical_logins_at_once_share_one_check_while_it_is_counted(
    tmp_path: Path, make_sink, cert_files, client_tls, start_node, store_url: str
) -> None:
    """30 sessions of one web server log in together: one check, counted in the store; all 235."""
    a, _ = await two_nodes(tmp_path, make_sink, cert_files, start_node, store_url)
    sessions = [client(port(a), client_tls) for _ in range(30)]
    smtps: list[aiosmtplib.SMTP] = [await session.__aenter__() for session in sessions]
    try:
        replies = await asyncio.gather(
            *(
                smtp.execute_command(b"AUTH", b"PLAIN", plain_blob("shop", SITE_PASSWORD))
                for smtp in smtps
            )
        )
    finally:
        for session in sessions:
            await session.__aexit__(None, None, None)
    assert [reply.code for reply in replies] == [235] * 30
