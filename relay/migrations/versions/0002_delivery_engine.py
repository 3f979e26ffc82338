"""Delivery engine: message class, delay notices, attempt routes, health, usage, suppressions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column(
                "message_class", sa.String(16), nullable=False, server_default="transactional"
            )
        )
        batch.add_column(
            sa.Column("delay_notified", sa.Boolean, nullable=False, server_default=sa.false())
        )
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("route", sa.Text))
    op.create_table(
        "upstream_health",
        sa.Column("upstream", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("changed_at", sa.Float, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "usage_counters",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("window", sa.String(8), primary_key=True),
        sa.Column("period", sa.String(20), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "suppressions",
        sa.Column("site_id", sa.String(64), primary_key=True),
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("message_id", sa.String(32)),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_table("usage_counters")
    op.drop_table("upstream_health")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("route")
    op.drop_index("ix_messages_created_at", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("delay_notified")
        batch.drop_column("message_class")
