"""The device's local context: a bounded, time-decayed window of recent agent steps.

Why a file database: the context must survive app restarts (a phone kills background
processes freely) and it must stay small, so the store keeps only the ``max_steps`` most
recent steps and deletes older ones in the same transaction that inserts a new one.

Why time decay: yesterday's habits say more about the next task than last month's. A step
``age`` old weighs ``0.5 ** (age / half_life)``; the context embedding is the weighted,
re-normalized sum of step embeddings (:func:`privacy.embedding.combine`).

Steps are stored redacted (:meth:`AgentStep.redacted`): typed text never touches the disk.
Each row keeps the step's embedding computed at record time together with its
``EMBED_VERSION``; rows from another version are re-embedded on read.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
import sqlalchemy as sa

from edge_client.steps import AgentStep
from privacy.embedding import EMBED_VERSION, combine
from privacy.wire import EMBEDDING_DIM, utcnow

_metadata = sa.MetaData()
_steps = sa.Table(
    "steps",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),  # POSIX seconds, for order and decay
    sa.Column("step", sa.Text, nullable=False),  # redacted AgentStep JSON
    sa.Column("embed_version", sa.Integer, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),  # float32 little-endian [128]
)


class WeightedStep(NamedTuple):
    """A step in the window with its decay weight (1.0 now, 0.5 one half-life ago)."""

    step: AgentStep
    weight: float
    embedding: np.ndarray


class ContextStore:
    """SQLite-backed sliding window of the last ``max_steps`` steps.

    Parameters
    ----------
    path
        The database file; created with its parent directory if missing.
    max_steps
        How many of the most recent steps (by timestamp) are kept; older ones are deleted.
    half_life
        Time after which a step's weight halves.
    """

    def __init__(
        self,
        path: str | Path,
        max_steps: int = 200,
        half_life: timedelta = timedelta(days=7),
    ) -> None:
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if half_life <= timedelta(0):
            raise ValueError("half_life must be positive")
        self.path = Path(path)
        self.max_steps = max_steps
        self.half_life = half_life
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(f"sqlite:///{self.path}")
        _metadata.create_all(self._engine)

    def __repr__(self) -> str:
        return (
            f"ContextStore(path={str(self.path)!r}, max_steps={self.max_steps}, "
            f"half_life={self.half_life!r})"
        )

    def record(self, step: AgentStep) -> None:
        """Persist ``step`` (redacted) and drop whatever falls out of the window."""
        kept = step.redacted()
        vec = np.asarray(kept.embedding(), dtype="<f4")
        with self._engine.begin() as conn:
            conn.execute(
                _steps.insert().values(
                    ts=kept.timestamp.timestamp(),
                    step=kept.model_dump_json(),
                    embed_version=EMBED_VERSION,
                    embedding=vec.tobytes(),
                )
            )
            newest = (
                sa.select(_steps.c.id)
                .order_by(_steps.c.ts.desc(), _steps.c.id.desc())
                .limit(self.max_steps)
            )
            conn.execute(_steps.delete().where(_steps.c.id.not_in(newest.scalar_subquery())))

    def __len__(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_steps)).scalar_one())

    def weight(self, timestamp: datetime, now: datetime) -> float:
        """The decay weight of a step stamped ``timestamp``, seen at ``now``."""
        age = (now - timestamp) / self.half_life
        return float(0.5 ** max(age, 0.0))

    def window(self, now: datetime | None = None) -> list[WeightedStep]:
        """Steps stamped at or before ``now``, oldest first, each with its weight.

        Steps stamped after ``now`` are not part of the window yet, so a window (and the
        summary built from it) for a given ``now`` is reproducible.
        """
        now = now or utcnow()
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return list(self._iter_window(now))

    def _iter_window(self, now: datetime) -> Iterator[WeightedStep]:
        query = (
            sa.select(_steps.c.step, _steps.c.embed_version, _steps.c.embedding)
            .where(_steps.c.ts <= now.timestamp())
            .order_by(_steps.c.ts, _steps.c.id)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        for raw, version, blob in rows:
            step = AgentStep.model_validate_json(raw)
            if version == EMBED_VERSION:
                vec = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            else:
                vec = step.embedding()
            yield WeightedStep(step, self.weight(step.timestamp, now), vec)

    def context_embedding(self, now: datetime | None = None) -> np.ndarray:
        """The decay-weighted, unit-norm 128-d context (all zeros if the window is empty)."""
        items = self.window(now)
        if not items:
            return np.zeros(EMBEDDING_DIM, dtype=np.float32)
        return combine((w.embedding for w in items), (w.weight for w in items))

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> ContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
