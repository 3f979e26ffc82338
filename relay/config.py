"""The YAML configuration, parsed once into frozen objects.

Every problem is collected with its YAML path (``sites[1].from.email: not an
email address``) and reported together; unknown keys are errors, so a typo
never silently keeps a default. A secret key ``x`` may also be given as
``x_env: VAR`` or ``x_file: PATH``. Relative paths are relative to the
working directory (systemd's WorkingDirectory, Docker's WORKDIR).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from relay.config_events import ProviderEventsConfig, parse_provider_events, parse_upstream_events
from relay.config_http import (
    HttpConfig,
    parse_api_keys,
    parse_form,
    parse_http,
    parse_templates,
)
from relay.config_policy import PolicyConfig, parse_policy
from relay.config_section import (
    IpNetwork,
    Section,
    check_unique,
    read_address,
    read_display_name,
    read_existing_file,
    read_name,
    read_networks,
)
from relay.config_webhooks import EventsConfig, parse_events, parse_webhooks
from relay.core.addresses import is_sender_pattern
from relay.core.backoff import BackoffPolicy
from relay.core.directory import Directory
from relay.core.dkim import (
    Algorithm,
    KeyProblem,
    PrivateKey,
    SigningKey,
    is_selector,
    load_private_key,
)
from relay.core.domains import Domain, DomainKey, KeyState
from relay.core.health import HealthPolicy
from relay.core.model import (
    ApiKey,
    AuthMode,
    Credential,
    MessageClass,
    ReplyTo,
    Secret,
    Site,
    Strategy,
    TlsMode,
    Upstream,
    UpstreamKind,
)
from relay.core.passwords import is_password_hash
from relay.core.retention import RetentionPolicy
from relay.core.routing import ClassRule, RoutingPolicy
from relay.core.templates import Template
from relay.core.tokens import is_token_hash
from relay.core.webhook_delivery import Endpoint


class ConfigError(Exception):
    """The configuration has problems; ``problems`` lists each with its YAML path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ServerConfig:
    hostname: str
    data_dir: Path
    secret_key_file: Path
    workers: int = 1  # processes serving the same listeners (relay/supervisor.py when > 1)


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    host: str
    port: int
    tls: TlsMode
    cert_file: Path | None
    key_file: Path | None
    auth: AuthMode
    trusted_networks: tuple[IpNetwork, ...]
    allow_plaintext_auth: bool

    @property
    def offers_auth(self) -> bool:
        return self.auth is not AuthMode.NONE

    def is_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_networks)


@dataclass(frozen=True)
class LimitsConfig:
    max_message_bytes: int = 26_214_400
    max_recipients: int = 100
    max_header_bytes: int = 262_144  # a bigger header block gets 552 5.3.4
    max_connections: int = 1000  # SMTP sessions in all; over it 421 4.7.0
    max_connections_per_ip: int = 50  # per client address (IPv6: per /64); trusted exempt
    auth_max_failures: int = 5
    auth_failure_window_seconds: int = 300
    # An SMTP client's retry of a message stored this recently is answered with its id, not
    # queued again; 0 = off.
    duplicate_window_seconds: int = 86_400
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))  # quota days and months


@dataclass(frozen=True)
class AdminToken:
    name: str
    token: Secret | None
    token_hash: str | None


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 8025
    tokens: tuple[AdminToken, ...] = ()  # a reload applies a changed list at once
    cert_file: Path | None = None  # with key_file: the admin listener speaks HTTPS
    key_file: Path | None = None
    allow_plaintext: bool = False  # plain HTTP beyond loopback: the operator's explicit choice
    allow_private_upstreams: bool = False  # API upstreams may reach loopback/private/link-local


@dataclass(frozen=True)
class DeliveryConfig:
    concurrency: int = 64
    lease_seconds: int = 600
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    delay_notice_seconds: float | None = None  # send a "delayed" DSN once after this long
    # Transactional first: bulk mail holds at most this share of the slots, and leaves this
    # share of each upstream rate and quota to transactional mail (README "Transactional first").
    bulk_share: float = 0.75
    transactional_reserve: float = 0.2


@dataclass(frozen=True)
class HealthConfig:
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    check_interval_seconds: float = 300.0  # active checks of every SMTP upstream; 0 = off


@dataclass(frozen=True)
class RoutingConfig:
    policy: RoutingPolicy = field(default_factory=RoutingPolicy)
    class_header: str = "X-Relay-Class"  # a message's class, read and removed at ingress


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()  # "IP" or "IP:port"; empty: the system's resolv.conf
    timeout_seconds: float = 5.0
    verify_interval_seconds: float = 3600.0  # the server re-checks every domain this often; 0 = off


@dataclass(frozen=True)
class ClusterConfig:
    sync_seconds: float = 2.0  # how often a node looks for changes made on other nodes
    redis_url: Secret | None = None  # accepted and checked; the relay does not use Redis (README)


@dataclass(frozen=True)
class RetentionConfig:
    policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    interval_seconds: float = 60.0  # how often housekeeping runs (one process of the cluster)


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    store_url: str
    listeners: tuple[ListenerConfig, ...]
    limits: LimitsConfig
    admin: AdminConfig
    delivery: DeliveryConfig
    health: HealthConfig
    routing: RoutingConfig
    upstreams: tuple[Upstream, ...]
    dns: DnsConfig
    domains: tuple[Domain, ...]
    sites: tuple[Site, ...]
    credentials: tuple[Credential, ...]
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    http: HttpConfig | None = None  # the public HTTP ingress; off when absent
    templates: tuple[Template, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    provider_events: ProviderEventsConfig = field(default_factory=ProviderEventsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)  # how webhooks are sent
    webhooks: tuple[Endpoint, ...] = ()  # the file's endpoints (the API's are in the store)
    policy: PolicyConfig | None = None  # the operator's hooks (relay/policy_hooks_controller.py)

    def directory(self) -> Directory:
        return Directory.of(
            self.sites,
            self.credentials,
            self.upstreams,
            self.domains,
            self.api_keys,
            self.templates,
        )


@dataclass(frozen=True)
class ReloadResult:
    """What re-reading the file did (SIGHUP, POST /api/v1/reload)."""

    problems: list[str]  # the file was refused for these; the running config stays
    restart_needed: list[str]  # changed sections that only a restart applies
    warnings: list[str]  # applied, but worth a look (a site listing a vanished upstream)


def default_config_path() -> Path:
    """``./config.yaml`` when it exists, else ``$RELAY_CONFIG``, else ``./config.yaml``."""
    local = Path("config.yaml")
    if local.exists():
        return local
    return Path(os.environ.get("RELAY_CONFIG", "config.yaml"))


def load_config(path: Path) -> Config:
    """Read and validate the file; raise ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read the file ({error.strerror})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [f"{path}:{where} not valid YAML ({getattr(error, 'problem', error)})"]
        ) from None
    problems: list[str] = []
    root = Section(data if data is not None else {}, "", problems)
    config = _parse(path, root)
    if problems or config is None:
        raise ConfigError(problems)
    return config


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})+$"
)  # _spf.google.com
MIN_TOKEN_LENGTH = 16


def is_domain_name(text: str) -> bool:
    return _HOSTNAME.match(text) is not None and "." in text


# Keys the admin API refuses in an object's JSON: they would read the server's environment or
# files, or write files on it. The YAML file may use them; the API gives secrets inline.
# allow_plaintext_auth: an API caller must never choose to send a stored password in clear.
API_FORBIDDEN_KEYS = (
    "password_env",
    "password_file",
    "path",
    "ca_file",
    "credentials",
    "api_keys",
    "allow_plaintext_auth",
    # Provider events in: their secrets would need sealing beside the password (not yet).
    "events",
    "events_key",
    "events_key_env",
    "events_key_file",
    "events_username",
    "events_password",
    "events_password_env",
    "events_password_file",
    "events_topics",
)


def parse_upstream_spec(data: object) -> tuple[Upstream | None, list[str]]:
    """An upstream given as JSON through the admin API: the same rules and messages as YAML."""
    problems: list[str] = []
    s = _api_section(data, "upstream", problems)
    upstream = _parse_upstream(s)
    if upstream is not None and upstream.kind is UpstreamKind.FILE:
        s.problem("file upstreams are for local development: declare them in the config file")
    return (upstream if not problems else None), problems


def parse_site_spec(data: object, upstream_names: set[str]) -> tuple[Site | None, list[str]]:
    """A site given as JSON through the admin API (credentials come from their own endpoint)."""
    problems: list[str] = []
    s = _api_section(data, "site", problems)
    site = _parse_site(s, upstream_names)
    s.finish()
    return (site if not problems else None), problems


def _api_section(data: object, path: str, problems: list[str]) -> Section:
    """The section without the forbidden keys (never read, not even to report them)."""
    if isinstance(data, dict):
        for key in API_FORBIDDEN_KEYS:
            if key in data:
                problems.append(f"{path}.{key}: not accepted through the API (use the config file)")
        data = {k: v for k, v in data.items() if k not in API_FORBIDDEN_KEYS}
    return Section(data, path, problems)


def _parse(path: Path, root: Section) -> Config | None:
    if not root.ok:
        return None
    server = _parse_server(root.section("server", required=True))
    store = root.section("store")
    store_url = store.text("url", f"sqlite+aiosqlite:///{server.data_dir / 'relay.db'}")
    store.finish()
    listeners = _parse_listeners(root)
    limits = _parse_limits(root.section("limits"))
    admin = _parse_admin(root.section("admin"))
    delivery = _parse_delivery(root.section("delivery"))
    health = _parse_health(root.section("health"))
    upstreams = _parse_upstreams(root)
    upstream_names = {u.name for u in upstreams}
    routing = _parse_routing(root.section("routing"), upstream_names)
    dns = _parse_dns(root.section("dns"))
    domains = _parse_domains(root)
    sites, credentials, api_keys = _parse_sites(root, upstream_names)
    cluster = _parse_cluster(root.section("cluster"))
    retention = _parse_retention(root.section("retention"))
    events = parse_events(root.section("events"))
    webhooks = parse_webhooks(root)
    http = None
    if root.has("http"):
        http_section = root.section("http")
        http = parse_http(http_section, is_loopback(http_section.text("host", "127.0.0.1") or ""))
    templates = parse_templates(root)
    _check_form_templates(root, sites, {t.name for t in templates})
    provider_events = parse_provider_events(root.section("provider_events"))
    policy = parse_policy(root)
    root.finish()
    return Config(
        path,
        server,
        store_url,
        listeners,
        limits,
        admin,
        delivery,
        health,
        routing,
        upstreams,
        dns,
        domains,
        sites,
        credentials,
        cluster,
        http,
        templates,
        api_keys,
        retention,
        provider_events,
        events,
        webhooks,
        policy,
    )


def _check_form_templates(root: Section, sites: tuple[Site, ...], names: set[str]) -> None:
    for i, site in enumerate(sites):
        if site.form is not None and site.form.template not in (None, *names):
            root.problem(f"no template named {site.form.template!r}", f"sites[{i}].form.template")


MIN_SYNC_SECONDS = 0.2  # below it every node polls the store more than five times a second


def _parse_cluster(s: Section) -> ClusterConfig:
    d = ClusterConfig()
    sync_seconds = s.number("sync_seconds", d.sync_seconds)
    if sync_seconds < MIN_SYNC_SECONDS:
        s.problem(f"must be at least {MIN_SYNC_SECONDS}", "sync_seconds")
        sync_seconds = d.sync_seconds
    redis_url = s.secret("redis_url")
    if redis_url is not None and not _is_redis_url(redis_url.reveal()):
        s.problem("must be a redis:// or rediss:// URL with a host", "redis_url")
        redis_url = None
    s.finish()
    return ClusterConfig(sync_seconds, redis_url)


def _parse_retention(s: Section) -> RetentionConfig:
    """Positive numbers, fractions allowed (``content_hours: 0.5``)."""
    d = RetentionConfig()
    p = d.policy

    def period(key: str, default: float) -> float:
        value = s.number(key, default)
        if not math.isfinite(value):
            s.problem("must be a finite positive number", key)
            return default
        return value

    config = RetentionConfig(
        RetentionPolicy(
            content_hours=period("content_hours", p.content_hours),
            log_days=period("log_days", p.log_days),
            audit_days=period("audit_days", p.audit_days),
            stats_days=period("stats_days", p.stats_days),
        ),
        interval_seconds=period("interval_seconds", d.interval_seconds),
    )
    s.finish()
    return config


def _is_redis_url(text: str) -> bool:
    """redis://[user:password@]host[:port][/db], or rediss:// (TLS)."""
    try:
        url = urlsplit(text)
        port = url.port  # raises on a port that is not a number in range
    except ValueError:
        return False
    database = url.path.lstrip("/")
    return (
        url.scheme in ("redis", "rediss")
        and bool(url.hostname)
        and (port is None or port > 0)
        and (database == "" or database.isdigit())
        and not url.fragment
    )


def _parse_server(s: Section) -> ServerConfig:
    hostname = s.text("hostname")
    if hostname is not None and not _HOSTNAME.match(hostname):
        s.problem(f"not a host name: {hostname!r}", "hostname")
    data_dir = Path(s.text("data_dir", "./data") or "./data")
    secret_key_file = Path(s.text("secret_key_file", None) or data_dir / "secret.key")
    workers = s.integer("workers", 1, minimum=1)
    s.finish()
    return ServerConfig(hostname or "localhost", data_dir, secret_key_file, workers or 1)


def _parse_listeners(root: Section) -> tuple[ListenerConfig, ...]:
    listeners, names, count = [], set[str](), 0
    for i, data in root.items("listeners"):
        count += 1
        s = Section(data, root.child("listeners") + f"[{i}]", root.problems)
        listener = _parse_listener(s)
        if listener is not None:
            check_unique(root, "listeners", i, listener.name, names, "listener name")
            listeners.append(listener)
    if count == 0:
        root.problem("at least one listener is required", "listeners")
    return tuple(listeners)


def _parse_listener(s: Section) -> ListenerConfig | None:
    name = read_name(s, "name")
    host = s.text("host", "127.0.0.1")
    port = s.integer("port", minimum=0)  # 0: any free port (tests)
    if port is not None and port > 65535:
        s.problem("must be at most 65535", "port")
    tls = s.choice("tls", TlsMode, TlsMode.STARTTLS)
    cert_file, key_file = read_existing_file(s, "cert_file"), read_existing_file(s, "key_file")
    if (cert_file is None) != (key_file is None):
        s.problem("give both cert_file and key_file, or neither (a development certificate)")
    auth = s.choice("auth", AuthMode, AuthMode.REQUIRED)
    networks = read_networks(s, "trusted_networks")
    plaintext = s.boolean("allow_plaintext_auth", False)
    s.finish()
    if auth is AuthMode.REQUIRED and networks:
        s.problem("trusted_networks has no effect with auth: required; use auth: optional")
    if auth is AuthMode.NONE and not networks:
        s.problem("auth: none needs trusted_networks, or nobody could send")
    if auth is not AuthMode.NONE and tls is TlsMode.NONE and not plaintext:
        s.problem("AUTH needs TLS: set tls: starttls|implicit, or allow_plaintext_auth: true")
    if tls is not TlsMode.NONE and cert_file is None and not is_loopback(host or ""):
        s.problem("a listener beyond loopback needs cert_file and key_file")
    if name is None or port is None or host is None:
        return None
    return ListenerConfig(name, host, port, tls, cert_file, key_file, auth, networks, plaintext)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_limits(s: Section) -> LimitsConfig:
    d = LimitsConfig()
    limits = LimitsConfig(
        max_message_bytes=s.integer("max_message_bytes", d.max_message_bytes, minimum=1024),
        max_recipients=s.integer("max_recipients", d.max_recipients, minimum=1),
        max_header_bytes=s.integer("max_header_bytes", d.max_header_bytes, minimum=1024),
        max_connections=s.integer("max_connections", d.max_connections, minimum=1),
        max_connections_per_ip=s.integer(
            "max_connections_per_ip", d.max_connections_per_ip, minimum=1
        ),
        auth_max_failures=s.integer("auth_max_failures", d.auth_max_failures, minimum=1),
        auth_failure_window_seconds=s.integer(
            "auth_failure_window_seconds", d.auth_failure_window_seconds, minimum=1
        ),
        duplicate_window_seconds=s.integer(
            "duplicate_window_seconds", d.duplicate_window_seconds, minimum=0
        ),
        timezone=_timezone(s, "timezone", d.timezone),
    )
    s.finish()
    return limits if None not in vars(limits).values() else d


def _timezone(s: Section, key: str, default: ZoneInfo) -> ZoneInfo:
    name = s.text(key, default.key)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        s.problem(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)", key)
        return default


def _parse_admin(s: Section) -> AdminConfig:
    d = AdminConfig()
    host = s.text("host", d.host)
    port = s.integer("port", d.port, minimum=0)
    tokens, names = [], set[str]()
    for i, data in s.items("tokens"):
        t = Section(data, s.child("tokens") + f"[{i}]", s.problems)
        name = read_name(t, "name")
        check_unique(s, "tokens", i, name, names, "token name")
        secret = t.secret("token")
        if secret is not None and len(secret.reveal()) < MIN_TOKEN_LENGTH:
            t.problem(
                f"too short: at least {MIN_TOKEN_LENGTH} characters (`relay hash-token` makes one)",
                "token",
            )
        token_hash = t.text("token_hash", None)
        if token_hash is not None and not is_token_hash(token_hash):
            t.problem("not a token hash; make one with `relay hash-token`", "token_hash")
        if (secret is None) == (token_hash is None):
            t.problem("give token (or token_env / token_file) or token_hash")
        t.finish()
        tokens.append(AdminToken(name or "", secret, token_hash))
    cert_file, key_file = read_existing_file(s, "cert_file"), read_existing_file(s, "key_file")
    if (cert_file is None) != (key_file is None):
        s.problem("give both cert_file and key_file, or neither")
    plaintext = s.boolean("allow_plaintext", False)
    if cert_file is None and not plaintext and not is_loopback(host or d.host):
        s.problem(
            f"an admin listener beyond loopback ({host}) sends tokens over the network: "
            "give cert_file and key_file (HTTPS), or allow_plaintext: true behind your own TLS",
            "host",
        )
    allow_private = s.boolean("allow_private_upstreams", d.allow_private_upstreams)
    s.finish()
    return AdminConfig(
        host or d.host,
        port if port is not None else d.port,
        tuple(tokens),
        cert_file,
        key_file,
        plaintext,
        allow_private,
    )


def _parse_delivery(s: Section) -> DeliveryConfig:
    d = DeliveryConfig()
    b = d.backoff
    config = DeliveryConfig(
        concurrency=s.integer("concurrency", d.concurrency, minimum=1) or d.concurrency,
        lease_seconds=s.integer("lease_seconds", d.lease_seconds, minimum=30) or d.lease_seconds,
        backoff=BackoffPolicy(
            first_delay=s.number("retry_first_seconds", b.first_delay),
            max_delay=s.number("retry_max_seconds", b.max_delay),
            max_age=s.number("max_age_seconds", b.max_age),
        ),
        delay_notice_seconds=(
            s.number("delay_notice_seconds", 1.0) if s.has("delay_notice_seconds") else None
        ),
        bulk_share=_share(s, "bulk_share", d.bulk_share, zero_ok=False),
        transactional_reserve=_share(s, "transactional_reserve", d.transactional_reserve),
    )
    s.finish()
    return config


def _share(s: Section, key: str, default: float, zero_ok: bool = True) -> float:
    """A fraction from 0 to 1 (``zero_ok`` False: more than 0, e.g. a share of the slots)."""
    value = s.raw(key, default)
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or value > 1 or value < 0 or (value == 0 and not zero_ok):
        s.problem(f"must be a number from 0 to 1{'' if zero_ok else ', more than 0'}", key)
        return default
    return float(value)


def _parse_health(s: Section) -> HealthConfig:
    d = HealthConfig()
    config = HealthConfig(
        HealthPolicy(
            failure_threshold=s.integer("failure_threshold", d.policy.failure_threshold, minimum=1)
            or d.policy.failure_threshold,
            cooldown_seconds=s.number("cooldown_seconds", d.policy.cooldown_seconds),
        ),
        check_interval_seconds=float(
            s.integer("check_interval_seconds", int(d.check_interval_seconds), minimum=0) or 0
        ),
    )
    s.finish()
    return config


def _parse_routing(s: Section, upstream_names: set[str]) -> RoutingConfig:
    d = RoutingConfig()
    strategy = s.choice("strategy", Strategy, d.policy.strategy)
    header = s.text("class_header", d.class_header)
    if header is not None and not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", header):
        s.problem("not a header field name", "class_header")
        header = None
    classes = {}
    rules = s.section("classes")
    for name in MessageClass:
        if not rules.has(name.value):
            continue
        r = rules.section(name.value)
        classes[name] = ClassRule(
            _upstream_list(r, upstream_names),
            r.choice("strategy", Strategy, strategy) if r.has("strategy") else None,
        )
        r.finish()
    rules.finish()
    s.finish()
    return RoutingConfig(RoutingPolicy(strategy, classes), header or d.class_header)


def _upstream_list(s: Section, upstream_names: set[str]) -> tuple[str, ...]:
    names = []
    for j, upstream in s.items("upstreams"):
        if not isinstance(upstream, str) or upstream not in upstream_names:
            s.problem(f"unknown upstream {upstream!r}", f"upstreams[{j}]")
        else:
            names.append(upstream)
    return tuple(names)


_DEFAULT_PORTS = {TlsMode.NONE: 25, TlsMode.STARTTLS: 587, TlsMode.IMPLICIT: 465}


def _parse_upstreams(root: Section) -> tuple[Upstream, ...]:
    upstreams, names = [], set[str]()
    for i, data in root.items("upstreams"):
        s = Section(data, root.child("upstreams") + f"[{i}]", root.problems)
        upstream = _parse_upstream(s)
        if upstream is not None:
            check_unique(root, "upstreams", i, upstream.name, names, "upstream name")
            upstreams.append(upstream)
    return tuple(upstreams)


def _parse_upstream(s: Section) -> Upstream | None:
    name = read_name(s, "name")
    kind = s.choice("kind", UpstreamKind, UpstreamKind.SMTP)
    smtp = kind is UpstreamKind.SMTP
    host = s.text("host") if smtp else s.text("host", None)
    tls = s.choice("tls", TlsMode, TlsMode.STARTTLS)
    port = s.integer("port", _DEFAULT_PORTS[tls], minimum=1)
    username = s.text("username", None)
    password = s.secret("password")
    if password is not None and username is None:
        s.problem("a password needs a username", "password")
    plaintext_auth = s.boolean("allow_plaintext_auth", False)
    if password is not None and tls is TlsMode.NONE and not plaintext_auth:
        s.problem(
            "with tls: none the password would cross the network in clear; use tls: starttls "
            "or implicit (or, in the config file only, allow_plaintext_auth: true)",
            "password",
        )
    path = s.text("path") if not smtp else s.text("path", None)
    upstream = Upstream(
        name=name or "",
        kind=kind,
        host=host,
        port=port,
        tls=tls,
        verify_tls=s.boolean("verify_tls", True),
        ca_file=str(ca_file) if (ca_file := read_existing_file(s, "ca_file")) else None,
        username=username,
        password=password,
        allow_plaintext_auth=plaintext_auth,
        path=path,
        priority=s.integer("priority", 100),
        active=s.boolean("active", True),
        rate_per_minute=s.integer("rate_per_minute", None, minimum=1),
        daily_limit=s.integer("daily_limit", None, minimum=1),
        monthly_limit=s.integer("monthly_limit", None, minimum=1),
        max_connections=s.integer("max_connections", 4, minimum=1),
        timeout_seconds=s.number("timeout_seconds", 60.0),
        cost_per_1000=s.cost("cost_per_1000"),
        weight=s.integer("weight", 1, minimum=0),
        spf_include=_spf_includes(s),
        events=parse_upstream_events(s),
    )
    s.finish()
    return upstream if name is not None else None


def _spf_includes(s: Section) -> tuple[str, ...]:
    """``spf_include``: the domain (or list) a sender's SPF must include for this upstream."""
    value = s.raw("spf_include", [])
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if names is None or not all(isinstance(n, str) and _DNS_NAME.match(n) for n in names):
        s.problem("must be a domain such as amazonses.com, or a list of them", "spf_include")
        return ()
    return tuple(n.lower() for n in names)


def _parse_dns(s: Section) -> DnsConfig:
    d = DnsConfig()
    servers = []
    for j, server in s.items("nameservers"):
        if not isinstance(server, str) or nameserver_address(server) is None:
            s.problem("not an IP address or IP:port", f"nameservers[{j}]")
        else:
            servers.append(server)
    config = DnsConfig(
        nameservers=tuple(servers),
        timeout_seconds=s.number("timeout_seconds", d.timeout_seconds),
        verify_interval_seconds=float(
            s.integer("verify_interval_seconds", int(d.verify_interval_seconds), minimum=0) or 0
        ),
    )
    s.finish()
    return config


def nameserver_address(text: str) -> tuple[str, int] | None:
    """``IP``, ``IP:port`` or ``[IPv6]:port`` as (address, port); None if it is not one."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return None
    return host, int(port) if port else 53


def _parse_domains(root: Section) -> tuple[Domain, ...]:
    domains, names = [], set[str]()
    for i, data in root.items("domains"):
        s = Section(data, root.child("domains") + f"[{i}]", root.problems)
        name = s.text("name")
        if name is not None and not _HOSTNAME.match(name):
            s.problem(f"not a domain name: {name!r}", "name")
            name = None
        check_unique(root, "domains", i, name and name.lower(), names, "domain")
        keys, signing_key = _parse_dkim(s.section("dkim"), name) if s.has("dkim") else ((), None)
        s.finish()
        if name is not None:
            domains.append(Domain(name.lower(), keys, signing_key))
    return tuple(domains)


def _parse_dkim(d: Section, domain: str | None) -> tuple[tuple[DomainKey, ...], SigningKey | None]:
    """The active selector, an optional ``next`` one and ``retired`` ones (see README)."""
    keys: list[DomainKey] = []
    selector, key = _selector(d, required_key=True)
    signing_key = None
    if selector is not None and key is not None:
        keys.append(DomainKey.of(selector, KeyState.ACTIVE, key))
        signing_key = SigningKey(domain or "", selector, key)
    if d.has("next"):
        n = d.section("next")
        selector, key = _selector(n, required_key=True)
        n.finish()
        if selector is not None and key is not None:
            keys.append(DomainKey.of(selector, KeyState.NEXT, key))
    for j, data in d.items("retired"):
        r = Section(data, d.child("retired") + f"[{j}]", d.problems)
        selector, key = _selector(r, required_key=False)
        until = _date(r, "until")
        r.finish()
        if selector is not None and until is not None:
            keys.append(
                DomainKey.of(selector, KeyState.RETIRED, key, until)
                if key is not None
                else DomainKey(selector, KeyState.RETIRED, Algorithm.RSA, None, until)
            )
    d.finish()
    selectors = [k.selector for k in keys]
    for duplicate in sorted({x for x in selectors if selectors.count(x) > 1}):
        d.problem(f"selector {duplicate!r} is used twice")
    return tuple(keys), signing_key


def _selector(s: Section, required_key: bool) -> tuple[str | None, PrivateKey | None]:
    selector = s.text("selector")
    if selector is not None and not is_selector(selector):
        s.problem(f"not a DKIM selector: {selector!r}", "selector")
        selector = None
    key_file = read_existing_file(s, "private_key_file")
    if key_file is None or not key_file.is_file():  # a missing file is reported already
        if required_key and not s.has("private_key_file"):
            s.problem("is required (make one with `relay dkim keygen`)", "private_key_file")
        return selector, None
    try:
        return selector, load_private_key(key_file.read_bytes())
    except OSError as error:
        s.problem(f"cannot read {key_file} ({error.strerror})", "private_key_file")
    except KeyProblem as error:
        s.problem(f"{key_file}: {error}", "private_key_file")
    return selector, None


def _date(s: Section, key: str) -> dt.date | None:
    value = s.raw(key)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    if value is not None:
        s.problem(f"must be a date such as 2026-12-31 (got {value!r})", key)
    return None


def _parse_sites(
    root: Section, upstream_names: set[str]
) -> tuple[tuple[Site, ...], tuple[Credential, ...], tuple[ApiKey, ...]]:
    sites, credentials, api_keys = [], [], []
    ids, usernames = set[str](), set[str]()
    for i, data in root.items("sites"):
        s = Section(data, root.child("sites") + f"[{i}]", root.problems)
        site = _parse_site(s, upstream_names)
        for j, cdata in s.items("credentials"):
            c = Section(cdata, s.child("credentials") + f"[{j}]", s.problems)
            username = c.text("username")
            check_unique(s, "credentials", j, username, usernames, "username (across all sites)")
            password_hash = c.text("password_hash")
            if password_hash is not None and not is_password_hash(password_hash):
                c.problem(
                    "not a password hash; make one with `relay hash-password`", "password_hash"
                )
            c.finish()
            if site is not None and username is not None and password_hash is not None:
                credentials.append(Credential(username, password_hash, site.id))
        api_keys += parse_api_keys(s, site.id if site else None, set())
        s.finish()
        if site is not None:
            check_unique(root, "sites", i, site.id, ids, "site id")
            sites.append(site)
    return tuple(sites), tuple(credentials), tuple(api_keys)


def _parse_site(s: Section, upstream_names: set[str]) -> Site | None:
    site_id = read_name(s, "id")
    name = s.text("name", site_id)
    sender = s.section("from", required=True)
    from_email = read_address(sender, "email")
    from_name = read_display_name(sender, "name")
    sender.finish()
    reply_to, reply_to_address = ReplyTo.ORIGINAL, None
    reply_to_text = s.text("reply_to", "original")
    if reply_to_text in ("original", "none"):
        reply_to = ReplyTo(reply_to_text)
    elif reply_to_text is not None:
        reply_to, reply_to_address = ReplyTo.ADDRESS, read_address(s, "reply_to")
    senders = []
    for j, pattern in s.items("senders"):
        if not isinstance(pattern, str) or not is_sender_pattern(pattern):
            s.problem("not an address pattern such as *@shop.example.com", f"senders[{j}]")
        else:
            senders.append(pattern.lower())
    upstreams = _upstream_list(s, upstream_names)
    site = Site(
        id=site_id or "",
        name=name or "",
        from_email=from_email or "",
        from_name=from_name,
        reply_to=reply_to,
        reply_to_address=reply_to_address,
        senders=tuple(senders),
        upstreams=upstreams,
        bounce_address=read_address(s, "bounce_address", None),
        rate_per_minute=s.integer("rate_per_minute", None, minimum=1),
        daily_limit=s.integer("daily_limit", None, minimum=1),
        monthly_limit=s.integer("monthly_limit", None, minimum=1),
        strategy=s.choice("strategy", Strategy, Strategy.PRIORITY) if s.has("strategy") else None,
        message_class=s.choice("message_class", MessageClass, MessageClass.TRANSACTIONAL),
        form=parse_form(s.section("form")) if s.has("form") else None,
    )
    if site_id is None or from_email is None:
        return None
    return site
