"""The checkpoint: how one batch's decisions become durable, in three ordered steps.

A :class:`Checkpoint` collects what a batch decided (accepted summaries, dead letters, audit
events, the next offset of every partition it read) and then commits it:

1. **Dead letters.** Produce every rejected record to the region's DLQ and flush the
   producer, checking each send. The DLQ is *at-least-once*: if the process dies after this
   step but before step 2, the batch is re-read and its dead letters are produced again. A
   dead letter is never lost, but may repeat; duplicates are identifiable because the record
   key and the ``sotto-source-topic/-partition/-offset`` headers name the source record.
2. **One database transaction.** Check the offset fence (a batch must not start before the
   stored next offset of its partition: refusing offsets that go backwards is what prevents a
   zombie or a re-read from counting twice), insert the batch's msg_ids into
   ``seen_messages``, add the batch's sums to ``aggregates``, append the audit rows, store the
   next offsets. All or nothing: the database is the source of truth for what was counted.
3. **Kafka offsets.** Commit the same offsets to the consumer group, for lag dashboards only.
   Failing here loses nothing (the service seeks to the database's offsets on assignment).

Like Quix Streams' checkpoint, each step runs once, in order, and the object has a status
(``open`` -> ``committed`` | ``failed``) checked on every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from sqlalchemy import Engine, and_, select

from ingestion import aggregates, audit, round_sink
from ingestion.audit import AuditEvent
from ingestion.db import consumer_offsets, seen_messages
from ingestion.errors import CheckpointError, OffsetFenceError
from ingestion.validator import Accepted, Rejected
from privacy.wire import DeadLetter, RejectReason

log = structlog.get_logger(__name__)


class CheckpointStatus(StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    FAILED = "failed"


@dataclass(slots=True)
class _Span:
    first: int
    next: int


@dataclass
class Checkpoint:
    """One batch's pending results; :meth:`commit` makes them durable (see module docs)."""

    region: str
    group_id: str
    dead_letter_topic: str
    now: datetime
    status: CheckpointStatus = CheckpointStatus.OPEN
    accepted: list[tuple[Accepted, str, int, int]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)
    spans: dict[tuple[str, int], _Span] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ts = self.now.isoformat()  # one decision time per batch

    def _guard(self) -> None:
        if self.status is not CheckpointStatus.OPEN:
            raise CheckpointError(f"checkpoint is {self.status.value}, not open")

    def _advance(self, topic: str, partition: int, offset: int) -> None:
        span = self.spans.get((topic, partition))
        if span is None:
            self.spans[(topic, partition)] = _Span(offset, offset + 1)
        elif offset < span.next:
            raise CheckpointError(f"offset {offset} of {topic}[{partition}] is not increasing")
        else:
            span.next = offset + 1

    def accept(self, verdict: Accepted, topic: str, partition: int, offset: int) -> None:
        self._guard()
        self._advance(topic, partition, offset)
        env = verdict.envelope
        self.accepted.append((verdict, topic, partition, offset))
        self.events.append(
            AuditEvent(
                event="accept", ts=self._ts, msg_id=env.msg_id, cohort=env.cohort,
                round=env.round, topic=topic, partition=partition, offset=offset,
            )
        )  # fmt: skip

    def reject(
        self, verdict: Rejected, raw: bytes, topic: str, partition: int, offset: int
    ) -> None:
        self._guard()
        self._advance(topic, partition, offset)
        detail, original = verdict.detail, raw
        if verdict.reason is RejectReason.TOPIC_REGION_MISMATCH:
            # Another region's record must not be copied into this region: the dead letter
            # keeps the reason and the source coordinates (the original stays, untouched, on
            # its own region's topic, so nothing is lost), never the bytes.
            detail, original = f"{detail}; original withheld (another region's data)", b""
        self.dead_letters.append(
            DeadLetter(
                reason=verdict.reason, detail=detail, region=self.region,
                source_topic=topic, source_partition=partition, source_offset=offset,
                rejected_at=self.now, original=original,
            )
        )  # fmt: skip
        env = verdict.envelope
        self.events.append(
            AuditEvent(
                event="reject", ts=self._ts, reason=verdict.reason.value,
                detail=verdict.detail, msg_id=env.msg_id if env else None,
                cohort=env.cohort if env else None, round=env.round if env else None,
                topic=topic, partition=partition, offset=offset,
            )
        )  # fmt: skip

    @property
    def empty(self) -> bool:
        return not self.spans

    def commit(
        self,
        *,
        producer: KafkaProducer,
        engine: Engine,
        consumer: KafkaConsumer | None = None,
        flush_timeout_s: float = 30.0,
    ) -> None:
        """Run the three steps in order; on any failure the status becomes ``failed``."""
        self._guard()
        try:
            self._step1_dead_letters(producer, flush_timeout_s)
            self._step2_database(engine)
        except Exception:
            self.status = CheckpointStatus.FAILED
            raise
        self.status = CheckpointStatus.COMMITTED
        if consumer is not None:
            self._step3_kafka_offsets(consumer)

    # -- step 1 ---------------------------------------------------------------------------
    def _step1_dead_letters(self, producer: KafkaProducer, timeout_s: float) -> None:
        if not self.dead_letters:
            return
        futures = [
            producer.send(
                self.dead_letter_topic,
                value=dl.original,
                key=f"{dl.source_topic}/{dl.source_partition}/{dl.source_offset}".encode(),
                headers=dl.headers(),
            )
            for dl in self.dead_letters
        ]
        producer.flush(timeout=timeout_s)
        for fut in futures:
            if not fut.is_done or fut.failed():
                raise CheckpointError(f"dead letter not acknowledged: {fut.exception!r}")

    # -- step 2 ---------------------------------------------------------------------------
    def _step2_database(self, engine: Engine) -> None:
        with engine.begin() as conn:
            stored = self._fence(conn)
            if self.accepted:
                conn.execute(
                    seen_messages.insert(),
                    [
                        {"region": self.region, "msg_id": a.envelope.msg_id, "topic": t,
                         "partition": p, "offset": o}
                        for a, t, p, o in self.accepted
                    ],
                )  # fmt: skip
                deltas = aggregates.fold(
                    (a.envelope.cohort, a.envelope.round, a.summary)
                    for a, _, _, _ in self.accepted
                    if not isinstance(a, round_sink.Routed)
                )
                aggregates.apply(conn, self.region, deltas, self.now)
                routed = [a for a, _, _, _ in self.accepted if isinstance(a, round_sink.Routed)]
                round_sink.stage(conn, self.region, routed, self.now)  # to the round coordinator
            audit.append(conn, self.region, self.events)
            for (topic, partition), span in self.spans.items():
                values: dict[str, Any] = {"next_offset": span.next}
                if (topic, partition) in stored:
                    conn.execute(
                        consumer_offsets.update()
                        .where(self._offset_key(topic, partition))
                        .values(**values)
                    )
                else:
                    conn.execute(
                        consumer_offsets.insert().values(
                            group_id=self.group_id, topic=topic, partition=partition, **values
                        )
                    )

    def _offset_key(self, topic: str, partition: int):  # type: ignore[no-untyped-def]
        c = consumer_offsets.c
        return and_(c.group_id == self.group_id, c.topic == topic, c.partition == partition)

    def _fence(self, conn) -> dict[tuple[str, int], int]:  # type: ignore[no-untyped-def]
        """Stored next offsets of this batch's partitions; raise if the batch goes backwards."""
        stored: dict[tuple[str, int], int] = {}
        for (topic, partition), span in self.spans.items():
            stmt = select(consumer_offsets.c.next_offset).where(self._offset_key(topic, partition))
            if conn.dialect.name != "sqlite":
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

    # -- step 3 ---------------------------------------------------------------------------
    def _step3_kafka_offsets(self, consumer: KafkaConsumer) -> None:
        offsets = {
            TopicPartition(t, p): OffsetAndMetadata(span.next, "", -1)
            for (t, p), span in self.spans.items()
        }
        try:
            consumer.commit(offsets)
        except Exception as exc:  # lag mirror only; the database already has the truth
            log.warning("kafka_offset_commit_failed", error=exc.__class__.__name__)
