"""SMTP retries answered once (message fingerprints) and upstreams' measured performance.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_fingerprints",
        sa.Column("site_id", sa.String(64), primary_key=True),
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("message_id", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "upstream_performance",
        sa.Column("upstream", sa.String(64), primary_key=True),
        sa.Column("success_rate", sa.Float, nullable=False),
        sa.Column("latency_seconds", sa.Float, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upstream_performance")
    op.drop_table("message_fingerprints")
