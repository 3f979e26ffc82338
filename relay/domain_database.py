"""SQL for domains created through the admin API and their DKIM keys, sealed at rest.

Private keys are stored as Fernet tokens (``SecretBox``); they are opened
only to build the signer, and no function here returns them to a caller
other than ``load_domains``.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.core import dkim
from relay.core.domains import Domain, DomainKey, KeyState, activation_problem
from relay.secret_box import SecretBox
from relay.tables import dkim_keys, domains


class DomainConflict(Exception):
    """A change the domain's current state does not allow (the API answers 409)."""


async def add_domain(connection: AsyncConnection, name: str, now: float) -> None:
    await connection.execute(
        sa.insert(domains).values(name=name.lower(), created_at=now, updated_at=now)
    )


async def delete_domain(connection: AsyncConnection, name: str) -> bool:
    await connection.execute(sa.delete(dkim_keys).where(dkim_keys.c.domain == name.lower()))
    result = await connection.execute(sa.delete(domains).where(domains.c.name == name.lower()))
    return bool(result.rowcount)


async def add_key(
    connection: AsyncConnection,
    box: SecretBox,
    domain: str,
    selector: str,
    key: dkim.PrivateKey,
    state: KeyState,
    now: float,
) -> None:
    """A new selector; a domain's first key is usually ``active``, later ones ``next``."""
    domain = domain.lower()
    found = await connection.execute(sa.select(domains.c.name).where(domains.c.name == domain))
    if found.first() is None:
        raise DomainConflict(f"no domain {domain!r}; add it first")
    rows = await connection.execute(
        sa.select(dkim_keys.c.selector, dkim_keys.c.state).where(dkim_keys.c.domain == domain)
    )
    states = {r.selector: KeyState(r.state) for r in rows}
    if selector in states:
        raise DomainConflict(f"selector {selector!r} exists; keys are never replaced")
    if state is KeyState.ACTIVE and KeyState.ACTIVE in states.values():
        raise DomainConflict("the domain has an active key; add this one as next and activate it")
    await connection.execute(
        sa.insert(dkim_keys).values(
            domain=domain,
            selector=selector,
            state=state.value,
            private_key_sealed=box.seal(dkim.private_pem(key)),
            retire_until=None,
            created_at=now,
            updated_at=now,
        )
    )


async def activate_key(
    connection: AsyncConnection, domain: str, selector: str, retire_until: dt.date, now: float
) -> None:
    """Rotation: ``selector`` starts signing; the active key retires, published until the date."""
    rows = await connection.execute(
        sa.select(dkim_keys.c.selector, dkim_keys.c.state).where(
            dkim_keys.c.domain == domain.lower()
        )
    )
    problem = activation_problem({r.selector: KeyState(r.state) for r in rows}, selector)
    if problem is not None:
        raise DomainConflict(problem)
    where = dkim_keys.c.domain == domain.lower()
    await connection.execute(
        sa.update(dkim_keys)
        .where(where, dkim_keys.c.state == KeyState.ACTIVE.value)
        .values(state=KeyState.RETIRED.value, retire_until=retire_until, updated_at=now)
    )
    await connection.execute(
        sa.update(dkim_keys)
        .where(where, dkim_keys.c.selector == selector)
        .values(state=KeyState.ACTIVE.value, retire_until=None, updated_at=now)
    )


async def load_domains(connection: AsyncConnection, box: SecretBox) -> list[Domain]:
    keys: dict[str, list[DomainKey]] = {}
    signing: dict[str, dkim.SigningKey] = {}
    for row in await connection.execute(sa.select(dkim_keys).order_by(dkim_keys.c.created_at)):
        private = dkim.load_private_key(box.open(row.private_key_sealed))
        state = KeyState(row.state)
        keys.setdefault(row.domain, []).append(
            DomainKey.of(row.selector, state, private, row.retire_until)
        )
        if state is KeyState.ACTIVE:
            signing[row.domain] = dkim.SigningKey(row.domain, row.selector, private)
    names = await connection.execute(sa.select(domains.c.name).order_by(domains.c.name))
    return [
        Domain(n, tuple(keys.get(n, ())), signing.get(n), managed_by_file=False) for (n,) in names
    ]
