"""The checkpoint: what a batch decided becomes durable together with the offsets that produced it.

Every backend consumer (ingestion, learner) keeps its consumer offsets in its own database, in
an offsets table of the same shape (:func:`offsets_table`). A :class:`Checkpoint` collects the
offsets of the records one batch read and commits them **in the same transaction** as the
batch's results:

1. *before* (optional): work that must be acknowledged first (ingestion's dead letters, which
   are at-least-once: re-produced if the process dies before the transaction). The fence is
   read once before it: a zombie whose batch another replica already made durable (it would
   judge those records replays) is refused before it dead-letters anything;
2. one database transaction: the offset fence (a batch must not start before the stored next
   offset of its partition; refusing offsets that go backwards is what stops a zombie or a
   re-read from counting twice, and on PostgreSQL the offset rows are locked ``FOR UPDATE`` so
   concurrent replicas serialize), the owner's results, the new next offsets. All or nothing;
3. Kafka group offsets, a mirror for lag dashboards only (:meth:`Checkpoint.mirror_offsets`).

Like Quix Streams' checkpoint, the object has a status (``open`` -> ``committed`` | ``failed``)
checked on every method, and each step runs once, in order.

>>> cp = Checkpoint(group_id="g", offsets=offsets_table("offsets", MetaData()))
>>> cp.advance("t", 0, 5); cp.advance("t", 0, 6)
>>> cp.spans[("t", 0)]
Span(first=5, next=7)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    and_,
    select,
)

from backend.errors import CheckpointError, OffsetFenceError
from backend.storage import reading

log = structlog.get_logger(__name__)


def offsets_table(name: str, metadata: MetaData) -> Table:
    """The next offset per (group, topic, partition): the exactly-once fence's table."""
    return Table(
        name,
        metadata,
        Column("group_id", String(255), nullable=False),
        Column("topic", String(255), nullable=False),
        Column("partition", Integer, nullable=False),
        Column("next_offset", BigInteger, nullable=False),
        PrimaryKeyConstraint("group_id", "topic", "partition"),
    )


class CheckpointStatus(StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(slots=True)
class Span:
    first: int
    next: int


@dataclass(kw_only=True)
class Checkpoint:
    """Offsets of one batch, committed with the owner's results (see the module docs)."""

    group_id: str
    offsets: Table
    status: CheckpointStatus = CheckpointStatus.OPEN
    spans: dict[tuple[str, int], Span] = field(default_factory=dict)

    def _guard(self) -> None:
        if self.status is not CheckpointStatus.OPEN:
            raise CheckpointError(f"checkpoint is {self.status.value}, not open")

    def advance(self, topic: str, partition: int, offset: int) -> None:
        """Record that ``offset`` of ``topic[partition]`` is part of this batch."""
        self._guard()
        span = self.spans.get((topic, partition))
        if span is None:
            self.spans[(topic, partition)] = Span(offset, offset + 1)
        elif offset < span.next:
            raise CheckpointError(f"offset {offset} of {topic}[{partition}] is not increasing")
        else:
            span.next = offset + 1

    @property
    def empty(self) -> bool:
        return not self.spans

    def commit_with(
        self,
        engine: Engine,
        write: Callable[[Connection], None],
        before: Callable[[], None] | None = None,
    ) -> None:
        """Run ``before``, then fence + ``write`` + offsets in one transaction.

        On any failure the status becomes ``failed`` and the exception propagates: nothing of
        the transaction is durable, so the batch is re-read and redone.
        """
        self._guard()
        try:
            if before is not None:
                with reading(engine) as conn:  # no write lock: the locking check is below
                    self._fence(conn, lock=False)
                before()
            with engine.begin() as conn:
                stored = self._fence(conn)
                write(conn)
                self._store(conn, stored)
        except Exception:
            self.status = CheckpointStatus.FAILED
            raise
        self.status = CheckpointStatus.COMMITTED

    def _key(self, topic: str, partition: int) -> Any:
        c = self.offsets.c
        return and_(c.group_id == self.group_id, c.topic == topic, c.partition == partition)

    def _fence(self, conn: Connection, *, lock: bool = True) -> dict[tuple[str, int], int]:
        """Stored next offsets of this batch's partitions; raise if the batch goes backwards."""
        stored: dict[tuple[str, int], int] = {}
        for (topic, partition), span in self.spans.items():
            stmt = select(self.offsets.c.next_offset).where(self._key(topic, partition))
            if lock and conn.dialect.name != "sqlite":
                stmt = stmt.with_for_update()
            value = conn.execute(stmt).scalar()
            if value is None:
                continue
            stored[(topic, partition)] = int(value)
            if span.first < value:
                raise OffsetFenceError(
                    f"{topic}[{partition}]: batch starts at {span.first}, "
                    f"but offsets up to {value} are already durable"
                )
        return stored

    def _store(self, conn: Connection, stored: dict[tuple[str, int], int]) -> None:
        for (topic, partition), span in self.spans.items():
            if (topic, partition) in stored:
                conn.execute(
                    self.offsets.update()
                    .where(self._key(topic, partition))
                    .values(next_offset=span.next)
                )
            else:
                conn.execute(
                    self.offsets.insert().values(
                        group_id=self.group_id,
                        topic=topic,
                        partition=partition,
                        next_offset=span.next,
                    )
                )

    def mirror_offsets(self, consumer: KafkaConsumer) -> None:
        """Commit the same offsets to the consumer group (lag dashboards); never raises."""
        if self.status is not CheckpointStatus.COMMITTED:
            return
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(span.next, "", -1)
            for (t, p), span in self.spans.items()
        }
        try:
            consumer.commit(offsets)
        except Exception as exc:  # lag mirror only; the database already has the truth
            log.warning("kafka_offset_commit_failed", error=exc.__class__.__name__)
