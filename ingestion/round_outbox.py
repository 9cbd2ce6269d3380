"""The coordinator's outbox rows: announcements, stage closes and releases, queued in the
transaction that decided them and published by :class:`backend.outbox.TransactionalOutbox`.

Releases (key ``region|cohort|round``) go to their cohort's partition, so the learner reads a
cohort's rounds in order; everything else uses the default partitioner. The rounds topic
tolerates repeats (client state machines ignore a message they already answered) and a released
aggregate's key makes the learner apply it once.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, Row

from backend.outbox import OutboundRecord, TransactionalOutbox
from ingestion.rounds_db import round_outbox


def put(conn: Connection, region: str, topic: str, key: bytes, value: bytes, now: float) -> int:
    """Queue one record in the caller's transaction; returns its outbox id."""
    res = conn.execute(
        round_outbox.insert().values(
            region=region, topic=topic, key=key, value=value, created_at=now, published_at=None
        )
    )
    return int(res.inserted_primary_key[0])  # type: ignore[index]


def _record(row: Row[Any]) -> OutboundRecord:
    parts = row.key.split(b"|") if row.key else []
    cohort = parts[1].decode() if len(parts) == 3 else None
    return OutboundRecord(row.id, row.topic, row.key, row.value, cohort)


def outbox(region: str) -> TransactionalOutbox:
    """The region's round outbox."""
    return TransactionalOutbox(round_outbox, region, ("topic", "key", "value"), _record, time.time)
