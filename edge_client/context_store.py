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

The file is opened with :func:`edge_client.outbox.connect_private` (the standard library's
:mod:`sqlite3`, no SQLAlchemy on a device): mode 0600, WAL, ``synchronous=FULL``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge_client.outbox import connect_private
from edge_client.steps import AgentStep
from privacy.embedding import EMBED_VERSION, combine
from privacy.wire import EMBEDDING_DIM, utcnow

# The schema SQLAlchemy created before this module used sqlite3 (same table, columns and
# index names), so existing files open unchanged.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER NOT NULL,
    ts FLOAT NOT NULL,  -- POSIX seconds, for order and decay
    step TEXT NOT NULL,  -- redacted AgentStep JSON
    embed_version INTEGER NOT NULL,
    embedding BLOB NOT NULL,  -- float32 little-endian [128]
    PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS ix_steps_ts ON steps (ts);
"""


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

    Safe to share between threads: one connection, every use under one lock.
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
        self._lock = threading.Lock()
        self._conn = connect_private(self.path, _SCHEMA)

    def __repr__(self) -> str:
        return (
            f"ContextStore(path={str(self.path)!r}, max_steps={self.max_steps}, "
            f"half_life={self.half_life!r})"
        )

    def record(self, step: AgentStep) -> None:
        """Persist ``step`` (redacted) and drop whatever falls out of the window."""
        kept = step.redacted()
        vec = np.asarray(kept.embedding(), dtype="<f4")
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO steps (ts, step, embed_version, embedding) VALUES (?, ?, ?, ?)",
                    (
                        kept.timestamp.timestamp(),
                        kept.model_dump_json(),
                        EMBED_VERSION,
                        vec.tobytes(),
                    ),
                )
                conn.execute(
                    "DELETE FROM steps WHERE id NOT IN ("
                    "SELECT id FROM steps ORDER BY ts DESC, id DESC LIMIT ?)",
                    (self.max_steps,),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM steps").fetchone()[0])

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
        with self._lock:
            rows = self._conn.execute(
                "SELECT step, embed_version, embedding FROM steps WHERE ts <= ? ORDER BY ts, id",
                (now.timestamp(),),
            ).fetchall()
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
        """Close the connection (idempotent); the last close checkpoints and removes the WAL."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
