"""Each seat has an end; the instructor's announcements.

``wod_students.ends_at``: when the seat's time is up, set by its CREATE
(the request's, else the workshop's ``duration``, else
``c.Wod.default_duration``) and moved by an extension; the service cleans up
a seat past it. Existing seats start without an end: only their next CREATE
gives them one. ``wod_announcements``: what an admin sent to every
participant of a workshop; a seat shows those sent since it was assigned.

Revision ID: 0005_seat_ends
Revises: 0004_mail
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_seat_ends"
down_revision = "0004_mail"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("wod_students") as batch:
        batch.add_column(sa.Column("ends_at", sa.DateTime))
    op.create_table(
        "wod_announcements",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workshop", sa.String(255), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("author", sa.String(255)),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_index("ix_wod_announcements_workshop", "wod_announcements", ["workshop"])


def downgrade():
    op.drop_index("ix_wod_announcements_workshop", table_name="wod_announcements")
    op.drop_table("wod_announcements")
    with op.batch_alter_table("wod_students") as batch:
        batch.drop_column("ends_at")
