"""Turn one polled batch into a :class:`~ingestion.checkpoint.BatchCheckpoint`: validate, then reject replays.

Replay protection is two-layered: a set of msg_ids accepted earlier in the same batch, and
one ``seen_messages`` lookup per batch for ids made durable by earlier batches. The lookup
runs before the checkpoint's transaction; if a concurrent consumer makes the same id durable
in between, the ``seen_messages`` key refuses our transaction and the batch is redone, and
the second pass sees the id and rejects it as a replay.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import Engine, select

from backend.storage import reading
from ingestion import round_sink
from ingestion.checkpoint import BatchCheckpoint
from ingestion.db import seen_messages
from ingestion.pool import Item
from ingestion.validator import Accepted, Rejected, Verdict
from privacy.wire import RejectReason

LOOKUP_CHUNK = 500


class RecordLike(Protocol):
    """The fields of a Kafka ``ConsumerRecord`` that ingestion uses."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def seen_before(engine: Engine, region: str, msg_ids: Sequence[str]) -> set[str]:
    """The subset of ``msg_ids`` already durable in ``seen_messages``."""
    found: set[str] = set()
    if not msg_ids:
        return found
    col = seen_messages.c
    with reading(engine) as conn:
        for i in range(0, len(msg_ids), LOOKUP_CHUNK):
            chunk = list(msg_ids[i : i + LOOKUP_CHUNK])
            stmt = select(col.msg_id).where(col.region == region, col.msg_id.in_(chunk))
            found.update(conn.execute(stmt).scalars())
    return found


def build_checkpoint(
    records: Sequence[RecordLike],
    *,
    judge: Callable[[Sequence[Item]], Sequence[Verdict]],
    region: str,
    engine: Engine,
    group_id: str,
    dead_letter_topic: str,
    now: datetime,
    already_dead_lettered: Collection[tuple[str, int, int]] = (),
    dead_letter_max_bytes: int = 256 * 1024,
) -> BatchCheckpoint:
    """Validate ``records`` (in partition, offset order) into a checkpoint ready to commit.

    ``judge`` turns ``(raw, topic, partition, offset)`` items into verdicts in order: a
    :class:`~ingestion.pool.ValidatorPool` (worker processes) or a validator in this process.
    Everything after it (replay check, screening, the checkpoint) stays here, in order.

    ``already_dead_lettered`` are coordinates an earlier try of this batch got acknowledged by
    the DLQ: they are decided again (the same way) but not produced twice."""
    items = [
        (rec.value if rec.value is not None else b"", rec.topic, rec.partition, rec.offset)
        for rec in records
    ]
    verdicts = judge(items)
    decided: list[tuple[RecordLike, bytes, Accepted | Rejected]] = [
        (rec, item[0], verdict) for rec, item, verdict in zip(records, items, verdicts, strict=True)
    ]
    durable = seen_before(
        engine, region, [v.envelope.msg_id for _, _, v in decided if isinstance(v, Accepted)]
    )
    cp = BatchCheckpoint(
        region=region,
        group_id=group_id,
        dead_letter_topic=dead_letter_topic,
        now=now,
        dead_letter_max_bytes=dead_letter_max_bytes,
    )
    decided = round_sink.screen_verdicts(engine, region, decided, durable)
    in_batch: set[str] = set()
    for rec, _raw, verdict in decided:
        if isinstance(verdict, Accepted):
            msg_id = verdict.envelope.msg_id
            if msg_id in durable or msg_id in in_batch:
                where = "an earlier batch" if msg_id in durable else "this batch"
                verdict = Rejected(
                    RejectReason.REPLAY,
                    f"msg_id {msg_id} already accepted in {where}",
                    verdict.envelope,
                )
            else:
                in_batch.add(msg_id)
        if isinstance(verdict, round_sink.Late):
            cp.late_message(verdict, rec.topic, rec.partition, rec.offset)
        elif isinstance(verdict, Accepted):
            cp.accept(verdict, rec.topic, rec.partition, rec.offset)
        else:
            cp.reject(
                verdict,
                rec.value,
                rec.topic,
                rec.partition,
                rec.offset,
                key=rec.key,
                headers=rec.headers or (),
                already_produced=(rec.topic, rec.partition, rec.offset) in already_dead_lettered,
            )
    return cp
