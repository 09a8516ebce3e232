"""Seats whose hub sessions are known to be over.

``sessions_ended`` is set when the service has stopped the seat's server
and revoked its tokens on the hub (at CLEANUP, PURGE, RESET, or ahead of
time for a free seat) and cleared when a CREATE gives the seat; while it
is set nobody can have logged in, so the next CREATE need not ask the hub
again. Existing seats start with it unset: their first CREATE asks.

Revision ID: 0003_sessions_ended
Revises: 0002_outbox
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_sessions_ended"
down_revision = "0002_outbox"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("wod_students") as batch:
        batch.add_column(sa.Column("sessions_ended", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table("wod_students") as batch:
        batch.drop_column("sessions_ended")
