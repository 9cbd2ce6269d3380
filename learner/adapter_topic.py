"""The region's adapters topic: created compacted, and fed from the ``adapter_outbox``.

Why compacted: devices join late and restart; reading a compacted topic from the beginning
gives each key's newest record (see :mod:`learner.artifacts` for the keys), so a device
catches up without the learner replaying history, and withdrawn versions (tombstones) vanish.

Why records of a cohort share one partition (chosen by a stable hash of the cohort, not the
record key): a device must see a release before the rollback that refers to it, and a plan
after the adapters it names. Kafka orders records only within a partition.

Publishing is outbox-driven: rows are produced in id order by an idempotent producer
(``acks=all``), flushed, every send checked, and only then marked published. A crash in
between republishes the same bytes under the same keys, which compaction and devices absorb.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError
from sqlalchemy import Engine, func, select

from ingestion.db import reading
from learner.registry import adapter_outbox
from learner.service_errors import PublishError
from privacy.policy import RegionConfig
from privacy.wire import cohort_partition, utcnow

log = structlog.get_logger(__name__)

COMPACT = {"cleanup.policy": "compact"}
TYPE_HEADER = "sotto-type"


def ensure_topics(config: RegionConfig) -> None:
    """Create the aggregates topic if missing and the adapters topic as compacted; if the
    adapters topic already exists (created by another service) switch it to compaction."""
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap_servers)
    try:
        existing = set(admin.list_topics())
        new = []
        if config.t.aggregates not in existing:
            new.append(NewTopic(config.t.aggregates, config.partitions, replication_factor=-1))
        if config.t.adapters not in existing:
            new.append(
                NewTopic(
                    config.t.adapters,
                    config.partitions,
                    replication_factor=-1,
                    topic_configs=COMPACT,
                )
            )
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new)
        _ensure_compacted(admin, config.t.adapters)
    finally:
        admin.close()


def _ensure_compacted(admin: KafkaAdminClient, topic: str) -> None:
    policy = cleanup_policy(admin, topic)
    if policy is not None and "compact" in policy:
        return
    admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs=COMPACT)], incremental=True
    )
    log.info("adapters_topic_compacted", topic=topic, was=policy)


def cleanup_policy(admin: KafkaAdminClient, topic: str) -> str | None:
    """The topic's ``cleanup.policy`` (kafka-python 3 answers ``{"topic": {name: {cfg: {...}}}}``)."""
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    )
    entry: Any = (described.get("topic") or {}).get(topic, {}).get("cleanup.policy")
    return entry.get("value") if isinstance(entry, dict) else None


def make_producer(config: RegionConfig, region: str) -> KafkaProducer:
    """Idempotent (no duplicates from retries within a session), acks from all replicas."""
    return KafkaProducer(
        bootstrap_servers=config.bootstrap_servers, acks="all", enable_idempotence=True,
        linger_ms=5, client_id=f"sotto-learn-adapters-{region}",
    )  # fmt: skip


partition_for = cohort_partition  # one definition, shared with the round coordinator


def publish_pending(
    engine: Engine, producer: KafkaProducer, region: str, topic: str, timeout_s: float = 30.0
) -> int:
    """Produce every unpublished outbox row of ``region`` in order; mark them published.

    Returns how many were published. Raises :class:`PublishError` (rows stay pending) if any
    send is not acknowledged.
    """
    c = adapter_outbox.c
    stmt = (
        select(c.id, c.cohort, c.kind, c.record_key, c.value)
        .where(c.region == region, c.published_at.is_(None))
        .order_by(c.id)
    )
    with reading(engine) as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        return 0
    partitions = sorted(producer.partitions_for(topic) or [])
    if not partitions:
        raise PublishError(f"topic {topic} has no partitions (not created?)")
    futures = [
        producer.send(
            topic,
            key=row.record_key.encode(),
            value=None if row.value is None else bytes(row.value),
            partition=partitions[partition_for(row.cohort, len(partitions))],
            headers=[(TYPE_HEADER, row.kind.encode())],
        )
        for row in rows
    ]
    producer.flush(timeout=timeout_s)
    for fut in futures:
        if not fut.is_done or fut.failed():
            raise PublishError(f"adapter record not acknowledged: {fut.exception!r}")
    with engine.begin() as conn:
        conn.execute(
            adapter_outbox.update()
            .where(c.id.in_([r.id for r in rows]))
            .values(published_at=utcnow())
        )
    return len(rows)


def pending_count(engine: Engine, region: str) -> int:
    """Outbox rows of ``region`` not yet acknowledged by the adapters topic."""
    c = adapter_outbox.c
    with reading(engine) as conn:
        n = conn.execute(
            select(func.count()).where(c.region == region, c.published_at.is_(None))
        ).scalar()
    return int(n or 0)
