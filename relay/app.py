"""The composition root of `relay serve`: builds every part, runs them, stops them in order.

Start: config, store (migrations), group writer, delivery, SMTP listeners,
admin HTTP. A worker of relay/supervisor.py serves on the sockets it was
handed (relay/worker_handoff.py) and skips the once-per-machine preparation,
which the supervisor has had done. Stop (SIGTERM/SIGINT): listeners first
(no new mail; DATA in progress is stored), then delivery (in-flight finish
or are released), then the writer commits what is pending. SIGHUP re-reads
the file and swaps the sites, credentials, upstreams, domains, routing and
admin tokens (a removed token is refused from the next request); queued mail
and open sessions stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from sqlalchemy import text

from admin_http.app import create_app
from admin_http.deps import AdminDeps, Api, DashboardDeps
from public_http.app import create_app as create_public_app
from public_http.deps import PublicDeps
from relay import tls
from relay.api_key_controller import ApiKeyController
from relay.auth_controller import AuthController
from relay.campaign_controller import CampaignController
from relay.catalog_controller import (
    CatalogController,
    StoreObjects,
    dangling_upstreams,
    load_store,
    merged_directory,
)
from relay.cluster_controller import CATALOG, FLUSH, RELOAD, ClusterSync
from relay.config import (
    AdminToken,
    Config,
    ConfigError,
    ListenerConfig,
    ReloadResult,
    is_loopback,
    load_config,
)
from relay.core.directory import Directory
from relay.core.form_token import derive_key
from relay.core.model import TlsMode
from relay.core.outbound_events import Subscriptions
from relay.core.quota import UsageBook
from relay.core.routing import RoutingPolicy
from relay.core.tokens import hash_token
from relay.delivery_controller import DeliveryController, Engine
from relay.domain_monitor import DomainMonitor
from relay.domain_verifier import DnsLookup
from relay.events import Events
from relay.form_controller import FormController
from relay.health_controller import HealthController
from relay.ingress_controller import IngressController
from relay.login_link_controller import LoginLinkController, login_link_line
from relay.metrics import Metrics
from relay.node import gone_owners, lease_owner
from relay.performance_controller import PerformanceController
from relay.probe_controller import ProbeController
from relay.provider_event_controller import ProviderEventController
from relay.queue_controller import QueueController
from relay.reports_controller import ReportsController
from relay.retention_controller import Housekeeping
from relay.secret_box import SecretBox, SecretKeyError, load_or_create_key
from relay.send_controller import SendController
from relay.smtp_server import SmtpListeners
from relay.smtp_view import SmtpHandler
from relay.sns_client import SnsClient
from relay.store import GroupWriter, create_engine, migrate, restrict_sqlite_files
from relay.suppression_controller import SuppressionController
from relay.system_events import SystemEvents
from relay.template_controller import TemplateController
from relay.unsubscribe_controller import UnsubscribeController
from relay.upstream_client import UpstreamClients
from relay.usage_controller import UsageController
from relay.webhook_client import WebhookClient
from relay.webhook_controller import WEBHOOKS, WebhookController
from relay.webhook_dispatch_controller import WebhookDispatcher
from relay.worker_handoff import READY, Handoff

log = logging.getLogger(__name__)
DRAIN_SECONDS = 10.0
DELIVERY_STOP_SECONDS = 20.0
WEBHOOK_STOP_SECONDS = 5.0
QUEUE_GAUGE_SECONDS = 15.0
PERSIST_SECONDS = 2.0  # how often circuits are written and usage counters re-read
# Descriptors kept out of the SMTP sessions' reach: the admin listener and its clients,
# the store, DNS, and upstream connections (one per delivery at most).
RESERVED_DESCRIPTORS = 128


class StartupError(Exception):
    """A problem the operator must fix (port in use, unreadable certificate): one clear line."""


class RelayApp:
    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.time,
        handoff: Handoff | None = None,
    ) -> None:
        self.config = config
        self.owner = lease_owner()  # made here, in the process that runs: after any fork
        self._handoff = handoff
        workers = handoff.workers if handoff else 1
        self._store = StoreObjects()  # created through the admin API
        self._directory: Directory = config.directory()
        self.metrics = Metrics()
        self.events = Events()
        self.engine = create_engine(config.store_url)
        self.writer = GroupWriter(self.engine)
        self.clients = UpstreamClients(config.server.hostname, config.admin.allow_private_upstreams)
        self.usage = UsageController(
            UsageBook(config.limits.timezone), self.writer, self.metrics, self.events, clock
        )
        self.performance = PerformanceController(self.engine)
        self.health = HealthController(
            config.health.policy,
            self.writer,
            self.clients,
            self.directory,
            self.metrics,
            self.events,
            clock,
        )
        engine = Engine(
            self.directory,
            self.routing,
            self.clients,
            self.health,
            self.usage,
            self.events,
            self.webhook_subscriptions,
            self.outbox_written,
            self.performance,
        )
        self.delivery = DeliveryController(
            self.writer,
            engine,
            config.delivery,
            config.server.hostname,
            self.metrics,
            owner=str(self.owner),
            gone=gone_owners(self.owner, legacy=config.server.hostname),
            clock=clock,
        )
        self.sync = ClusterSync(
            self.writer,
            {
                CATALOG: self.load_store,
                RELOAD: self._reload_from_elsewhere,
                FLUSH: lambda: self.queue.apply_flush(),
                WEBHOOKS: lambda: self.webhooks.load(),
            },
            clock,
        )
        self.queue = QueueController(self.writer, self.delivery.wake, self.health, self.sync, clock)
        self.auth = AuthController(
            self.directory, config.limits, self.metrics, self.writer, clock=clock
        )
        self.suppressions = SuppressionController(self.writer, self.directory, clock)
        self.events.subscribe(self.suppressions.on_event)
        self.system_events = SystemEvents(
            self.writer, self.webhook_subscriptions, str(self.owner), clock, self.outbox_written
        )
        self.events.subscribe(self.system_events.on_event)
        self.provider_events = ProviderEventController(
            self.writer,
            self.directory,
            self.metrics,
            clock,
            on_listed=self.suppressions.note_listed,
            outbox_written=self.outbox_written,
            sns_client=SnsClient(config.provider_events.sns_test_ca_file),
            sns_test_host=config.provider_events.sns_test_certificate_host,
            subscriptions=self.webhook_subscriptions,
        )
        self.ingress = IngressController(
            self.writer,
            self.directory,
            config.server.hostname,
            config.limits,
            self.metrics,
            self.usage,
            delivery=self.delivery,
            class_header=config.routing.class_header,
            clock=clock,
            suppressions=self.suppressions,
            subscriptions=self.webhook_subscriptions,
            outbox_written=self.outbox_written,
        )
        try:
            secret = load_or_create_key(config.server.secret_key_file)
        except SecretKeyError as error:
            raise StartupError(str(error)) from None
        self.secrets = SecretBox(secret)
        self.webhooks = WebhookController(self.writer, self.secrets, lambda: self.config, clock)
        self.webhooks.attach(self.sync)
        self.webhook_dispatcher = WebhookDispatcher(
            self.writer,
            self.webhooks,
            lambda: self.config.events,
            WebhookClient(
                lambda: (
                    self.config.events.allow_private_targets,
                    self.config.events.allowed_networks,
                )
            ),
            self.metrics,
            owner=str(self.owner),
            gone=gone_owners(self.owner),
            clock=clock,
        )
        self.webhooks.queued = self.webhook_dispatcher.wake
        self._form_key = derive_key(secret, b"form-token")  # every node's: one secret file
        self._session_key = derive_key(secret, b"dashboard-session")
        # Signs the List-Unsubscribe links of campaign messages (relay/core/unsubscribe.py):
        # the campaign engine issues with it, the public listener's /u/{token} reads with it.
        self.unsubscribe_key = derive_key(secret, b"unsubscribe")
        self.unsubscribes = UnsubscribeController(
            self.writer,
            self.directory,
            self.unsubscribe_key,
            self.metrics,
            clock,
            subscriptions=self.webhook_subscriptions,
            outbox_written=self.outbox_written,
        )
        self._secret = secret
        self.login_links = (
            LoginLinkController(self.writer, secret, clock)
            if is_loopback(config.admin.host)
            else None
        )
        self.domains = DomainMonitor(
            self.directory, DnsLookup(config.dns), secret, self.metrics, self.events
        )
        self.catalog = CatalogController(
            self.writer, self.secrets, lambda: self.config, self.directory, self.sync, clock
        )
        self.templates = TemplateController(
            self.writer, lambda: self.config, self.directory, self.sync, clock
        )
        self.reports = ReportsController(
            self.writer, self.usage, self.directory, lambda: self.config.retention.policy, clock
        )
        self.housekeeping = Housekeeping(
            self.writer,
            lambda: self.config.retention,
            config.limits.auth_failure_window_seconds,
            self.metrics,
            str(self.owner),
            clock,
        )
        self.api_keys = ApiKeyController(
            self.writer, lambda: self.config, self.directory, self.sync, clock
        )
        self.send = SendController(
            self.writer,
            self.ingress,
            self.directory,
            config.limits,
            config.server.hostname,
            config.routing.class_header,
            self.metrics,
            clock,
            suppressions=self.suppressions,
        )
        self.campaigns = CampaignController(
            self.writer,
            self.directory,
            self.ingress,
            lambda: self.config,
            derive_key(secret, b"unsubscribe"),
            str(self.owner),
            gone_owners(self.owner),
            config.limits.timezone,
            config.routing.class_header,
            clock,
            wake_delivery=self.delivery.wake,
            outbox_written=self.outbox_written,
            subscriptions=self.webhook_subscriptions,
            metrics=self.metrics,
        )
        self.probes = ProbeController(
            self.health,
            self.directory,
            config.server.hostname,
            clock,
            config.admin.allow_private_upstreams,
        )
        self._clock = clock
        self._admin_tokens = _token_hashes(config)  # replaced by a reload
        self.listeners = SmtpListeners(
            max_connections=session_ceiling(  # the machine's: each worker takes its share
                worker_share(config.limits.max_connections, workers),
                RESERVED_DESCRIPTORS + config.delivery.concurrency,
            ),
            # Each worker's: a client's connections are not spread exactly evenly, and
            # a share would refuse one that keeps within the limit.
            max_connections_per_ip=config.limits.max_connections_per_ip,
            refused=lambda reason: self.metrics.connections_refused.labels(reason).inc(),
        )
        self._admin: web.AppRunner | None = None
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._announcing: set[asyncio.Task[None]] = set()  # reloads told to the other nodes
        self._stopped = False

    def directory(self) -> Directory:
        return self._directory

    def webhook_subscriptions(self) -> Subscriptions:
        """Who wants which event (cheap, cached): for the transactions that write events."""
        return self.webhooks.subscriptions()

    def outbox_written(self) -> None:
        """Events were committed to the outbox: the webhooks' worker sends them now."""
        self.webhook_dispatcher.wake()

    async def load_store(self) -> None:
        """(Re)read the objects created through the API, secrets unsealed; the file wins a clash."""
        try:
            async with self.engine.connect() as connection:
                self._store = await load_store(connection, self.secrets)
        except SecretKeyError as error:
            raise StartupError(str(error)) from None
        self._directory = merged_directory(self.config, self._store)

    def routing(self) -> RoutingPolicy:
        return self.config.routing.policy

    async def prepare(self) -> None:
        """What happens once before the relay serves: data directory, schema, file modes.

        With workers the supervisor has it done once, before them (`relay serve --prepare-only`).
        """
        private_directory(self.config.server.data_dir)
        await migrate(self.engine)
        restrict_sqlite_files(self.config.store_url)

    async def start(self) -> None:
        log.info("node %s", self.owner)  # the lease owner of this process's claims
        if self._handoff is None:
            await self.prepare()
        await self.sync.start()  # before loading: a change in between is loaded again, not lost
        await self.load_store()
        self.writer.start()
        await self.webhooks.load()
        await self.usage.load()
        await self.health.load()
        await self.performance.refresh(always=True)
        self.usage.export(self._directory)
        self.health.export()
        for listener in self.config.listeners:
            handler = SmtpHandler(listener, self.ingress, self.auth, self.metrics)
            try:
                await self.listeners.start(
                    listener,
                    handler,
                    self.config.server.hostname,
                    self.config.limits.max_message_bytes,
                    self._tls_context(listener),
                    self._inherited(
                        self._handoff.listeners[listener.name] if self._handoff else ()
                    ),
                )
            except OSError as error:
                raise StartupError(
                    f"listener {listener.name}: cannot listen on {listener.host}:{listener.port}: "
                    f"{error.strerror or error}"
                ) from None
        await self.delivery.release_stale()
        await self.webhook_dispatcher.release_stale()
        await self.campaigns.release_stale()
        await self._start_admin()
        await self._start_http()
        self._tasks = [
            asyncio.create_task(self.delivery.run(), name="delivery"),
            asyncio.create_task(self._update_queue_gauges(), name="queue-gauges"),
            asyncio.create_task(self._persist(), name="persist-usage-and-health"),
            asyncio.create_task(self.housekeeping.run(), name="housekeeping"),
            asyncio.create_task(self.webhook_dispatcher.run(), name="webhooks"),
            asyncio.create_task(self.campaigns.run(), name="campaigns"),
            asyncio.create_task(
                self.sync.run(self.config.cluster.sync_seconds), name="cluster-sync"
            ),
        ]
        interval = self.config.health.check_interval_seconds
        if interval > 0:
            self._tasks.append(
                asyncio.create_task(self.health.run_checks(interval), name="health-checks")
            )
        dns_interval = self.config.dns.verify_interval_seconds
        if dns_interval > 0:
            self._tasks.append(
                asyncio.create_task(self.domains.run(dns_interval), name="domain-dns")
            )

    def _tls_context(self, listener: ListenerConfig) -> ssl.SSLContext | None:
        if listener.tls is TlsMode.NONE:
            return None
        cert_file, key_file = listener.cert_file, listener.key_file
        if cert_file is None or key_file is None:
            cert_file, key_file = tls.development_certificate(
                self.config.server.data_dir, self.config.server.hostname
            )
        try:
            return tls.server_context(cert_file, key_file)
        except (OSError, ssl.SSLError) as error:
            raise StartupError(
                f"listener {listener.name}: cannot load {cert_file} / {key_file}: {error}"
            ) from None

    async def _start_admin(self) -> None:
        admin = self.config.admin
        api = Api(
            self.catalog,
            self.reports,
            self.queue,
            self.probes,
            self.health,
            self.domains,
            self.directory,
            lambda: self.config,
            self.reload,
            self._clock,
            templates=self.templates,
            api_keys=self.api_keys,
            suppressions=self.suppressions,
            webhooks=self.webhooks,
            performance=self.performance,
            campaigns=self.campaigns,
        )
        context = self._admin_tls_context()
        dashboard = DashboardDeps(self._session_key, context is not None, self.login_links)
        deps = AdminDeps(self.metrics, self.readiness, lambda: self._admin_tokens, api, dashboard)
        runner = web.AppRunner(create_app(deps), access_log=None)
        await runner.setup()
        try:
            if self._handoff is None:
                await web.TCPSite(runner, admin.host, admin.port, ssl_context=context).start()
            for sock in self._inherited(self._handoff.admin if self._handoff else ()):
                await web.SockSite(runner, sock, ssl_context=context).start()
        except OSError as error:
            await runner.cleanup()
            raise StartupError(
                f"admin: cannot listen on {admin.host}:{admin.port}: {error.strerror}"
            ) from None
        self._admin = runner

    async def _start_http(self) -> None:
        """The public HTTP ingress (forms, the send API), when `http:` is configured."""
        http = self.config.http
        if http is None:
            return
        forms = FormController(
            self.ingress,
            self.usage,
            self.directory,
            lambda: self.config.http or http,
            self._form_key,
            self.metrics,
            self.config.server.hostname,
            self._clock,
        )
        deps = PublicDeps(
            lambda: self.config.http or http,
            self.metrics,
            forms=forms,
            send=self.send,
            provider_events=self.provider_events,
            unsubscribe=self.unsubscribes,
        )
        context = None
        if http.cert_file is not None and http.key_file is not None:
            try:
                context = tls.server_context(http.cert_file, http.key_file)
            except (OSError, ssl.SSLError) as error:
                raise StartupError(
                    f"http: cannot load {http.cert_file} / {http.key_file}: {error}"
                ) from None
        runner = web.AppRunner(create_public_app(deps), access_log=None)
        await runner.setup()
        try:
            if self._handoff is None:
                await web.TCPSite(runner, http.host, http.port, ssl_context=context).start()
            for sock in self._inherited(self._handoff.http if self._handoff else ()):
                await web.SockSite(runner, sock, ssl_context=context).start()
        except OSError as error:
            await runner.cleanup()
            raise StartupError(
                f"http: cannot listen on {http.host}:{http.port}: {error.strerror}"
            ) from None
        self._http = runner

    @property
    def http_port(self) -> int | None:
        return int(self._http.addresses[0][1]) if self._http is not None else None

    @staticmethod
    def _inherited(descriptors: tuple[int, ...]) -> list[socket.socket]:
        return [socket.socket(fileno=fd) for fd in descriptors]

    def _admin_tls_context(self) -> ssl.SSLContext | None:
        """HTTPS when admin.cert_file and key_file are given (config requires it off loopback)."""
        admin = self.config.admin
        if admin.cert_file is None or admin.key_file is None:
            return None
        try:
            return tls.server_context(admin.cert_file, admin.key_file)
        except (OSError, ssl.SSLError) as error:
            raise StartupError(
                f"admin: cannot load {admin.cert_file} / {admin.key_file}: {error}"
            ) from None

    def login_link(self) -> str | None:
        """The line offering a one-time login link, when the dashboard has no other way in."""
        if self.config.admin.tokens or self.login_links is None:
            return None
        scheme = "https" if self.config.admin.cert_file else "http"
        return login_link_line(
            self._secret, scheme, self.config.admin.host, self.admin_port, self._clock()
        )

    @property
    def admin_port(self) -> int:
        assert self._admin is not None
        return int(self._admin.addresses[0][1])

    async def readiness(self) -> list[str]:
        problems = []
        try:
            async with self.engine.connect() as connection:
                await asyncio.wait_for(connection.execute(text("SELECT 1")), timeout=5)
        except Exception as error:  # any failure means "not ready", with its name
            problems.append(f"database unreachable ({type(error).__name__})")
        if len(self.listeners.started) != len(self.config.listeners):
            problems.append("SMTP listeners not started")
        return problems

    async def _update_queue_gauges(self) -> None:
        while True:
            try:
                stats = await self.queue.stats()
                self.metrics.queue_depth.set(stats.depth)
                self.metrics.held.set(stats.held)
                self.metrics.oldest_age.set(stats.oldest_age(self._clock()))
            except Exception as error:  # a gauge must not stop the relay
                log.warning("queue depth not measured: %s", error)
            await asyncio.sleep(QUEUE_GAUGE_SECONDS)

    async def _persist(self) -> None:
        while True:
            await asyncio.sleep(PERSIST_SECONDS)
            await self._flush()

    async def _flush(self) -> None:
        try:
            self.usage.export(self._directory)
            self.health.export()
            await self.usage.refresh()
            await self.health.flush()
            await self.performance.refresh()
        except Exception as error:  # kept for the next flush; never stops the relay
            log.warning("usage counters or performance not read, or circuits not saved: %s", error)

    def reload(self) -> ReloadResult:
        """Re-read the file; apply sites, credentials, upstreams, domains, routing and admin
        tokens, or keep the old on problems. One that applied makes every node re-read its own
        file within ``cluster.sync_seconds``."""
        result = self._reload_file()
        if not result.problems and not self._stopped:
            task = asyncio.create_task(self._announce_reload(), name="announce-reload")
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)
        return result

    async def _announce_reload(self) -> None:
        try:
            await self.sync.announce(RELOAD)
        except Exception as error:  # this node reloaded; the others reload at their next one
            log.warning("reload not announced to the other nodes: %s", error)

    async def _reload_from_elsewhere(self) -> None:
        log.info("another node reloaded: re-reading %s", self.config.path)
        self._reload_file()

    def _reload_file(self) -> ReloadResult:
        try:
            config = load_config(self.config.path)
        except ConfigError as error:
            log.error("reload refused, keeping the running configuration:\n%s", error)
            return ReloadResult(error.problems, [], [])
        restart_needed = [
            name
            for name in (
                "server",
                "store_url",
                "listeners",
                "limits",
                "delivery",
                "health",
                "dns",
                "cluster",
            )
            if getattr(config, name) != getattr(self.config, name)
        ]
        if replace(config.admin, tokens=()) != replace(self.config.admin, tokens=()):
            restart_needed.append("admin")  # its tokens apply at once; the rest at a restart
        if config.routing.class_header != self.config.routing.class_header:
            restart_needed.append("routing.class_header")
        if restart_needed:
            log.warning(
                "reload: changes to %s take effect at the next restart", ", ".join(restart_needed)
            )
        self._directory = merged_directory(config, self._store)
        self.config = _with_directory_parts(self.config, config)
        self._admin_tokens = _token_hashes(config)
        self.webhooks.rebuild()
        warnings = dangling_upstreams(self._directory)
        for warning in warnings:
            log.warning("reload: %s", warning)
        log.info(
            "reloaded %s: %d sites, %d upstreams, %d domains",
            config.path,
            len(config.sites),
            len(config.upstreams),
            len(config.domains),
        )
        return ReloadResult([], restart_needed, warnings)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping: no new connections; finishing work in progress")
        await self.listeners.stop(DRAIN_SECONDS)
        if self._tasks:  # started
            await self.campaigns.stop()  # no new batch; one being committed ends or rolls back
            await self.delivery.stop(DELIVERY_STOP_SECONDS)
            await self.webhook_dispatcher.stop(WEBHOOK_STOP_SECONDS)
        await asyncio.gather(*self._announcing, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tasks:
            await self._flush()
            await self.housekeeping.stop()
        await self.system_events.drain()
        self.auth.close()
        await self.writer.close()
        await self.clients.close()
        if self._http is not None:
            await self._http.cleanup()
        await self.provider_events.close()
        if self._admin is not None:
            await self._admin.cleanup()
        await self.engine.dispose()
        log.info("stopped")


def _with_directory_parts(running: Config, loaded: Config) -> Config:
    """The running config with the parts a reload applies now taken from the loaded one."""
    return replace(
        running,
        upstreams=loaded.upstreams,
        sites=loaded.sites,
        credentials=loaded.credentials,
        domains=loaded.domains,
        templates=loaded.templates,
        api_keys=loaded.api_keys,
        routing=loaded.routing,
        retention=loaded.retention,
        events=loaded.events,
        webhooks=loaded.webhooks,
        admin=replace(running.admin, tokens=loaded.admin.tokens),
    )


def _token_hashes(config: Config) -> tuple[tuple[str, str], ...]:
    return tuple((t.name, _token_hash(t)) for t in config.admin.tokens)


def _token_hash(token: AdminToken) -> str:
    if token.token_hash is not None:
        return token.token_hash
    assert token.token is not None
    return hash_token(token.token.reveal())


def session_ceiling(max_connections: int, reserved: int) -> int:
    """The SMTP sessions this process can hold with ``reserved`` descriptors to spare.

    Raises the soft descriptor limit toward the hard one when that is what it
    takes; caps the sessions (with a warning) when even the hard one is short,
    so idle SMTP connections can never starve the admin port or the store.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + reserved
    if soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft >= wanted:
        return max_connections
    ceiling = max(soft - reserved, 1)
    log.warning(
        "limits.max_connections %d needs %d descriptors but the limit is %d: "
        "at most %d SMTP sessions (raise LimitNOFILE / ulimit -n)",
        max_connections,
        wanted,
        soft,
        ceiling,
    )
    return ceiling


def worker_share(limit: int, workers: int) -> int:
    """One worker's part of a machine-wide limit (rounded up: never 0)."""
    return -(-limit // workers)


def private_directory(path: Path) -> None:
    """The data directory: the store, keys and outbox are the relay user's alone (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except PermissionError:  # someone else's directory: say so, the files stay 0600
        log.warning("%s belongs to another user: cannot make it 0700", path)


def _tune_garbage_collector() -> None:
    """Fewer, shorter collections while serving: they were the p99 of accept latency.

    What start-up made (modules, config, directory) is frozen out of every
    later collection, and the young generation is collected every 20,000
    allocations instead of 700 (2 KB x 50 sessions: p99 86-90 -> 47 ms).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def serve(config_path: Path, handoff: Handoff | None = None) -> int:
    """Run until SIGTERM/SIGINT (a worker: or its supervisor is gone); 0 after a clean stop."""
    # Whatever the shell's umask: what the relay creates (store, WAL, keys) is its user's alone.
    os.umask(0o077)
    config = load_config(config_path)
    app = RelayApp(config, handoff=handoff)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: app.reload() and None)
    control = _watch_supervisor(handoff.control, stop) if handoff else None
    try:
        await app.start()
        _tune_garbage_collector()
        if handoff is None:
            http = f", http {config.http.host}:{app.http_port}" if config.http else ""
            log.info(
                "relay ready: SMTP %s, admin %s:%d%s",
                app.listeners.ports,
                config.admin.host,
                app.admin_port,
                http,
            )
            link = app.login_link()
            if link:
                log.info("%s", link)
        elif not stop.is_set():  # the supervisor says "relay ready" when every worker is
            log.info("worker %d of %d ready (pid %d)", handoff.index, handoff.workers, os.getpid())
            assert control is not None
            with contextlib.suppress(OSError):  # the supervisor is gone: the watcher stops us
                control.send(READY)
        await stop.wait()
    finally:
        await app.stop()
    return 0


def _watch_supervisor(descriptor: int, stop: asyncio.Event) -> socket.socket:
    """The control socket to the supervisor: its end of file (the supervisor died) stops us."""
    control = socket.socket(fileno=descriptor)
    control.setblocking(False)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = control.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(descriptor)
            log.warning("the supervisor is gone: stopping")
            stop.set()

    loop.add_reader(descriptor, readable)
    return control


async def prepare(config_path: Path) -> int:
    """`relay serve --prepare-only`: what the supervisor has done once before its workers start.

    The data directory, schema, secret key and development certificate are made
    here, so two workers never race to make them; a certificate that does not
    load is one clear line here, before any worker.
    """
    os.umask(0o077)
    app = RelayApp(load_config(config_path))  # reads, or makes, the secret key
    try:
        await app.prepare()
        await app.load_store()  # secrets sealed with another key: said once, not by each worker
        for listener in app.config.listeners:
            app._tls_context(listener)
        app._admin_tls_context()
    finally:
        app.auth.close()
        await app.engine.dispose()
    return 0
