"""The portal's mails: verb mails received and participant mails waiting for the smarthost.

One row per accepted mail. ``kind`` "verb" rows record the operation the
mail became; "relay" rows are the relay's durable outbox (the columns
outbox.OutboxQueue works with: ``key``, the recipient, so that one
participant's mails leave in order; attempts, back-off, delivered or failed
for good, a claim lease so that several processes never send one mail
twice at once). ``received_id`` (the
received Message-ID, unique) stores a mail delivered twice once.

Revision ID: 0004_mail
Revises: 0003_sessions_ended
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_mail"
down_revision = "0003_sessions_ended"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "wod_mail",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(320)),
        sa.Column("received_id", sa.String(255), unique=True),
        sa.Column("received", sa.DateTime, nullable=False),
        sa.Column("peer", sa.String(255)),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("operation_id", sa.String(32)),
        sa.Column("message_id", sa.String(255)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt", sa.DateTime, nullable=False),
        sa.Column("delivered", sa.DateTime),
        sa.Column("failed", sa.DateTime),
        sa.Column("last_error", sa.Text),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires", sa.DateTime),
    )
    op.create_index("ix_wod_mail_pending", "wod_mail", ["kind", "delivered", "failed"])
    op.create_index("ix_wod_mail_key_id", "wod_mail", ["key", "id"])


def downgrade():
    op.drop_index("ix_wod_mail_key_id", table_name="wod_mail")
    op.drop_index("ix_wod_mail_pending", table_name="wod_mail")
    op.drop_table("wod_mail")
