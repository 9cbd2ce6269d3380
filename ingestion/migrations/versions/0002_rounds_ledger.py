"""Round coordinator and privacy ledger: rounds, round_messages, round_checkins,
round_outbox, round_releases, privacy_ledgers (see ``ingestion/rounds_db.py``).

Revision ID: 0002_rounds
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_rounds"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rounds",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("round_id", sa.String(64), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("round", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("open_json", sa.Text),
        sa.Column("graph_seed", sa.LargeBinary),
        sa.Column("stage_deadline", sa.Float),
        sa.Column("stage_log", sa.JSON, nullable=False),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("region", "round_id"),
        sa.UniqueConstraint("region", "cohort", "round", name="uq_rounds_cohort_round"),
    )
    op.create_table(
        "round_messages",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("round_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("sender", sa.Integer, nullable=False),
        sa.Column("msg_id", sa.String(32), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("region", "round_id", "type", "sender"),
    )
    op.create_table(
        "round_checkins",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("layout", sa.String(64), nullable=False),
        sa.Column("checked_in_at", sa.Float, nullable=False),
        sa.Column("round_id", sa.String(64)),
        sa.PrimaryKeyConstraint("region", "cohort", "token"),
    )
    op.create_table(
        "round_outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("key", sa.LargeBinary),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("published_at", sa.Float),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_round_outbox_pending", "round_outbox", ["region", "published_at"])
    op.create_table(
        "round_releases",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("round", sa.BigInteger, nullable=False),
        sa.Column("round_id", sa.String(64), nullable=False),
        sa.Column("epsilon", sa.Float, nullable=False),
        sa.Column("epsilon_spent", sa.Float, nullable=False),
        sa.Column("participants", sa.Integer, nullable=False),
        sa.Column("dropped", sa.Integer, nullable=False),
        sa.Column("noised", sa.Integer, nullable=False),
        sa.Column("outbox_id", sa.Integer),
        sa.Column("total", sa.LargeBinary, nullable=False),
        sa.Column("released_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("region", "cohort", "round"),
    )
    op.create_table(
        "privacy_ledgers",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("budget_epsilon", sa.Float, nullable=False),
        sa.Column("budget_delta", sa.Float, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("region", "cohort"),
    )


def downgrade() -> None:
    op.drop_index("ix_round_outbox_pending", table_name="round_outbox")
    for name in (
        "privacy_ledgers",
        "round_releases",
        "round_outbox",
        "round_checkins",
        "round_messages",
        "rounds",
    ):
        op.drop_table(name)
