"""The database schema (SQLAlchemy Core). Migrations in ``migrations/`` create it.

Times are UNIX seconds as floats: portable between SQLite and PostgreSQL and
cheap to compare in the claim query.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("site_id", sa.String(64), nullable=False),
    sa.Column("username", sa.String(128)),
    sa.Column("client_ip", sa.String(64), nullable=False),
    sa.Column("original_sender", sa.Text, nullable=False),
    sa.Column("envelope_sender", sa.Text, nullable=False),
    sa.Column("subject", sa.Text, nullable=False, server_default=""),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),  # as it goes out
    sa.Column("original_headers", sa.LargeBinary, nullable=False),  # as the site sent them
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("leased_until", sa.Float),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("last_error", sa.Text),
    sa.Column("message_class", sa.String(16), nullable=False, server_default="transactional"),
    sa.Column("delay_notified", sa.Boolean, nullable=False, server_default=sa.false()),
    # Set when retention replaced ``content`` by its header block (migration 0007).
    sa.Column("content_deleted_at", sa.Float, nullable=True),
    # A campaign's message (migration 0012): its content holds the campaign's attachments
    # by reference, spliced in when it is delivered.
    sa.Column("campaign_id", sa.String(32), nullable=True),
    sa.Index("ix_messages_due", "status", "next_attempt_at"),
    # Transactional mail is claimed before bulk (migration 0012).
    sa.Index("ix_messages_class_due", "message_class", "status", "next_attempt_at"),
    sa.Index("ix_messages_finished", "status", "updated_at"),
    # The message log, newest first (migration 0008): all, per site, per status.
    sa.Index("ix_messages_created_id", "created_at", "id"),
    sa.Index("ix_messages_site_created", "site_id", "created_at", "id"),
    sa.Index("ix_messages_status_created", "status", "created_at", "id"),
)

recipients = sa.Table(
    "recipients",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("upstream", sa.String(64)),
    sa.Column("reply_code", sa.Integer),
    sa.Column("reply_text", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_recipients_address_lower", sa.func.lower(sa.column("address"))),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "message_id",
        sa.String(32),
        sa.ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("upstream", sa.String(64), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("duration", sa.Float, nullable=False),
    sa.Column("reply_code", sa.Integer),
    sa.Column("reply_text", sa.Text),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("recipients", sa.JSON, nullable=False),
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.Column("route", sa.Text),  # Route.explain(): chosen order and skip reasons
)

# The circuit breaker of each upstream, so a restart does not forget a dead one.
upstream_health = sa.Table(
    "upstream_health",
    metadata,
    sa.Column("upstream", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("changed_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Messages (sites) and recipients (upstreams) counted per calendar period.
usage_counters = sa.Table(
    "usage_counters",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),  # site | upstream
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("window", sa.String(8), primary_key=True),  # minute | day | month
    sa.Column("period", sa.String(20), primary_key=True),  # 2026-11-21T10:05 | 2026-11-21 | 2026-11
    sa.Column("count", sa.Integer, nullable=False),
)

# Addresses a site no longer sends to (hard bounces, complaints, the admin API's), lower case:
# RCPT and the send API refuse them, and queued mail to them fails without an attempt.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("address", sa.Text, primary_key=True),  # lower case
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("message_id", sa.String(32)),
    sa.Column("created_at", sa.Float, nullable=False),
    # Migration 0009: bounce | complaint | manual | provider | unsubscribe; a soft entry's
    # end (it no longer suppresses from then on, and housekeeping deletes it).
    sa.Column("source", sa.String(16), nullable=False, server_default="bounce"),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Index("ix_suppressions_created", "created_at", "site_id", "address"),
    sa.Index("ix_suppressions_site_created", "site_id", "created_at", "address"),
    sa.Index("ix_suppressions_expires_at", "expires_at"),
)

# Objects created through the admin API live here, as the JSON they were given; objects
# from the YAML file never do.
sites = sa.Table(
    "sites",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

site_credentials = sa.Table(
    "site_credentials",
    metadata,
    sa.Column("username", sa.String(128), primary_key=True),
    sa.Column(
        "site_id", sa.String(64), sa.ForeignKey("sites.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

upstreams = sa.Table(
    "upstreams",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("password_encrypted", sa.LargeBinary),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("deleted_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Domains created through the admin API, with their DKIM keys sealed by
# server.secret_key_file (Fernet). Domains from the YAML file are never here.
domains = sa.Table(
    "domains",
    metadata,
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

dkim_keys = sa.Table(
    "dkim_keys",
    metadata,
    sa.Column(
        "domain",
        sa.String(253),
        sa.ForeignKey("domains.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("selector", sa.String(63), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # active | next | retired
    sa.Column("private_key_sealed", sa.LargeBinary, nullable=False),
    sa.Column("retire_until", sa.Date),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Every change made through the admin API: which token, what, when. Secrets
# in ``detail`` are masked before they are written.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("token", sa.String(64), nullable=False),  # the token's name
    sa.Column("action", sa.String(32), nullable=False),  # create, update, delete, activate, ...
    sa.Column("kind", sa.String(32), nullable=False),  # upstream, site, credential, domain, ...
    sa.Column("target", sa.String(253), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)

# Failed AUTH attempts of the whole cluster (keys such as ``ip:192.0.2.1``, ``user:shop``),
# each counted when its check starts; a refunded attempt's row is deleted.
auth_failures = sa.Table(
    "auth_failures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_auth_failures_key_at", "key", "at"),
)

# One row per shared thing whose change every node must notice (``catalog``: the
# objects of the admin API and the file's reload); nodes poll ``version``.
cluster_versions = sa.Table(
    "cluster_versions",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("changed_at", sa.Float, nullable=False),
)

# The public HTTP ingress (migration 0006).
# A form token's nonce once a post used it: the token is good for one submission.
form_nonces = sa.Table(
    "form_nonces",
    metadata,
    sa.Column("nonce", sa.String(32), primary_key=True),
    sa.Column("site_id", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

# Send API keys made through the admin API (the file's are in the YAML), stored hashed.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("key_hash", sa.String(80), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("last_used_at", sa.Float, nullable=True),
)

# Idempotency-Key of POST /api/v1/send: the first answer, given again for 24 h.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(40), nullable=True),
    sa.Column("answer", sa.JSON, nullable=True),  # None while the first request is in flight
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

# Templates made through the admin API (the file's are in the YAML).
templates = sa.Table(
    "templates",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("subject", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=True),
    sa.Column("html", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


# Retention and reports (migration 0007).
# Counters per site or upstream and UTC minute (the minute's first second), written in the
# transactions that record messages and attempts: statistics never read message rows.
# Scopes ``site:hour``, ``upstream:hour``, ``site:day``, ``upstream:day`` hold the same counters
# per UTC hour and day (``minute`` is then the hour's or day's first second): see core.rollups.
stats_rollups = sa.Table(
    "stats_rollups",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),  # site | upstream
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("minute", sa.BigInteger, primary_key=True),
    sa.Column("metric", sa.String(32), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Index("ix_stats_rollups_minute", "minute"),
    sa.Index("ix_stats_rollups_scope_minute", "scope", "minute"),  # migration 0008
)

# Work that one process of the cluster does at a time (``housekeeping``: retention):
# the holder renews ``leased_until``; another takes it over once it has passed.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("leased_until", sa.Float, nullable=False),
)


# Events out and in (migration 0010).
# Webhook endpoints made through the admin API (the file's are in the YAML); the secret
# (whsec_...) sealed by server.secret_key_file.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),  # url, events, sites, max_in_flight
    sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# What the cluster knows of every endpoint, the file's too: failing since when, disabled.
webhook_states = sa.Table(
    "webhook_states",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("disabled_at", sa.Float, nullable=True),
    sa.Column("disabled_reason", sa.Text, nullable=True),
    sa.Column("failing_since", sa.Float, nullable=True),  # first failure since the last success
    sa.Column("last_success_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# One row per (endpoint, event), written in the transaction of the change the event
# reports; delivered under leases by any process, as the queue is. ``payload`` is the exact
# JSON body that is signed and sent. Status: pending | delivered | failed.
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("webhook", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(40), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("site_id", sa.String(64), nullable=True),
    sa.Column("message_id", sa.String(32), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("leased_until", sa.Float, nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    # Claims look for one endpoint's due rows at a time (its limit is its own).
    sa.Index("ix_webhook_outbox_due", "status", "webhook", "next_attempt_at"),
    # A message's events go to an endpoint in order (the earliest pending one first); its page.
    sa.Index("ix_webhook_outbox_message", "message_id", "webhook", "id"),
    sa.Index("ix_webhook_outbox_created", "webhook", "created_at", "id"),  # replay
    sa.Index("ix_webhook_outbox_finished", "finished_at"),  # retention
)

# Every try of an outbox row: the delivery log.
webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("outbox_id", sa.Integer, nullable=False, index=True),
    sa.Column("webhook", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(40), nullable=False),
    sa.Column("event_type", sa.String(40), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("duration", sa.Float, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("response_head", sa.Text, nullable=True),  # the answer's first bytes
    sa.Index("ix_webhook_attempts_webhook_at", "webhook", "at", "id"),
    sa.Index("ix_webhook_attempts_at", "at"),
)

# How an upstream with ``events:`` names a message it accepted: the queue id of its 250
# reply and our Message-ID, written with the delivery, read when its events come in.
provider_refs = sa.Table(
    "provider_refs",
    metadata,
    sa.Column("upstream", sa.String(64), primary_key=True),
    sa.Column("ref", sa.String(256), primary_key=True),
    sa.Column("message_id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_provider_refs_message", "message_id"),
    sa.Index("ix_provider_refs_created", "created_at"),
)

# What providers reported of a message after they took it (bounces, complaints, ...): its
# timeline shows them beside the attempts.
provider_events = sa.Table(
    "provider_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(32), nullable=False, index=True),
    sa.Column("upstream", sa.String(64), nullable=False),
    sa.Column("recipient", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # core.providers.model.EventKind
    sa.Column("raw_type", sa.String(64), nullable=False),
    sa.Column("occurred_at", sa.Float, nullable=True),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("smtp_code", sa.Integer, nullable=True),
    sa.Column("smtp_text", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
)

# Provider requests already taken (Mailgun's token), refused again until they expire.
provider_replays = sa.Table(
    "provider_replays",
    metadata,
    sa.Column("key", sa.String(300), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


# Issue 19 (migration 0011).
# A message as SMTP took it, to answer a client's retry (our 250 lost) with the first queue id
# instead of queueing it again: the site, and a digest of what makes it the same message.
message_fingerprints = sa.Table(
    "message_fingerprints",
    metadata,
    sa.Column("site_id", sa.String(64), primary_key=True),
    sa.Column("fingerprint", sa.String(64), primary_key=True),
    sa.Column("message_id", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

# Each upstream's recent success rate and attempt time (exponentially weighted), shared by
# every node: the ``performance`` routing strategy orders by them.
upstream_performance = sa.Table(
    "upstream_performance",
    metadata,
    sa.Column("upstream", sa.String(64), primary_key=True),
    sa.Column("success_rate", sa.Float, nullable=False),
    sa.Column("latency_seconds", sa.Float, nullable=False),
    sa.Column("samples", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


# Issue 18 (migration 0012): contacts and campaigns.
# A site's contact; ``email`` is stored lower-cased, unique per site. ``tags`` is the list as
# shown; ``contact_tags`` holds the same tags one row each, for choosing an audience.
contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("site_id", sa.String(64), nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("first_name", sa.Text, nullable=False, server_default=""),
    sa.Column("last_name", sa.Text, nullable=False, server_default=""),
    sa.Column("company", sa.Text, nullable=False, server_default=""),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("unsubscribed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("unsubscribed_at", sa.Float),
    sa.Column("last_email_sent", sa.Float),
    sa.Column("email_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("site_id", "email", name="uq_contacts_site_email"),
    sa.Index("ix_contacts_site_id", "site_id", "id"),
)

contact_tags = sa.Table(
    "contact_tags",
    metadata,
    sa.Column(
        "contact_id",
        sa.Integer,
        sa.ForeignKey("contacts.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("tag", sa.String(64), primary_key=True),
    sa.Column("site_id", sa.String(64), nullable=False),
    sa.Index("ix_contact_tags_site_tag", "site_id", "tag", "contact_id"),
)

# A campaign. ``cursor`` is the last contact id whose recipient row exists: generation resumes
# after it. The lease says which process is generating now (one at a time).
campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("site_id", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("template", sa.String(128)),
    sa.Column("subject", sa.Text),
    sa.Column("text", sa.Text),
    sa.Column("html", sa.Text),
    sa.Column("audience", sa.JSON, nullable=False),
    sa.Column("rate_per_minute", sa.Integer),
    sa.Column("schedule_at", sa.Float),
    sa.Column("cursor", sa.Integer, nullable=False, server_default="0"),
    sa.Column("generated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("total_contacts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("queued_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sent_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skipped_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("leased_until", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Index("ix_campaigns_status", "status"),
    sa.Index("ix_campaigns_site_created", "site_id", "created_at", "id"),
)

# A campaign's attachment, stored once: its messages hold a reference to it.
campaign_attachments = sa.Table(
    "campaign_attachments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "campaign_id",
        sa.String(32),
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
)

# One row per contact a campaign reached (queued, sent, failed or skipped). Its key is what
# makes "a contact never gets the same campaign twice" exact across crashes and nodes.
campaign_recipients = sa.Table(
    "campaign_recipients",
    metadata,
    sa.Column(
        "campaign_id",
        sa.String(32),
        sa.ForeignKey("campaigns.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("contact_id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("message_id", sa.String(32), index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_campaign_recipients_status", "campaign_id", "status", "contact_id"),
)
