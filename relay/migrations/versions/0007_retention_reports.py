"""Retention and reports that scale: content deletion mark, rollups, housekeeping lease.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("content_deleted_at", sa.Float, nullable=True))
    op.create_index("ix_messages_finished", "messages", ["status", "updated_at"])
    op.create_table(
        "stats_rollups",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_stats_rollups_minute", "stats_rollups", ["minute"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("leased_until", sa.Float, nullable=False),
    )
    op.bulk_insert(
        sa.table(
            "leases",
            sa.column("name", sa.String),
            sa.column("owner", sa.String),
            sa.column("leased_until", sa.Float),
        ),
        [{"name": "housekeeping", "owner": None, "leased_until": 0.0}],
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_index("ix_stats_rollups_minute", "stats_rollups")
    op.drop_table("stats_rollups")
    op.drop_index("ix_messages_finished", "messages")
    op.drop_column("messages", "content_deleted_at")
