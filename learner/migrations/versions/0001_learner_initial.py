"""Learner schema: adapter registry and history, learner state, releases, refusals,
offsets, adapter outbox.

Revision ID: L0001
Revises:
Create Date: 2025-01-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "L0001"
down_revision = None
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "adapter_versions",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("parent_version", sa.BigInteger),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rollout_fraction", sa.Float, nullable=False),
        sa.Column("rounds", sa.JSON, nullable=False),
        sa.Column("window_first", sa.BigInteger),
        sa.Column("window_last", sa.BigInteger),
        sa.Column("epsilon_spent", sa.Float, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source_round", sa.BigInteger, nullable=False),
        sa.Column("adapter", sa.LargeBinary),
        sa.Column("artifact_sha256", sa.String(64)),
        sa.Column("signature", sa.String(128)),
        sa.Column("manifest", sa.JSON),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("region", "cohort", "version"),
    )
    op.create_table(
        "adapter_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rollout_fraction", sa.Float, nullable=False),
        sa.Column("round", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", _TZ, nullable=False),
    )
    op.create_index("ix_adapter_events_version", "adapter_events", ["region", "cohort", "version"])
    op.create_table(
        "learner_state",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("last_round", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("plan", sa.JSON),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("region", "cohort"),
    )
    op.create_table(
        "learner_releases",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("round", sa.BigInteger, nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("epsilon_spent", sa.Float, nullable=False),
        sa.Column("participants", sa.BigInteger, nullable=False),
        sa.Column("actions", sa.Integer, nullable=False),
        sa.Column("applied_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("region", "cohort", "round"),
    )
    op.create_table(
        "learner_refusals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("claimed_region", sa.String(64)),
        sa.Column("cohort", sa.String(64)),
        sa.Column("round", sa.BigInteger),
        sa.Column("at", _TZ, nullable=False),
    )
    op.create_table(
        "learner_offsets",
        sa.Column("group_id", sa.String(255), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("group_id", "topic", "partition"),
    )
    op.create_table(
        "adapter_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("version", sa.BigInteger),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("record_key", sa.String(255), nullable=False),
        sa.Column("value", sa.LargeBinary),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("published_at", _TZ),
    )
    op.create_index("ix_adapter_outbox_pending", "adapter_outbox", ["region", "published_at"])


def downgrade() -> None:
    op.drop_index("ix_adapter_outbox_pending", "adapter_outbox")
    op.drop_index("ix_adapter_events_version", "adapter_events")
    for name in (
        "adapter_outbox",
        "learner_offsets",
        "learner_refusals",
        "learner_releases",
        "learner_state",
        "adapter_events",
        "adapter_versions",
    ):
        op.drop_table(name)
