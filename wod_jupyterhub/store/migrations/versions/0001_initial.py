"""The first schema: students, operations, outbox, completions, throttle.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "wod_students",
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("password_hash", sa.String(255)),
        sa.Column("rotated_at", sa.DateTime),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False, server_default="free"),
        sa.Column("customer", sa.String(255)),
        sa.Column("email", sa.String(320)),
        sa.Column("workshop", sa.String(255)),
        sa.Column("assigned_at", sa.DateTime),
        sa.Column("lock_owner", sa.String(255)),
        sa.Column("lock_expires", sa.DateTime),
    )
    op.create_table(
        "wod_operations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("verb", sa.String(16), nullable=False),
        sa.Column("student", sa.Integer, index=True),
        sa.Column("student_last", sa.Integer),
        sa.Column("customer", sa.String(255)),
        sa.Column("email", sa.String(320)),
        sa.Column("workshop", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("result", sa.JSON),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("started", sa.DateTime),
        sa.Column("finished", sa.DateTime),
        sa.Column("owner", sa.String(255)),
        sa.Column("heartbeat", sa.DateTime),
    )
    op.create_table(
        "wod_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False, index=True),
        sa.Column("operation_id", sa.String(32)),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt", sa.DateTime, nullable=False),
        sa.Column("delivered", sa.DateTime, index=True),
        sa.Column("last_error", sa.Text),
    )
    op.create_table(
        "wod_completions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("student", sa.Integer, nullable=False, index=True),
        sa.Column("customer", sa.String(255)),
        sa.Column("workshop", sa.String(255)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ratio", sa.Integer, nullable=False),
        sa.Column("executed", sa.Integer, nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("taken_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "wod_throttle",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("window_start", sa.DateTime, nullable=False),
        sa.Column("locked_until", sa.DateTime),
    )


def downgrade():
    for table in ("wod_throttle", "wod_completions", "wod_outbox", "wod_operations", "wod_students"):
        op.drop_table(table)
