"""The learner's tables in the region database: adapter registry, learner state, offsets, outbox.

Why a database and not Kafka for all of this: the learner's results (its new state, the
registry rows its actions imply, the signed artifacts to publish) and the offset of the
release that produced them are written in **one** transaction, so a crash anywhere leaves
either all of them or none (see :mod:`learner.checkpoint`). The database, not the consumer
group, is the source of truth for what has been learned.

The learner shares the region database with ingestion but owns its schema: its own Alembic
environment (``learner/migrations``) with its own version table
(:data:`VERSION_TABLE`), so the two services migrate independently.

Tables
------
``adapter_versions``  one row per (region, cohort, version): lineage (parent, rounds and
                      window, ε spent), status, rollout, metrics, the adapter file, and the
                      manifest / signature / SHA-256 of its latest published artifact.
``adapter_events``    every action applied to a version, in order: the registry's history.
``learner_state``     each cohort learner's serialized state, last round, published plan.
``learner_releases``  every release learned from, keyed ``(region, cohort, round)``: dedupe.
``learner_refusals``  every record refused (wrong region, malformed, duplicate...), and why.
``learner_offsets``   next offset per (group, topic, partition): the exactly-once fence.
``adapter_outbox``    signed artifacts, plans and tombstones waiting for the adapters topic.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    select,
)

from backend import storage
from backend.checkpoint import offsets_table
from backend.storage import make_engine, reading

VERSION_TABLE = "learner_alembic_version"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

metadata = MetaData()

adapter_versions = Table(
    "adapter_versions",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("parent_version", BigInteger),
    Column("status", String(16), nullable=False),
    Column("rollout_fraction", Float, nullable=False),
    Column("rounds", JSON, nullable=False),  # rounds of the window that fitted it
    Column("window_first", BigInteger),
    Column("window_last", BigInteger),
    Column("epsilon_spent", Float, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("reason", Text, nullable=False),
    Column("source_round", BigInteger, nullable=False),  # release round that created it
    Column("adapter", LargeBinary),  # ORT adapter file; re-signed on promotion / rollback
    Column("artifact_sha256", String(64)),
    Column("signature", String(128)),  # hex Ed25519 signature of the latest artifact
    Column("manifest", JSON),  # manifest of the latest published artifact
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("region", "cohort", "version"),
)

adapter_events = Table(
    "adapter_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("action", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("rollout_fraction", Float, nullable=False),
    Column("round", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

learner_state = Table(
    "learner_state",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("state", LargeBinary, nullable=False),
    Column("last_round", BigInteger, nullable=False),
    Column("revision", BigInteger, nullable=False),  # optimistic lock against a stale cache
    Column("plan", JSON),  # the AdapterPlan last put in the outbox
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("region", "cohort"),
)

learner_releases = Table(
    "learner_releases",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("round", BigInteger, nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("epsilon_spent", Float, nullable=False),
    Column("participants", BigInteger, nullable=False),
    Column("actions", Integer, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("region", "cohort", "round"),
)

learner_refusals = Table(
    "learner_refusals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("region", String(32), nullable=False),  # the consuming learner's region
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("claimed_region", String(64)),  # what the record said, if it parsed
    Column("cohort", String(64)),
    Column("round", BigInteger),
    Column("at", DateTime(timezone=True), nullable=False),
)

learner_offsets = offsets_table("learner_offsets", metadata)

adapter_outbox = Table(
    "adapter_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("version", BigInteger),
    Column("kind", String(16), nullable=False),  # release | rollback | plan | tombstone
    Column("record_key", String(255), nullable=False),
    Column("value", LargeBinary),  # None: a tombstone (compaction drops the key)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True)),
)


# --- migrations ---------------------------------------------------------------------------


def migrate(url: str, engine: Engine | None = None) -> None:
    """Upgrade the learner's tables at ``url`` to head (idempotent; ingestion's untouched)."""
    storage.migrate(url, MIGRATIONS_DIR, engine)


def open_registry(url: str) -> Engine:
    """Migrate, then return the engine: what the learner service calls on startup."""
    engine = make_engine(url)
    migrate(url, engine)
    return engine


# --- read API (``sotto audit`` and tests) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdapterRecord:
    """One registry row, without the adapter bytes (name them by ``artifact_sha256``)."""

    region: str
    cohort: str
    version: int
    parent_version: int | None
    status: str
    rollout_fraction: float
    rounds: list[int]
    window_first: int | None
    window_last: int | None
    epsilon_spent: float
    metrics: dict[str, float]
    reason: str
    source_round: int
    artifact_sha256: str | None
    signature: str | None
    manifest: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    def lineage_fields(self) -> dict[str, Any]:
        """Everything that must be equal between two runs over the same releases
        (timestamps excluded: they say when, not what)."""
        return {k: getattr(self, k) for k in _FIELDS if k not in ("created_at", "updated_at")}


_FIELDS = tuple(f.name for f in fields(AdapterRecord))
_RECORD_COLUMNS = [adapter_versions.c[k] for k in _FIELDS]


def _record(row: Any) -> AdapterRecord:
    m = row._mapping
    return AdapterRecord(**{k: m[k] for k in _FIELDS})


def list_adapters(engine: Engine, region: str, cohort: str | None = None) -> list[AdapterRecord]:
    """Every adapter version of ``region`` (optionally one cohort), by cohort then version."""
    c = adapter_versions.c
    stmt = select(*_RECORD_COLUMNS).where(c.region == region)
    if cohort is not None:
        stmt = stmt.where(c.cohort == cohort)
    with reading(engine) as conn:
        return [_record(r) for r in conn.execute(stmt.order_by(c.cohort, c.version))]


def get_adapter(engine: Engine, region: str, cohort: str, version: int) -> AdapterRecord | None:
    c = adapter_versions.c
    stmt = select(*_RECORD_COLUMNS).where(
        c.region == region, c.cohort == cohort, c.version == version
    )
    with reading(engine) as conn:
        row = conn.execute(stmt).first()
    return _record(row) if row else None


def lineage(engine: Engine, region: str, cohort: str, version: int) -> list[AdapterRecord]:
    """``version`` and its ancestors, newest first, following ``parent_version``.

    Stops at a parent the registry does not hold (version 0, the base, has no row)."""
    out: list[AdapterRecord] = []
    seen: set[int] = set()
    current: int | None = version
    while current is not None and current not in seen:
        seen.add(current)
        rec = get_adapter(engine, region, cohort, current)
        if rec is None:
            break
        out.append(rec)
        current = rec.parent_version
    return out


def adapter_history(
    engine: Engine, region: str, cohort: str, version: int | None = None
) -> list[dict[str, Any]]:
    """The actions applied to a cohort's versions (or one version), oldest first."""
    c = adapter_events.c
    stmt = select(c.version, c.action, c.status, c.rollout_fraction, c.round, c.reason, c.at).where(
        c.region == region, c.cohort == cohort
    )
    if version is not None:
        stmt = stmt.where(c.version == version)
    with reading(engine) as conn:
        return [dict(r._mapping) for r in conn.execute(stmt.order_by(c.id))]


def live_adapter(engine: Engine, region: str, cohort: str) -> AdapterRecord | None:
    """The cohort's newest version whose status is ``live`` (None: devices run the base)."""
    live = [a for a in list_adapters(engine, region, cohort) if a.status == "live"]
    return live[-1] if live else None


def adapter_gauges(engine: Engine, region: str) -> list[tuple[str, str, dict[str, str], float]]:
    """The version of each cohort's adapter in each status (live, canary, shadow), at scrape time."""
    out: list[tuple[str, str, dict[str, str], float]] = []
    for rec in list_adapters(engine, region):
        if rec.status in ("live", "canary", "shadow"):
            labels = {"cohort": rec.cohort, "status": rec.status}
            out.append(("sotto_adapter_version", "adapter version by status", labels, rec.version))
    return out
