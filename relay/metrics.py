"""Every Prometheus metric the relay exports, in one place, on one registry.

Labels are bounded: site, upstream, listener, outcome, reason. Never an
address or a message id.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.auth_failures = Counter(
            "relay_auth_failures_total",
            "Failed or throttled AUTH attempts.",
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
            "Messages waiting for delivery (queued or deferred).",
            registry=self.registry,
        )

    def count_delivery(self, upstream: str, outcome: str) -> None:
        self.deliveries.labels(upstream, outcome).inc()

    def observe_attempt(self, upstream: str, seconds: float) -> None:
        self.attempt_seconds.labels(upstream).observe(seconds)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
