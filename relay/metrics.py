"""Every Prometheus metric the relay exports, in one place, on one registry.

Labels are bounded: site, upstream, listener, outcome, reason. Never an
address or a message id.

With ``server.workers`` > 1 the supervisor names a fresh directory in
PROMETHEUS_MULTIPROC_DIR before it starts the workers, so prometheus-client
keeps every value in a memory-mapped file there (its multiprocess mode, chosen
at import) and ``render`` answers for all workers together: counters and
histograms are summed over every worker that ever ran (a dead one's counts
stay), and each gauge says how its workers' values combine (``multiprocess_mode``):
a reading of the shared store is the most recent one of a live worker, a state
each worker learns alone is the highest of the live workers'. With one process
the registry is the plain in-memory one.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when it is imported


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._multiprocess_dir = os.environ.get(MULTIPROCESS_DIR)
        self.accepted = Counter(
            "relay_messages_accepted_total",
            "Messages accepted and queued at ingress.",
            ["site"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "relay_smtp_rejections_total",
            "SMTP commands refused at ingress, by stage and class.",
            ["stage", "reply_class"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "relay_smtp_connections_refused_total",
            "SMTP connections refused with 421: too many in all, or from one client.",
            ["reason"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "relay_auth_failures_total",
            "Failed or throttled AUTH attempts.",
            ["reason"],
            registry=self.registry,
        )
        self.admin_auth_failures = Counter(
            "relay_admin_auth_failures_total",
            "Admin API requests and dashboard logins refused for their token: missing or "
            "invalid (401), or from a blocked address (429).",
            ["reason"],
            registry=self.registry,
        )
        self.send_api_auth_failures = Counter(
            "relay_send_api_auth_failures_total",
            "Send API requests refused for their key: missing, invalid or expired (401), or from a "
            "blocked address (429).",
            ["reason"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "relay_deliveries_total",
            "Recipient outcomes of delivery attempts.",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.attempt_seconds = Histogram(
            "relay_attempt_duration_seconds",
            "Duration of one delivery attempt to one upstream.",
            ["upstream"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.queue_depth = Gauge(
            "relay_queue_depth",
            "Messages waiting for delivery (queued or deferred; held ones not included).",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.held = Gauge(
            "relay_queue_held",
            "Messages held by an operator.",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.oldest_age = Gauge(
            "relay_queue_oldest_age_seconds",
            "Age of the oldest message waiting for delivery (0 when none waits).",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.circuit_state = Gauge(
            "relay_upstream_circuit_state",
            "1 for the state each upstream's circuit breaker is in, 0 for the others.",
            ["upstream", "state"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.health_checks = Counter(
            "relay_upstream_health_checks_total",
            "Active health checks of upstreams (connect, EHLO, STARTTLS, AUTH, QUIT).",
            ["upstream", "result"],
            registry=self.registry,
        )
        self.quota_use = Gauge(
            "relay_quota_use_ratio",
            "Share of a site's or upstream's limit used in the current window.",
            ["scope", "name", "window"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.quota_warnings = Counter(
            "relay_quota_warnings_total",
            "Times a site or upstream crossed 80 % or 90 % of a limit.",
            ["scope", "name", "window", "level"],
            registry=self.registry,
        )
        self.quota_refusals = Counter(
            "relay_site_limit_refusals_total",
            "Transactions refused at ingress because the site was over a limit.",
            ["site", "window"],
            registry=self.registry,
        )
        self.notices = Counter(
            "relay_dsn_queued_total",
            "Delivery status notifications queued (to the sender or the site bounce address).",
            ["action"],
            registry=self.registry,
        )
        self.notices_dropped = Counter(
            "relay_dsn_dropped_total",
            "DSNs not sent: the site was over a limit, or no longer exists.",
            ["site", "reason"],
            registry=self.registry,
        )
        self.suppressions = Counter(
            "relay_suppressions_added_total",
            "Recipients added to a site's suppression list: hard bounces, provider complaints.",
            ["site"],
            registry=self.registry,
        )
        self.provider_events = Counter(
            "relay_provider_events_total",
            "Provider events in, per upstream: matched, unmatched, ignored; requests refused, "
            "replayed, unavailable (SNS certificate), subscription (SNS confirmations).",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.suppressed_recipients = Counter(
            "relay_suppressed_recipients_total",
            "Recipients refused at RCPT or by the send API: on the site's suppression list.",
            ["site", "via"],
            registry=self.registry,
        )
        self.campaign_contacts = Counter(
            "relay_campaign_contacts_total",
            "Campaign contacts reached by generation: queued (a message), skipped or failed.",
            ["site", "outcome"],
            registry=self.registry,
        )
        self.smtp_duplicates = Counter(
            "relay_smtp_duplicates_total",
            "SMTP messages answered with the id of the same message stored within "
            "limits.duplicate_window_seconds: a client's retry, not queued again.",
            ["site"],
            registry=self.registry,
        )

        self.domain_check_state = Gauge(
            "relay_domain_check_state",
            "1 for the current status (pass, warn, fail) of each DNS check of a domain.",
            ["domain", "check", "status"],
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.domain_verified = Gauge(
            "relay_domain_verified",
            "1 when every required DNS check of the domain passed at the last verification.",
            ["domain"],
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.domain_check_changes = Counter(
            "relay_domain_check_changes_total",
            "DNS checks whose status changed between two verifications.",
            ["domain"],
            registry=self.registry,
        )
        self.form_submissions = Counter(
            "relay_form_submissions_total",
            "Landing-page form posts to a known form, by outcome: queued, bot (answered as "
            "queued, nothing stored), invalid (422), rate_limited (429), refused (403, or "
            "the ingress refused or failed).",
            ["site", "outcome"],
            registry=self.registry,
        )
        self.unsubscribes = Counter(
            "relay_unsubscribes_total",
            "Contacts unsubscribed from campaign mail through the link of a campaign message "
            "(POST /u/{token}); a post for a contact already unsubscribed is not counted.",
            ["site"],
            registry=self.registry,
        )
        self.unsubscribe_refusals = Counter(
            "relay_unsubscribe_refusals_total",
            "Unsubscribe links refused (404): forged (the token's signature does not verify: "
            "no store access) or unknown (a genuine token whose campaign or contact is gone).",
            ["reason"],
            registry=self.registry,
        )

        self.retention_deleted = Counter(
            "relay_retention_deleted_total",
            "What housekeeping removed, by kind: content (messages whose content went), "
            "messages, recipients, attempts, audit_log, stats_rollups, form_nonces, "
            "idempotency_keys, auth_failures, suppressions, webhook_outbox, webhook_attempts.",
            ["kind"],
            registry=self.registry,
        )
        self.housekeeping_runs = Counter(
            "relay_housekeeping_runs_total",
            "Housekeeping runs of this process: done (it held the lease), skipped (another "
            "process held it), failed.",
            ["result"],
            registry=self.registry,
        )
        self.store_size = Gauge(
            "relay_store_size_bytes",
            "Size of the store: SQLite's database file (its pages), PostgreSQL's pg_database_size.",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.store_free = Gauge(
            "relay_store_free_bytes",
            "SQLite: bytes of the file on its free list, reused before the file grows "
            "(0 on PostgreSQL).",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        self.messages_by_status = Gauge(
            "relay_messages",
            "Messages in the store per status, counted every five minutes by the process "
            "holding the housekeeping lease.",
            ["status"],
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )

        self.webhook_deliveries = Counter(
            "relay_webhook_deliveries_total",
            "Tries of webhook events, by endpoint and outcome: delivered (2xx), retry "
            "(to be tried again), failed (given up after events.retry_hours).",
            ["webhook", "outcome"],
            registry=self.registry,
        )
        self.webhook_outbox_pending = Gauge(
            "relay_webhook_outbox_pending",
            "Webhook events waiting to be delivered (every 15 s).",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )

    def forget_message_counts(self) -> None:
        """This process no longer counts messages (another holds the housekeeping lease).

        With workers the newest count of a live worker is shown anyway (and
        prometheus-client cannot clear labels there); alone, the counts go.
        """
        if self._multiprocess_dir is None:
            self.messages_by_status.clear()

    def count_delivery(self, upstream: str, outcome: str) -> None:
        self.deliveries.labels(upstream, outcome).inc()

    def observe_attempt(self, upstream: str, seconds: float) -> None:
        self.attempt_seconds.labels(upstream).observe(seconds)

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return bytes(generate_latest(self.registry))
        every_worker = CollectorRegistry()
        every_worker.register(EveryWorker(self._multiprocess_dir))
        return bytes(generate_latest(every_worker))


class EveryWorker:
    """prometheus-client's multiprocess collector, minus the files a worker is still creating.

    A worker makes each file on its first use of a metric type: for an instant
    it is empty (opened, not yet sized), and reading it then raised struct.error,
    so a scrape during a replacement worker's start answered 500. Such a file
    holds no value yet; one removed meanwhile (a dead worker's live gauges) is
    skipped as well.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        files = [f for f in glob.glob(os.path.join(self._directory, "*.db")) if _has_header(f)]
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-any-return,no-untyped-call]


def _has_header(path: str) -> bool:
    """Whether the file has its used-length header (8 bytes); a missing file has not."""
    try:
        return os.path.getsize(path) >= 8
    except FileNotFoundError:
        return False
