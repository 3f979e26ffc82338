"""Events out (webhooks and their outbox) and in (provider events).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "webhook_states",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("disabled_at", sa.Float, nullable=True),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("failing_since", sa.Float, nullable=True),
        sa.Column("last_success_at", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "webhook_outbox",
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
    )
    op.create_index(
        "ix_webhook_outbox_due", "webhook_outbox", ["status", "webhook", "next_attempt_at"]
    )
    op.create_index("ix_webhook_outbox_message", "webhook_outbox", ["message_id", "webhook", "id"])
    op.create_index("ix_webhook_outbox_created", "webhook_outbox", ["webhook", "created_at", "id"])
    op.create_index("ix_webhook_outbox_finished", "webhook_outbox", ["finished_at"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("outbox_id", sa.Integer, nullable=False, index=True),
        sa.Column("webhook", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("event_type", sa.String(40), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("response_head", sa.Text, nullable=True),
    )
    op.create_index("ix_webhook_attempts_webhook_at", "webhook_attempts", ["webhook", "at", "id"])
    op.create_index("ix_webhook_attempts_at", "webhook_attempts", ["at"])
    op.create_table(
        "provider_refs",
        sa.Column("upstream", sa.String(64), primary_key=True),
        sa.Column("ref", sa.String(256), primary_key=True),
        sa.Column("message_id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_provider_refs_message", "provider_refs", ["message_id"])
    op.create_index("ix_provider_refs_created", "provider_refs", ["created_at"])
    op.create_table(
        "provider_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(32), nullable=False, index=True),
        sa.Column("upstream", sa.String(64), nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("raw_type", sa.String(64), nullable=False),
        sa.Column("occurred_at", sa.Float, nullable=True),
        sa.Column("received_at", sa.Float, nullable=False, index=True),
        sa.Column("smtp_code", sa.Integer, nullable=True),
        sa.Column("smtp_text", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )
    op.create_table(
        "provider_replays",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("provider_replays")
    op.drop_table("provider_events")
    op.drop_index("ix_provider_refs_created", "provider_refs")
    op.drop_index("ix_provider_refs_message", "provider_refs")
    op.drop_table("provider_refs")
    op.drop_index("ix_webhook_attempts_at", "webhook_attempts")
    op.drop_index("ix_webhook_attempts_webhook_at", "webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_outbox_finished", "webhook_outbox")
    op.drop_index("ix_webhook_outbox_created", "webhook_outbox")
    op.drop_index("ix_webhook_outbox_message", "webhook_outbox")
    op.drop_index("ix_webhook_outbox_due", "webhook_outbox")
    op.drop_table("webhook_outbox")
    op.drop_table("webhook_states")
    op.drop_table("webhooks")
