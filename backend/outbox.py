"""The transactional outbox: decide in the database, publish afterwards.

A service that must both change its database and tell Kafka about it (the round coordinator's
announcements and releases, the learner's signed adapters and plans) writes the Kafka record
into an outbox table **in the same transaction as the decision**. :meth:`TransactionalOutbox.publish_pending`
then produces every unpublished row in id order, flushes, marks the acknowledged rows published
and raises :class:`~backend.errors.PublishError` if any send was not acknowledged (those rows stay
pending and go out on the next call). A crash between produce and mark republishes the row on
restart, so delivery is at-least-once; every consumer of an outbox topic applies records
idempotently (keys name what they are about), so the effect is exactly-once. Nothing is ever
published that the database does not already hold.

Each owner keeps its own table (its schema is its migrations'); it hands this class a function
that turns one pending row into an :class:`OutboundRecord`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from kafka import KafkaProducer
from sqlalchemy import Engine, Row, Table, func, select

from backend.errors import PublishError
from backend.storage import reading
from privacy.wire import cohort_partition

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """One pending row as Kafka will see it. ``cohort`` pins the record to its cohort's
    partition (Kafka orders only within a partition); ``None`` uses the default partitioner."""

    id: int
    topic: str
    key: bytes | None
    value: bytes | None
    cohort: str | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class TransactionalOutbox:
    """One owner's outbox table of one region.

    ``columns`` are selected from ``table`` (with ``id``) and each row goes through ``to_record``;
    ``published_now`` gives the value stored in ``published_at`` (the owners' columns differ in
    type: a float timestamp or a timezone-aware datetime).
    """

    table: Table
    region: str
    columns: Sequence[str]
    to_record: Callable[[Row[Any]], OutboundRecord]
    published_now: Callable[[], Any]
    batch: int = 5000

    def pending(self, engine: Engine) -> list[OutboundRecord]:
        c = self.table.c
        stmt = (
            select(c.id, *(c[name] for name in self.columns))
            .where(c.region == self.region, c.published_at.is_(None))
            .order_by(c.id)
            .limit(self.batch)
        )
        with reading(engine) as conn:
            return [self.to_record(row) for row in conn.execute(stmt)]

    def pending_count(self, engine: Engine) -> int:
        c = self.table.c
        with reading(engine) as conn:
            n = conn.execute(
                select(func.count()).where(c.region == self.region, c.published_at.is_(None))
            ).scalar()
        return int(n or 0)

    def publish_pending(
        self, engine: Engine, producer: KafkaProducer, timeout_s: float = 30.0
    ) -> int:
        """Produce every pending row in order, mark the acknowledged ones; returns how many.

        Raises :class:`PublishError` when a send is not acknowledged (after marking the ones
        that were), so the caller reports and retries instead of believing it is caught up.
        """
        total = 0
        while True:
            records = self.pending(engine)
            if not records:
                return total
            futures = [(r.id, producer.send(**self._send_args(producer, r))) for r in records]
            producer.flush(timeout=timeout_s)
            acked = [i for i, fut in futures if fut.is_done and not fut.failed()]
            if acked:
                with engine.begin() as conn:
                    conn.execute(
                        self.table.update()
                        .where(self.table.c.id.in_(acked))
                        .values(published_at=self.published_now())
                    )
            total += len(acked)
            if len(acked) < len(records):
                failed = next(f for _, f in futures if not f.is_done or f.failed())
                error = type(failed.exception).__name__ if failed.is_done else "timeout"
                log.warning(
                    "outbox_unacked",
                    table=self.table.name,
                    region=self.region,
                    pending=len(records) - len(acked),
                    error=error,
                )
                raise PublishError(
                    f"{self.table.name}: {len(records) - len(acked)} record(s) not acknowledged "
                    f"({error}); they stay pending"
                )

    @staticmethod
    def _send_args(producer: KafkaProducer, r: OutboundRecord) -> dict[str, Any]:
        args: dict[str, Any] = {"key": r.key, "value": r.value, "headers": r.headers or None}
        if r.cohort is not None:
            partitions = sorted(producer.partitions_for(r.topic) or [])
            if not partitions:
                raise PublishError(f"topic {r.topic} has no partitions (not created?)")
            args["partition"] = partitions[cohort_partition(r.cohort, len(partitions))]
        return {"topic": r.topic, **args}
