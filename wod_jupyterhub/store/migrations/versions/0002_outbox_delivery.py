"""Outbox delivery: dead letters and claim leases.

``failed`` marks a callback the portal refused for good (a 4xx other than
401/408/425/429): it stays for the admin to read but no longer blocks the
callbacks queued after it. ``lease_owner``/``lease_expires`` let several
service processes share one database without sending a message twice at
once. The (key, id) index serves the "head of each key" lookup.

Revision ID: 0002_outbox
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_outbox"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("wod_outbox") as batch:
        batch.add_column(sa.Column("failed", sa.DateTime))
        batch.add_column(sa.Column("lease_owner", sa.String(64)))
        batch.add_column(sa.Column("lease_expires", sa.DateTime))
    op.create_index("ix_wod_outbox_key_id", "wod_outbox", ["key", "id"])


def downgrade():
    op.drop_index("ix_wod_outbox_key_id", table_name="wod_outbox")
    with op.batch_alter_table("wod_outbox") as batch:
        batch.drop_column("lease_expires")
        batch.drop_column("lease_owner")
        batch.drop_column("failed")
