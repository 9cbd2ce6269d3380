"""The coordinator's transactional outbox: decide in the database, publish afterwards.

A round decision (announce, close a stage, release) writes its Kafka records into
``round_outbox`` in the same transaction as the decision. :func:`publish_pending` then
produces every unpublished row in id order with ``acks="all"``, waits for the acks and marks
the rows published. A crash between produce and mark republishes the row on restart: the
rounds topic tolerates repeats (client state machines ignore a message they already
answered) and a released aggregate carries the key ``region|cohort|round`` so the learner
applies it once. Nothing is ever published that the database does not already hold.
"""

from __future__ import annotations

import time

import structlog
from kafka import KafkaProducer
from sqlalchemy import Connection, Engine, select

from ingestion.db import reading
from ingestion.rounds_db import round_outbox
from privacy.wire import cohort_partition

log = structlog.get_logger(__name__)


def put(conn: Connection, region: str, topic: str, key: bytes, value: bytes, now: float) -> int:
    """Queue one record in the caller's transaction; returns its outbox id."""
    res = conn.execute(
        round_outbox.insert().values(
            region=region, topic=topic, key=key, value=value, created_at=now, published_at=None
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def pending(engine: Engine, region: str, limit: int = 5000) -> list:  # type: ignore[type-arg]
    c = round_outbox.c
    stmt = (
        select(c.id, c.topic, c.key, c.value)
        .where(c.region == region, c.published_at.is_(None))
        .order_by(c.id)
        .limit(limit)
    )
    with reading(engine) as conn:
        return list(conn.execute(stmt))


def _partition(producer: KafkaProducer, topic: str, key: bytes | None) -> int | None:
    """Releases (key ``region|cohort|round``) go to their cohort's partition, so the learner
    reads a cohort's rounds in order; everything else uses the default partitioner."""
    parts = key.split(b"|") if key else []
    if len(parts) != 3:
        return None
    n = len(producer.partitions_for(topic) or ())
    return cohort_partition(parts[1].decode(), n) if n else None


def publish_pending(
    engine: Engine, producer: KafkaProducer, region: str, timeout_s: float = 30.0
) -> int:
    """Produce every unpublished row (in order), then mark the acknowledged ones."""
    total = 0
    while True:
        rows = pending(engine, region)
        if not rows:
            return total
        futures = [
            (
                r.id,
                producer.send(
                    r.topic,
                    key=r.key,
                    value=r.value,
                    partition=_partition(producer, r.topic, r.key),
                ),
            )
            for r in rows
        ]
        producer.flush(timeout=timeout_s)
        acked = [i for i, f in futures if f.is_done and not f.failed()]
        if acked:
            with engine.begin() as conn:
                conn.execute(
                    round_outbox.update()
                    .where(round_outbox.c.id.in_(acked))
                    .values(published_at=time.time())
                )
        total += len(acked)
        if len(acked) < len(rows):
            log.warning("round_outbox_unacked", region=region, pending=len(rows) - len(acked))
            return total
