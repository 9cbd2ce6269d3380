"""The region database: table definitions, engine setup and migrations on startup.

The database is ingestion's source of truth. Results (aggregates, replay ids, audit rows)
and the consumer offsets that produced them are written in one transaction, so after any
crash the service resumes exactly where its last durable result ends: nothing lost, nothing
counted twice. Kafka's own committed offsets are only a mirror for lag dashboards.

Schema changes go through Alembic (``ingestion/migrations``); :func:`migrate` runs them
programmatically with ``sqlalchemy.url`` set to the region's ``database_url``, so any
SQLAlchemy URL works (SQLite by default).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from backend import storage
from backend.checkpoint import offsets_table
from backend.storage import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()

consumer_offsets = offsets_table("consumer_offsets", metadata)

seen_messages = Table(
    "seen_messages",
    metadata,
    Column("region", String(32), nullable=False),
    Column("msg_id", String(32), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    PrimaryKeyConstraint("region", "msg_id"),
)

aggregates = Table(
    "aggregates",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("round", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("vector_sum", LargeBinary, nullable=False),  # little-endian float64[128]
    Column("steps_sum", BigInteger, nullable=False),
    Column("accepted_sum", BigInteger, nullable=False),
    Column("overridden_sum", BigInteger, nullable=False),
    Column("failed_sum", BigInteger, nullable=False),
    Column("action_hist", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("region", "cohort", "round"),
)

# One hash chain per region; (region, seq) is the key so several regions may share a database.
audit_log = Table(
    "audit_log",
    metadata,
    Column("region", String(32), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts", String(40), nullable=False),  # ISO-8601 UTC, stored as hashed
    Column("event", String(16), nullable=False),
    Column("reason", String(32)),
    Column("msg_id", String(32)),
    Column("cohort", String(64)),
    Column("round", BigInteger),
    Column("topic", String(255)),
    Column("partition", Integer),
    Column("offset", BigInteger),
    Column("detail", Text),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    PrimaryKeyConstraint("region", "seq"),
)


def migrate(url: str, engine: Engine | None = None) -> None:
    """Upgrade the region database to ingestion's newest schema (idempotent)."""
    storage.migrate(url, MIGRATIONS_DIR, engine)


def open_database(url: str) -> Engine:
    """Migrate, then return the engine: what the service calls on startup."""
    engine = make_engine(url)
    migrate(url, engine)
    return engine
