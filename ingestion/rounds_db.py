"""Tables of the round coordinator and the privacy ledger (schema: migrations ``0002``, ``0003``).

Everything a round needs to survive a crash is here, written in the same transactions as the
decisions it records:

* ``rounds``: one row per announced (or refused) round: its public plan (the ``RoundOpen``
  JSON), the server's graph seed, the current stage and its deadline, and ``stage_log``, the
  senders whose messages each closed stage accepted. Replaying those messages through a fresh
  :class:`~privacy.secagg.SecAggServer` rebuilds the exact server state (event sourcing).
* ``round_messages``: every SecAgg+ client message ingestion accepted, stored by the
  ingestion checkpoint in the same transaction as its Kafka offsets (exactly once).
* ``round_checkins``: cohort members that announced themselves, by random token.
* ``round_outbox``: records to publish (rounds topic, aggregates topic); a row is written in
  the transaction that decided it and published afterwards, again after a restart if needed.
* ``round_releases``: at most one per (region, cohort, round): the primary key is what makes
  a release happen once.
* ``privacy_ledgers``: per (region, cohort) budget and charged events (JSON).
* ``coordinator_leases``: which coordinator of a region may drive its rounds, with the epoch
  that fences a holder that lost it (see :mod:`ingestion.coordinator_lease`). Each stage
  transition also compares and bumps ``rounds.version``, so two coordinators can never both
  close the same stage.

The tables hang on :data:`ingestion.db.metadata`; importing this module registers them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from ingestion.db import metadata

ACTIVE = (
    "collect_keys",
    "collect_shares",
    "collect_masked",
    "collect_sigs",
    "collect_unmask",
)

rounds = Table(
    "rounds",
    metadata,
    Column("region", String(32), nullable=False),
    Column("round_id", String(64), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("round", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),  # collect_* | released | aborted | refused
    Column("open_json", Text),  # the RoundOpen as published (public)
    Column("graph_seed", LargeBinary),  # 32 bytes; only draws the (public) neighbour graph
    Column("stage_deadline", Float),  # unix seconds
    Column("stage_log", JSON, nullable=False),  # {"advertise": [cids], ...} of closed stages
    Column("opened_at", Float, nullable=False),
    Column("closed_at", Float),
    Column("detail", Text),
    # bumped by every stage transition, which applies only to the version it was decided on
    Column("version", BigInteger, nullable=False, default=0, server_default=text("0")),
    PrimaryKeyConstraint("region", "round_id"),
    UniqueConstraint("region", "cohort", "round", name="uq_rounds_cohort_round"),
)

round_messages = Table(
    "round_messages",
    metadata,
    Column("region", String(32), nullable=False),
    Column("round_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("sender", Integer, nullable=False),
    Column("msg_id", String(32), nullable=False),
    Column("body", LargeBinary, nullable=False),  # the payload JSON (public or masked data)
    Column("received_at", Float, nullable=False),
    PrimaryKeyConstraint("region", "round_id", "type", "sender"),
)

round_checkins = Table(
    "round_checkins",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("token", String(32), nullable=False),
    Column("layout", String(64), nullable=False),
    Column("checked_in_at", Float, nullable=False),
    Column("round_id", String(64)),  # set when sampled into a round
    PrimaryKeyConstraint("region", "cohort", "token"),
)

round_outbox = Table(
    "round_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("region", String(32), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("key", LargeBinary),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("published_at", Float),
    sqlite_autoincrement=True,
)

round_releases = Table(
    "round_releases",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("round", BigInteger, nullable=False),
    Column("round_id", String(64), nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("epsilon_spent", Float, nullable=False),
    Column("participants", Integer, nullable=False),
    Column("dropped", Integer, nullable=False),
    Column("noised", Integer, nullable=False),  # 0 only for test rounds without DP
    Column("outbox_id", Integer),  # NULL: held back (a sum without DP is never published)
    Column("total", LargeBinary, nullable=False),  # little-endian float64[dim], as released
    Column("released_at", Float, nullable=False),
    PrimaryKeyConstraint("region", "cohort", "round"),
)

privacy_ledgers = Table(
    "privacy_ledgers",
    metadata,
    Column("region", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("budget_epsilon", Float, nullable=False),
    Column("budget_delta", Float, nullable=False),
    Column("events", Text, nullable=False),  # JSON list of privacy.ledger.ChargeEvent
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("region", "cohort"),
)

coordinator_leases = Table(
    "coordinator_leases",
    metadata,
    Column("region", String(32), nullable=False),
    Column("holder", String(128), nullable=False),  # the coordinator id (settings)
    Column("epoch", BigInteger, nullable=False),  # +1 on every acquisition: the fencing token
    Column("expires_at", Float, nullable=False),  # unix seconds, by the holder's clock
    Column("acquired_at", Float, nullable=False),
    PrimaryKeyConstraint("region"),
)
