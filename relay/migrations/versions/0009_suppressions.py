"""Suppressions through the admin API: where an entry came from, when a soft one expires.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every row so far was written by a hard bounce.
    with op.batch_alter_table("suppressions") as table:
        table.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="bounce")
        )
        table.add_column(sa.Column("expires_at", sa.Float, nullable=True))
    # The admin list, newest first: all sites, and one site's.
    op.create_index("ix_suppressions_created", "suppressions", ["created_at", "site_id", "address"])
    op.create_index(
        "ix_suppressions_site_created", "suppressions", ["site_id", "created_at", "address"]
    )
    # Housekeeping deletes the expired ones.
    op.create_index("ix_suppressions_expires_at", "suppressions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_expires_at", "suppressions")
    op.drop_index("ix_suppressions_site_created", "suppressions")
    op.drop_index("ix_suppressions_created", "suppressions")
    with op.batch_alter_table("suppressions") as table:
        table.drop_column("expires_at")
        table.drop_column("source")
