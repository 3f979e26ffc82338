"""Sites, credentials, upstreams and domains created through the admin API (the store's half).

The file's objects are read-only here: a change to one is a ``Conflict``
naming the file. Store objects are validated by the config file's own rules,
written with an audit entry and a bump of the ``catalog`` version in one
transaction, then applied to this node's live directory at once and to the
other nodes' within ``cluster.sync_seconds`` (relay/cluster_controller.py).
Secrets never leave: upstream passwords are sealed, credential passwords are
hashed and returned once, and a stored upstream password never follows a
change of where it is sent: a PATCH of host, port, tls, verify_tls or
username must give the password again. An API upstream's host must be public
(unless ``admin.allow_private_upstreams``). Templates are changed by
relay/template_controller.py; `load_store` and `merged_directory` load and
merge them with the rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import api_key_database, contact_database, domain_database, template_database
from relay import catalog_database as db
from relay.cluster_controller import CATALOG, ClusterSync
from relay.config import Config, parse_site_spec, parse_upstream_spec
from relay.core import dkim
from relay.core.directory import Directory
from relay.core.domains import Domain, KeyState
from relay.core.model import ApiKey, Credential, Site, Upstream
from relay.core.passwords import hash_password
from relay.core.templates import Template
from relay.secret_box import SecretBox
from relay.store import GroupWriter
from relay.upstream_client import UnsafeDestination, public_addresses

log = logging.getLogger(__name__)
API_RESOLVE_SECONDS = 5.0  # how long a create or change waits for the host's addresses
# A shorter timeout would make /test a quick port scanner; real SMTP servers may pause
# several seconds before their greeting (RFC 5321 section 4.5.3.2 suggests waiting 5 minutes).
# Checked when an upstream is made or changed, so one saved before the rule still loads.
API_MIN_TIMEOUT_SECONDS = 10.0
MASK = "********"
_OUTSIDE_SPEC = ("password", "active")  # kept in their own columns (sealed; toggled)
_SECRET_WORDS = ("password", "secret", "token", "private_key", "api_key")
# Where a stored password goes: changing one of these without giving it again is refused.
_DESTINATION = ("host", "port", "tls", "verify_tls", "username")


class NotFound(Exception):
    """No such object (HTTP 404)."""


class Conflict(Exception):
    """The object's state or origin does not allow the change (HTTP 409)."""


class Invalid(Exception):
    """The request's content is wrong (HTTP 422); ``problems`` lists each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class StoreObjects:
    upstreams: tuple[Upstream, ...] = ()
    sites: tuple[Site, ...] = ()
    credentials: tuple[Credential, ...] = ()
    domains: tuple[Domain, ...] = ()
    templates: tuple[Template, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()  # the send API's, for any site (relay/api_key_controller.py)


@dataclass(frozen=True)
class NewCredential:
    username: str
    site_id: str
    password: str  # shown once, never stored


def masked(value: Any) -> Any:
    """``value`` with the values of secret-looking keys replaced, for the audit log."""
    if isinstance(value, Mapping):
        return {
            k: MASK if any(w in str(k).lower() for w in _SECRET_WORDS) else masked(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


async def load_store(connection: AsyncConnection, box: SecretBox) -> StoreObjects:
    """Every live object of the store, parsed; one that no longer parses is logged and skipped."""
    upstreams = []
    for stored in await db.load_upstreams(connection):
        if stored.deleted_at is not None:
            continue
        upstream, problems = parse_upstream_spec(_with_password(stored, box))
        if upstream is None:
            log.error("stored upstream %s ignored: %s", stored.name, "; ".join(problems))
            continue
        upstreams.append(replace(upstream, active=stored.active, managed_by_file=False))
    sites = []
    for stored_site in await db.load_sites(connection):
        names = {n for n in stored_site.spec.get("upstreams") or () if isinstance(n, str)}
        site, problems = parse_site_spec(stored_site.spec, names)
        if site is None:
            log.error("stored site %s ignored: %s", stored_site.id, "; ".join(problems))
            continue
        sites.append(replace(site, managed_by_file=False))
    credentials = [
        Credential(c.username, c.password_hash, c.site_id)
        for c in await db.load_credentials(connection)
    ]
    domains = await domain_database.load_domains(connection, box)
    templates = [s.template for s in await template_database.load_templates(connection)]
    # Templates are not compiled here: they were checked when saved, and compiling a large one
    # takes up to a second, which every node would spend on its event loop at every change. A
    # render compiles off the loop and reports any problem as a 422.
    keys = [k.api_key() for k in await api_key_database.load_api_keys(connection)]
    return StoreObjects(
        tuple(upstreams),
        tuple(sites),
        tuple(credentials),
        tuple(domains),
        templates=tuple(templates),
        api_keys=tuple(keys),
    )


def merged_directory(config: Config, store: StoreObjects) -> Directory:
    """The file's objects, then the store's; the file wins a name clash."""
    file_upstreams = {u.name for u in config.upstreams}
    file_sites = {s.id for s in config.sites}
    file_users = {c.username for c in config.credentials}
    file_domains = {d.name for d in config.domains}
    upstreams = config.upstreams + tuple(u for u in store.upstreams if u.name not in file_upstreams)
    store_sites = tuple(s for s in store.sites if s.id not in file_sites)
    store_site_ids = {s.id for s in store_sites}
    credentials = config.credentials + tuple(
        c for c in store.credentials if c.site_id in store_site_ids and c.username not in file_users
    )
    domains = config.domains + tuple(d for d in store.domains if d.name not in file_domains)
    sites = config.sites + store_sites
    file_templates = {t.name for t in config.templates}
    templates = config.templates + tuple(t for t in store.templates if t.name not in file_templates)
    # A store key serves any site that exists (the file's too); the file's names win a clash.
    site_ids = {s.id for s in sites}
    file_keys = {(k.site_id, k.name) for k in config.api_keys}
    api_keys = config.api_keys + tuple(
        k for k in store.api_keys if k.site_id in site_ids and (k.site_id, k.name) not in file_keys
    )
    return Directory.of(sites, credentials, upstreams, domains, api_keys, templates)


def dangling_upstreams(directory: Directory) -> list[str]:
    """Sites listing an upstream that is gone (an API site after the file dropped one)."""
    return [
        f"site {site.id} lists upstream {name!r}, which no longer exists: its mail skips it"
        for site in directory.sites
        for name in site.upstreams
        if directory.upstream(name) is None
    ]


def _with_password(stored: db.StoredUpstream, box: SecretBox) -> dict[str, Any]:
    if stored.sealed_password is None:
        return stored.spec
    return {**stored.spec, "password": box.open(stored.sealed_password).decode()}


class CatalogController:
    def __init__(
        self,
        writer: GroupWriter,
        box: SecretBox,
        config: Callable[[], Config],
        directory: Callable[[], Directory],
        sync: ClusterSync,
        clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._box = box
        self._config = config
        self._directory = directory
        self._sync = sync
        self._clock = clock

    # -- upstreams

    async def create_upstream(self, actor: str, body: Mapping[str, Any]) -> Upstream:
        name = str(body.get("name", ""))
        self._refuse_file_object("upstream", name, {u.name for u in self._config().upstreams})
        upstream, problems = parse_upstream_spec(dict(body))
        if upstream is None:
            raise Invalid(problems)
        _refuse_short_timeout(upstream)
        await self._check_destination(upstream.host)
        password = body.get("password")
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            old = await _find_upstream(c, name)
            if old is not None and old.deleted_at is None:
                raise Conflict(f"upstream {name!r} exists; change it with PATCH")
            spec = {k: v for k, v in body.items() if k not in _OUTSIDE_SPEC}
            sealed = self._box.seal(password.encode()) if isinstance(password, str) else None
            await db.put_upstream(
                c, db.StoredUpstream(name, spec, sealed, upstream.active, None, now, now)
            )
            await self._audit(c, actor, "create", "upstream", name, body)

        await self._write(write)
        return self._live_upstream(name)

    async def update_upstream(self, actor: str, name: str, patch: Mapping[str, Any]) -> Upstream:
        self._refuse_file_object("upstream", name, {u.name for u in self._config().upstreams})
        if "name" in patch and patch["name"] != name:
            raise Invalid(["upstream.name: an upstream cannot be renamed; create a new one"])
        if isinstance(patch.get("host"), str):  # resolved here, outside the write transaction
            await self._check_destination(patch["host"])
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            old = await self._stored_upstream(c, name)
            spec = _merge(old.spec, {k: v for k, v in patch.items() if k not in _OUTSIDE_SPEC})
            kept = self._box.open(old.sealed_password).decode() if old.sealed_password else None
            password: Any = patch.get("password", kept)
            active = patch.get("active", old.active)
            if kept is not None and "password" not in patch:
                before, _ = parse_upstream_spec(_with_secret(old.spec, old.active, kept))
                after, _ = parse_upstream_spec(_with_secret(spec, active, None))
                if after is not None:  # else its own problems are the answer
                    _refuse_moved_password(before, after)
            upstream, problems = parse_upstream_spec(_with_secret(spec, active, password))
            if upstream is None:
                raise Invalid(problems)
            _refuse_short_timeout(upstream)
            sealed = self._box.seal(password.encode()) if isinstance(password, str) else None
            await db.put_upstream(
                c,
                replace(
                    old, spec=spec, sealed_password=sealed, active=upstream.active, updated_at=now
                ),
            )
            await self._audit(c, actor, "update", "upstream", name, patch)

        await self._write(write)
        return self._live_upstream(name)

    async def set_upstream_active(self, actor: str, name: str, active: bool) -> Upstream:
        self._refuse_file_object(
            "upstream",
            name,
            {u.name for u in self._config().upstreams},
            hint=f"set `active: {str(active).lower()}` there and reload",
        )
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            old = await self._stored_upstream(c, name)
            await db.put_upstream(c, replace(old, active=active, updated_at=now))
            action = "activate" if active else "deactivate"
            await self._audit(c, actor, action, "upstream", name, {})

        await self._write(write)
        return self._live_upstream(name)

    async def delete_upstream(self, actor: str, name: str) -> None:
        self._refuse_file_object("upstream", name, {u.name for u in self._config().upstreams})
        users = [s.id for s in self._directory().sites if name in s.upstreams]
        if users:
            raise Conflict(
                f"upstream {name!r} is in the upstreams of site(s) {', '.join(users)}; "
                "remove it there first"
            )
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            old = await self._stored_upstream(c, name)
            await db.put_upstream(c, replace(old, deleted_at=now, active=False, updated_at=now))
            await self._audit(c, actor, "delete", "upstream", name, {})

        await self._write(write)

    async def _check_destination(self, host: str | None) -> None:
        """Refuse a host that is or resolves to a non-public address (422), unless allowed."""
        if host is None or self._config().admin.allow_private_upstreams:
            return
        try:
            await public_addresses(host, None, API_RESOLVE_SECONDS)
        except UnsafeDestination as error:
            raise Invalid([f"upstream.host: {error}"]) from None

    async def _stored_upstream(self, c: AsyncConnection, name: str) -> db.StoredUpstream:
        found = await _find_upstream(c, name)
        if found is None or found.deleted_at is not None:
            raise NotFound(f"no upstream {name!r}")
        return found

    def _live_upstream(self, name: str) -> Upstream:
        upstream = self._directory().upstream(name)
        assert upstream is not None
        return upstream

    # -- sites and credentials

    def _upstream_names(self) -> set[str]:
        return {u.name for u in self._directory().upstreams}

    async def create_site(self, actor: str, body: Mapping[str, Any]) -> Site:
        site_id = str(body.get("id", ""))
        self._refuse_file_object("site", site_id, {s.id for s in self._config().sites})
        site, problems = parse_site_spec(dict(body), self._upstream_names())
        if site is None:
            raise Invalid(problems)
        self._refuse_unknown_template(site)
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            if any(s.id == site_id for s in await db.load_sites(c)):
                raise Conflict(f"site {site_id!r} exists; change it with PATCH")
            await db.put_site(c, db.StoredSite(site_id, dict(body), now, now))
            await self._audit(c, actor, "create", "site", site_id, body)

        await self._write(write)
        return self._live_site(site_id)

    async def update_site(self, actor: str, site_id: str, patch: Mapping[str, Any]) -> Site:
        self._refuse_file_object("site", site_id, {s.id for s in self._config().sites})
        if "id" in patch and patch["id"] != site_id:
            raise Invalid(["site.id: a site cannot be renamed; create a new one"])
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            old = self._stored_site(await db.load_sites(c), site_id)
            spec = _merge(old.spec, patch)
            site, problems = parse_site_spec(spec, self._upstream_names())
            if site is None:
                raise Invalid(problems)
            self._refuse_unknown_template(site)
            await db.put_site(c, replace(old, spec=spec, updated_at=now))
            await self._audit(c, actor, "update", "site", site_id, patch)

        await self._write(write)
        return self._live_site(site_id)

    async def delete_site(self, actor: str, site_id: str) -> None:
        self._refuse_file_object("site", site_id, {s.id for s in self._config().sites})

        async def write(c: AsyncConnection) -> None:
            if not await db.delete_site(c, site_id):
                raise NotFound(f"no site {site_id!r}")
            await api_key_database.delete_site_keys(c, site_id)  # a new site of that id has none
            await contact_database.delete_site_contacts(c, site_id)  # ... and no contacts
            await self._audit(c, actor, "delete", "site", site_id, {})

        await self._write(write)

    async def add_credential(self, actor: str, site_id: str, username: str | None) -> NewCredential:
        """A generated password for the site, returned this once and stored only as a hash."""
        self._refuse_file_object("site", site_id, {s.id for s in self._config().sites})
        if self._directory().site(site_id) is None:
            raise NotFound(f"no site {site_id!r}")
        username = username or f"{site_id}-{secrets.token_hex(3)}"
        if self._directory().credential(username) is not None:
            raise Conflict(f"username {username!r} is taken")
        password = secrets.token_urlsafe(24)
        password_hash = await asyncio.to_thread(hash_password, password)
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            try:
                await db.add_credential(
                    c, db.StoredCredential(username, site_id, password_hash, now)
                )
            except IntegrityError:
                raise Conflict(f"username {username!r} is taken") from None
            await self._audit(c, actor, "create", "credential", f"{site_id}/{username}", {})

        await self._write(write)
        return NewCredential(username, site_id, password)

    async def delete_credential(self, actor: str, site_id: str, username: str) -> None:
        self._refuse_file_object("site", site_id, {s.id for s in self._config().sites})

        async def write(c: AsyncConnection) -> None:
            if not await db.delete_credential(c, site_id, username):
                raise NotFound(f"site {site_id!r} has no credential {username!r}")
            await self._audit(c, actor, "delete", "credential", f"{site_id}/{username}", {})

        await self._write(write)

    def _refuse_unknown_template(self, site: Site) -> None:
        """A form names a template that exists (deleting one a form names is refused)."""
        name = site.form.template if site.form else None
        if name is not None and self._directory().template(name) is None:
            raise Invalid([f"site.form.template: no template named {name!r}"])

    @staticmethod
    def _stored_site(found: list[db.StoredSite], site_id: str) -> db.StoredSite:
        site = next((s for s in found if s.id == site_id), None)
        if site is None:
            raise NotFound(f"no site {site_id!r}")
        return site

    def _live_site(self, site_id: str) -> Site:
        site = self._directory().site(site_id)
        assert site is not None
        return site

    # -- domains

    async def create_domain(
        self, actor: str, name: str, selector: str, algorithm: dkim.Algorithm
    ) -> Domain:
        """A domain with a new active DKIM key, sealed in the store."""
        name = name.lower()
        self._refuse_file_object("domain", name, {d.name for d in self._config().domains})
        key = await asyncio.to_thread(dkim.generate, algorithm)
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            try:
                await domain_database.add_domain(c, name, now)
            except IntegrityError:
                raise Conflict(f"domain {name!r} exists") from None
            await domain_database.add_key(c, self._box, name, selector, key, KeyState.ACTIVE, now)
            detail = {"selector": selector, "algorithm": algorithm.value}
            await self._audit(c, actor, "create", "domain", name, detail)

        await self._write(write)
        domain = self._directory().domain(name)
        assert domain is not None
        return domain

    async def add_next_key(
        self, actor: str, name: str, selector: str, algorithm: dkim.Algorithm
    ) -> Domain:
        """Rotation, step 1: a new key for the domain, published ahead, not signing yet."""
        name = self._stored_domain(name)
        key = await asyncio.to_thread(dkim.generate, algorithm)
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            await domain_database.add_key(c, self._box, name, selector, key, KeyState.NEXT, now)
            detail = {"selector": selector, "algorithm": algorithm.value}
            await self._audit(c, actor, "add_key", "domain", name, detail)

        await self._write(write)
        return self._live_domain(name)

    async def activate_key(
        self, actor: str, name: str, selector: str, retire_until: dt.date
    ) -> Domain:
        """Rotation, step 2: ``selector`` signs from now on; the active key is retired and stays
        published until ``retire_until``."""
        name = self._stored_domain(name)
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            await domain_database.activate_key(c, name, selector, retire_until, now)
            detail = {"selector": selector, "retire_until": retire_until.isoformat()}
            await self._audit(c, actor, "activate_key", "domain", name, detail)

        await self._write(write)
        return self._live_domain(name)

    def _stored_domain(self, name: str) -> str:
        name = name.lower()
        self._refuse_file_object("domain", name, {d.name for d in self._config().domains})
        if self._directory().domain(name) is None:
            raise NotFound(f"no domain {name!r}")
        return name

    def _live_domain(self, name: str) -> Domain:
        domain = self._directory().domain(name)
        assert domain is not None
        return domain

    async def delete_domain(self, actor: str, name: str) -> None:
        name = name.lower()
        self._refuse_file_object("domain", name, {d.name for d in self._config().domains})

        async def write(c: AsyncConnection) -> None:
            if not await domain_database.delete_domain(c, name):
                raise NotFound(f"no domain {name!r}")
            await self._audit(c, actor, "delete", "domain", name, {})

        await self._write(write)

    # -- the audit log

    async def audit(self, page: int, page_size: int) -> tuple[list[db.AuditEntry], int]:
        async with self._writer.engine.connect() as connection:
            return await db.list_audit(connection, page, page_size)

    async def record(
        self,
        actor: str,
        action: str,
        kind: str,
        target: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """An audited operation that changes no object (reload, retry, an upstream test)."""
        entry = db.AuditEntry(
            self._clock(), actor, action, kind, target, masked(dict(detail or {}))
        )
        await self._writer.write(lambda c: db.add_audit(c, entry))

    async def _audit(
        self,
        c: AsyncConnection,
        actor: str,
        action: str,
        kind: str,
        target: str,
        detail: Mapping[str, Any],
    ) -> None:
        entry = db.AuditEntry(self._clock(), actor, action, kind, target, masked(dict(detail)))
        await db.add_audit(c, entry)

    async def _write(self, job: Callable[[AsyncConnection], Awaitable[None]]) -> None:
        await self._sync.change(CATALOG, job)

    def _refuse_file_object(
        self, kind: str, name: str, in_file: set[str], hint: str = "change it there and reload"
    ) -> None:
        if name in in_file:
            raise Conflict(f"{kind} {name!r} is managed by {self._config().path}; {hint}")


async def _find_upstream(c: AsyncConnection, name: str) -> db.StoredUpstream | None:
    """Deleted ones included: creating one again under its name revives the row."""
    return next((u for u in await db.load_upstreams(c) if u.name == name), None)


def _with_secret(spec: Mapping[str, Any], active: Any, password: Any) -> dict[str, Any]:
    given = {**spec, "active": active}
    return {**given, "password": password} if password is not None else given


def _refuse_short_timeout(upstream: Upstream) -> None:
    if upstream.timeout_seconds < API_MIN_TIMEOUT_SECONDS:
        raise Invalid(
            [
                f"upstream.timeout_seconds: must be at least {API_MIN_TIMEOUT_SECONDS:g} "
                "for an upstream made through the API"
            ]
        )


def _refuse_moved_password(before: Upstream | None, after: Upstream) -> None:
    """The stored password may only go where it went before (finding: PATCH host, then test)."""
    moved = [f for f in _DESTINATION if before is None or getattr(before, f) != getattr(after, f)]
    if moved:
        what = ", ".join(moved) if before is not None else "this upstream"
        raise Invalid(
            [
                f"upstream.password: changing {what} needs the password again: give "
                '"password" in the same request (the stored one is never sent to a new '
                "destination)"
            ]
        )


def _merge(spec: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7396), one level: a null removes the key."""
    merged = dict(spec)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
