"""The region's adapters topic: created compacted, and fed from the ``adapter_outbox``.

Why compacted: devices join late and restart; reading a compacted topic from the beginning
gives each key's newest record (see :mod:`learner.artifacts` for the keys), so a device
catches up without the learner replaying history, and withdrawn versions (tombstones) vanish.

Why records of a cohort share one partition (chosen by a stable hash of the cohort, not the
record key): a device must see a release before the rollback that refers to it, and a plan
after the adapters it names. Kafka orders records only within a partition.

Publishing goes through the one transactional outbox (:mod:`backend.outbox`) with an
idempotent producer (``acks=all``): a crash between produce and mark republishes the same bytes
under the same keys, which compaction and devices absorb.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import structlog
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError
from sqlalchemy import Engine, Row

from backend.outbox import OutboundRecord, TransactionalOutbox
from learner.registry import adapter_outbox
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
        bootstrap_servers=config.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        client_id=f"sotto-learn-adapters-{region}",
    )


partition_for = cohort_partition  # one definition, shared with the round coordinator


def _record(topic: str) -> Callable[[Row[Any]], OutboundRecord]:
    def record(row: Row[Any]) -> OutboundRecord:
        value = None if row.value is None else bytes(row.value)
        return OutboundRecord(
            row.id,
            topic,
            row.record_key.encode(),
            value,
            row.cohort,
            [(TYPE_HEADER, row.kind.encode())],
        )

    return record


def outbox(region: str, topic: str) -> TransactionalOutbox:
    """The learner's outbox of ``region``, published to the adapters ``topic``."""
    return TransactionalOutbox(
        adapter_outbox, region, ("cohort", "kind", "record_key", "value"), _record(topic), utcnow
    )


def publish_pending(
    engine: Engine, producer: KafkaProducer, region: str, topic: str, timeout_s: float = 30.0
) -> int:
    """Produce every unpublished outbox row of ``region`` in order; mark them published.

    Returns how many were published. Raises :class:`~backend.errors.PublishError` (the
    unacknowledged rows stay pending) if any send is not acknowledged.
    """
    return outbox(region, topic).publish_pending(engine, producer, timeout_s)


def pending_count(engine: Engine, region: str) -> int:
    """TransactionalOutbox rows of ``region`` not yet acknowledged by the adapters topic."""
    return outbox(region, "").pending_count(engine)
