"""Per-(cohort, round) sums of accepted round summaries: fold a batch, upsert, read back.

Sums are float64 over the devices' float32 embeddings, stored as little-endian bytes, so a
reader gets exactly what was written. Only sums ever leave this module; a single device's
summary is never stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, select

from backend.storage import reading
from ingestion.db import aggregates as table
from privacy.wire import EMBEDDING_DIM, RoundSummary

COUNT_FIELDS = ("steps", "accepted", "overridden", "failed")


@dataclass(slots=True)
class Delta:
    """What one batch adds to one (cohort, round)."""

    count: int = 0
    vector_sum: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING_DIM, np.float64))
    counts: Counter[str] = field(default_factory=Counter)
    action_hist: Counter[str] = field(default_factory=Counter)

    def add(self, summary: RoundSummary) -> None:
        self.count += 1
        self.vector_sum += summary.vector()
        c = summary.counts
        self.counts.update(
            steps=c.steps, accepted=c.accepted, overridden=c.overridden, failed=c.failed
        )
        self.action_hist.update(summary.action_hist)

    def add_all(self, summaries: list[RoundSummary]) -> None:
        """:meth:`add` for each, in order, with the same float64 result bit for bit: the
        cumulative sum adds row after row as the loop does (``sum`` would pair them up and
        round differently), in one numpy call instead of one per summary."""
        if not summaries:
            return
        stacked = np.empty((len(summaries) + 1, EMBEDDING_DIM), np.float64)
        stacked[0] = self.vector_sum
        raw = b"".join(s.embedding for s in summaries)
        stacked[1:] = np.frombuffer(raw, dtype="<f4").reshape(len(summaries), EMBEDDING_DIM)
        self.vector_sum = np.cumsum(stacked, axis=0)[-1].copy()
        self.count += len(summaries)
        steps = accepted = overridden = failed = 0
        hist: dict[str, int] = {}
        get = hist.get
        for s in summaries:
            c = s.counts
            steps, accepted = steps + c.steps, accepted + c.accepted
            overridden, failed = overridden + c.overridden, failed + c.failed
            for action, n in s.action_hist.items():
                hist[action] = get(action, 0) + n
        self.counts.update(steps=steps, accepted=accepted, overridden=overridden, failed=failed)
        self.action_hist.update(hist)


def fold(items: Iterable[tuple[str, int, RoundSummary]]) -> dict[tuple[str, int], Delta]:
    """Group ``(cohort, round, summary)`` triples into one delta per (cohort, round)."""
    groups: dict[tuple[str, int], list[RoundSummary]] = {}
    for cohort, rnd, summary in items:
        groups.setdefault((cohort, rnd), []).append(summary)
    out: dict[tuple[str, int], Delta] = {}
    for key, summaries in groups.items():
        out[key] = delta = Delta()
        delta.add_all(summaries)
    return out


def apply(
    conn: Connection, region: str, deltas: dict[tuple[str, int], Delta], now: datetime
) -> None:
    """Add ``deltas`` to the stored rows inside the caller's transaction.

    Read-modify-write under a row lock (``SELECT ... FOR UPDATE`` on servers; SQLite's
    transactions already hold the database write lock): replicas whose batches touch the same
    (cohort, round) serialize instead of overwriting each other's sums. Rows are visited in key
    order so concurrent batches lock in the same order. Two replicas inserting the same new row
    collide on the primary key; the loser's transaction fails and its batch is retried, then
    finds the row and adds to it.
    """
    lock = conn.dialect.name != "sqlite"
    for (cohort, rnd), d in sorted(deltas.items()):
        key = and_(table.c.region == region, table.c.cohort == cohort, table.c.round == rnd)
        stmt = select(table).where(key)
        row = conn.execute(stmt.with_for_update() if lock else stmt).first()
        if row is None:
            conn.execute(
                table.insert().values(
                    region=region,
                    cohort=cohort,
                    round=rnd,
                    count=d.count,
                    vector_sum=d.vector_sum.astype("<f8").tobytes(),
                    **{f"{k}_sum": int(d.counts[k]) for k in COUNT_FIELDS},
                    action_hist=dict(sorted(d.action_hist.items())),
                    updated_at=now,
                )
            )
            continue
        m = row._mapping
        vec = np.frombuffer(m["vector_sum"], dtype="<f8") + d.vector_sum
        hist = Counter(m["action_hist"] or {})
        hist.update(d.action_hist)
        conn.execute(
            table.update()
            .where(key)
            .values(
                count=m["count"] + d.count,
                vector_sum=vec.astype("<f8").tobytes(),
                **{f"{k}_sum": m[f"{k}_sum"] + int(d.counts[k]) for k in COUNT_FIELDS},
                action_hist=dict(sorted(hist.items())),
                updated_at=now,
            )
        )


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The running sums of one (cohort, round) in one region."""

    region: str
    cohort: str
    round: int
    count: int
    vector_sum: np.ndarray  # float64[EMBEDDING_DIM]
    counts: dict[str, int]
    action_hist: dict[str, int]
    updated_at: datetime


def aggregates(
    engine: Engine, region: str, cohort: str | None = None, round: int | None = None
) -> list[Aggregate]:
    """Read the sums of ``region``, optionally for one cohort and/or round, ordered by key."""
    stmt = select(table).where(table.c.region == region)
    if cohort is not None:
        stmt = stmt.where(table.c.cohort == cohort)
    if round is not None:
        stmt = stmt.where(table.c.round == round)
    stmt = stmt.order_by(table.c.cohort, table.c.round)
    with reading(engine) as conn:
        return [_row(r._mapping) for r in conn.execute(stmt)]


def _row(m: Any) -> Aggregate:
    return Aggregate(
        region=m["region"],
        cohort=m["cohort"],
        round=int(m["round"]),
        count=int(m["count"]),
        vector_sum=np.frombuffer(m["vector_sum"], dtype="<f8").copy(),
        counts={k: int(m[f"{k}_sum"]) for k in COUNT_FIELDS},
        action_hist={str(k): int(v) for k, v in (m["action_hist"] or {}).items()},
        updated_at=m["updated_at"],
    )
