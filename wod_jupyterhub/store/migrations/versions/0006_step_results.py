"""The checks of verified steps: one row per assignment of a seat and step.

``assigned_at`` (the seat's, at its CREATE) tells one participant's results
from the next one's on the same seat; ``passed_at`` is kept once set.

Revision ID: 0006_step_results
Revises: 0005_seat_ends
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_step_results"
down_revision = "0005_seat_ends"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "wod_step_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("student", sa.Integer, nullable=False),
        sa.Column("assigned_at", sa.DateTime, nullable=False),
        sa.Column("customer", sa.String(255)),
        sa.Column("workshop", sa.String(255), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("checks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("checked_at", sa.DateTime, nullable=False),
        sa.Column("passed_at", sa.DateTime),
    )
    op.create_index("ix_wod_step_results_seat", "wod_step_results", ["student", "assigned_at", "step"], unique=True)


def downgrade():
    op.drop_index("ix_wod_step_results_seat", table_name="wod_step_results")
    op.drop_table("wod_step_results")
