"""Fenced round coordinators: the region lease (``coordinator_leases``) and a version on
every ``rounds`` row that each stage transition compares and bumps
(see ``ingestion/coordinator_lease.py``).

Revision ID: 0003_fence
Revises: 0002_rounds
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_fence"
down_revision = "0002_rounds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinator_leases",
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("region"),
    )
    # rows of rounds opened before this revision start at version 0, like new ones
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(
            sa.Column("version", sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("version")
    op.drop_table("coordinator_leases")
