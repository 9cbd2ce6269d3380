"""Ingestion's batch checkpoint: how one batch's decisions become durable, in three ordered steps.

A :class:`BatchCheckpoint` (a :class:`backend.checkpoint.Checkpoint`) collects what a batch decided (accepted summaries, dead letters, audit
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

The offset fence, the offsets and the status are the backend's one checkpoint; this class adds
what ingestion writes in the transaction and the dead letters it produces before it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import Connection, Engine, Table

from backend.checkpoint import Checkpoint
from backend.errors import CheckpointError
from backend.storage import insert_many
from ingestion import aggregates, audit, round_sink
from ingestion.audit import AuditEvent
from ingestion.db import consumer_offsets, seen_messages
from ingestion.validator import Accepted, Rejected
from privacy.wire import DeadLetter, RejectReason


class DeadLetterError(CheckpointError):
    """The DLQ did not acknowledge every dead letter of a batch (the batch is retried)."""


@dataclass(kw_only=True)
class BatchCheckpoint(Checkpoint):
    """One batch's pending results; :meth:`commit` makes them durable (see module docs)."""

    region: str
    dead_letter_topic: str
    now: datetime
    offsets: Table = consumer_offsets
    dead_letter_max_bytes: int = 256 * 1024
    accepted: list[tuple[Accepted, str, int, int]] = field(default_factory=list)
    late: list[tuple[round_sink.Late, str, int, int]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)  # to produce
    produced: list[DeadLetter] = field(default_factory=list)  # acked by the DLQ in an earlier try
    events: list[AuditEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ts = self.now.isoformat()  # one decision time per batch

    def accept(self, verdict: Accepted, topic: str, partition: int, offset: int) -> None:
        self.advance(topic, partition, offset)
        env = verdict.envelope
        self.accepted.append((verdict, topic, partition, offset))
        self.events.append(
            AuditEvent(
                event="accept",
                ts=self._ts,
                msg_id=env.msg_id,
                cohort=env.cohort,
                round=env.round,
                topic=topic,
                partition=partition,
                offset=offset,
                detail=env.payload_type,  # what was accepted: the audit can recount the sums
            )
        )

    def late_message(
        self, verdict: round_sink.Late, topic: str, partition: int, offset: int
    ) -> None:
        """A valid protocol message after its stage closed: its offset and msg_id are kept and
        it is audited as ``late``, nothing is stored for the coordinator or dead-lettered."""
        self.advance(topic, partition, offset)
        env = verdict.envelope
        self.late.append((verdict, topic, partition, offset))
        self.events.append(
            AuditEvent(
                event="late",
                ts=self._ts,
                reason=round_sink.LATE,
                detail=verdict.detail[:300],
                msg_id=env.msg_id,
                cohort=env.cohort,
                round=env.round,
                topic=topic,
                partition=partition,
                offset=offset,
            )
        )

    def reject(
        self,
        verdict: Rejected,
        raw: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        already_produced: bool = False,
    ) -> None:
        """Dead-letter one record. ``raw`` is ``None`` for a tombstone (it stays one);
        ``already_produced`` means an earlier try of this batch got it acknowledged by the DLQ
        (it is audited and its offset stored, not produced again)."""
        self.advance(topic, partition, offset)
        detail, withhold = verdict.detail, False
        if verdict.reason is RejectReason.TOPIC_REGION_MISMATCH:
            # Another region's record must not be copied into this region: the dead letter
            # keeps the reason and the source coordinates (the original stays, untouched, on
            # its own region's topic, so nothing is lost), never the bytes, key or headers.
            detail, withhold = f"{detail}; original withheld (another region's data)", True
        dl = DeadLetter.of(
            value=raw,
            max_bytes=self.dead_letter_max_bytes,
            withhold=withhold,
            reason=verdict.reason,
            detail=detail,
            region=self.region,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            rejected_at=self.now,
            original_key=None if withhold else key,
            original_headers=() if withhold else tuple((k, bytes(v or b"")) for k, v in headers),
        )
        (self.produced if already_produced else self.dead_letters).append(dl)
        env = verdict.envelope
        self.events.append(
            AuditEvent(
                event="reject",
                ts=self._ts,
                reason=verdict.reason.value,
                detail=verdict.detail,
                msg_id=env.msg_id if env else None,
                cohort=env.cohort if env else None,
                round=env.round if env else None,
                topic=topic,
                partition=partition,
                offset=offset,
            )
        )

    def commit(
        self,
        *,
        producer: KafkaProducer,
        engine: Engine,
        consumer: KafkaConsumer | None = None,
        flush_timeout_s: float = 30.0,
        on_dead_lettered: Callable[[set[tuple[str, int, int]]], None] | None = None,
    ) -> None:
        """Dead letters, then the one transaction, then the Kafka mirror (see module docs).

        ``on_dead_lettered`` hears the coordinates the DLQ acknowledged, even when the
        transaction then fails, so the retry does not produce them again."""

        def before() -> None:
            acked, error = self._produce_dead_letters(producer, flush_timeout_s)
            if on_dead_lettered is not None and acked:
                on_dead_lettered(acked)
            if error is not None:
                raise DeadLetterError(error)

        # nothing to produce, nothing to fence first: the transaction's own fence suffices
        self.commit_with(engine, self._write, before=before if self.dead_letters else None)
        if consumer is not None:
            self.mirror_offsets(consumer)

    def _produce_dead_letters(
        self, producer: KafkaProducer, timeout_s: float
    ) -> tuple[set[tuple[str, int, int]], str | None]:
        """Produce and flush; the coordinates acknowledged and, if some were not, why.

        Never raises: kafka-python's ``send`` and ``flush`` raise too (``flush`` while a batch
        the broker refused as too large is split and resent, a timeout), and what is
        acknowledged still counts, so that the retry does not produce it again; the caller
        rebuilds the producer."""
        if not self.dead_letters:
            return set(), None
        futures = []
        error: str | None = None
        deadline = time.monotonic() + timeout_s
        try:
            for dl in self.dead_letters:
                futures.append(
                    producer.send(
                        self.dead_letter_topic,
                        value=dl.original,
                        key=f"{dl.source_topic}/{dl.source_partition}/{dl.source_offset}".encode(),
                        headers=dl.headers(),
                    )
                )
            producer.flush(timeout=timeout_s)
        except Exception as exc:
            error = type(exc).__name__
        for fut in futures:  # a raising flush does not mean the sends are over (a batch the
            if not fut.is_done:  # broker refused as too large is split and sent again)
                with contextlib.suppress(Exception):
                    fut.get(timeout=max(0.0, deadline - time.monotonic()))
        acked = {
            (dl.source_topic, dl.source_partition, dl.source_offset)
            for dl, fut in zip(self.dead_letters, futures, strict=False)
            if fut.succeeded()
        }
        if len(acked) == len(self.dead_letters):
            return acked, None
        if error is None:
            failed = next(f for f in futures if not f.succeeded())
            error = type(failed.exception).__name__ if failed.is_done else "timeout"
        missing = len(self.dead_letters) - len(acked)
        return acked, f"{missing} dead letter(s) not acknowledged ({error})"

    def _write(self, conn: Connection) -> None:
        if self.accepted or self.late:
            insert_many(
                conn,
                seen_messages,
                [
                    {
                        "region": self.region,
                        "msg_id": a.envelope.msg_id,
                        "topic": t,
                        "partition": p,
                        "offset": o,
                    }
                    for a, t, p, o in [*self.accepted, *self.late]
                ],
            )
        if self.accepted:
            deltas = aggregates.fold(
                (a.envelope.cohort, a.envelope.round, a.summary)
                for a, _, _, _ in self.accepted
                if not isinstance(a, round_sink.Routed)
            )
            aggregates.apply(conn, self.region, deltas, self.now)
            routed = [a for a, _, _, _ in self.accepted if isinstance(a, round_sink.Routed)]
            round_sink.stage(conn, self.region, routed, self.now)  # to the round coordinator
        audit.append(conn, self.region, self.events)
