"""Site API keys for the send API made through the admin API: made, listed, revoked.

A key is generated here (256 random bits), returned once, and stored only as
its SHA-256 hash. It may be made for any site, the file's or the API's; a
name the file already gives one of the site's keys is refused (the file
wins). Made and revoked with an audit entry and a bump of the ``catalog``
version in one transaction, so this node uses the change at once and every
other node within ``cluster.sync_seconds``. A listing shows names and times,
never a key or its hash.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import api_key_database as db
from relay import catalog_database
from relay.catalog_controller import Conflict, Invalid, NotFound
from relay.cluster_controller import CATALOG, ClusterSync
from relay.config import Config
from relay.core.directory import Directory
from relay.core.tokens import hash_token, new_token
from relay.store import GroupWriter

_YEAR_10000 = 253_402_300_800.0  # Unix seconds
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # as the file's names (config_section)


@dataclass(frozen=True)
class KeyInfo:
    name: str
    managed_by: str  # "file" or "api"
    created_at: float | None  # None for the file's
    expires_at: float | None
    last_used_at: float | None  # recorded for the API's keys


@dataclass(frozen=True)
class NewApiKey:
    site_id: str
    name: str
    key: str  # shown once, never stored
    created_at: float
    expires_at: float | None


class ApiKeyController:
    def __init__(
        self,
        writer: GroupWriter,
        config: Callable[[], Config],
        directory: Callable[[], Directory],
        sync: ClusterSync,
        clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._config = config
        self._directory = directory
        self._sync = sync
        self._clock = clock

    async def list(self, site_id: str) -> list[KeyInfo]:
        self._site(site_id)
        file_keys = [k for k in self._config().api_keys if k.site_id == site_id]
        async with self._writer.engine.connect() as connection:
            stored = await db.load_api_keys(connection, site_id)
        names = {k.name for k in file_keys}
        return [KeyInfo(k.name, "file", None, k.expires_at, None) for k in file_keys] + [
            KeyInfo(s.name, "api", s.created_at, s.expires_at, s.last_used_at)
            for s in stored
            if s.name not in names
        ]

    async def create(self, actor: str, site_id: str, body: Mapping[str, Any]) -> NewApiKey:
        self._site(site_id)
        now = self._clock()
        name, expires_at = _parse(body, now)
        if any(k.site_id == site_id and k.name == name for k in self._config().api_keys):
            raise Conflict(f"site {site_id!r} has a key {name!r} in {self._config().path}")
        key = new_token()
        stored = db.StoredApiKey(site_id, name, hash_token(key), now, expires_at, None)

        async def write(c: AsyncConnection) -> None:
            try:
                await db.add_api_key(c, stored)
            except IntegrityError:
                raise Conflict(f"site {site_id!r} has a key {name!r}; delete it first") from None
            detail = {"expires_at": expires_at}
            await self._audit(c, actor, "create", f"{site_id}/{name}", detail)

        await self._sync.change(CATALOG, write)
        return NewApiKey(site_id, name, key, now, expires_at)

    async def delete(self, actor: str, site_id: str, name: str) -> None:
        self._site(site_id)
        if any(k.site_id == site_id and k.name == name for k in self._config().api_keys):
            raise Conflict(
                f"key {name!r} is managed by {self._config().path}; change it there and reload"
            )

        async def write(c: AsyncConnection) -> None:
            if not await db.delete_api_key(c, site_id, name):
                raise NotFound(f"site {site_id!r} has no API key {name!r}")
            await self._audit(c, actor, "delete", f"{site_id}/{name}", {})

        await self._sync.change(CATALOG, write)

    def _site(self, site_id: str) -> None:
        if self._directory().site(site_id) is None:
            raise NotFound(f"no site {site_id!r}")

    async def _audit(
        self, c: AsyncConnection, actor: str, action: str, target: str, detail: dict[str, Any]
    ) -> None:
        entry = catalog_database.AuditEntry(self._clock(), actor, action, "api_key", target, detail)
        await catalog_database.add_audit(c, entry)


def _parse(body: Mapping[str, Any], now: float) -> tuple[str, float | None]:
    """(name, expires_at) of a POST body, or Invalid with every problem."""
    problems = [f"api_key.{k}: unknown key" for k in body if k not in ("name", "expires_at")]
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.append("api_key.name: use letters, digits, '.', '_' or '-' (at most 64)")
    expires_at = parse_moment(body.get("expires_at"))
    if isinstance(expires_at, str):
        problems.append(f"api_key.expires_at: {expires_at}")
    elif expires_at is not None and expires_at <= now:
        problems.append("api_key.expires_at: must be in the future")
    if problems:
        raise Invalid(problems)
    assert isinstance(name, str) and not isinstance(expires_at, str)
    return name, expires_at


def parse_moment(value: object) -> float | str | None:
    """Unix seconds from a number or an ISO 8601 time (UTC without an offset); else a problem."""
    problem = "an ISO 8601 time such as 2027-06-30T00:00:00Z, or Unix seconds"
    if value is None:
        return None
    if isinstance(value, bool):
        return problem
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            seconds = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
        except (ValueError, OverflowError):
            return problem
    else:
        return problem
    if not (math.isfinite(seconds) and 0 <= seconds < _YEAR_10000):
        return "out of range (1970-01-01 to 9999-12-31)"
    return seconds
