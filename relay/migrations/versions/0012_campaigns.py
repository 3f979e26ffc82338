"""Campaigns: contacts with tags, campaigns, their attachments (stored once) and recipients.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contacts",
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
    op.create_table(
        "contact_tags",
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
    op.create_table(
        "campaigns",
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
    op.create_table(
        "campaign_attachments",
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
    op.create_table(
        "campaign_recipients",
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
    # Plain ALTERs, not a batch copy: the messages table may be large.
    op.add_column("messages", sa.Column("campaign_id", sa.String(32), nullable=True))
    op.create_index(
        "ix_messages_class_due", "messages", ["message_class", "status", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_messages_class_due", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("campaign_id")
    op.drop_table("campaign_recipients")
    op.drop_table("campaign_attachments")
    op.drop_table("campaigns")
    op.drop_table("contact_tags")
    op.drop_table("contacts")
