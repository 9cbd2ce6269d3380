"""Initial region schema: offsets, replay ids, aggregates, hash-chained audit log.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consumer_offsets",
        sa.Column("group_id", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition"),
    )
    op.create_table(
        "seen_messages",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("msg_id", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("region", "msg_id"),
    )
    op.create_table(
        "aggregates",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("round", sa.BigInteger, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("vector_sum", sa.LargeBinary, nullable=False),
        sa.Column("steps_sum", sa.BigInteger, nullable=False),
        sa.Column("accepted_sum", sa.BigInteger, nullable=False),
        sa.Column("overridden_sum", sa.BigInteger, nullable=False),
        sa.Column("failed_sum", sa.BigInteger, nullable=False),
        sa.Column("action_hist", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("region", "cohort", "round"),
    )
    op.create_table(
        "audit_log",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("ts", sa.String(40), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("msg_id", sa.String(32)),
        sa.Column("cohort", sa.String(64)),
        sa.Column("round", sa.BigInteger),
        sa.Column("topic", sa.String(255)),
        sa.Column("partition", sa.Integer),
        sa.Column("offset", sa.BigInteger),
        sa.Column("detail", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("region", "seq"),
    )


def downgrade() -> None:
    for name in ("audit_log", "aggregates", "seen_messages", "consumer_offsets"):
        op.drop_table(name)
