"""Reports that scale: indexes for the message log's filters, counters filled from the rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from relay.rollup_database import rebuild_rollups

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Newest first, with the id as tie-break, for the whole log and per site or status.
    op.drop_index("ix_messages_created_at", "messages")
    op.drop_index("ix_messages_site_id", "messages")
    op.create_index("ix_messages_created_id", "messages", ["created_at", "id"])
    op.create_index("ix_messages_site_created", "messages", ["site_id", "created_at", "id"])
    op.create_index("ix_messages_status_created", "messages", ["status", "created_at", "id"])
    # The recipient filter is a case-insensitive exact match.
    op.create_index("ix_recipients_address_lower", "recipients", [sa.text("lower(address)")])
    # A window of the counters reads one grain (scope) over a range of starts.
    op.create_index("ix_stats_rollups_scope_minute", "stats_rollups", ["scope", "minute"])
    rebuild_rollups(op.get_bind())


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM stats_rollups"))
    op.drop_index("ix_stats_rollups_scope_minute", "stats_rollups")
    op.drop_index("ix_recipients_address_lower", "recipients")
    op.drop_index("ix_messages_status_created", "messages")
    op.drop_index("ix_messages_site_created", "messages")
    op.drop_index("ix_messages_created_id", "messages")
    op.create_index("ix_messages_site_id", "messages", ["site_id"])
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
