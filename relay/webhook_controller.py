"""Webhook endpoints: the file's and the API's as one directory, and the admin API's use cases.

`WebhookController.subscriptions()` is what the relay's writers of events ask
(cheap: a value rebuilt only when endpoints change): which endpoints want an
event, to write it to the outbox in the transaction of the change it reports.
The directory is the file's ``webhooks:`` then the store's (the file wins a
name), with each endpoint's enabled flag from ``webhook_states``. It is
rebuilt at a reload, and on every node within ``cluster.sync_seconds`` of a
change made anywhere through the API or of an endpoint being disabled: those
bump the ``webhooks`` version (relay/cluster_controller.py) in their transaction.

The file's endpoints are read-only here except for being enabled again
(``PATCH {"enabled": true}``): that is state, not configuration. A secret is
generated on create when none is given, returned once in that answer, and
kept sealed (relay/secret_box.py); no read returns it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import catalog_database
from relay import webhook_database as db
from relay.catalog_controller import Conflict, Invalid, NotFound, masked
from relay.cluster_controller import ClusterSync
from relay.config import Config
from relay.config_webhooks import parse_webhook_spec
from relay.core.outbound_events import EventType, Subscriptions, event, test_entry
from relay.core.webhook_delivery import Endpoint
from relay.core.webhook_signing import SECRET_BYTES, new_secret
from relay.core.webhook_targets import literal_refusal
from relay.outbox_database import add_to_outbox
from relay.secret_box import SecretBox
from relay.store import GroupWriter

log = logging.getLogger(__name__)
T = TypeVar("T")
WEBHOOKS = "webhooks"  # the cluster version bumped by every change of an endpoint or its state


@dataclass(frozen=True)
class EndpointInfo:
    endpoint: Endpoint
    state: db.State


@dataclass(frozen=True)
class Created:
    info: EndpointInfo
    secret: str  # shown once


class WebhookController:
    def __init__(
        self,
        writer: GroupWriter,
        box: SecretBox,
        config: Callable[[], Config],
        clock: Callable[[], float],
    ) -> None:
        self._writer = writer
        self._box = box
        self._config = config
        self._clock = clock
        self._sync: ClusterSync | None = None
        self.queued: Callable[[], None] = lambda: None  # events were written: send them now
        self._stored: tuple[Endpoint, ...] = ()
        self._states: dict[str, db.State] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._subscriptions = Subscriptions()
        self.rebuild()

    def attach(self, sync: ClusterSync) -> None:
        """The cluster's versions (made after this: it calls our `load`)."""
        self._sync = sync

    # -- The directory

    def subscriptions(self) -> Subscriptions:
        """Who wants which event, now (for `Subscriptions.fan_out` in the change's transaction)."""
        return self._subscriptions

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def endpoint(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def enabled(self, name: str) -> bool:
        return self._states.get(name, db.State()).enabled

    async def load(self) -> None:
        """(Re)read the store's endpoints (secrets unsealed) and every endpoint's state."""
        stored, states = await self._writer.read_apart(self._read_store)
        self._stored, self._states = stored, states
        self.rebuild()

    def _read_store(
        self, connection: Connection
    ) -> tuple[tuple[Endpoint, ...], dict[str, db.State]]:
        endpoints = []
        for row in db.load_webhooks(connection):
            secret = self._box.open(row.sealed_secret).decode()
            endpoint, problems = parse_webhook_spec(row.spec, secret)
            if endpoint is None:
                log.error("stored webhook %s ignored: %s", row.name, "; ".join(problems))
                continue
            endpoints.append(endpoint)
        return tuple(endpoints), db.load_states(connection)

    def rebuild(self) -> None:
        """The directory from the running config and what was last read of the store."""
        file = {e.name: e for e in self._config().webhooks}
        merged = {**{e.name: e for e in self._stored if e.name not in file}, **file}
        self._endpoints = dict(sorted(merged.items()))
        self._subscriptions = Subscriptions(
            tuple(e.subscription(self.enabled(e.name)) for e in self._endpoints.values())
        )

    # -- Reads

    async def listing(self) -> list[EndpointInfo]:
        states = await self._writer.read_apart(db.load_states)
        return [EndpointInfo(e, states.get(e.name, db.State())) for e in self.endpoints()]

    async def get(self, name: str) -> EndpointInfo:
        endpoint = self._live(name)
        states = await self._writer.read_apart(db.load_states)
        return EndpointInfo(endpoint, states.get(name, db.State()))

    async def deliveries(
        self, name: str, after: db.Position | None, limit: int
    ) -> list[db.Delivery]:
        self._live(name)
        return await self._writer.read_apart(lambda c: db.deliveries(c, name, after, limit))

    # -- Changes

    async def create(self, actor: str, body: Mapping[str, Any]) -> Created:
        name = body.get("name")
        if isinstance(name, str):
            self._refuse_file_endpoint(name)
        secret = body.get("secret")
        secret = (
            secret if isinstance(secret, str) else new_secret(secrets.token_bytes(SECRET_BYTES))
        )
        endpoint, problems = parse_webhook_spec({**body, "secret": secret}, secret)
        if endpoint is None:
            raise Invalid(problems)
        self._refuse_literal_target(endpoint)
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            if await c.run_sync(db.find_webhook, endpoint.name) is not None:
                raise Conflict(f"webhook {endpoint.name!r} exists; change it with PATCH")
            await c.run_sync(db.put_webhook, self._stored_row(endpoint, now, now))
            await c.run_sync(db.enable, endpoint.name, now)
            await self._audit(c, actor, "create", endpoint.name, body)

        await self._change(write)
        return Created(await self.get(endpoint.name), secret)

    async def update(self, actor: str, name: str, patch: Mapping[str, Any]) -> EndpointInfo:
        endpoint = self._live(name)
        enabled = patch.get("enabled")
        if "enabled" in patch and not isinstance(enabled, bool):
            raise Invalid(["webhook.enabled: must be true or false"])
        spec_patch = {k: v for k, v in patch.items() if k != "enabled"}
        if spec_patch and endpoint.managed_by_file:
            raise Conflict(
                f"webhook {name!r} is managed by {self._config().path}; change it there and "
                "reload (only enabled can be set here)"
            )
        if "name" in spec_patch and spec_patch["name"] != name:
            raise Invalid(["webhook.name: a webhook cannot be renamed; create a new one"])
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            if spec_patch:
                stored = await c.run_sync(db.find_webhook, name)
                if stored is None:
                    raise NotFound(f"no webhook {name!r}")
                kept = self._box.open(stored.sealed_secret).decode()
                spec = {**stored.spec, **spec_patch}
                secret = spec.pop("secret", kept)
                changed, problems = parse_webhook_spec({**spec, "secret": secret}, kept)
                if changed is None:
                    raise Invalid(problems)
                self._refuse_literal_target(changed)
                await c.run_sync(db.put_webhook, self._stored_row(changed, stored.created_at, now))
            if enabled is True:
                await c.run_sync(db.enable, name, now)
            elif enabled is False:
                await c.run_sync(db.disable, name, f"disabled by {actor}", now)
            await self._audit(c, actor, "update", name, patch)

        await self._change(write)
        if enabled is True:
            self.queued()
        return await self.get(name)

    async def rotate_secret(self, actor: str, name: str) -> str:
        """A new secret, returned once; the old one stops signing at once."""
        endpoint = self._live(name)
        if endpoint.managed_by_file:
            raise Conflict(
                f"webhook {name!r} is managed by {self._config().path}; its secret is there"
            )
        secret = new_secret(secrets.token_bytes(SECRET_BYTES))
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            stored = await c.run_sync(db.find_webhook, name)
            if stored is None:
                raise NotFound(f"no webhook {name!r}")
            sealed = self._box.seal(secret.encode())
            await c.run_sync(db.put_webhook, replace(stored, sealed_secret=sealed, updated_at=now))
            await self._audit(c, actor, "rotate-secret", name, {})

        await self._change(write)
        return secret

    async def delete(self, actor: str, name: str) -> None:
        endpoint = self._live(name)
        if endpoint.managed_by_file:
            raise Conflict(
                f"webhook {name!r} is managed by {self._config().path}; remove it there and reload"
            )
        now = self._clock()

        async def write(c: AsyncConnection) -> None:
            await c.run_sync(db.delete_webhook, name, now)
            await self._audit(c, actor, "delete", name, {})

        await self._change(write)

    async def replay(self, actor: str, name: str, since: float) -> int:
        self._live(name)
        now = self._clock()

        async def write(c: AsyncConnection) -> int:
            count = await c.run_sync(db.replay, name, since, now)
            await self._audit(c, actor, "replay", name, {"since": since, "events": count})
            return count

        count = await self._writer.write(write)
        self.queued()
        return count

    async def test(self, actor: str, name: str) -> str:
        """Queue a ``webhook.test`` event for the endpoint; its event id."""
        self._live(name)
        if not self.enabled(name):
            raise Conflict(
                f'webhook {name!r} is disabled; enable it with PATCH {{"enabled": true}}'
            )
        entry = test_entry(name, self._clock(), secrets.token_bytes(10))

        async def write(c: AsyncConnection) -> None:
            await c.run_sync(add_to_outbox, [entry])
            await self._audit(c, actor, "test", name, {"event": entry.event.id})

        await self._writer.write(write)
        self.queued()
        return entry.event.id

    async def disable_failing(self, name: str, failing_since: float, now: float) -> bool:
        """Disable an endpoint that has failed since ``failing_since``; tell the other endpoints.

        False when another process disabled it first.
        """
        if not self.enabled(name):  # disabled already, here or by another process
            return False
        hours = (now - failing_since) / 3600
        reason = f"failing for {hours:.1f} h without a success"
        others = Subscriptions(tuple(s for s in self._subscriptions.endpoints if s.name != name))
        notice = event(
            EventType.WEBHOOK_DISABLED, now, secrets.token_bytes(10), webhook=name, reason=reason
        )

        async def write(c: AsyncConnection) -> bool:
            if not await c.run_sync(db.disable, name, reason, now):
                return False
            await c.run_sync(add_to_outbox, others.fan_out([notice]))
            return True

        disabled = await self._change(write)
        self.queued()
        if disabled:
            log.warning("webhook %s disabled: %s (PATCH enabled: true enables it)", name, reason)
        return disabled

    # -- Helpers

    def _live(self, name: str) -> Endpoint:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise NotFound(f"no webhook {name!r}")
        return endpoint

    def _refuse_literal_target(self, endpoint: Endpoint) -> None:
        """An IP address in the URL is judged now (a name is judged at each try)."""
        events = self._config().events
        host = urlsplit(endpoint.url).hostname or ""
        why = literal_refusal(host, events.allow_private_targets, events.allowed_networks)
        if why is not None:
            raise Invalid([f"webhook.url: {why}"])

    def _refuse_file_endpoint(self, name: str) -> None:
        if any(e.name == name for e in self._config().webhooks):
            raise Conflict(f"webhook {name!r} is managed by {self._config().path}; change it there")

    def _stored_row(self, endpoint: Endpoint, created_at: float, now: float) -> db.StoredWebhook:
        spec: dict[str, Any] = {"name": endpoint.name, "url": endpoint.url}
        if endpoint.events:
            spec["events"] = sorted(endpoint.events)
        if endpoint.sites:
            spec["sites"] = sorted(endpoint.sites)
        if endpoint.max_in_flight is not None:
            spec["max_in_flight"] = endpoint.max_in_flight
        sealed = self._box.seal(endpoint.secret.reveal().encode())
        return db.StoredWebhook(endpoint.name, spec, sealed, created_at, now)

    async def _audit(
        self, c: AsyncConnection, actor: str, action: str, name: str, detail: Mapping[str, Any]
    ) -> None:
        entry = catalog_database.AuditEntry(
            self._clock(), actor, action, "webhook", name, masked(dict(detail))
        )
        await catalog_database.add_audit(c, entry)

    async def _change(self, job: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        if self._sync is None:  # not attached: this process alone
            result = await self._writer.write(job)
            await self.load()
            return result
        return await self._sync.change(WEBHOOKS, job)
